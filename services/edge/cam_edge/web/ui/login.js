// The sign-in form.

import { html, useState } from '../lib.js';
import { t } from '../i18n.js';
import * as store from '../store.js';
import { LangSwitch } from './common.js';

function loginError(e) {
  switch (e.code) {
    case 'bad_credentials': return t('login.bad_credentials');
    case 'rate_limited': return t('login.rate_limited', { seconds: e.retryAfter || 60 });
    case 'unavailable': return t('login.unavailable');
    default: return t('login.failed', { code: e.code || '?' });
  }
}

export function Login() {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (ev) => {
    ev.preventDefault();
    if (busy) return;
    setBusy(true);
    setError(null);
    try {
      await store.login(username.trim(), password);
    } catch (e) {
      setError(loginError(e));
      setBusy(false);
    }
  };

  return html`
    <main class="login">
      <form class="login-card" onSubmit=${submit} novalidate>
        <h1 class="login-brand">${t('app.name')}</h1>
        <h2 class="login-title">${t('login.title')}</h2>
        ${store.state.loginNotice && html`
          <p class="notice" data-testid="login-notice" role="status">${t(store.state.loginNotice)}</p>`}
        <label class="field">
          <span>${t('login.username')}</span>
          <input data-testid="login-username" name="username" autocomplete="username" required
            autocapitalize="none" spellcheck=${false} value=${username}
            onInput=${(e) => setUsername(e.currentTarget.value)} />
        </label>
        <label class="field">
          <span>${t('login.password')}</span>
          <input data-testid="login-password" name="password" type="password" required
            autocomplete="current-password" value=${password}
            onInput=${(e) => setPassword(e.currentTarget.value)} />
        </label>
        ${error && html`<p class="error" data-testid="login-error" role="alert">${error}</p>`}
        <button data-testid="login-submit" class="primary" type="submit"
          disabled=${busy || !username.trim() || !password}>
          ${busy ? t('login.busy') : t('login.submit')}
        </button>
        <div class="login-foot"><${LangSwitch} /></div>
      </form>
    </main>`;
}
