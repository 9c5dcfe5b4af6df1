// The selected room: header, its conference, guest links, members, message list,
// typing indicator, uploads, composer; files dropped on it are uploaded (ui/files.js).

import { html, useEffect, useLayoutEffect, useRef, useState } from '../lib.js';
import { errorText, joinNames, t } from '../i18n.js';
import { dayKey, dayText, fullTimeText, systemText, timeText } from '../format.js';
import * as store from '../store.js';
import { PresenceDot, splitNames } from './common.js';
import { ConferenceView, GuestLinks, MeetButton } from './conference.js';
import {
  FileAttachment, FilePreview, UploadList, carriesFiles, guardPageDrops, transferFiles,
} from './files.js';

const drafts = new Map();   // room id -> unsent text
const BOTTOM_SLACK = 40;    // px from the bottom that still counts as "at the bottom"
const TOP_LOAD = 120;       // px from the top that loads older messages

function Members({ room }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  const [names, setNames] = useState('');
  const [note, setNote] = useState(null);
  const load = () => store.members(room.id).then((m) => { setList(m); setError(null); },
    (e) => setError(errorText(e.code)));
  useEffect(() => { load(); }, [room.id, room.members]);

  const submit = async (ev) => {
    ev.preventDefault();
    const users = splitNames(names);
    if (!users.length) return;
    setNote(null);
    setError(null);
    try {
      const res = await store.invite(room.id, users);
      setNames('');
      setNote(res.added && res.added.length
        ? t('room.invite.added', { names: joinNames(res.added) }) : t('room.invite.none'));
      load();
    } catch (e) {
      setError(errorText(e.code));
    }
  };

  return html`
    <section class="members" aria-label=${t('room.members')}>
      <ul class="member-list">
        ${(list || []).map((u) => html`
          <li key=${u.id} class="member-item" data-testid="member-item" data-username=${u.username}>
            <span>${String(u.display_name || u.username)}</span> <span class="muted">@${String(u.username)}</span>
          </li>`)}
      </ul>
      ${room.kind === 'group' && html`
        <form class="row invite" onSubmit=${submit}>
          <label class="grow">
            <span class="sr-only">${t('room.invite')}</span>
            <input data-testid="invite-input" placeholder=${t('room.invite')} aria-label=${t('room.invite')}
              autocapitalize="none" spellcheck=${false} value=${names}
              onInput=${(e) => setNames(e.currentTarget.value)} />
          </label>
          <button type="submit" data-testid="invite-submit" disabled=${!names.trim()}>
            ${t('room.invite.submit')}</button>
        </form>`}
      ${note && html`<p class="muted" role="status">${note}</p>`}
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </section>`;
}

function MessageRow({ msg, pending, onPreview }) {
  const me = store.state.me;
  const own = me && msg.sender === me.id;
  let body;
  let cls = 'message';
  if (msg.kind === 'system') { body = systemText(msg); cls += ' message-system'; }
  else if (msg.kind === 'deleted') { body = t('message.deleted'); cls += ' message-deleted'; }
  else if (msg.kind === 'file') {
    body = html`<${FileAttachment} key=${msg.file.id} file=${msg.file} onPreview=${onPreview} />`;
    cls += ' message-file';
  } else body = String(msg.body ?? '');
  if (own) cls += ' message-own';
  const failed = pending && pending.state === 'failed';
  if (pending) cls += failed ? ' message-failed' : ' message-pending';
  return html`
    <div class=${cls} data-testid="message" data-seq=${pending ? undefined : msg.seq} data-cid=${msg.cid}
      data-pending=${pending && !failed ? 'true' : undefined} data-failed=${failed ? 'true' : undefined}
      data-kind=${msg.kind}>
      <div class="message-head">
        <span class="message-sender" data-testid="message-sender" title=${String(msg.sender_name ?? '')}>
          ${store.senderName(msg)}</span>
        <time class="message-time" data-testid="message-time" datetime=${new Date(msg.ts).toISOString()}
          title=${fullTimeText(msg.ts)}>${timeText(msg.ts)}</time>
        ${pending && !failed && html`<span class="message-state">${t('message.pending')}</span>`}
      </div>
      <div class="message-body" data-testid="message-body">${body}</div>
      ${failed && html`
        <div class="message-error" role="alert">
          <span>${t('message.failed')}: ${errorText(pending.error)}</span>
          <button type="button" data-testid="retry" onClick=${() => store.retry(pending.cid)}>
            ${t('message.retry')}</button>
        </div>`}
    </div>`;
}

function shown(msg) {
  if (msg.kind === 'text' || msg.kind === 'deleted') return true;
  if (msg.kind === 'file') return !!(msg.file && typeof msg.file.id === 'string' && msg.file.id);
  return msg.kind === 'system' && systemText(msg) != null;
}

