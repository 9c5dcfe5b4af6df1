"""Scenario 2, fan-out throughput: one room of 1,000 members over 2 nodes, published to at
a stepped rate by 4 senders (2 on each node), against the Socket.IO peer.

    python -m bench.fanout [--members 1000] [--rates 5 10 20 ...] [--step-seconds 5] [--quick]

Ours: 2 edges, one chat replica; every message is stored, acknowledged, and delivered
to all 1,000 members (the sender's own connection too). Peer: Socket.IO with the Redis
adapter, two Node processes (``bench/socketio/server.js``) and ``redis-server``; the
server acknowledges each ``send`` and broadcasts it to the room on both processes. Both
are driven by this one load generator with the same pattern (same clients per node,
same senders, same steps; each send awaits its acknowledgement), timing every delivery
from the send time in the body. A step's p99 over 200 ms (or over 1% of deliveries
missing) ends the run. Servers run on SERVER_CPUS, the load generator on LOAD_CPUS.
Writes bench/results/fanout.json, .md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from camctl import rig

from . import plots, profiling
from .common import (
    SERVER_CPUS,
    SOCKETIO_DIR,
    BenchCluster,
    CpuMeter,
    percentile,
    pin_tree,
    scenario_parser,
    versions,
    write_report,
)
from .loadgen import SioClient, close_all, connect_many, paced, run, sio_connect_many

P99_BOUND_MS = 200.0
SENDERS = 4


class Deliveries:
    """Per-step latencies of every delivery, from the send time in the body."""

    def __init__(self) -> None:
        self.lat: dict[int, list[float]] = defaultdict(list)
        self.last: dict[int, float] = {}

    def record(self, body: str) -> None:
        now = time.perf_counter()
        ts, step, _ = body.split(" ", 2)
        k = int(step)
        self.lat[k].append(now - float(ts))
        self.last[k] = now


async def steps(deliv: Deliveries, members: int, rates: list[float], seconds: float,
                send: Callable[[int, str], Awaitable[Any]], meter_groups: dict[str, int],
                label: str, first_step: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, rate in enumerate(rates, start=first_step):
        meter = CpuMeter(meter_groups).start()
        t0 = time.perf_counter()

        async def one(n: int, k: int = k) -> None:
            await send(n % SENDERS, f"{time.perf_counter():.6f} {k} {n}")

        ok, failed = await paced(rate, seconds, one, settle=10)
        expected = ok * members
        deadline = time.perf_counter() + 5
        while len(deliv.lat[k]) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cpu = meter.stop()
        lat = deliv.lat[k]
        span = max(deliv.last.get(k, t0) - t0, seconds)
        s = {"rate": rate, "sent": ok, "failed_sends": failed, "deliveries": len(lat),
             "missing": max(0, expected - len(lat)), "deliveries_per_s": len(lat) / span,
             "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000, "cpu": cpu}
        out.append(s)
        print(f"{label} rate {rate}/s: {s['deliveries_per_s']:.0f} deliveries/s, p50 {s['p50_ms']:.1f} ms, "
              f"p99 {s['p99_ms']:.1f} ms, missing {s['missing']}, cpu {cpu}", flush=True)
        # One step over the bound can be a hiccup of a shared machine; two in a row end it.
        if len(out) >= 2 and not within(out[-1]) and not within(out[-2]):
            break
        await asyncio.sleep(0.5)
    return out


def within(s: dict[str, Any]) -> bool:
    return s["p99_ms"] <= P99_BOUND_MS and s["missing"] <= 0.01 * max(1, s["sent"]) * 1000 and not s["failed_sends"]


async def run_ours(args: argparse.Namespace, *, edge_module: str | None = None,
                   label: str = "ours") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cluster = await BenchCluster(edges=2, chat=1, presence=1, edge_module=edge_module).start()
    prof: dict[str, Any] = {}
    try:
        cluster.pin()
        users = await cluster.make_users_fast(args.members, prefix="fan")
        room = await cluster.make_room("fanout", [u for u, _ in users])
        deliv = Deliveries()

        def on_event(frame: dict[str, Any]) -> None:
            if frame.get("op") == "message":
                deliv.record(frame["body"])

        urls = [cluster.ws("camserver1" if i % 2 == 0 else "camserver2") for i in range(len(users))]
        clients = await connect_many(urls, [t for _, t in users], on_event=on_event)
        closed_before = sum(1 for c in clients if c.close_code is not None)
        pids = cluster.pids()

        async def send(i: int, body: str) -> None:
            await clients[i].send(room, body)

        groups = {"load_generator": os.getpid(), "edge1": pids["camserver1"], "edge2": pids["camserver2"],
                  "chat": pids["chat1"], "postgres": pids["postgres"], "nats1": pids["nats1"],
                  "nats2": pids["nats2"]}
        out = await steps(deliv, len(users), args.rates, args.step_seconds, send, groups, label)
        if args.profile and edge_module is None:
            good = [s["rate"] for s in out if within(s)] or [args.rates[0]]
            task = asyncio.create_task(profiling.profile(
                {"edge1": pids["camserver1"], "edge2": pids["camserver2"]}, 4, "fanout"))
            await steps(deliv, len(users), [max(good)], 4.5, send, groups, "ours (profiled)",
                        first_step=len(args.rates) + 1)
            prof = {"rate": max(good), **await task}
        dropped = sum(1 for c in clients if c.close_code is not None) - closed_before
        out[-1]["clients_closed_by_server"] = dropped
        await close_all(clients)
    finally:
        cluster.stop()
    return out, prof


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
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


async def run_socketio(args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    logdir = Path(tempfile.mkdtemp(prefix="cam-bench-sio-"))
    peer = await asyncio.to_thread(SocketIOPeer(logdir).start)
    try:
        deliv = Deliveries()

        def on_event(name: str, data: Any) -> None:
            if name == "message":
                deliv.record(data["body"])

        bases = [f"ws://127.0.0.1:{peer.ports[i % 2]}" for i in range(args.members)]
        clients: list[SioClient] = await sio_connect_many(bases, on_event=on_event)
        await asyncio.gather(*(c.emit("join", "fanout") for c in clients))

        async def send(i: int, body: str) -> None:
            await clients[i].emit("send", {"room": "fanout", "body": body})

        groups = {"load_generator": os.getpid(), "redis": peer.procs[0].pid,
                  "node1": peer.procs[1].pid, "node2": peer.procs[2].pid}
        out = await steps(deliv, len(clients), args.rates, args.step_seconds, send, groups, "socket.io")
        await close_all(clients)
    finally:
        peer.stop()
        shutil.rmtree(logdir, ignore_errors=True)
    return out


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [s for s in rows if within(s)]
    return max(ok, key=lambda s: s["deliveries_per_s"]) if ok else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    ours, prof = await run_ours(args)
    what_if: list[dict[str, Any]] = []
    if args.what_if:
        what_if, _ = await run_ours(args, edge_module="bench.edge_nodeflate", label="ours, deflate off")
    peer = await run_socketio(args)
    b_ours, b_peer = best(ours), best(peer)
    ratio = (b_ours["deliveries_per_s"] / b_peer["deliveries_per_s"]) if b_ours and b_peer else None
    result: dict[str, Any] = {
        "machine": versions(),
        "params": {"members": args.members, "nodes": 2, "senders": SENDERS, "rates": args.rates,
                   "step_seconds": args.step_seconds, "p99_bound_ms": P99_BOUND_MS},
        "ours": ours, "socketio": peer,
        "best_ours": b_ours, "best_socketio": b_peer,
        "ratio_deliveries_vs_socketio": ratio,
        "what_if_no_deflate": what_if,
        "best_what_if_no_deflate": best(what_if),
        "target": {"ratio_at_least": 1.0, "met": ratio is not None and ratio >= 1.0},
        "profile": prof,
    }
    png = plots.latency_plot(
        "fanout", f"Scenario 2: fan-out to {args.members} members over 2 nodes", "publish rate (messages/s)",
        {"ours p50": ([s["rate"] for s in ours], [s["p50_ms"] for s in ours]),
         "ours p99": ([s["rate"] for s in ours], [s["p99_ms"] for s in ours]),
         "Socket.IO p50": ([s["rate"] for s in peer], [s["p50_ms"] for s in peer]),
         "Socket.IO p99": ([s["rate"] for s in peer], [s["p99_ms"] for s in peer])},
        hlines={"p99 bound 200 ms": P99_BOUND_MS})

    def table(rows: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"| {s['rate']:.0f} | {s['sent']} | {s['deliveries_per_s']:.0f} | {s['missing']} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {', '.join(f'{k} {v:.2f}' for k, v in s['cpu'].items())} |" for s in rows)

    def fmt(b: dict[str, Any] | None) -> str:
        return f"{b['deliveries_per_s']:.0f} deliveries/s at {b['rate']:.0f} msg/s" if b else "none within the bound"

    what_if_md = ""
    if what_if:
        what_if_md = (
            "What if (not the shipped configuration): the same edges with permessage-deflate turned off "
            "(`bench/edge_nodeflate.py` starts `cam_edge.main` with `ws_per_message_deflate=False`; "
            "the Socket.IO server does not compress by default either). Best within the bound: "
            f"{fmt(best(what_if))}.\n\n"
            "| publish msg/s | sent | deliveries/s | missing | p50 ms | p99 ms | CPU (share of one core) |\n"
            f"|---|---|---|---|---|---|---|\n{table(what_if)}\n")
    head = "| publish msg/s | sent | deliveries/s | missing | p50 ms | p99 ms | CPU (share of one core) |\n|---|---|---|---|---|---|---|"
    md = f"""# Scenario 2: fan-out throughput

