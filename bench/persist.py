"""Scenario 5, persistence path: acknowledged sends per second through the chat service,
against raw asyncpg inserts of the same rows on the same PostgreSQL.

    python -m bench.persist [--workers 32] [--seconds 5] [--quick] [--no-profile]

Closed loop, ``--workers`` senders each in its own room (so the per-room row lock does
not serialise them), each waiting for its acknowledgement before the next send:

- ours, through the bus: ``cam.chat.rpc.send`` requests (what an edge sends) to one
  chat replica, which runs ``cam_post_message`` (membership check, seq bump, insert,
  commit) and then publishes the event and answers;
- ours, end to end (for reference): the same through WebSocket clients and an edge;
- the baseline: a plain ``INSERT INTO messages`` of the same row (room, seq, cid,
  sender, kind, body), one autocommit statement per row, with a pool of 20 connections
  (the chat replica's pool size), from the load generator.

PostgreSQL runs with fsync on, as shipped. Servers on SERVER_CPUS, load generator on
LOAD_CPUS. Writes bench/results/persist.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from camcore import bus, db, subjects, wire

from . import profiling
from .common import BenchCluster, CpuMeter, percentile, scenario_parser, versions, write_report
from .loadgen import close_all, connect_many, run

TARGET = 0.8
BODY = "persistence benchmark message body, about sixty characters long"


async def closed_loop(workers: int, seconds: float, op: Callable[[int, int], Awaitable[Any]]) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal errors
        for n in itertools.count():
            if time.perf_counter() >= stop:
                return
            t = time.perf_counter()
            try:
                await op(w, n)
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1
                continue
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    wall = time.perf_counter() - t0
    return {"per_s": len(lat) / wall, "count": len(lat), "errors": errors,
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    w = args.workers
    cluster = await BenchCluster(edges=1, chat=1, presence=1).start()
    prof: dict[str, Any] = {}
    try:
        cluster.pin()
        users = await cluster.make_users(w, prefix="per")
        uids = [u for u, _ in users]
        ours_rooms = [await cluster.make_room(f"per{i}", [uids[i]]) for i in range(w)]
        edge_rooms = [await cluster.make_room(f"pere{i}", [uids[i]]) for i in range(w)]
        raw_rooms = [await cluster.make_room(f"perr{i}", [uids[i]]) for i in range(w)]
        pids = cluster.pids()
        groups = {"load_generator": os.getpid(), "chat": pids["chat1"], "postgres": pids["postgres"],
                  "edge": pids["camserver1"]}

        pool = await db.create_pool(cluster.dsn, min_size=20, max_size=20)
        seqs = [0] * w

        async def raw(i: int, n: int) -> None:
            seqs[i] += 1
            await pool.execute(
                "INSERT INTO messages (room_id, seq, cid, sender_id, kind, body) VALUES ($1, $2, $3, $4, 'text', $5)",
                raw_rooms[i], seqs[i], uuid.uuid4().hex, uids[i], BODY)

        fn_rooms = [await cluster.make_room(f"perf{i}", [uids[i]]) for i in range(w)]

        async def fn(i: int, n: int) -> None:
            await pool.fetchrow("SELECT seq, created_at, duplicate FROM cam_post_message($1, $2, $3, 'text', $4)",
                                fn_rooms[i], uids[i], uuid.uuid4().hex, BODY)

        assert cluster.nats is not None
        nc = await nats.connect(cluster.nats.urls[0], **cluster.nats_options())
        subject = subjects.chat_rpc("send")

        async def via_bus(i: int, n: int) -> None:
            await bus.call(nc, subject, wire.SendMessage(user_id=uids[i], room=ours_rooms[i],
                                                         cid=uuid.uuid4().hex, body=BODY))

        await closed_loop(w, 0.5, raw)  # warm up both paths
        await closed_loop(w, 0.5, via_bus)
        results: dict[str, Any] = {}
        for name, op in (("raw_asyncpg", raw), ("chat_via_bus", via_bus), ("post_function_asyncpg", fn)):
            meter = CpuMeter(groups).start()
            results[name] = await closed_loop(w, args.seconds, op)
            results[name]["cpu"] = meter.stop()
            print(name, results[name], flush=True)

        clients = await connect_many([cluster.ws("camserver1")] * w, [t for _, t in users])

        async def via_edge(i: int, n: int) -> None:
            await clients[i].send(edge_rooms[i], BODY)

        meter = CpuMeter(groups).start()
        results["chat_via_edge"] = await closed_loop(w, args.seconds, via_edge)
        results["chat_via_edge"]["cpu"] = meter.stop()
        print("chat_via_edge", results["chat_via_edge"], flush=True)
        await close_all(clients)
        if args.profile:
            task = asyncio.create_task(profiling.profile({"chat": pids["chat1"]}, 4, "persist"))
            await closed_loop(w, 4.5, via_bus)
            prof = await task
        await nc.close()
        await pool.close()
    finally:
        cluster.stop()

    ratio = results["chat_via_bus"]["per_s"] / results["raw_asyncpg"]["per_s"]
    result = {
        "machine": versions(),
        "params": {"workers": w, "seconds": args.seconds, "raw_pool_size": 20, "fsync": "on"},
        **results,
        "ratio_bus_vs_raw": ratio,
        "ratio_edge_vs_raw": results["chat_via_edge"]["per_s"] / results["raw_asyncpg"]["per_s"],
        "target": {"ratio_at_least": TARGET, "met": ratio >= TARGET},
        "profile": prof,
    }

    def row(label: str, r: dict[str, Any]) -> str:
        c = r["cpu"]
        return (f"| {label} | {r['per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                f"{c['chat']:.2f} / {c['postgres']:.2f} / {c['edge']:.2f} / {c['load_generator']:.2f} |")

    md = f"""# Scenario 5: persistence path

Command: `python -m bench.persist --workers {w} --seconds {args.seconds}`
{w} closed-loop senders, one room each; PostgreSQL with fsync on.

| path | acknowledged rows/s | p50 ms | p99 ms | errors | CPU chat / postgres / edge / load gen |
|---|---|---|---|---|---|
{row("raw asyncpg INSERT, pool of 20 (baseline)", results["raw_asyncpg"])}
{row("chat service via the bus (`cam.chat.rpc.send`)", results["chat_via_bus"])}
{row("`cam_post_message` called through asyncpg, pool of 20 (the store's share)", results["post_function_asyncpg"])}
{row("end to end via WebSocket and an edge (reference)", results["chat_via_edge"])}

Ratio chat service / raw asyncpg: **{ratio:.2f}** (target at least {TARGET}: {"met" if ratio >= TARGET else "MISSED"});
end to end / raw: {result["ratio_edge_vs_raw"]:.2f}.

Profile of the chat replica under the bus load:

{profiling.markdown(prof) if prof else "(not taken)"}
"""
    write_report("persist", result, md)
    print(md)
    return result


def main() -> None:
    parser = scenario_parser("persist", __doc__)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.5
    run(main_async(args))


if __name__ == "__main__":
    main()
