// A guest's page (opened with a meeting link): a name, then that one conference.

import { html, useEffect, useRef, useState } from '../lib.js';
import { t } from '../i18n.js';
import * as conference from '../conference.js';
import * as store from '../store.js';
import { LangSwitch } from './common.js';
import { ConferenceView } from './conference.js';

const NAME_MAX = 64;

function guestError(e) {
  if (e.code === 'not_found') return t('guest.invalid');
  if (e.code === 'limit_reached') return t('guest.full');
  if (e.code === 'rate_limited') return t('login.rate_limited', { seconds: e.retryAfter || 1 });
  if (e.code === 'bad_request') return t('guest.bad_name');
  return t('login.unavailable');
}

function GuestJoin() {
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const submit = async (ev) => {
    ev.preventDefault();
    if (!name.trim() || busy) return;
    setBusy(true);
    setError(null);
    try { await store.guestJoin(name.trim()); } catch (e) { setError(guestError(e)); }
    setBusy(false);
  };
  return html`
    <main class="login">
      <form class="login-card" onSubmit=${submit} data-testid="guest-form" novalidate>
        <h1 class="login-brand">${t('app.name')}</h1>
        <h2 class="login-title">${t('guest.title')}</h2>
        ${store.state.guestEnded && html`
          <p class="notice" data-testid="guest-ended" role="status">${t('guest.ended')}</p>`}
        <label class="field">
          <span>${t('guest.name')}</span>
          <input data-testid="guest-name" maxlength=${NAME_MAX} autocomplete="name" value=${name}
            onInput=${(e) => setName(e.currentTarget.value)} />
        </label>
        ${error && html`<p class="error" role="alert" data-testid="guest-error">${error}</p>`}
        <button class="primary" type="submit" data-testid="guest-join" disabled=${busy || !name.trim()}>
          ${t('guest.join')}</button>
        <div class="login-foot"><${LangSwitch} /></div>
      </form>
    </main>`;
}

function GuestMeeting() {
  const { guest, connected, conf } = store.state;
  const left = useRef(false);
  useEffect(() => {
    if (connected && guest && !conf && !left.current) conference.join(guest.room).catch(() => {});
  }, [connected, guest, conf]);
  const leave = () => { left.current = true; conference.leave(); };
  const again = () => { left.current = false; conference.join(guest.room).catch(() => {}); };
  const text = connected ? t('conn.connected', { node: store.state.node || '' }) : t('conn.reconnecting');
  return html`
    <div class="shell">
      <header class="topbar">
        <span class="brand">${t('app.name')}</span>
        <div class=${`conn-banner ${connected ? 'conn-up' : 'conn-down'}`} data-testid="conn-banner"
          role="status">${text}</div>
        <span class="grow"></span>
        <span data-testid="me-name" class="me-name">${String(store.state.me ? store.state.me.display_name : '')}</span>
        <${LangSwitch} />
      </header>
      <main class="room guest-room">
        ${conf ? html`<${ConferenceView} title=${String(guest.room_name ?? '')} onLeave=${leave} />` : html`
          <div class="pad">
            <p>${t('guest.left')}</p>
            <button type="button" class="primary" data-testid="guest-rejoin" onClick=${again}>
              ${t('guest.rejoin')}</button>
          </div>`}
      </main>
    </div>`;
}

export function GuestApp() {
  return store.state.token && store.state.guest ? html`<${GuestMeeting} />` : html`<${GuestJoin} />`;
}