Command: `python -m bench.fanout --members {args.members} --rates {' '.join(str(r) for r in args.rates)} --step-seconds {args.step_seconds}`
One room of {args.members} members, half on each node, {SENDERS} senders (2 per node), each send awaits its acknowledgement.

Ours (2 edges, 1 chat replica, messages stored before delivery):

{head}
{table(ours)}

Socket.IO {result["machine"]["socket.io"]} with @socket.io/redis-adapter {result["machine"]["@socket.io/redis-adapter"]} (2 Node processes, redis-server, nothing stored):

{head}
{table(peer)}

{what_if_md}
- Best within p99 <= {P99_BOUND_MS:.0f} ms: ours {fmt(b_ours)}; Socket.IO {fmt(b_peer)}.
- Ratio ours / Socket.IO: **{f"{ratio:.2f}" if ratio is not None else "n/a"}** (target at least 1.0: {"met" if result["target"]["met"] else "MISSED"}).
- Plot: `{png.name if png else "(matplotlib missing)"}`.

Profile of our edges at {prof.get("rate", "-")} msg/s:

{profiling.markdown({k: v for k, v in prof.items() if k != "rate"}) if prof else "(not taken)"}
"""
    write_report("fanout", result, md)
    print(md)
    return result


def main() -> None:
    parser = scenario_parser("fanout", __doc__)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 5, 10, 20, 30, 40, 60, 80, 120])
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--no-what-if", dest="what_if", action="store_false",
                        help="skip the extra run of our edges with permessage-deflate off")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.step_seconds = [5, 20], 1.5
    run(main_async(args))


if __name__ == "__main__":
    main()
