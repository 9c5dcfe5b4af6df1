// The sidebar: new room form, user directory for direct messages, the room list.

import { html, useEffect, useRef, useState } from '../lib.js';
import { errorText, t } from '../i18n.js';
import { previewText } from '../format.js';
import * as store from '../store.js';
import { PresenceDot, splitNames } from './common.js';

function NewRoomForm({ onDone }) {
  const [name, setName] = useState('');
  const [members, setMembers] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const first = useRef(null);
  useEffect(() => { first.current && first.current.focus(); }, []);

  const submit = async (ev) => {
    ev.preventDefault();
    if (busy || !name.trim()) return;
    setBusy(true);
    setError(null);
    try {
      await store.createRoom(name.trim(), splitNames(members));
      onDone();
    } catch (e) {
      setError(errorText(e.code));
      setBusy(false);
    }
  };

  return html`
    <form class="panel" onSubmit=${submit} aria-label=${t('room.new')}>
      <label class="field">
        <span>${t('room.new.name')}</span>
        <input ref=${first} data-testid="new-room-name" maxlength="100" value=${name}
          onInput=${(e) => setName(e.currentTarget.value)} />
      </label>
      <label class="field">
        <span>${t('room.new.members')}</span>
        <input data-testid="new-room-members" autocapitalize="none" spellcheck=${false}
          value=${members} onInput=${(e) => setMembers(e.currentTarget.value)} />
      </label>
      ${error && html`<p class="error" data-testid="new-room-error" role="alert">${error}</p>`}
      <div class="row">
        <button class="primary" type="submit" data-testid="new-room-create"
          disabled=${busy || !name.trim()}>${t('room.new.create')}</button>
        <button type="button" onClick=${onDone}>${t('room.new.cancel')}</button>
      </div>
    </form>`;
}

function Directory({ onDone }) {
  const [query, setQuery] = useState('');
  const [users, setUsers] = useState(null);
  const [error, setError] = useState(null);
  const input = useRef(null);
  const asked = useRef(0);
  useEffect(() => { input.current && input.current.focus(); }, []);

  useEffect(() => {
    const n = ++asked.current;
    const timer = setTimeout(async () => {
      try {
        const found = await store.directory(query.trim());
        if (n === asked.current) { setUsers(found); setError(null); }
      } catch (e) {
        if (n === asked.current) setError(errorText(e.code));
      }
    }, query ? 200 : 0);
    return () => clearTimeout(timer);
  }, [query, store.state.connected]);

  const open = async (username) => {
    try {
      await store.openDirect(username);
      onDone();
    } catch (e) {
      setError(errorText(e.code));
    }
  };

  const me = store.state.me;
  const shown = (users || []).filter((u) => !me || u.id !== me.id);
  return html`
    <div class="panel" role="search">
      <label class="field">
        <span>${t('dm.search')}</span>
        <input ref=${input} type="search" data-testid="directory-search" maxlength="64"
          autocapitalize="none" spellcheck=${false} value=${query}
          onInput=${(e) => setQuery(e.currentTarget.value)}
          onKeyDown=${(e) => { if (e.key === 'Escape') onDone(); }} />
      </label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <ul class="directory" aria-label=${t('dm.search')}>
        ${shown.map((u) => html`
          <li key=${u.id}>
            <button type="button" class="directory-item" data-testid="directory-item"
              data-username=${u.username} onClick=${() => open(u.username)}>
              <span class="directory-name">${String(u.display_name || u.username)}</span>
              <span class="muted">@${String(u.username)}</span>
            </button>
          </li>`)}
      </ul>
      ${users && !shown.length && html`<p class="muted">${t('dm.none')}</p>`}
      <div class="row"><button type="button" onClick=${onDone}>${t('dm.close')}</button></div>
    </div>`;
}

function sortedRooms() {
  const rooms = [...store.state.rooms.values()];
  const at = (r) => (r.last_message ? r.last_message.ts : 0);
  return rooms.sort((a, b) => at(b) - at(a) || b.id - a.id);
}

function RoomItem({ room }) {
  const selected = store.state.selected === room.id;
  const unread = room.unread || 0;
  const preview = previewText(room, store.state.me, (msg) => store.senderName(msg, false));
  return html`
    <li>
      <button type="button" class=${`room-item${selected ? ' selected' : ''}${unread ? ' has-unread' : ''}`}
        data-testid="room-item" data-room-id=${room.id} aria-current=${selected ? 'true' : undefined}
        onClick=${() => store.select(room.id)}>
        <span class="room-line">
          ${room.kind === 'direct' && html`<${PresenceDot} status=${store.roomStatus(room)} />`}
          <span class="room-name" data-testid="room-name">${String(room.name ?? '')}</span>
          ${unread > 0 && html`<span class="badge" data-testid="room-unread"
            aria-label=${t('rooms.unread', { count: unread })}>${unread >= 1000 ? '1000+' : unread}</span>`}
        </span>
        <span class="room-last" data-testid="room-last">${preview}</span>
      </button>
    </li>`;
}

export function Sidebar() {
  const [panel, setPanel] = useState(null);   // 'room' | 'dm' | null
  const toggle = (which) => setPanel(panel === which ? null : which);
  const rooms = sortedRooms();
  return html`
    <nav class="sidebar" aria-label=${t('rooms.label')}>
      <div class="sidebar-actions">
        <button type="button" data-testid="new-room-button" aria-expanded=${panel === 'room'}
          onClick=${() => toggle('room')}>${t('room.new')}</button>
        <button type="button" data-testid="new-dm-button" aria-expanded=${panel === 'dm'}
          onClick=${() => toggle('dm')}>${t('dm.new')}</button>
      </div>
      ${panel === 'room' && html`<${NewRoomForm} onDone=${() => setPanel(null)} />`}
      ${panel === 'dm' && html`<${Directory} onDone=${() => setPanel(null)} />`}
      <h2 class="sidebar-heading">${t('rooms.label')}</h2>
      <ul class="room-list" data-testid="room-list">
        ${rooms.map((room) => html`<${RoomItem} key=${room.id} room=${room} />`)}
      </ul>
      ${store.state.roomsComplete && !rooms.length && html`<p class="muted pad">${t('rooms.empty')}</p>`}
    </nav>`;
}
