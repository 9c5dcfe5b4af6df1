// The root component, the top bar and the connection banner; a meeting link's tab
// is a guest's page instead (guest.js).

import { html, useEffect, useState } from '../lib.js';
import { onLangChange, t } from '../i18n.js';
import * as store from '../store.js';
import { LangSwitch } from './common.js';
import { GuestApp } from './guest.js';
import { Login } from './login.js';
import { RoomView } from './room.js';
import { Sidebar } from './sidebar.js';

const BANNER_QUIET_AFTER = 4000;

function Banner() {
  const { connected, node, connectedAt } = store.state;
  const [, tick] = useState(0);
  const quiet = connected && Date.now() - connectedAt >= BANNER_QUIET_AFTER;
  useEffect(() => {
    if (!connected || quiet) return undefined;
    const timer = setTimeout(() => tick((n) => n + 1), BANNER_QUIET_AFTER - (Date.now() - connectedAt) + 20);
    return () => clearTimeout(timer);
  }, [connected, connectedAt, quiet]);
  const text = connected ? t('conn.connected', { node: node || '' }) : t('conn.reconnecting');
  const cls = `conn-banner ${connected ? 'conn-up' : 'conn-down'}${quiet ? ' conn-quiet' : ''}`;
  return html`<div class=${cls} data-testid="conn-banner" role="status" aria-live="polite">${text}</div>`;
}

function StatusPicker() {
  const change = (e) => { store.setStatus(e.currentTarget.value).catch(() => {}); };
  return html`
    <label class="inline-field">
      <span class="sr-only">${t('status.label')}</span>
      <select data-testid="status-picker" aria-label=${t('status.label')} value=${store.state.myStatus}
        onChange=${change}>
        ${store.STATUSES.map((s) => html`<option value=${s}>${t(`status.${s}`)}</option>`)}
      </select>
    </label>`;
}

function TopBar() {
  const me = store.state.me;
  const canAsk = store.notificationsAvailable() && Notification.permission === 'default';
  return html`
    <header class="topbar">
      <span class="brand">${t('app.name')}</span>
      <${Banner} />
      <span class="grow"></span>
      <span class="me">
        <span class="sr-only">${t('me.label')}</span>
        <span data-testid="me-name" class="me-name" title=${me ? `@${me.username}` : ''}>
          ${me ? String(me.display_name || me.username) : ''}</span>
      </span>
      <${StatusPicker} />
      <${LangSwitch} />
      ${canAsk && html`<button type="button" data-testid="notify-button"
        onClick=${() => store.askNotifications()}>${t('notify.enable')}</button>`}
      <button type="button" data-testid="logout" onClick=${() => store.logout()}>${t('logout')}</button>
    </header>`;
}

function Shell() {
  return html`
    <div class="shell">
      <${TopBar} />
      <div class="workspace">
        <${Sidebar} />
        <${RoomView} />
      </div>
    </div>`;
}

export function App() {
  const [, setVersion] = useState(0);
  useEffect(() => store.subscribe((v) => setVersion(v)), []);
  useEffect(() => onLangChange(() => setVersion((v) => v + 1)), []);
  const total = store.totalUnread();
  useEffect(() => {
    document.title = total > 0 ? `(${total}) camcluster` : 'camcluster';
  }, [total]);
  if (store.state.meetLink) return html`<${GuestApp} />`;
  return store.state.token ? html`<${Shell} />` : html`<${Login} />`;
}
