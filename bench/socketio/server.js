// The Socket.IO peer of the fan-out benchmark (bench/fanout.py), written for it.
//
// One process of a two-process cluster: rooms are shared through the Redis adapter,
// which is how a team would broadcast across Node processes with Socket.IO.
//   node server.js PORT REDIS_URL
// A client joins a room with the "join" event (acknowledged) and publishes with "send"
// {room, body}: the server acknowledges it and broadcasts "message" {room, seq, body}
// to every member of the room on every process, the sender included, as our edge does.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-adapter");

async function main() {
  const port = Number(process.argv[2]);
  const redisUrl = process.argv[3];
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer((req, res) => {
    res.writeHead(req.url === "/health" ? 200 : 404);
    res.end();
  });
  const io = new Server(server, {
    transports: ["websocket"],
    adapter: createAdapter(pub, sub),
    serveClient: false,
    perMessageDeflate: false,
  });
  let seq = 0;
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack({ room });
    });
    socket.on("send", (msg, ack) => {
      seq += 1;
      io.to(String(msg.room)).emit("message", { room: msg.room, seq, body: msg.body });
      if (typeof ack === "function") ack({ room: msg.room, seq });
    });
  });
  server.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
  const stop = () => { io.close(); pub.quit().catch(() => {}); sub.quit().catch(() => {}); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });
