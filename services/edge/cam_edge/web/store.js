// The app's state: session, rooms, messages per room (deduplicated by seq), own
// pending messages (by cid), unread counts and read markers, presence, typing, and a
// guest's meeting link. The conference (conference.js) hooks into frames and auth.
// Components read `state` and re-render on `subscribe`; the functions below are the
// only writers.

import * as api from './api.js';
import { Conn, RequestError, wsUrls } from './conn.js';

const TOKEN_KEY = 'cam.token';
const GUEST_KEY = 'cam.guest';
const MEET_PREFIX = '#meet/';
const STATUS_KEY = 'cam.status';
const PAGE = 50;
const UNREAD_CAP = 1000;
const TYPING_SHOW = 5000;
const TYPING_EVERY = 1000;
const SEND_ATTEMPTS = 5;
const COUNTED = new Set(['text', 'file']);
const TRANSIENT = new Set(['unavailable', 'internal', 'timeout', 'rate_limited']);
export const STATUSES = ['online', 'away', 'busy', 'invisible'];

function storageGet(storage, key) { try { return storage.getItem(key); } catch { return null; } }
function storageSet(storage, key, value) {
  try { if (value == null) storage.removeItem(key); else storage.setItem(key, value); } catch { /* ignore */ }
}

// A meeting link (<origin>/#meet/<token>) makes this tab a guest's: it never uses a
// member's session, and keeps its own guest session for reloads of the same link.
function meetLink() {
  const hash = window.location.hash || '';
  return hash.startsWith(MEET_PREFIX) ? decodeURIComponent(hash.slice(MEET_PREFIX.length)) : null;
}
function storedGuest(link) {
  if (!link) return null;
  try {
    const g = JSON.parse(storageGet(sessionStorage, GUEST_KEY) || 'null');
    return g && g.link === link && g.token && g.guest ? g : null;
  } catch { return null; }
}
const LINK = meetLink();
const GUEST = storedGuest(LINK);

export const state = {
  token: LINK ? (GUEST && GUEST.token) : storageGet(sessionStorage, TOKEN_KEY),
  meetLink: LINK,           // the guest link this tab was opened with, if any
  guest: GUEST ? GUEST.guest : null,   // {room, room_name, expires_at} for a guest
  guestEnded: false,        // the guest's session ended (link revoked or expired)
  me: null,                 // {id, username, display_name}
  admin: null,              // the `admin` flag of /api/login or /api/me; null until known
  view: 'chat',             // 'chat' | 'admin' (the admin view, for admins only)
  loginNotice: null,        // i18n key shown on the login form
  connected: false,
  everConnected: false,
  node: null,
  connectedAt: 0,
  rooms: new Map(),         // id -> room object (+ read_seq, unread, last_message)
  roomsComplete: false,
  msgs: new Map(),          // id -> {bySeq: Map, list, hasMore, loading, loaded, error}
  pending: new Map(),       // cid -> {cid, room, body, ts, state: 'pending'|'failed', error}
  uploads: new Map(),       // key -> {key, room, cid, file, name, size, loaded, total, state, error, message}
  lastSeq: new Map(),       // id -> last seq delivered (for resume)
  peers: new Map(),         // direct room id -> the other member's user id
  presence: new Map(),      // user id -> online/away/busy/offline
  users: new Map(),         // user id -> display name (from members and the directory)
  typing: new Map(),        // room id -> Map user id -> {name, until}
  selected: null,
  myStatus: 'online',       // the status this user chose (the picker)
  statusUnsent: false,      // chosen while not connected: set it after the next auth
  version: 0,
};

// Other modules' hooks: frame(frame) -> true when handled, authed(result), ended().
export const hooks = { frame: new Set(), authed: new Set(), ended: new Set() };

// ---- change notification -------------------------------------------------------

const listeners = new Set();
let scheduled = false;
export function subscribe(fn) { listeners.add(fn); return () => listeners.delete(fn); }
export function emit() {
  if (scheduled) return;
  scheduled = true;
  queueMicrotask(() => {
    scheduled = false;
    state.version += 1;
    for (const fn of listeners) fn(state.version);
  });
}

// ---- helpers -------------------------------------------------------------------

let conn = null;
const readInFlight = new Map();   // room -> seq asked
const typingSent = new Map();     // room -> time
let peersRunning = false;

