// The root component, the top bar and the connection banner; a meeting link's tab
// is a guest's page instead (guest.js). An admin's top bar also opens the admin view
// (admin.js) in place of the rooms.

import { html, useEffect, useState } from '../lib.js';
import { onLangChange, t } from '../i18n.js';
import * as store from '../store.js';
import { AdminView } from './admin.js';
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

function AdminEntry() {
  const open = store.state.view === 'admin';
  return html`<button type="button" class=${`admin-entry${open ? ' active' : ''}`} data-testid="admin-button"
    aria-pressed=${open ? 'true' : 'false'} onClick=${() => store.showView(open ? 'chat' : 'admin')}>
    ${open ? t('admin.back') : t('admin.open')}</button>`;
}

function TopBar() {
  const me = store.state.me;
  const canAsk = store.notificationsAvailable() && Notification.permission === 'default';
  return html`
    <header class="topbar">
      <span class="brand">${t('app.name')}</span>
      <${Banner} />
      <span class="grow"></span>
      ${store.state.admin === true && html`<${AdminEntry} />`}
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
      ${store.state.view === 'admin' && store.state.admin === true ? html`<${AdminView} />` : html`
        <div class="workspace">
          <${Sidebar} />
          <${RoomView} />
        </div>`}
    </div>`;
}

export function App() {
  const [, setVersion] = useState(0);
  // A counter of its own for language changes: bumping the store's version here would
  // make the store's next emit look like no change (and that render be skipped).
  const [, setLangChanges] = useState(0);
  useEffect(() => store.subscribe((v) => setVersion(v)), []);
  useEffect(() => onLangChange(() => setLangChanges((n) => n + 1)), []);
  const total = store.totalUnread();
  useEffect(() => {
    document.title = total > 0 ? `(${total}) camcluster` : 'camcluster';
  }, [total]);
  if (store.state.meetLink) return html`<${GuestApp} />`;
  return store.state.token ? html`<${Shell} />` : html`<${Login} />`;
}
