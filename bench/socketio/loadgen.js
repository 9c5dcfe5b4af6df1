// The load generator of the fan-out benchmark (bench/fanout.py), for both systems.
//
// One Node process holds every client: `ws` WebSockets speaking our protocol
// (docs/protocol.md) to our edges, or socket.io-client sockets to the Socket.IO peer
// (server.js), or for the peer `ws` WebSockets speaking Socket.IO's protocol directly.
// Both systems are driven the same way, by the same generator, which keeps its work
// per delivery small so that it is not what sets the pace.
//   node loadgen.js CONFIG.json
//
// CONFIG (JSON):
//   system          "cam" (our edges) or "sio" (the Socket.IO peer)
//   sio_client      for "sio": "socket.io-client" (default), the library a Node client
//                   of the peer would use, or "ws": the protocol spoken over `ws`
//                   directly, with the same fast path as ours (cheaper per delivery)
//   clients         [{url, token}]: one connection each; token for "cam" only
//   rooms           [{id, members: [client index, ...]}]: id as the server knows it
//                   (our room id; any string for the peer, which clients join)
//   senders         [{client, room}]: room is an index into rooms; sends go to the
//                   senders round-robin
//   rates           [messages/s in total, one step each]
//   step_seconds    length of a step's sending
//   ack_seconds     after a step's last send, how long acks may take (default 10)
//   settle_seconds  after the acks, how long the deliveries may take (default 5)
//   p99_bound_ms    two steps in a row over it (or with over 1% missing) end the run
//   connect_concurrency  handshakes in flight (default 64)
//   pause_seconds   between steps (default 0.5)
//   stdin_steps     when true, more steps may be asked for on stdin after the rates
//                   (below); otherwise the run ends after them
//
// Output: one JSON object per line on stdout.
//   {"ready": true, "connected": N, "connect_seconds": s}   every client connected
//   {"ready": false, "connected": N, "failed": F, "error": "..."}   then exit 1
//   {"start": k, "rate": r}                  step k starts sending
//   {"step": k, "rate", "sent", "failed_sends", "expected", "deliveries", "missing",
//    "stale", "deliveries_per_s", "p50_ms", "p99_ms", "loadgen_cpu", "loadgen_cpu_system",
//    "wall_seconds", "closed", "within"}     step k is over (p50/p99 null: no delivery)
//   {"steps_done": true}                     with stdin_steps: waiting for stdin
//   {"done": true}                           sockets closed; the process exits
// With stdin_steps, each stdin line {"rate": r, "seconds": s} runs one more step;
// the line "done", or the end of stdin, ends the run.
//
// A message body is "<send time, integer microseconds of performance.now()> <step> <n>":
// send and receive times come from the same clock in the same process. A delivery's
// latency is its receive time minus that send time. `expected` is, over the acknowledged
// sends, the members of each one's room (the sender's own connection included); a send
// is failed when it is refused or not acknowledged within ack_seconds. loadgen_cpu is
// this process's CPU time over the step's wall time (1.0 = one core busy), of which
// loadgen_cpu_system in the kernel (socket reads and writes). `closed`
// counts the clients the server closed so far; `stale` the deliveries of earlier steps
// that arrived in this one. Our edge declines permessage-deflate unless configured to
// offer it, and the peer turns it off: neither client offers it.
"use strict";

const fs = require("fs");
const readline = require("readline");
const { performance } = require("perf_hooks");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const SYSTEM = cfg.system;
const SIO_CLIENT = cfg.sio_client ?? "socket.io-client";
const ACK_MS = 1000 * (cfg.ack_seconds ?? 10);
const SETTLE_MS = 1000 * (cfg.settle_seconds ?? 5);
const P99_BOUND_MS = cfg.p99_bound_ms ?? 200;
const CONCURRENCY = cfg.connect_concurrency ?? 64;
const PAUSE_MS = 1000 * (cfg.pause_seconds ?? 0.5);
const rooms = cfg.rooms;
const senders = cfg.senders;
const MAX_ROOM = Math.max(...senders.map((s) => rooms[s.room].members.length));

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ one step's record

