// Small pieces shared by the views.

import { html } from '../lib.js';
import { LANGS, getLang, setLang, t } from '../i18n.js';

export function LangSwitch() {
  return html`
    <label class="inline-field">
      <span class="sr-only">${t('lang.label')}</span>
      <select data-testid="lang-switch" aria-label=${t('lang.label')} value=${getLang()}
        onChange=${(e) => setLang(e.currentTarget.value)}>
        ${LANGS.map(([code, name]) => html`<option value=${code} lang=${code}>${name}</option>`)}
      </select>
    </label>`;
}

export function PresenceDot({ status }) {
  return html`<span class=${`presence-dot presence-${status}`} data-testid="presence-dot"
    data-status=${status} role="img" aria-label=${t(`status.${status}`)}
    title=${t(`status.${status}`)}></span>`;
}

// Split "bob, carol" into names.
export function splitNames(text) {
  return text.split(/[,、，\s]+/).map((s) => s.trim().replace(/^@/, '')).filter(Boolean);
}