function MessageList({ room, onPreview }) {
  const ref = useRef(null);
  const stick = useRef(true);          // follow new messages while at the bottom
  const before = useRef(null);         // scroll geometry before this render
  const m = store.state.msgs.get(room.id);
  const list = store.messageList(room.id).filter(shown);
  const pending = store.pendingList(room.id);
  const firstSeq = list.length ? list[0].seq : null;
  const pendingCount = useRef(0);
  if (pending.length > pendingCount.current) stick.current = true;   // just sent: follow it
  pendingCount.current = pending.length;

  // Read the geometry of the DOM as it is before the update (render runs before the diff).
  const el = ref.current;
  before.current = el ? { height: el.scrollHeight, top: el.scrollTop, first: el.dataset.first } : null;

  const atBottom = (node) => node.scrollHeight - node.scrollTop - node.clientHeight <= BOTTOM_SLACK;

  const maybeRead = () => {
    const node = ref.current;
    if (node && document.visibilityState === 'visible' && atBottom(node)) store.markRead(room.id);
  };

  const maybeOlder = (byUser) => {
    const node = ref.current;
    if (!node || !m || !m.loaded || m.loading || !m.hasMore || (m.error && !byUser)) return;
    if (node.scrollTop <= TOP_LOAD || node.scrollHeight <= node.clientHeight) {
      store.loadHistory(room.id, { older: true });
    }
  };

  useLayoutEffect(() => {
    const node = ref.current;
    if (!node) return;
    const prev = before.current;
    if (stick.current) {
      node.scrollTop = node.scrollHeight;
    } else if (prev && prev.first && String(firstSeq) !== prev.first) {
      // Older messages came in above: keep what the reader looks at in place.
      node.scrollTop = prev.top + (node.scrollHeight - prev.height);
    }
  });

  useEffect(() => { maybeRead(); maybeOlder(); });

  useEffect(() => {
    stick.current = true;
    const onVisible = () => maybeRead();
    document.addEventListener('visibilitychange', onVisible);
    window.addEventListener('focus', onVisible);
    return () => {
      document.removeEventListener('visibilitychange', onVisible);
      window.removeEventListener('focus', onVisible);
    };
  }, [room.id]);

  const onScroll = () => {
    const node = ref.current;
    stick.current = atBottom(node);
    maybeOlder(true);
    maybeRead();
  };

  const items = [];
  let lastDay = null;
  const addDay = (ts) => {
    const key = dayKey(ts);
    if (key !== lastDay) {
      lastDay = key;
      items.push(html`<div key=${`day-${key}`} class="day-separator" data-testid="day-separator"
        role="separator"><span>${dayText(ts)}</span></div>`);
    }
  };
  for (const msg of list) {
    addDay(msg.ts);
    items.push(html`<${MessageRow} key=${`s${msg.seq}`} msg=${msg} onPreview=${onPreview} />`);
  }
  const me = store.state.me;
  for (const p of pending) {
    addDay(p.ts);
    const msg = { room: p.room, cid: p.cid, sender: me && me.id, sender_name: me ? me.username : '',
      kind: 'text', body: p.body, ts: p.ts };
    items.push(html`<${MessageRow} key=${`c${p.cid}`} msg=${msg} pending=${p} />`);
  }

  let top = null;
  if (m && m.loading) top = html`<p class="list-note" role="status">${t('messages.loading')}</p>`;
  else if (m && m.error) top = html`<p class="list-note error">${errorText(m.error)}</p>`;
  else if (m && m.loaded && !m.hasMore) top = html`<p class="list-note muted">${t('messages.start')}</p>`;

  return html`
    <div class="message-list" data-testid="message-list" ref=${ref} onScroll=${onScroll}
      data-first=${firstSeq ?? ''} tabindex="0" role="log" aria-live="polite" aria-label=${t('messages.label')}>
      ${top}
      ${items}
    </div>`;
}

function TypingIndicator({ room }) {
  const names = store.typingNames(room.id);
  let text = '';
  if (names.length === 1) text = t('typing.one', { a: names[0] });
  else if (names.length === 2) text = t('typing.two', { a: names[0], b: names[1] });
  else if (names.length > 2) text = t('typing.many');
  return html`<div class="typing" data-testid="typing-indicator" aria-live="polite">${text}</div>`;
}

