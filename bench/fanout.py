"""Scenario 2, fan-out throughput: rooms over 2 nodes (by default one room of 1,000
members), published to at a stepped rate, against the Socket.IO peer.

    python -m bench.fanout [--rooms 1] [--members 1000] [--rates ...] [--step-seconds 5] [--quick]

``--rooms R --members M``: R rooms of M members each (every member its own user and
connection), half of each room's members on each node. Senders: 4 in all when they fit
(2 on each node), at least one per room, spread over the rooms and nodes; sends go to
them round-robin. For example ``--rooms 1 --members 1000`` (the default),
``--rooms 1 --members 10000``, ``--rooms 1000 --members 10``.

Ours: 2 edges, one chat replica; every message is stored, acknowledged, and delivered
to all the members of its room (the sender's own connection too). Peer: Socket.IO with
the Redis adapter, two Node processes (``bench/socketio/server.js``) and
``redis-server``; the server acknowledges each ``send`` and broadcasts it to the room
on both processes.

Both are driven by one load generator, ``bench/socketio/loadgen.js``: a Node process
holding every client (``ws`` for ours, ``socket.io-client`` for the peer, or with
``--sio-client ws`` the peer's protocol over ``ws`` too, read like ours), with the
same pattern (same clients per node, same senders, same steps; sends paced open-loop,
each awaiting its acknowledgement), timing every delivery from the send time in the
body. Its CPU is reported with every step: near 1.00 means it, not the server, set the
pace. A step's p99 over 200 ms (or over 1% of deliveries missing) twice in a row ends
the run. Servers run on SERVER_CPUS, the load generator on LOAD_CPUS. Without
``--rates``, the steps offer the same deliveries per second whatever the room size
(2,000 to 120,000: at 1,000 members, 2 to 120 messages/s). Writes
bench/results/fanout.json, .md and .png (``fanout-RxM.*`` for other sizes than 1 x 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil

from camctl import rig

from . import plots, profiling
from .common import (
    LOAD_CPUS,
    SERVER_CPUS,
    SOCKETIO_DIR,
    BenchCluster,
    CpuMeter,
    _npm_version,
    pin_tree,
    scenario_parser,
    versions,
    write_report,
)
from .loadgen import run

P99_BOUND_MS = 200.0
SENDERS = 4
ACK_SECONDS = 10.0
SETTLE_SECONDS = 5.0
LOADGEN_JS = SOCKETIO_DIR / "loadgen.js"
# Offered deliveries per second, one step each (at 1,000 members: 2 to 120 messages/s).
DELIVERY_STEPS = [2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 120_000]
QUICK_DELIVERY_STEPS = [5_000, 20_000]


# ------------------------------------------------------------------ the layout


class Layout:
    """Who is where: client ``r * M + j`` is member j of room r, on node ``(r + j) % 2``
    (half of each room on each node, and the rooms' first members alternating)."""

    def __init__(self, rooms: int, members: int) -> None:
        self.rooms, self.members = rooms, members
        self.clients = rooms * members
        self.node = [(r + j) % 2 for r in range(rooms) for j in range(members)]
        self.room_members = [list(range(r * members, (r + 1) * members)) for r in range(rooms)]
        self.senders_per_room = min(members, max(1, math.ceil(SENDERS / rooms)))
        # Interleaved, so that consecutive sends go to different rooms and nodes.
        self.senders = [{"client": r * members + j, "room": r}
                        for j in range(self.senders_per_room) for r in range(rooms)]

    def config(self, system: str, clients: list[dict[str, Any]], room_ids: list[Any],
               args: argparse.Namespace, *, stdin_steps: bool) -> dict[str, Any]:
        """The load generator's configuration (its format: ``bench/socketio/loadgen.js``)."""
        return {
            "system": system, "clients": clients,
            "rooms": [{"id": rid, "members": m} for rid, m in zip(room_ids, self.room_members, strict=True)],
            "senders": self.senders, "rates": args.rates, "step_seconds": args.step_seconds,
            "ack_seconds": ACK_SECONDS, "settle_seconds": SETTLE_SECONDS, "p99_bound_ms": P99_BOUND_MS,
            "connect_concurrency": 64, "pause_seconds": 0.5, "stdin_steps": stdin_steps,
        }


def raise_nofile(pid: int) -> None:
    """Give ``pid`` this process's hard open-files limit, soft and hard (a 10,000-member
    room is 10,000 sockets in the load generator and 5,000 in each server)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(psutil.Error, ValueError, OSError):
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):  # an edge's workers too
            proc.rlimit(psutil.RLIMIT_NOFILE, (hard, hard))


async def make_rooms(cluster: BenchCluster, name: str, rooms: list[list[int]]) -> list[int]:
    """Group rooms with the given members (user ids), written straight to the store,
    as ``BenchCluster.make_room`` does, through one pool for them all."""
    pool = await cluster.pool()
    try:
        ids: list[int] = []
        for k, members in enumerate(rooms):
            room = await pool.fetchval(
                "INSERT INTO rooms (kind, name, created_by) VALUES ('group', $1, $2) RETURNING id",
                f"{name}-{k}", members[0])
            await pool.execute(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])",
                room, members)
            ids.append(int(room))
        return ids
    finally:
        await pool.close()


# ------------------------------------------------------------------ the load generator


class NodeLoadgen:
    """``node bench/socketio/loadgen.js CONFIG`` on LOAD_CPUS; its stdout read line by line."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.path = workdir / f"loadgen-{config['system']}.json"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> NodeLoadgen:
        if not (SOCKETIO_DIR / "node_modules" / "socket.io-client").exists():
            raise SystemExit("the load generator is not installed: run `make bench-setup` (bench/setup.sh)")
        self.path.write_text(json.dumps(self.config), encoding="utf-8")
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(LOADGEN_JS), str(self.path), cwd=SOCKETIO_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        pin_tree(self.proc.pid, LOAD_CPUS)
        raise_nofile(self.proc.pid)
        self.ready = await self.line(120 + len(self.config["clients"]) / 50)
        if not self.ready.get("ready"):
            raise RuntimeError(f"the load generator could not connect every client: {self.ready}")
        return self

    async def line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line of the load generator's output."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                code = await self.proc.wait()
                raise RuntimeError(f"the load generator exited with code {code}")
            if raw.startswith(b"{"):
                msg: dict[str, Any] = json.loads(raw)
                self.last = msg
                return msg

    async def ask(self, rate: float, seconds: float) -> None:
        """One more step (the load generator was started with ``stdin_steps``)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"rate": rate, "seconds": seconds}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self) -> None:
        """End the run: the load generator closes its sockets and exits."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(RuntimeError, TimeoutError):
            while not self.last.get("done"):
                await self.line(60)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def step_timeout(args: argparse.Namespace, seconds: float | None = None) -> float:
    return (seconds or args.step_seconds) + ACK_SECONDS + SETTLE_SECONDS + 60


async def steps(lg: NodeLoadgen, meter_groups: dict[str, int], label: str, timeout: float,
                count: int | None = None) -> list[dict[str, Any]]:
    """The load generator's steps as it reports them, until it says the steps are over
    (or ``count`` of them), each with the CPU of ``meter_groups`` over the step."""
    out: list[dict[str, Any]] = []
    meter: CpuMeter | None = None
    while count is None or len(out) < count:
        msg = await lg.line(timeout)
        if "start" in msg:
            meter = CpuMeter(meter_groups).start()
        elif "step" in msg:
            cpu = meter.stop() if meter is not None else {}
            s = {**msg, "cpu": cpu}
            for k in ("p50_ms", "p99_ms"):
                if s[k] is None:
                    s[k] = float("nan")
            out.append(s)
            servers = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "load_generator")
            print(f"{label} rate {s['rate']:g}/s: {s['deliveries_per_s']:.0f} deliveries/s, "
                  f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, missing {s['missing']}, "
                  f"failed sends {s['failed_sends']}, load generator {s['loadgen_cpu']:.2f} "
                  f"(kernel {s['loadgen_cpu_system']:.2f}), {servers}",
                  flush=True)
        elif msg.get("steps_done") or msg.get("done"):
            break
    return out