let cur = null; // the step whose deliveries are being counted
let closing = false;
let closedByServer = 0;

class Step {
  constructor(index, rate, capacity) {
    this.index = index;
    this.rate = rate;
    this.t0 = 0;
    this.last = 0;
    this.sent = 0;
    this.ok = 0;
    this.failed = 0;
    this.pending = 0;
    this.acksOver = false;
    this.expected = 0;
    this.count = 0;
    this.stale = 0;
    this.lat = new Float64Array(capacity); // grown if ever short
  }

  acked(roomSize) {
    if (this.acksOver) return;
    this.pending -= 1;
    this.ok += 1;
    this.expected += roomSize;
  }

  refused() {
    if (this.acksOver) return;
    this.pending -= 1;
    this.failed += 1;
  }
}

// A delivery of step `step` sent at `sentUs`, received at `now` (both performance.now()).
function delivered(step, sentUs, now) {
  const st = cur;
  if (st === null || step !== st.index) {
    if (st !== null) st.stale += 1;
    return;
  }
  if (st.count === st.lat.length) {
    const grown = new Float64Array(st.lat.length * 2);
    grown.set(st.lat);
    st.lat = grown;
  }
  st.lat[st.count++] = now - sentUs / 1000;
  st.last = now;
}

// "<us> <step> <n>" in a string.
function deliveredBody(body, now) {
  const a = body.indexOf(" ");
  const b = body.indexOf(" ", a + 1);
  if (a <= 0 || b <= a) return;
  delivered(Number(body.slice(a + 1, b)), Number(body.slice(0, a)), now);
}

function percentile(sorted, n, p) {
  if (n === 0) return null;
  const k = Math.min(n - 1, Math.max(0, Math.round((p / 100) * (n - 1))));
  return sorted[k];
}

// The fast path of a delivery: the body's digits read straight from the frame's bytes,
// from the "body" key on (a frame that does not fit it is parsed as JSON instead).
const BODY_KEY = Buffer.from('"body":"');

function startsWith(data, prefix) {
  if (data.length <= prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (data[i] !== prefix[i]) return false;
  return true;
}

function fastBody(data, from, now) {
  let j = data.indexOf(BODY_KEY, from);
  if (j < 0) return false;
  j += BODY_KEY.length;
  let us = 0;
  let step = 0;
  let c = data[j];
  const first = j;
  while (c >= 48 && c <= 57) { us = us * 10 + (c - 48); c = data[++j]; }
  if (c !== 32 || j === first) return false;
  c = data[++j];
  const start = j;
  while (c >= 48 && c <= 57) { step = step * 10 + (c - 48); c = data[++j]; }
  if (c !== 32 || j === start) return false;
  delivered(step, us, now);
  return true;
}

const pending = new Map(); // request (or ack) id -> [step, room size]
let nextId = 1;

function answered(id, ok) {
  const p = pending.get(id);
  if (p === undefined) return;
  pending.delete(id);
  if (ok) p[0].acked(p[1]); else p[0].refused();
}

// ------------------------------------------------------------------ our protocol

// Every frame of ours is one JSON object; a message frame is encoded with "op" first.
const MSG_PREFIX = Buffer.from('{"op":"message",');

function camFrame(data, now) {
  if (data[7] === 0x6d && startsWith(data, MSG_PREFIX) && fastBody(data, MSG_PREFIX.length, now)) return;
  camFrameParsed(JSON.parse(data.toString("utf8")), now);
}

function camFrameParsed(frame, now) {
  if (frame.op === "message") {
    if (typeof frame.body === "string") deliveredBody(frame.body, now);
  } else if (frame.op === "result" || frame.op === "error") {
    answered(frame.id, frame.op === "result");
  }
}

// A raw WebSocket being set up: its stage (named in errors), one deadline for the whole
// setup, fail() that tears it down once, and live() once it is ready for the steps.
function opening(WebSocket, url, firstStage, resolve, reject) {
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 30000 });
  const c = { ws, stage: "open", failed: false };
  const timer = setTimeout(() => c.fail(new Error(`no answer to ${c.stage}`)), 30000);
  c.fail = (err) => {
    if (c.failed) return;
    c.failed = true;
    clearTimeout(timer);
    ws.removeAllListeners("message");
    ws.on("error", () => {});
    ws.terminate();
    reject(err);
  };
  c.live = () => {
    c.stage = "live";
    clearTimeout(timer);
    resolve(ws);
  };
  ws.on("error", (err) => { if (c.stage !== "live") c.fail(err); });
  ws.on("open", () => { c.stage = firstStage; });
  ws.on("close", () => {
    if (c.stage !== "live") c.fail(new Error(`closed during ${c.stage}`));
    else if (!closing) closedByServer += 1;
  });
  return c;
}