function Composer({ room }) {
  const [text, setText] = useState(drafts.get(room.id) || '');
  const input = useRef(null);
  useEffect(() => {
    setText(drafts.get(room.id) || '');
    if (input.current) input.current.focus();
  }, [room.id]);

  const update = (value) => {
    setText(value);
    drafts.set(room.id, value);
    if (value.trim()) store.sendTyping(room.id);
  };

  const submit = (ev) => {
    if (ev) ev.preventDefault();
    const body = text.replace(/\s+$/, '');
    if (!body.trim()) return;
    store.send(room.id, body);
    setText('');
    drafts.delete(room.id);
    if (input.current) input.current.focus();
  };

  const onKeyDown = (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) submit(ev);
  };

  // A pasted image (or any file) is uploaded; pasted text stays the browser's business.
  const onPaste = (ev) => {
    const files = transferFiles(ev.clipboardData);
    if (!files.length) return;
    ev.preventDefault();
    store.upload(room.id, files);
  };

  const picker = useRef(null);
  const picked = (ev) => {
    const el = ev.currentTarget;
    const files = [...(el.files || [])];
    el.value = '';   // the same file can be picked again
    if (files.length) store.upload(room.id, files);
  };

  return html`
    <form class="composer" onSubmit=${submit}>
      <button type="button" class="attach-button" data-testid="attach-button"
        aria-label=${t('composer.attach')} title=${t('composer.attach')}
        onClick=${() => picker.current && picker.current.click()}><span aria-hidden="true">+</span></button>
      <input ref=${picker} type="file" multiple hidden data-testid="attach-input" tabindex="-1"
        aria-label=${t('composer.attach')} onChange=${picked} />
      <label class="grow">
        <span class="sr-only">${t('composer.label')}</span>
        <textarea ref=${input} data-testid="composer-input" rows="2" value=${text}
          aria-label=${t('composer.label')} placeholder=${t('composer.placeholder')}
          onInput=${(e) => update(e.currentTarget.value)} onKeyDown=${onKeyDown}
          onPaste=${onPaste}></textarea>
      </label>
      <button class="primary" type="submit" data-testid="composer-send" disabled=${!text.trim()}>
        ${t('composer.send')}</button>
    </form>`;
}

export function RoomView() {
  const id = store.state.selected;
  const room = id != null ? store.state.rooms.get(id) : null;
  const [membersOpen, setMembersOpen] = useState(false);
  const [guestsOpen, setGuestsOpen] = useState(false);
  const [error, setError] = useState(null);
  const [preview, setPreview] = useState(null);     // the file shown in the overlay
  const [dragging, setDragging] = useState(false);  // files dragged over the room
  const dragDepth = useRef(0);
  useEffect(() => {
    setMembersOpen(false); setGuestsOpen(false); setError(null); setPreview(null);
    setDragging(false); dragDepth.current = 0;
  }, [id]);
  useEffect(() => { guardPageDrops(); }, []);

  if (!room) {
    return html`<main class="room room-empty"><p class="muted">${t('room.none')}</p></main>`;
  }

  const leave = async () => {
    try { await store.leave(room.id); } catch (e) { setError(errorText(e.code)); }
  };

  // Files dragged over the room show the drop zone; dropped, they are uploaded here.
  const onDragEnter = (ev) => {
    if (!carriesFiles(ev.dataTransfer)) return;
    ev.preventDefault();
    dragDepth.current += 1;
    setDragging(true);
  };
  const onDragOver = (ev) => {
    if (!carriesFiles(ev.dataTransfer)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
    if (!dragging) setDragging(true);
  };
  const onDragLeave = (ev) => {
    if (!carriesFiles(ev.dataTransfer)) return;
    dragDepth.current = Math.max(0, dragDepth.current - 1);
    if (dragDepth.current === 0) setDragging(false);
  };
  const onDrop = (ev) => {
    if (!carriesFiles(ev.dataTransfer)) return;
    ev.preventDefault();
    dragDepth.current = 0;
    setDragging(false);
    const files = transferFiles(ev.dataTransfer);
    if (files.length) store.upload(room.id, files);
  };

  return html`
    <main class=${`room${dragging ? ' room-dragging' : ''}`} aria-labelledby="room-title"
      onDragEnter=${onDragEnter} onDragOver=${onDragOver} onDragLeave=${onDragLeave} onDrop=${onDrop}>
      <header class="room-header">
        ${room.kind === 'direct' && html`<${PresenceDot} status=${store.roomStatus(room)} />`}
        <h2 class="room-title" id="room-title" data-testid="room-title">${String(room.name ?? '')}</h2>
        <span class="muted room-kind">${room.kind === 'direct' ? t('room.direct') : ''}</span>
        <span class="grow"></span>
        <${MeetButton} room=${room} />
        <button type="button" data-testid="guest-links-button" aria-expanded=${guestsOpen}
          onClick=${() => setGuestsOpen(!guestsOpen)}>${t('guests.button')}</button>
        <button type="button" data-testid="members-button" aria-expanded=${membersOpen}
          onClick=${() => setMembersOpen(!membersOpen)}>
          ${t('room.members.count', { count: room.members })}</button>
        <button type="button" class="danger" data-testid="leave-button" onClick=${leave}>
          ${t('room.leave')}</button>
      </header>
      ${error && html`<p class="error pad" role="alert">${error}</p>`}
      ${store.state.conf && store.state.conf.room === room.id
        && html`<${ConferenceView} title=${String(room.name ?? '')} />`}
      ${guestsOpen && html`<${GuestLinks} room=${room} />`}
      ${membersOpen && html`<${Members} room=${room} />`}
      <${MessageList} key=${room.id} room=${room} onPreview=${setPreview} />
      <${TypingIndicator} room=${room} />
      <${UploadList} room=${room} />
      <${Composer} room=${room} />
      ${dragging && html`<div class="drop-zone" data-testid="drop-zone" aria-hidden="true">
        <span>${t('upload.drop')}</span></div>`}
      ${preview && html`<${FilePreview} key=${preview.id} file=${preview}
        onClose=${() => setPreview(null)} />`}
    </main>`;
}
