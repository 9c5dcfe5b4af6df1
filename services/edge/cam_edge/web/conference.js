// The conference this page is in: at most one, the room's, joined with conf_join.
// The server says where it is (conference.url, janus_room, pin); media.js carries the
// media. On conf_moved, on a lost video server and after every reconnect to an edge,
// the page joins again by itself, on whatever server the allocator has it on now.

import { MediaSession } from './media.js';
import * as store from './store.js';

const REJOIN_EVERY = 3000;   // ms between attempts while the video server is lost
const STATS_EVERY = 1000;    // ms between frame counts of the tiles

// state.conf: null, or
// {room, phase: 'joining'|'connecting'|'live'|'moving'|'failed', error, server, moves,
//  participants: Map user id -> {display_name, guest}, local: MediaStream|null,
//  audio, video, tiles: Map feed id -> {feed, user, stream, frames}}
const { state } = store;
state.conf = null;

let media = null;
let current = null;          // {server, janus_room} of the media session
let rejoinTimer = null;
let statsTimer = null;
let generation = 0;          // bumps on every join/leave: late answers are dropped

function conf() { return state.conf; }

function learn(participants) {
  const c = conf();
  if (!c) return;
  for (const p of participants || []) {
    c.participants.set(p.user, { display_name: p.display_name || state.users.get(p.user) || p.username || '',
      guest: !!p.guest });
  }
}

// The label of a feed: the server's participant list by user id (the page publishes
// with its user id as the Janus display), never what the feed itself claims.
export function tileName(tile) {
  const c = conf();
  const p = c && c.participants.get(tile.user);
  if (p && p.display_name) return p.display_name;
  return '?';
}

export async function join(room) {
  if (state.conf && state.conf.room !== room) await leave();
  if (state.conf) return;
  generation += 1;
  state.conf = { room, phase: 'joining', error: null, server: null, moves: 0,
    participants: new Map(), local: null, audio: true, video: true, tiles: new Map() };
  store.emit();
  await rejoin(generation);
}

// conf_join (again): a repeated join of the same connection is harmless, and the join
// of a new connection (after a reconnect) is needed.
async function rejoin(gen) {
  clearTimeout(rejoinTimer);
  const c = conf();
  if (!c || gen !== generation) return;
  let res;
  try {
    res = await store.request('conf_join', { room: c.room }, 15000);
  } catch (e) {
    if (gen !== generation || !conf()) return;
    if (e.code === 'closed' || e.code === 'timeout' || e.code === 'unavailable' || e.code === 'internal') {
      c.phase = 'moving';
      store.emit();
      if (e.code !== 'closed') rejoinTimer = setTimeout(() => rejoin(gen), REJOIN_EVERY);
      return;   // 'closed': the next auth joins again
    }
    c.phase = 'failed';
    c.error = e.code;
    store.emit();
    return;
  }
  if (gen !== generation || !conf()) {
    store.request('conf_leave', { room: c.room }).catch(() => {});
    return;
  }
  learn(res.participants);
  place(res.conference, res.ice_servers);
}

// Start media on the conference's server unless it already runs there.
function place(conference, iceServers) {
  const c = conf();
  if (!c) return;
  c.server = conference.server;
  c.moves = conference.moves;
  if (media && !media.stopped && current && current.server === conference.server
      && current.janus_room === conference.janus_room) {
    store.emit();
    return;
  }
  if (media) media.stop();
  c.tiles = new Map();
  c.local = null;
  c.phase = 'connecting';
  const gen = generation;
  const me = state.me;
  current = { server: conference.server, janus_room: conference.janus_room };
  const session = new MediaSession({
    conference,
    iceServers,
    display: String(me ? me.id : ''),
    audio: c.audio,
    video: c.video,
    handlers: {
      onLocal: (stream) => { if (media === session) { c.local = stream; store.emit(); } },
      onRemote: (feed, display, stream) => {
        if (media !== session) return;
        if (stream) {
          const old = c.tiles.get(feed);
          c.tiles.set(feed, { feed, user: Number(display), stream, frames: old ? old.frames : 0 });
        } else {
          c.tiles.delete(feed);
        }
        store.emit();
      },
      onLive: () => { if (media === session) { c.phase = 'live'; store.emit(); } },
      onLost: () => {
        if (media !== session || gen !== generation) return;
        // The server is gone: the allocator moves the conference (conf_moved); until
        // then, ask again now and then where it is.
        media = null;
        current = null;
        c.phase = 'moving';
        c.tiles = new Map();
        store.emit();
        rejoinTimer = setTimeout(() => rejoin(gen), REJOIN_EVERY);
      },
      onError: (code) => { if (media === session) { c.error = code; store.emit(); } },
    },
  });
  media = session;
  session.start().catch((e) => {
    console.warn('conference media:', e);
    if (media === session) { c.phase = 'failed'; c.error = 'video_error'; store.emit(); }
  });
  startStats();
  store.emit();
}

function startStats() {
  clearInterval(statsTimer);
  statsTimer = setInterval(async () => {
    const c = conf();
    if (!c || !media) return;
    const frames = await media.stats();
    let changed = false;
    for (const [feed, n] of frames) {
      const tile = c.tiles.get(feed);
      if (tile && tile.frames !== n) { tile.frames = n; changed = true; }
    }
    if (changed) store.emit();
  }, STATS_EVERY);
}

// Out of the conference here: no media, no timers, no late answers.
function drop() {
  generation += 1;
  clearTimeout(rejoinTimer);
  clearInterval(statsTimer);
  if (media) media.stop();
  media = null;
  current = null;
  state.conf = null;
}

export async function leave() {
  const c = conf();
  if (!c) return;
  drop();
  store.emit();
  try { await store.request('conf_leave', { room: c.room }); } catch { /* gone with the socket */ }
}

export function setAudio(on) {
  const c = conf();
  if (!c) return;
  c.audio = on;
  if (media) media.setAudio(on);
  store.emit();
}

export function setVideo(on) {
  const c = conf();
  if (!c) return;
  c.video = on;
  if (media) media.setVideo(on);
  store.emit();
}

function onFrame(frame) {
  const c = conf();
  if (!c || frame.room !== c.room) return false;
  switch (frame.op) {
    case 'conf_joined': learn([frame]); break;
    case 'conf_left': break;   // the feed's own end removes its tile
    case 'conf_moved': place(frame.conference, frame.ice_servers); break;
    default: return false;
  }
  store.emit();
  return true;
}

// After every auth (a new socket): the edge of the old one took us out of the
// conference, so join again; the media stays up when the conference did not move.
function onAuthed() {
  if (conf()) rejoin(generation);
}

// The session ended (logout, revocation): the media goes with it.
function onEnded() {
  if (conf()) drop();
}

store.hooks.frame.add(onFrame);
store.hooks.authed.add(onAuthed);
store.hooks.ended.add(onEnded);