function camConnect(WebSocket, client) {
  return new Promise((resolve, reject) => {
    const c = opening(WebSocket, client.url, "hello", resolve, reject); // then "auth"
    c.ws.on("message", (data) => {
      if (c.stage === "live") { camFrame(data, performance.now()); return; }
      const frame = JSON.parse(data.toString("utf8"));
      if (c.stage === "hello" && frame.op === "hello") {
        c.stage = "auth";
        c.ws.send(JSON.stringify({ op: "auth", id: 0, token: client.token, v: 1 }));
      } else if (c.stage === "auth" && frame.id === 0) {
        if (frame.op !== "result") { c.fail(new Error(`auth: ${frame.code}`)); return; }
        c.live();
      }
    });
  });
}

// ------------------------------------------------------------------ the Socket.IO peer

function sioConnect(io, client, joins) {
  return new Promise((resolve, reject) => {
    const socket = io(client.url, {
      transports: ["websocket"], forceNew: true, reconnection: false, timeout: 30000,
      perMessageDeflate: false,
    });
    let live = false;
    socket.on("connect_error", (err) => { socket.close(); reject(err); });
    socket.on("disconnect", () => { if (live && !closing) closedByServer += 1; });
    socket.on("message", (m) => { deliveredBody(m.body, performance.now()); });
    socket.once("connect", () => {
      let left = joins.length;
      if (left === 0) { live = true; resolve(socket); return; }
      for (const room of joins) {
        socket.timeout(30000).emit("join", room, (err) => {
          if (err) { socket.close(); reject(new Error(`join ${room}: ${err.message}`)); return; }
          left -= 1;
          if (left === 0) { live = true; resolve(socket); }
        });
      }
    });
  });
}

// The same peer through `ws` alone (sio_client "ws"): Socket.IO v5 over Engine.IO v4,
// WebSocket transport. Packets: "0" open, "2"/"3" ping/pong, "4" message; inside a
// message "0" connect, "2" event, "3" ack: an event is 42[name, data], with an ack id
// 42<id>[...], answered by 43<id>[data]. A "message" event's body is read by the fast
// path, as ours is.
const SIO_MSG_PREFIX = Buffer.from('42["message",');

function sioRawFrame(ws, data, now) {
  if (data[0] === 0x34 && data[1] === 0x32 && data[2] === 0x5b && startsWith(data, SIO_MSG_PREFIX)
      && fastBody(data, SIO_MSG_PREFIX.length, now)) return;
  const text = data.toString("utf8");
  if (text === "2") {
    ws.send("3");
  } else if (text.startsWith("43")) {
    const cut = text.indexOf("[");
    const ack = JSON.parse(text.slice(cut))[0];
    answered(Number(text.slice(2, cut)), ack != null && ack.seq !== undefined);
  } else if (text.startsWith("42")) {
    const [name, m] = JSON.parse(text.slice(2));
    if (name === "message" && m && typeof m.body === "string") deliveredBody(m.body, now);
  }
}

function sioRawConnect(WebSocket, client, joins) {
  return new Promise((resolve, reject) => {
    const url = client.url.replace(/^http/, "ws").replace(/\/$/, "") + "/socket.io/?EIO=4&transport=websocket";
    const c = opening(WebSocket, url, "engine", resolve, reject); // then "connect", "join"
    let left = joins.length;
    c.ws.on("message", (data) => {
      if (c.stage === "live") { sioRawFrame(c.ws, data, performance.now()); return; }
      const text = data.toString("utf8");
      if (text === "2") { c.ws.send("3"); return; }
      if (c.stage === "engine" && text[0] === "0") {
        c.stage = "connect";
        c.ws.send("40");
      } else if (c.stage === "connect" && text.startsWith("40")) {
        if (left === 0) { c.live(); return; }
        c.stage = "join";
        joins.forEach((room, k) => c.ws.send(`42${k + 1}` + JSON.stringify(["join", room])));
      } else if (c.stage === "join" && text.startsWith("43")) {
        left -= 1;
        if (left === 0) c.live();
      } else if (text.startsWith("44")) {
        c.fail(new Error(`refused: ${text}`));
      }
    });
  });
}

// ------------------------------------------------------------------ connecting

async function connectAll() {
  const joins = cfg.clients.map(() => []);
  for (const room of rooms) for (const m of room.members) joins[m].push(room.id);
  let open;
  if (SYSTEM === "cam") {
    const WebSocket = require("ws");
    open = (i) => camConnect(WebSocket, cfg.clients[i]);
  } else if (SYSTEM === "sio" && SIO_CLIENT === "ws") {
    const WebSocket = require("ws");
    open = (i) => sioRawConnect(WebSocket, cfg.clients[i], joins[i]);
  } else if (SYSTEM === "sio") {
    const { io } = require("socket.io-client");
    open = (i) => sioConnect(io, cfg.clients[i], joins[i]);
  } else {
    throw new Error(`unknown system ${SYSTEM}`);
  }
  const conns = new Array(cfg.clients.length).fill(null);
  let next = 0;
  let failed = 0;
  let firstError = null;
  async function worker() {
    while (next < conns.length) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          conns[i] = await open(i);
          break;
        } catch (err) {
          if (attempt === 4) { failed += 1; firstError ??= String(err && err.message || err); break; }
          await sleep(200 * (attempt + 1));
        }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, conns.length) }, worker));
  return { conns, failed, firstError };
}

// ------------------------------------------------------------------ sending

function makeSend(conns) {
  const roomSize = rooms.map((r) => r.members.length);
  const roomJson = rooms.map((r) => JSON.stringify(r.id));
  if (SYSTEM === "cam" || SIO_CLIENT === "ws") {
    const frameOf = SYSTEM === "cam"
      ? (id, st, room, body, n) => `{"op":"send","id":${id},"room":${roomJson[room]},` +
          `"cid":"b${st.index}-${n}","body":"${body}"}`
      : (id, st, room, body) => `42${id}["send",{"room":${roomJson[room]},"body":"${body}"}]`;
    return (st, sender, body, n) => {
      const id = nextId++;
      pending.set(id, [st, roomSize[sender.room]]);
      conns[sender.client].send(frameOf(id, st, sender.room, body, n), (err) => {
        if (err && pending.delete(id)) st.refused();
      });
    };
  }
  return (st, sender, body) => {
    conns[sender.client].emit("send", { room: rooms[sender.room].id, body }, (ack) => {
      if (ack && ack.seq !== undefined) st.acked(roomSize[sender.room]); else st.refused();
    });
  };
}

async function waitFor(cond, deadline) {
  while (!cond() && performance.now() < deadline) await sleep(20);
}

