// The conference of a room: the Meet button, the tile view with its controls, and the
// meeting links for guests.

import { html, useEffect, useRef, useState } from '../lib.js';
import { errorText, t } from '../i18n.js';
import * as conference from '../conference.js';
import * as store from '../store.js';

function Video({ stream, muted }) {
  const ref = useRef(null);
  useEffect(() => {
    const el = ref.current;
    if (el && el.srcObject !== stream) {
      el.srcObject = stream;
      el.play().catch(() => { /* autoplay refused: plays on the next gesture */ });
    }
  }, [stream]);
  return html`<video ref=${ref} autoplay playsinline muted=${!!muted}></video>`;
}

export function MeetButton({ room }) {
  const c = store.state.conf;
  const here = c && c.room === room.id;
  const join = () => { conference.join(room.id).catch((e) => console.warn('meet:', e)); };
  return html`<button type="button" class="primary" data-testid="meet-button" disabled=${here}
    onClick=${join}>${here ? t('conf.in_meeting') : t('conf.meet')}</button>`;
}

export function ConferenceView({ title, onLeave }) {
  const c = store.state.conf;
  if (!c) return null;
  const me = store.state.me;
  const tiles = [...c.tiles.values()];
  const status = c.error ? errorText(c.error) : t(`conf.phase.${c.phase}`);
  return html`
    <section class="conference" data-testid="conference" data-phase=${c.phase}
      data-server=${c.server || ''} aria-label=${t('conf.label')}>
      <div class="conf-bar">
        <strong>${title}</strong>
        <span class="muted" data-testid="conf-status" role="status">${status}</span>
        <span class="grow"></span>
        <button type="button" data-testid="conf-mute" aria-pressed=${!c.audio}
          onClick=${() => conference.setAudio(!c.audio)}>${c.audio ? t('conf.mute') : t('conf.unmute')}</button>
        <button type="button" data-testid="conf-camera" aria-pressed=${!c.video}
          onClick=${() => conference.setVideo(!c.video)}>${c.video ? t('conf.camera_off') : t('conf.camera_on')}</button>
        <button type="button" class="danger" data-testid="conf-leave"
          onClick=${() => (onLeave ? onLeave() : conference.leave())}>${t('conf.leave')}</button>
      </div>
      <div class="conf-tiles">
        <figure class="conf-tile conf-local" data-testid="conf-tile" data-local="true"
          data-user=${me ? me.id : ''}>
          ${c.local && html`<${Video} stream=${c.local} muted=${true} />`}
          <figcaption>${t('conf.you')}${c.audio ? '' : ` · ${t('conf.muted')}`}</figcaption>
        </figure>
        ${tiles.map((tile) => html`
          <figure key=${tile.feed} class="conf-tile" data-testid="conf-tile" data-user=${tile.user}
            data-frames=${tile.frames}>
            <${Video} stream=${tile.stream} />
            <figcaption>${conference.tileName(tile)}</figcaption>
          </figure>`)}
      </div>
    </section>`;
}

const LINK_TTL = 24 * 3600;

export function GuestLinks({ room }) {
  const [links, setLinks] = useState([]);
  const [made, setMade] = useState(null);
  const [error, setError] = useState(null);
  const load = () => store.request('conf_links', { room: room.id })
    .then((r) => { setLinks(r.links || []); setError(null); }, (e) => setError(errorText(e.code)));
  useEffect(() => { setMade(null); load(); }, [room.id]);

  const create = async () => {
    setError(null);
    try {
      const res = await store.request('conf_link_create', { room: room.id, ttl: LINK_TTL });
      const url = `${window.location.origin}/#meet/${encodeURIComponent(res.link.token)}`;
      setMade({ id: res.link.id, url });
      load();
    } catch (e) { setError(errorText(e.code)); }
  };
  const revoke = async (id) => {
    setError(null);
    try {
      await store.request('conf_link_revoke', { room: room.id, link: id });
      if (made && made.id === id) setMade(null);
      load();
    } catch (e) { setError(errorText(e.code)); }
  };
  const copy = () => { if (made && navigator.clipboard) navigator.clipboard.writeText(made.url).catch(() => {}); };

  return html`
    <section class="guest-links" aria-label=${t('guests.title')}>
      <div class="row">
        <span class="grow">${t('guests.explain')}</span>
        <button type="button" data-testid="guest-link-create" onClick=${create}>${t('guests.create')}</button>
      </div>
      ${made && html`
        <div class="row">
          <label class="grow">
            <span class="sr-only">${t('guests.url')}</span>
            <input data-testid="guest-link-url" readonly value=${made.url} aria-label=${t('guests.url')}
              onFocus=${(e) => e.currentTarget.select()} />
          </label>
          <button type="button" onClick=${copy}>${t('guests.copy')}</button>
        </div>`}
      <ul class="link-list">
        ${links.map((l) => html`
          <li key=${l.id} data-testid="guest-link-item" data-link=${l.id}>
            <span>${t('guests.item', { guests: l.guests, max: l.max_guests,
              until: new Date(l.expires_at).toLocaleString() })}</span>
            <button type="button" class="danger" data-testid="guest-link-revoke"
              onClick=${() => revoke(l.id)}>${t('guests.revoke')}</button>
          </li>`)}
      </ul>
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </section>`;
}