def closed_by_server(out: list[dict[str, Any]], last: dict[str, Any] | None = None) -> None:
    """Note on the last step how many clients the servers closed over the run (up to ``last``)."""
    if out:
        out[-1]["clients_closed_by_server"] = (last or out[-1])["closed"]


def within(s: dict[str, Any]) -> bool:
    return bool(s["p99_ms"] <= P99_BOUND_MS and s["missing"] <= 0.01 * max(1, s["expected"])
                and not s["failed_sends"])


# ------------------------------------------------------------------ the two systems


async def run_ours(args: argparse.Namespace, lay: Layout, workdir: Path, name: str
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    cluster = await BenchCluster(edges=2, chat=1, presence=1,
                                 extra_env={"CAM_EDGE_WORKERS": str(args.edge_workers)}).start()
    prof: dict[str, Any] = {}
    lg: NodeLoadgen | None = None
    try:
        cluster.pin()
        pids = cluster.pids()
        for edge in ("camserver1", "camserver2"):
            raise_nofile(pids[edge])
        users = await cluster.make_users_fast(lay.clients, prefix="fan")
        room_ids = await make_rooms(cluster, "fanout", [[users[i][0] for i in m] for m in lay.room_members])
        urls = [cluster.ws("camserver1"), cluster.ws("camserver2")]
        clients = [{"url": urls[lay.node[i]], "token": tok} for i, (_, tok) in enumerate(users)]
        lg = await NodeLoadgen(lay.config("cam", clients, room_ids, args, stdin_steps=args.profile),
                               workdir).start()
        print(f"ours: {lg.ready['connected']} clients connected in {lg.ready['connect_seconds']:.1f} s",
              flush=True)
        groups = {"load_generator": lg.pid, "edge1": pids["camserver1"], "edge2": pids["camserver2"],
                  "chat": pids["chat1"], "postgres": pids["postgres"], "nats1": pids["nats1"],
                  "nats2": pids["nats2"]}
        out = await steps(lg, groups, "ours", step_timeout(args))
        closed_by_server(out)
        if args.profile and out:
            good = [s["rate"] for s in out if within(s)] or [args.rates[0]]
            task = asyncio.create_task(profiling.profile(
                {"edge1": pids["camserver1"], "edge2": pids["camserver2"]}, 4, name))
            await lg.ask(max(good), 4.5)
            profiled = await steps(lg, groups, "ours (profiled)", step_timeout(args, 4.5), count=1)
            prof = {"rate": max(good), **await task}
            if profiled:
                prof["step"] = profiled[0]
                closed_by_server(out, profiled[-1])
        await lg.finish()
        return out, prof, lg.ready
    finally:
        if lg is not None:
            lg.kill()
        cluster.stop()


class SocketIOPeer:
    """redis-server and two Node processes of ``bench/socketio/server.js``."""

    def __init__(self, logdir: Any) -> None:
        self.logdir = logdir
        self.redis_port = rig.free_port()
        self.ports = [rig.free_port(), rig.free_port()]
        self.procs: list[rig.Proc] = []

    def start(self) -> SocketIOPeer:
        if not (SOCKETIO_DIR / "node_modules" / "socket.io").exists():
            raise SystemExit("the Socket.IO peer is not installed: run `make bench-setup` (bench/setup.sh)")
        redis = rig.Proc("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], self.logdir / "redis.log").start()
        self.procs.append(redis)
        rig.wait_for(lambda: rig.port_open(self.redis_port), 15, "redis-server")
        for i, port in enumerate(self.ports):
            self.procs.append(rig.Proc(f"sio{i + 1}", ["node", "server.js", str(port),
                                                      f"redis://127.0.0.1:{self.redis_port}"],
                                       self.logdir / f"sio{i + 1}.log", cwd=SOCKETIO_DIR).start())

        def serving(p: rig.Proc, port: int) -> bool:
            p.check_alive()
            return rig.port_open(port)

        for p, port in zip(self.procs[1:], self.ports, strict=True):
            rig.wait_for(functools.partial(serving, p, port), 30, p.name)
        for p in self.procs:
            pin_tree(p.pid, SERVER_CPUS)
        for p in self.procs[1:]:
            raise_nofile(p.pid)
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


async def run_socketio(args: argparse.Namespace, lay: Layout, workdir: Path
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    peer = await asyncio.to_thread(SocketIOPeer(workdir).start)
    lg: NodeLoadgen | None = None
    try:
        bases = [f"http://127.0.0.1:{port}" for port in peer.ports]
        clients = [{"url": bases[lay.node[i]]} for i in range(lay.clients)]
        room_ids = [f"fanout-{r}" for r in range(lay.rooms)]
        cfg = {**lay.config("sio", clients, room_ids, args, stdin_steps=False), "sio_client": args.sio_client}
        lg = await NodeLoadgen(cfg, workdir).start()
        print(f"socket.io: {lg.ready['connected']} clients connected and joined in "
              f"{lg.ready['connect_seconds']:.1f} s", flush=True)
        groups = {"load_generator": lg.pid, "redis": peer.procs[0].pid,
                  "node1": peer.procs[1].pid, "node2": peer.procs[2].pid}
        out = await steps(lg, groups, "socket.io", step_timeout(args))
        closed_by_server(out)
        await lg.finish()
        return out, lg.ready
    finally:
        if lg is not None:
            lg.kill()
        peer.stop()


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [s for s in rows if within(s)]
    return max(ok, key=lambda s: s["deliveries_per_s"]) if ok else None


# ------------------------------------------------------------------ the report


def report_name(lay: Layout) -> str:
    return "fanout" if (lay.rooms, lay.members) == (1, 1000) else f"fanout-{lay.rooms}x{lay.members}"


def shape(lay: Layout) -> str:
    if lay.rooms == 1:
        return f"one room of {lay.members} members"
    return f"{lay.rooms} rooms of {lay.members} members ({lay.clients} connections)"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    lay = Layout(args.rooms, args.members)
    name = report_name(lay)
    workdir = Path(tempfile.mkdtemp(prefix="cam-bench-fanout-"))
    try:
        ours, prof, ready_ours = await run_ours(args, lay, workdir, name)
        peer, ready_peer = await run_socketio(args, lay, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    b_ours, b_peer = best(ours), best(peer)
    ratio = (b_ours["deliveries_per_s"] / b_peer["deliveries_per_s"]) if b_ours and b_peer else None
    machine = versions()
    loadgen = {"program": "node bench/socketio/loadgen.js", "ws": _npm_version("ws"),
               "socket.io-client": _npm_version("socket.io-client"), "sio_client": args.sio_client,
               "cpus": sorted(LOAD_CPUS),
               "connect_seconds_ours": ready_ours.get("connect_seconds"),
               "connect_seconds_socketio": ready_peer.get("connect_seconds")}
    result: dict[str, Any] = {
        "machine": machine,
        "params": {"rooms": lay.rooms, "members": lay.members, "connections": lay.clients, "nodes": 2,
                   "senders": len(lay.senders), "senders_per_room": lay.senders_per_room,
                   "rates": args.rates, "step_seconds": args.step_seconds, "p99_bound_ms": P99_BOUND_MS,
                   "edge_workers": args.edge_workers},
        "load_generator": loadgen,
        "ours": ours, "socketio": peer,
        "best_ours": b_ours, "best_socketio": b_peer,
        "ratio_deliveries_vs_socketio": ratio,
        "target": {"ratio_at_least": 1.0, "met": ratio is not None and ratio >= 1.0},
        "profile": prof,
    }
    png = plots.latency_plot(
        name, f"Scenario 2: fan-out to {shape(lay)} over 2 nodes", "publish rate (messages/s)",
        {"ours p50": ([s["rate"] for s in ours], [s["p50_ms"] for s in ours]),
         "ours p99": ([s["rate"] for s in ours], [s["p99_ms"] for s in ours]),
         "Socket.IO p50": ([s["rate"] for s in peer], [s["p50_ms"] for s in peer]),
         "Socket.IO p99": ([s["rate"] for s in peer], [s["p99_ms"] for s in peer])},
        hlines={"p99 bound 200 ms": P99_BOUND_MS})

    def table(rows: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"| {s['rate']:g} | {s['sent']} | {s['deliveries_per_s']:.0f} | {s['missing']} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | **{s['loadgen_cpu']:.2f}** ({s['loadgen_cpu_system']:.2f}) | "
            f"{', '.join(f'{k} {v:.2f}' for k, v in s['cpu'].items() if k != 'load_generator')} |"
            for s in rows)

    def fmt(b: dict[str, Any] | None) -> str:
        return (f"{b['deliveries_per_s']:.0f} deliveries/s at {b['rate']:g} msg/s "
                f"(load generator {b['loadgen_cpu']:.2f})" if b else "none within the bound")

    head = ("| publish msg/s | sent | deliveries/s | missing | p50 ms | p99 ms | load generator CPU (kernel) "
            "| server CPU (share of one core) |\n|---|---|---|---|---|---|---|---|")
    senders = (f"{len(lay.senders)} senders ({lay.senders_per_room} per room, spread over both nodes)"
               if lay.rooms > 1 else f"{len(lay.senders)} senders (half on each node)")
    prof_step = prof.get("step")
    peer_client = (f"`socket.io-client` {loadgen['socket.io-client']}" if args.sio_client == "socket.io-client"
                   else f"Socket.IO's protocol spoken over `ws` {loadgen['ws']} (`--sio-client ws`)")
    md = f"""# Scenario 2: fan-out throughput

Command: `python -m bench.fanout --rooms {lay.rooms} --members {lay.members} --rates {' '.join(f'{r:g}' for r in args.rates)} --step-seconds {args.step_seconds:g} --sio-client {args.sio_client}{f' --edge-workers {args.edge_workers}' if args.edge_workers != 1 else ''}`
{shape(lay).capitalize()}, half of each room on each node; {senders}, sent to round-robin at the
publish rate (open loop), each send awaiting its acknowledgement.

Load generator: one Node {machine["node"]} process, `bench/socketio/loadgen.js`, on CPU {sorted(LOAD_CPUS)}
(the servers on {sorted(SERVER_CPUS)}): `ws` {loadgen["ws"]} for ours, {peer_client} for the peer,
no permessage-deflate on either. "Load generator CPU" is its own CPU time over each step's wall
time, in brackets the kernel's part of it (1.00 = its core busy: there it, not the server, sets
the pace). Connecting every client took {loadgen["connect_seconds_ours"]} s (ours, with auth) and
{loadgen["connect_seconds_socketio"]} s (Socket.IO, with join).

Ours (2 edges{f" of {args.edge_workers} workers each" if args.edge_workers != 1 else ""}, 1 chat replica, messages stored before delivery):

{head}
{table(ours)}

Socket.IO {machine["socket.io"]} with @socket.io/redis-adapter {machine["@socket.io/redis-adapter"]} (2 Node processes, redis-server, nothing stored):

{head}
{table(peer)}

- Best within p99 <= {P99_BOUND_MS:.0f} ms: ours {fmt(b_ours)}; Socket.IO {fmt(b_peer)}.
- Ratio ours / Socket.IO: **{f"{ratio:.2f}" if ratio is not None else "n/a"}** (target at least 1.0: {"met" if result["target"]["met"] else "MISSED"}).
- Plot: `{png.name if png else "(matplotlib missing)"}`.

Profile of our edges at {prof.get("rate", "-")} msg/s{f" (load generator {prof_step['loadgen_cpu']:.2f})" if prof_step else ""}:

{profiling.markdown({k: v for k, v in prof.items() if k not in ("rate", "step")}) if prof else "(not taken)"}
"""
    write_report(name, result, md)
    print(md)
    return result


def main() -> None:
    parser = scenario_parser("fanout", __doc__)
    parser.add_argument("--rooms", type=int, default=1, help="rooms (default 1)")
    parser.add_argument("--members", type=int, default=1000, help="members of each room (default 1000)")
    parser.add_argument("--rates", type=float, nargs="+",
                        help="publish rates in messages/s, all rooms together (default: 2,000 to "
                             "120,000 deliveries/s over the room size)")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--edge-workers", type=int, default=1,
                        help="worker processes per edge (cam.edgeWorkers; default 1)")
    parser.add_argument("--sio-client", choices=["socket.io-client", "ws"], default="socket.io-client",
                        help="the peer's clients: the socket.io-client library (default), or the same "
                             "protocol over plain `ws`, read like ours (less load generator CPU per delivery)")
    # Accepted for older command lines: the edge declines permessage-deflate by default now,
    # so there is no separate run without it.
    parser.add_argument("--no-what-if", dest="what_if", action="store_false", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rooms < 1 or args.members < 2:
        parser.error("--rooms must be at least 1 and --members at least 2")
    if args.quick:
        args.step_seconds = 1.5
    if args.rates is None:
        steps_d = QUICK_DELIVERY_STEPS if args.quick else DELIVERY_STEPS
        args.rates = [round(d / args.members, 3) for d in steps_d]
    run(main_async(args))


if __name__ == "__main__":
    main()