async function runStep(send, index, rate, seconds) {
  const n = Math.max(1, Math.floor(rate * seconds));
  const st = new Step(index, rate, Math.min(Math.max(n * MAX_ROOM, 1 << 16), 1 << 23));
  emit({ start: index, rate });
  const cpu0 = process.cpuUsage();
  const interval = 1000 / rate;
  cur = st;
  st.t0 = performance.now();
  st.last = st.t0;
  let i = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (i < n && st.t0 + i * interval <= now) {
        const sender = senders[i % senders.length];
        st.sent += 1;
        st.pending += 1;
        send(st, sender, `${Math.round(performance.now() * 1000)} ${index} ${i}`, i);
        i += 1;
      }
      if (i >= n) { resolve(); return; }
      setTimeout(tick, Math.max(1, st.t0 + i * interval - performance.now()));
    };
    tick();
  });
  await waitFor(() => st.pending === 0, performance.now() + ACK_MS);
  st.failed += st.pending;
  st.pending = 0;
  st.acksOver = true;
  await waitFor(() => st.count >= st.expected, performance.now() + SETTLE_MS);
  const end = performance.now();
  const used = process.cpuUsage(cpu0);
  cur = null;
  const wall = (end - st.t0) / 1000;
  const lat = st.lat.subarray(0, st.count).sort();
  const missing = Math.max(0, st.expected - st.count);
  const p99 = percentile(lat, st.count, 99);
  const row = {
    step: index, rate, sent: st.sent, failed_sends: st.failed, expected: st.expected,
    deliveries: st.count, missing, stale: st.stale,
    deliveries_per_s: st.count / Math.max((st.last - st.t0) / 1000, seconds),
    p50_ms: percentile(lat, st.count, 50), p99_ms: p99,
    loadgen_cpu: Math.round(((used.user + used.system) / 1e6 / wall) * 1000) / 1000,
    loadgen_cpu_system: Math.round((used.system / 1e6 / wall) * 1000) / 1000,
    wall_seconds: Math.round(wall * 1000) / 1000, closed: closedByServer,
  };
  row.within = p99 !== null && p99 <= P99_BOUND_MS && missing <= 0.01 * Math.max(1, st.expected)
    && st.failed === 0;
  emit(row);
  // Sends answered after the step's acks were counted are forgotten with it.
  for (const [id, p] of pending) if (p[0] === st) pending.delete(id);
  return row;
}

async function moreSteps(send, index) {
  emit({ steps_done: true });
  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of lines) {
    const text = line.trim();
    if (text === "") continue;
    if (text === "done") break;
    const ask = JSON.parse(text);
    await runStep(send, index++, Number(ask.rate), Number(ask.seconds ?? cfg.step_seconds));
  }
  lines.close();
}

async function closeAll(conns) {
  closing = true;
  const live = conns.filter((c) => c !== null);
  if (SYSTEM === "cam" || SIO_CLIENT === "ws") {
    await Promise.all(live.map((ws) => new Promise((resolve) => {
      if (ws.readyState === ws.CLOSED) { resolve(); return; }
      const timer = setTimeout(() => { ws.terminate(); resolve(); }, 5000);
      ws.once("close", () => { clearTimeout(timer); resolve(); });
      ws.close(1000);
    })));
  } else {
    for (const socket of live) socket.disconnect();
    await sleep(500); // the close frames leave before the process does
  }
}

async function main() {
  const t0 = performance.now();
  const { conns, failed, firstError } = await connectAll();
  const connected = conns.length - failed;
  if (failed) {
    emit({ ready: false, connected, failed, error: firstError });
    await closeAll(conns);
    process.exit(1);
  }
  emit({ ready: true, connected, connect_seconds: Math.round(performance.now() - t0) / 1000 });
  const send = makeSend(conns);
  let index = 0;
  const over = [];
  for (const rate of cfg.rates) {
    const row = await runStep(send, index++, rate, cfg.step_seconds);
    over.push(!row.within);
    // One step over the bound can be a hiccup of a shared machine; two in a row end it.
    if (over.length >= 2 && over[over.length - 1] && over[over.length - 2]) break;
    await sleep(PAUSE_MS);
  }
  if (cfg.stdin_steps) await moreSteps(send, index);
  await closeAll(conns);
  emit({ done: true });
  process.exit(0);
}

main().catch((err) => { console.error(err); process.exit(1); });
