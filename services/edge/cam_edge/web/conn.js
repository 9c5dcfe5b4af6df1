// The connection manager: one WebSocket to one edge at a time, failover over the
// cluster's hosts with jittered exponential backoff, auth with resume, request/answer
// matching by id, and a ping keepalive that detects a frozen node.
// It follows camclient/session.py and "Client obligations" in docs/protocol.md.

const BACKOFF_START = 250;      // ms
const BACKOFF_CAP = 5000;       // ms
const OPEN_TIMEOUT = 5000;      // handshake + hello
const AUTH_TIMEOUT = 10000;
const PING_INTERVAL = 15000;
const PING_TIMEOUT = 5000;
const REQUEST_TIMEOUT = 10000;

export class RequestError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.code = code;
    Object.assign(this, extra);
  }
}

// The WebSocket URLs to try, in order.
// With a load balancer: always this page's origin. Otherwise this page's host first
// (the node that served the page), then the other hosts of `hosts` in their order,
// starting after the page's own entry and wrapping.
export function wsUrls(info, loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  const path = (info && info.protocol && info.protocol.path) || '/ws';
  const hosts = (info && Array.isArray(info.hosts)) ? info.hosts : [];
  if (!info || info.load_balancer || hosts.length === 0) return [`${scheme}//${loc.host}${path}`];
  let own = hosts.indexOf(loc.host);
  if (own < 0) own = Math.max(0, hosts.indexOf(info.own_host));
  const ordered = [loc.host];
  for (let i = 1; i < hosts.length; i++) {
    const host = hosts[(own + i) % hosts.length];
    if (!ordered.includes(host)) ordered.push(host);
  }
  return ordered.map((host) => `${scheme}//${host}${path}`);
}

export function backoffDelay(failures, hostCount) {
  // Each host once per round; the delay doubles per round, +-50 % jitter, capped.
  const round = Math.floor(failures / Math.max(1, hostCount));
  const base = Math.min(BACKOFF_CAP, BACKOFF_START * 2 ** Math.min(round, 16));
  return Math.min(BACKOFF_CAP, base * (0.5 + Math.random()));
}

export class Conn {
  // handlers: onFrame(frame), onAuthed(result, url), onDown(), onFatal(reason)
  // getResume(): {roomId: lastSeq}
  constructor({ urls, token, getResume, onFrame, onAuthed, onDown, onFatal }) {
    this.urls = urls;
    this.token = token;
    this.getResume = getResume;
    this.onFrame = onFrame;
    this.onAuthed = onAuthed;
    this.onDown = onDown;
    this.onFatal = onFatal;
    this.index = 0;
    this.failures = 0;
    this.nextId = 1;
    this.pending = new Map();   // id -> {resolve, reject, timer}
    this.ws = null;
    this.ready = false;         // authenticated
    this.stopped = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.node = null;
    this.hello = null;
    this.url = null;
    this.onOnline = () => { if (!this.ws && !this.stopped) this.connectNow(); };
    window.addEventListener('online', this.onOnline);
  }

  start() { this.connect(); }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.drop(1000, 'closed');
    if (ws) { try { ws.close(1000); } catch { /* ignore */ } }
  }

  // The origin (http/https) of the edge this connection is on, for REST calls.
  get httpOrigin() {
    if (!this.url) return '';
    const u = new URL(this.url);
    return `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}`;
  }

  connectNow() {
    clearTimeout(this.retryTimer);
    this.connect();
  }

  connect() {
    if (this.stopped || this.ws) return;
    const url = this.urls[this.index % this.urls.length];
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.failed();
      return;
    }
    this.ws = ws;
    this.url = url;
    const openTimer = setTimeout(() => this.abandon(ws), OPEN_TIMEOUT);
    ws.onopen = () => {
      clearTimeout(openTimer);
      this.authenticate(ws);
    };
    ws.onmessage = (ev) => this.receive(ws, ev.data);
    ws.onclose = (ev) => {
      clearTimeout(openTimer);
      if (this.ws === ws) this.closed(ev.code);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  authenticate(ws) {
    const resume = {};
    for (const [room, seq] of Object.entries(this.getResume() || {})) resume[String(room)] = seq;
    const frame = { op: 'auth', v: 1, token: this.token };
    if (Object.keys(resume).length) frame.resume = resume;
    this.rawRequest(ws, frame, AUTH_TIMEOUT).then((result) => {
      if (this.ws !== ws) return;
      this.ready = true;
      this.failures = 0;
      this.node = result.node || (this.hello && this.hello.node) || '';
      this.schedulePing(ws);
      this.onAuthed(result, this.url);
    }, (err) => {
      if (this.ws !== ws) return;
      if (err.code === 'unauthenticated') {
        this.fatal('unauthenticated');
      } else {
        this.abandon(ws);
      }
    });
  }

  receive(ws, data) {
    if (this.ws !== ws) return;
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (!frame || typeof frame !== 'object') return;
    if (frame.op === 'result' || frame.op === 'error') {
      const waiting = this.pending.get(frame.id);
      if (!waiting) return;
      this.pending.delete(frame.id);
      clearTimeout(waiting.timer);
      if (frame.op === 'result') waiting.resolve(frame.result);
      else waiting.reject(new RequestError(frame.code, frame.message, { retryAfter: frame.retry_after }));
      return;
    }
    if (frame.op === 'hello') { this.hello = frame; return; }
    this.onFrame(frame);
  }

  rawRequest(ws, frame, timeout) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestError('timeout'));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...frame, id }));
      } catch {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new RequestError('closed'));
      }
    });
  }

  // An op on the authenticated connection; rejects with code 'closed' when there is
  // none or it closes before the answer, 'timeout' when no answer comes in time.
  request(op, fields = {}, timeout = REQUEST_TIMEOUT) {
    if (!this.ready || !this.ws) return Promise.reject(new RequestError('closed'));
    return this.rawRequest(this.ws, { op, ...fields }, timeout);
  }

  get connected() { return this.ready; }

  schedulePing(ws) {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      if (this.ws !== ws) return;
      this.rawRequest(ws, { op: 'ping' }, PING_TIMEOUT).then(
        () => { if (this.ws === ws) this.schedulePing(ws); },
        (err) => {
          // No pong in time: a frozen or dead node, which sends no close frame.
          if (this.ws === ws && err.code === 'timeout') this.abandon(ws);
        });
    }, PING_INTERVAL);
  }

  // Give up on a socket without waiting for its close handshake.
  abandon(ws) {
    if (this.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch { /* ignore */ }
    this.closed(1006);
  }

  drop(code) {
    clearTimeout(this.pingTimer);
    const wasReady = this.ready;
    this.ws = null;
    this.ready = false;
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(new RequestError('closed', `connection closed (${code})`));
    }
    this.pending.clear();
    return wasReady;
  }

  closed(code) {
    const wasReady = this.drop(code);
    if (this.stopped) return;
    if (code === 4403) { this.fatal('revoked'); return; }
    if (wasReady) this.onDown(code);
    // 4001, 4002, 1006, 1011, 1012 and anything else: reconnect and resume, on the
    // next host (as camclient.Session does), after a jittered backoff.
    this.failed();
  }

  failed() {
    this.ws = null;
    this.index = (this.index + 1) % this.urls.length;
    const delay = backoffDelay(this.failures, this.urls.length);
    this.failures += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  fatal(reason) {
    const ws = this.ws;
    this.stopped = true;
    this.drop(4403);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch { /* ignore */ }
    }
    window.removeEventListener('online', this.onOnline);
    this.onFatal(reason);
  }
}