function roomMsgs(id) {
  let m = state.msgs.get(id);
  if (!m) {
    m = { bySeq: new Map(), list: null, hasMore: true, loading: false, loaded: false, error: null };
    state.msgs.set(id, m);
  }
  return m;
}

export function messageList(id) {
  const m = state.msgs.get(id);
  if (!m) return [];
  if (!m.list) m.list = [...m.bySeq.values()].sort((a, b) => a.seq - b.seq);
  return m.list;
}

export function pendingList(id) {
  return [...state.pending.values()].filter((p) => p.room === id);
}

function insertMessage(msg) {
  if (typeof msg.seq !== 'number') return false;
  const m = roomMsgs(msg.room);
  if (m.bySeq.has(msg.seq)) return false;
  m.bySeq.set(msg.seq, msg);
  m.list = null;
  return true;
}

function newCid() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `w${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function countable(msg) {
  return COUNTED.has(msg.kind) && (!state.me || msg.sender !== state.me.id);
}

export function totalUnread() {
  let n = 0;
  for (const room of state.rooms.values()) n += room.unread || 0;
  return n;
}

// Merge a room object from the server. `last_seq`, `unread` and `read_seq` of the
// object describe the room when the server read it; messages held with a higher seq
// arrived later and are counted on top.
function mergeRoom(obj) {
  if (!obj || typeof obj.id !== 'number') return null;
  const old = state.rooms.get(obj.id);
  const room = { read_seq: 0, unread: 0, last_message: null, ...old, ...obj };
  room.read_seq = Math.max(obj.read_seq || 0, (old && old.read_seq) || 0);
  let unread = obj.unread || 0;
  let last = obj.last_seq || 0;
  const m = state.msgs.get(obj.id);
  if (m) {
    for (const msg of m.bySeq.values()) {
      if (msg.seq > (obj.last_seq || 0)) {
        last = Math.max(last, msg.seq);
        if (countable(msg) && msg.seq > room.read_seq) unread += 1;
        if (msg.kind !== 'deleted' && (!room.last_message || msg.seq > room.last_message.seq)) {
          room.last_message = msg;
        }
      }
    }
  }
  room.last_seq = last;
  room.unread = Math.min(UNREAD_CAP, unread);
  state.rooms.set(obj.id, room);
  if (!state.lastSeq.has(obj.id)) state.lastSeq.set(obj.id, obj.last_seq || 0);
  return room;
}

function forgetRoom(id) {
  for (const u of [...state.uploads.values()]) if (u.room === id) dropUpload(u);
  state.rooms.delete(id);
  state.msgs.delete(id);
  state.lastSeq.delete(id);
  state.typing.delete(id);
  state.peers.delete(id);
  for (const [cid, p] of state.pending) if (p.room === id) state.pending.delete(cid);
  if (state.selected === id) state.selected = null;
}

// ---- session -------------------------------------------------------------------

export async function login(username, password) {
  const res = await api.login(username, password);
  state.token = res.token;
  state.me = res.user;
  state.admin = res.admin === true;
  state.loginNotice = null;
  storageSet(sessionStorage, TOKEN_KEY, res.token);
  emit();
  start();
}

// A guest: the name goes with the link to POST /api/guest, which answers a session
// for that link's conference only.
export async function guestJoin(name) {
  const res = await api.guest(state.meetLink, name);
  state.token = res.token;
  state.me = res.user;
  state.guest = { room: res.room.id, room_name: res.room.name, expires_at: res.expires_at };
  state.guestEnded = false;
  storageSet(sessionStorage, GUEST_KEY, JSON.stringify({ link: state.meetLink, token: res.token,
    guest: state.guest }));
  emit();
  start();
}

export async function start() {
  if (!state.token || conn) return;
  if (state.admin === null && !state.meetLink) learnAdmin(state.token);
  let info = null;
  try { info = await api.cluster(); } catch { /* fall back to this page's origin */ }
  if (!state.token || conn) return;
  conn = new Conn({
    urls: wsUrls(info),
    token: state.token,
    getResume: () => Object.fromEntries(state.lastSeq),
    onFrame: handleFrame,
    onAuthed: (result) => authed(result).catch((e) => console.warn('after auth:', e)),
    onDown: () => { state.connected = false; emit(); },
    onFatal: () => endSession('login.session_ended'),
  });
  conn.start();
}

// A tab that starts with a stored token asks /api/me whether its user is an admin
// (the auth answer does not say); the server checks the flag on every admin call anyway.
async function learnAdmin(token) {
  let res = null;
  try { res = await api.me(token); } catch { /* not known: no admin view */ }
  if (state.token !== token) return;
  state.admin = !!(res && res.admin === true);
  emit();
}

// The admin's own flag changed (the Users tab): the Admin entry follows it.
export function setAdmin(admin) {
  state.admin = admin;
  if (!admin && state.view === 'admin') state.view = 'chat';
  emit();
}

export function showView(view) {
  state.view = view === 'admin' && state.admin === true ? 'admin' : 'chat';
  emit();
}

function resetData() {
  for (const u of [...state.uploads.values()]) dropUpload(u);
  state.uploads = new Map();
  state.me = null;
  state.admin = null;
  state.view = 'chat';
  state.connected = false;
  state.everConnected = false;
  state.node = null;
  state.rooms = new Map();
  state.roomsComplete = false;
  state.msgs = new Map();
  state.pending = new Map();
  state.lastSeq = new Map();
  state.peers = new Map();
  state.presence = new Map();
  state.users = new Map();
  state.typing = new Map();
  state.selected = null;
  state.myStatus = 'online';
  state.statusUnsent = false;
  ownStatusKnown = false;
  lookups.clear();
  readInFlight.clear();
  typingSent.clear();
}

function endSession(notice) {
  if (conn) conn.stop();
  conn = null;
  for (const fn of hooks.ended) fn();
  state.token = null;
  if (state.meetLink) {
    storageSet(sessionStorage, GUEST_KEY, null);
    state.guestEnded = state.guest != null;
    state.guest = null;
  } else {
    storageSet(sessionStorage, TOKEN_KEY, null);
  }
  resetData();
  state.loginNotice = notice;
  emit();
}

// Revoke the session on the server (on the node the page is connected to, else its
// own), then forget it here; the server is given a few seconds at most.
export async function logout() {
  const token = state.token;
  const origin = conn && conn.connected ? conn.httpOrigin : '';
  if (conn) { conn.stop(); conn = null; }
  if (token) {
    const base = origin === window.location.origin ? '' : origin;
    const revoke = api.logout(token, base).catch(() => (base ? api.logout(token) : null));
    await Promise.race([revoke.catch(() => null), new Promise((r) => setTimeout(r, 3000))]);
  }
  endSession(null);
}

async function authed(result) {
  if (state.guest) {
    // A guest's connection delivers no rooms: only its meeting.
    state.me = result.user;
    state.connected = true;
    state.everConnected = true;
    state.node = result.node || conn.node;
    state.connectedAt = Date.now();
    for (const fn of hooks.authed) fn(result);
    emit();
    return;
  }
  const first = !state.me || state.me.id !== result.user.id || !state.everConnected;
  state.me = result.user;
  if (first && !state.statusUnsent) {
    const stored = storageGet(localStorage, statusKey());
    state.myStatus = STATUSES.includes(stored) ? stored : 'online';
  }
  if (state.statusUnsent) setStatus(state.myStatus).catch(() => {});
  state.connected = true;
  state.everConnected = true;
  state.node = result.node || conn.node;
  state.connectedAt = Date.now();
  const resync = new Set(result.resync || []);
  const seen = new Set();
  for (const room of result.rooms || []) { mergeRoom(room); seen.add(room.id); }
  for (const id of resync) resyncRoom(id);
  emit();
  resendPending();
  pumpUploads();
  for (const fn of hooks.authed) fn(result);
  const sel = state.selected;
  if (sel != null && state.rooms.has(sel) && !roomMsgs(sel).loaded) loadHistory(sel);
  // The rest of the rooms, page by page.
  let next = result.next;
  const current = conn;
  while (next != null) {
    const page = await conn.request('rooms', { after: next });
    if (conn !== current) return;
    for (const room of page.rooms || []) { mergeRoom(room); seen.add(room.id); }
    next = page.next;
    emit();
  }
  // Rooms that went away while we were not connected.
  for (const id of [...state.rooms.keys()]) if (!seen.has(id)) forgetRoom(id);
  state.roomsComplete = true;
  emit();
  watchPeers();
}

function resyncRoom(id) {
  const room = state.rooms.get(id);
  state.msgs.delete(id);
  if (room) state.lastSeq.set(id, room.last_seq);
  if (state.selected === id) loadHistory(id);
}

// ---- frames --------------------------------------------------------------------

function handleFrame(frame) {
  switch (frame.op) {
    case 'message': onMessage(frame); break;
    case 'room_added': {
      const room = mergeRoom(frame.room);
      if (room && room.kind === 'direct') watchPeers();
      break;
    }
    case 'room_removed': forgetRoom(frame.room); break;
    case 'read': applyRead(frame.room, frame.read_seq); break;
    case 'presence': if (!state.me || frame.user !== state.me.id) onPresence(frame.user, frame.status); break;
    case 'typing': onTyping(frame); break;
    default:
      for (const fn of hooks.frame) if (fn(frame)) return;
      return;
  }
  emit();
}

function onMessage(frame) {
  const { op, ...msg } = frame;
  const id = msg.room;
  state.lastSeq.set(id, Math.max(state.lastSeq.get(id) || 0, msg.seq));
  if (state.me && msg.sender === state.me.id && state.pending.has(msg.cid)) state.pending.delete(msg.cid);
  if (!insertMessage(msg)) {
    // Held already (from the send result or a history page): only the room's head moves.
    const held = state.rooms.get(id);
    if (held && msg.seq > held.last_seq) held.last_seq = msg.seq;
    return;
  }
  if (msg.kind === 'system') applySystem(msg);
  const typers = state.typing.get(id);
  if (typers) typers.delete(msg.sender);
  const room = state.rooms.get(id);
  if (!room) return;
  if (msg.kind !== 'deleted' && (!room.last_message || msg.seq > room.last_message.seq)) room.last_message = msg;
  if (msg.seq <= room.last_seq) return;   // already counted by the server
  room.last_seq = msg.seq;
  if (countable(msg) && msg.seq > room.read_seq) {
    room.unread = Math.min(UNREAD_CAP, (room.unread || 0) + 1);
    if (room.kind === 'direct') notify(room, msg);
  }
}

function applySystem(msg) {
  let body;
  try { body = JSON.parse(msg.body); } catch { return; }
  if (body && body.event === 'message_deleted' && typeof body.seq === 'number') {
    const m = state.msgs.get(msg.room);
    const target = m && m.bySeq.get(body.seq);
    if (target) {
      m.bySeq.set(body.seq, { ...target, kind: 'deleted', body: '' });
      m.list = null;
    }
  }
}

function applyRead(id, readSeq) {
  const room = state.rooms.get(id);
  if (!room || typeof readSeq !== 'number' || readSeq < room.read_seq) return;
  room.read_seq = readSeq;
  if (readSeq >= room.last_seq) { room.unread = 0; return; }
  // Recount when every message after the marker is held; otherwise keep the count.
  const m = state.msgs.get(id);
  if (!m) return;
  let n = 0;
  for (let seq = readSeq + 1; seq <= room.last_seq; seq++) {
    const msg = m.bySeq.get(seq);
    if (!msg) return;
    if (countable(msg)) n += 1;
  }
  room.unread = n;
}

function onPresence(user, status) {
  state.presence.set(user, status);
}

// The status picker starts from the status this user chose, as stored here, or else as
// the first watch answer shows it (invisible and offline look the same there).
let ownStatusKnown = false;
function ownPresence(status) {
  if (ownStatusKnown || state.statusUnsent) return;
  ownStatusKnown = true;
  if (storageGet(localStorage, statusKey()) == null && ['online', 'away', 'busy'].includes(status)) {
    state.myStatus = status;
  }
}

function onTyping(frame) {
  if (state.me && frame.user === state.me.id) return;
  let typers = state.typing.get(frame.room);
  if (!typers) { typers = new Map(); state.typing.set(frame.room, typers); }
  typers.set(frame.user, { name: String(frame.user_name ?? ''), until: Date.now() + TYPING_SHOW });
  setTimeout(() => {
    const now = Date.now();
    for (const [user, entry] of typers) if (entry.until <= now) typers.delete(user);
    emit();
  }, TYPING_SHOW + 50);
}

export function typingNames(id) {
  const typers = state.typing.get(id);
  if (!typers) return [];
  const now = Date.now();
  // The display name when known (the frame's user_name is documented as the display
  // name, but edges send the user name).
  return [...typers].filter(([, e]) => e.until > now).map(([user, e]) => senderName({ room: id, sender: user, sender_name: e.name }));
}

// ---- notifications -------------------------------------------------------------

export function notificationsAvailable() {
  return typeof Notification !== 'undefined';
}

// Call from a click handler (a user gesture).
export function askNotifications() {
  if (!notificationsAvailable() || Notification.permission !== 'default') return;
  Promise.resolve(Notification.requestPermission()).finally(emit);
}

function notify(room, msg) {
  if (!document.hidden || !notificationsAvailable() || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(String(room.name || msg.sender_name), {
      body: (msg.kind === 'file' && msg.file ? String(msg.file.name ?? '') : String(msg.body ?? '')).slice(0, 200),
      tag: `cam-room-${room.id}`,
    });
    n.onclick = () => { window.focus(); select(room.id); n.close(); };
  } catch { /* not allowed here */ }
}

// ---- presence ------------------------------------------------------------------

// Watch the peers of the direct rooms (and oneself, for the status picker). Watches
// belong to the connection: this runs after every auth, and for each new direct room.
let peersAgain = false;
async function watchPeers() {
  if (peersRunning) { peersAgain = true; return; }
  if (!conn || !state.me) return;
  peersRunning = true;
  try {
    do {
      peersAgain = false;
      for (const room of [...state.rooms.values()]) {
        if (room.kind !== 'direct' || state.peers.has(room.id)) continue;
        try {
          const list = await members(room.id);
          const peer = list.find((u) => u.id !== state.me.id);
          state.peers.set(room.id, peer ? peer.id : 0);   // 0: the other one left
        } catch (e) {
          if (e.code === 'closed') return;
        }
      }
      if (!state.me) return;
      const users = [...new Set([state.me.id, ...state.peers.values()])].filter((u) => u > 0);
      const res = await request('watch', { users: users.slice(0, 5000) });
      for (const entry of res.presence || []) {
        if (entry.user === state.me.id) ownPresence(entry.status);
        else onPresence(entry.user, entry.status);
      }
      emit();
    } while (peersAgain);
  } catch (e) {
    if (e.code !== 'closed') console.warn('watch:', e);
  } finally {
    peersRunning = false;
  }
}

export function roomStatus(room) {
  const peer = state.peers.get(room.id);
  const status = peer != null ? state.presence.get(peer) : null;
  return ['online', 'away', 'busy'].includes(status) ? status : 'offline';
}

// The chosen status is kept per user in localStorage only to tell "invisible" from
// "offline" (others see both as offline, and so does watching oneself).
function statusKey() { return `${STATUS_KEY}.${state.me ? state.me.id : 0}`; }

export async function setStatus(status) {
  if (!STATUSES.includes(status)) return;
  state.myStatus = status;
  storageSet(localStorage, statusKey(), status);
  state.statusUnsent = true;
  emit();
  await request('set_status', { status });
  if (state.myStatus === status) state.statusUnsent = false;
}

// ---- requests ------------------------------------------------------------------

export function request(op, fields, timeout) {
  if (!conn) return Promise.reject(new RequestError('closed'));
  return conn.request(op, fields, timeout);
}

export function select(id) {
  state.selected = id;
  if (id != null && state.rooms.has(id)) {
    const m = roomMsgs(id);
    if (!m.loaded && !m.loading) loadHistory(id);
  }
  emit();
}

export async function loadHistory(id, { older = false } = {}) {
  const m = roomMsgs(id);
  if (m.loading || (older && !m.hasMore)) return;
  const fields = { room: id, limit: PAGE };
  const list = messageList(id);
  if (older && list.length) fields.before = list[0].seq;
  m.loading = true;
  m.error = null;
  emit();
  try {
    const res = await request('history', fields);
    const cur = state.msgs.get(id);
    if (cur !== m) return;   // the room was reset (resync) or removed meanwhile
    for (const msg of res.messages || []) insertMessage({ ...msg, room: id });
    if (older || !m.loaded) m.hasMore = !!res.has_more;
    m.loaded = true;
  } catch (e) {
    m.error = e.code || 'internal';
  } finally {
    m.loading = false;
    emit();
  }
}

export function send(id, body) {
  const p = { cid: newCid(), room: id, body, ts: Date.now(), state: 'pending', error: null, attempts: 0, inflight: false };
  state.pending.set(p.cid, p);
  emit();
  trySend(p);
  return p.cid;
}

export function retry(cid) {
  const p = state.pending.get(cid);
  if (!p) return;
  p.state = 'pending';
  p.error = null;
  p.attempts = 0;
  emit();
  trySend(p);
}

function resendPending() {
  for (const p of state.pending.values()) if (p.state === 'pending') { p.attempts = 0; trySend(p); }
}

function trySend(p) {
  if (p.inflight || !conn || !conn.connected || state.pending.get(p.cid) !== p) return;
  p.inflight = true;
  const current = conn;
  request('send', { room: p.room, cid: p.cid, body: p.body }).then((res) => {
    p.inflight = false;
    if (state.pending.get(p.cid) === p) {
      state.pending.delete(p.cid);
      // Shown at once; the seq cursor (resume) moves only with delivered frames.
      const msg = {
        room: p.room, seq: res.seq, cid: p.cid, sender: state.me.id,
        sender_name: state.me.username, kind: 'text', body: p.body, ts: res.ts,
      };
      insertMessage(msg);
      const room = state.rooms.get(p.room);
      if (room && (!room.last_message || msg.seq > room.last_message.seq)) room.last_message = msg;
    }
    emit();
  }, (err) => {
    p.inflight = false;
    if (state.pending.get(p.cid) !== p) return;
    const code = err.code || 'internal';
    if (code === 'closed') return;                 // re-sent after the reconnect
    if (TRANSIENT.has(code) && ++p.attempts < SEND_ATTEMPTS) {
      const wait = code === 'rate_limited' && err.retryAfter ? err.retryAfter * 1000 : 500 * 2 ** p.attempts;
      setTimeout(() => { if (conn === current) trySend(p); }, wait);
      return;
    }
    p.state = 'failed';
    p.error = code;
    emit();
  });
}

export function sendTyping(id) {
  const now = Date.now();
  if (now - (typingSent.get(id) || 0) < TYPING_EVERY || !conn || !conn.connected) return;
  typingSent.set(id, now);
  request('typing', { room: id }).catch(() => {});
}

// Move the read marker to the newest message held, if it is not there yet.
export function markRead(id) {
  const room = state.rooms.get(id);
  const list = messageList(id);
  if (!room || !list.length || !conn || !conn.connected) return;
  const seq = list[list.length - 1].seq;
  if (seq <= room.read_seq) return;
  if ((readInFlight.get(id) || 0) >= seq) return;
  readInFlight.set(id, seq);
  request('mark_read', { room: id, seq }).then((res) => {
    applyRead(id, res.read_seq);
    emit();
  }, () => {}).finally(() => {
    if (readInFlight.get(id) === seq) readInFlight.delete(id);
  });
}

export async function createRoom(name, names) {
  const fields = { name };
  if (names.length) fields.members = names;
  const room = mergeRoom(await request('create_room', fields));
  select(room.id);
  return room;
}

export async function openDirect(username) {
  const room = mergeRoom(await request('open_direct', { user: username }));
  select(room.id);
  watchPeers();
  return room;
}

export async function invite(id, users) {
  return request('invite', { room: id, users });
}

export async function members(id) {
  const list = (await request('members', { room: id })).members || [];
  learnUsers(list);
  return list;
}

function learnUsers(list) {
  for (const u of list) if (u && typeof u.id === 'number' && u.display_name) state.users.set(u.id, u.display_name);
}

// The name to show for a sender: the display name when known, else the user name the
// message carries. A sender not known yet has the room's members looked up, once.
const lookups = new Map();   // room id -> {busy, asked: Set of user ids}
export function senderName(msg, lookUp = true) {
  if (state.me && msg.sender === state.me.id) return state.me.display_name || state.me.username;
  const known = state.users.get(msg.sender);
  if (known) return known;
  let lookup = lookups.get(msg.room);
  if (!lookup) { lookup = { busy: false, asked: new Set() }; lookups.set(msg.room, lookup); }
  if (lookUp && !lookup.busy && !lookup.asked.has(msg.sender) && conn && conn.connected
      && state.rooms.has(msg.room)) {
    lookup.busy = true;
    lookup.asked.add(msg.sender);
    members(msg.room).catch(() => {}).finally(() => { lookup.busy = false; emit(); });
  }
  return String(msg.sender_name ?? '');
}

export async function leave(id) {
  await request('leave', { room: id });
  forgetRoom(id);
  emit();
}

export async function directory(query) {
  const fields = { limit: 50 };
  if (query) fields.query = query.slice(0, 64);
  const users = (await request('directory', fields)).users || [];
  learnUsers(users);
  return users;
}

// ---- file attachments ------------------------------------------------------------

// REST calls go where the socket is (the node this page is connected to), like logout;
// '' is this page's own origin (also while not connected).
function restOrigin() {
  const origin = conn && conn.connected ? conn.httpOrigin : '';
  return origin === window.location.origin ? '' : origin;
}

let uploadKeys = 0;

export function uploadList(id) {
  return [...state.uploads.values()].filter((u) => u.room === id);
}

// Queue files for upload to room `id`; they go one after another, each as a message
// of its own (kind "file") with a cid of its own.
export function upload(id, files) {
  for (const file of files) {
    if (!file) continue;
    const key = `u${++uploadKeys}`;
    state.uploads.set(key, {
      key, room: id, cid: newCid(), file, name: String(file.name || 'file'), size: file.size,
      loaded: 0, total: file.size, state: 'queued', error: null, message: '', ctl: null,
    });
  }
  emit();
  pumpUploads();
}

export function cancelUpload(key) {
  const u = state.uploads.get(key);
  if (!u) return;
  dropUpload(u);
  emit();
  pumpUploads();
}

// A failed upload again, with the same cid (the server keeps one message per cid).
export function retryUpload(key) {
  const u = state.uploads.get(key);
  if (!u || u.state !== 'failed') return;
  u.state = 'queued';
  u.error = null;
  u.message = '';
  u.loaded = 0;
  emit();
  pumpUploads();
}

function dropUpload(u) {
  const ctl = u.ctl;
  u.ctl = null;
  if (state.uploads.get(u.key) === u) state.uploads.delete(u.key);
  if (ctl) ctl.abort();
}

// Start the next queued upload, when none is running and the page is connected.
function pumpUploads() {
  if (!conn || !conn.connected || !state.me) return;
  let next = null;
  for (const u of state.uploads.values()) {
    if (u.state === 'uploading') return;
    if (!next && u.state === 'queued') next = u;
  }
  if (next) startUpload(next);
}

function startUpload(u) {
  u.state = 'uploading';
  u.loaded = 0;
  u.total = u.size;
  const ctl = api.uploadFile({
    base: restOrigin(), token: state.token, room: u.room, cid: u.cid, file: u.file,
    onProgress: (loaded, total) => {
      if (u.ctl !== ctl) return;
      u.loaded = loaded;
      u.total = total || u.size;
      emit();
    },
  });
  u.ctl = ctl;
  emit();
  ctl.promise.then((res) => {
    if (u.ctl !== ctl) return;       // cancelled, or the session ended
    u.ctl = null;
    state.uploads.delete(u.key);
    // Shown at once, like a sent text; the message frame with the same seq is dropped.
    const m = res && res.message;
    if (m && typeof m.seq === 'number' && res.file && state.me && state.rooms.has(u.room)) {
      const msg = {
        room: u.room, seq: m.seq, cid: m.cid ?? u.cid, sender: state.me.id,
        sender_name: state.me.username, kind: 'file', body: '', ts: m.ts, file: res.file,
      };
      insertMessage(msg);
      const room = state.rooms.get(u.room);
      if (room && (!room.last_message || msg.seq > room.last_message.seq)) room.last_message = msg;
    }
    emit();
    pumpUploads();
  }, (err) => {
    if (u.ctl !== ctl) return;
    u.ctl = null;
    u.state = 'failed';
    u.error = err.code || 'internal';
    u.message = err.message && err.message !== err.code ? String(err.message) : '';
    emit();
    pumpUploads();
  });
}

// A file's original (variant ''), thumbnail ('thumb') or preview ('preview') as a Blob,
// from the node the page is connected to, with the session's token.
export function fileBlob(id, variant = '', signal) {
  return api.fileBlob({ base: restOrigin(), token: state.token, id, variant, signal });
}
