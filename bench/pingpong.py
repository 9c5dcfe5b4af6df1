"""Scenario 3, edge efficiency: ping-pong round trips per second on one connection
through our edge, against a bare ``websockets`` echo server (and picows, for scale).

    python -m bench.pingpong [--seconds 5] [--quick] [--no-profile]

Both are driven by the same client code (``camclient.Client.request`` in a closed
loop, one request in flight). Our side is an authenticated connection sending the
protocol's ``ping`` op, answered by the edge; the echo server sends the frame back.
Every server runs on SERVER_CPUS, the load generator on LOAD_CPUS.
Writes bench/results/pingpong.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from camclient import Client

from . import profiling
from .common import BenchCluster, CpuMeter, percentile, scenario_parser, versions, write_report
from .loadgen import EchoServer, echo_round_trips, run

TARGET = 0.5


async def edge_round_trips(client: Client, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        t = time.perf_counter()
        await client.request("ping")
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"round_trips_per_s": len(lat) / wall, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    baselines: dict[str, Any] = {}
    for impl in ("websockets", "picows"):
        async with EchoServer(impl) as echo:
            await echo_round_trips(echo.url, 1, 0.5)  # warm up
            meter = CpuMeter({"load_generator": os.getpid(), "server": echo.pid}).start()
            baselines[impl] = {**await echo_round_trips(echo.url, 1, args.seconds), "cpu": meter.stop()}

    cluster = await BenchCluster(edges=1, chat=1, presence=1).start()
    try:
        cluster.pin()
        (_, token), = await cluster.make_users(1, prefix="ping")
        client = await Client.connect(cluster.ws("camserver1"), token)
        await edge_round_trips(client, 0.5)  # warm up
        edge_pid = cluster.pids()["camserver1"]
        meter = CpuMeter({"load_generator": os.getpid(), "server": edge_pid}).start()
        ours = {**await edge_round_trips(client, args.seconds), "cpu": meter.stop()}
        prof: dict[str, Any] = {}
        if args.profile:
            import asyncio

            task = asyncio.create_task(profiling.profile({"edge": edge_pid}, 4, "pingpong"))
            await edge_round_trips(client, 4.5)
            prof = await task
        await client.close()
    finally:
        cluster.stop()

    ratio = ours["round_trips_per_s"] / baselines["websockets"]["round_trips_per_s"]
    result = {
        "machine": versions(),
        "params": {"seconds": args.seconds, "connections": 1, "in_flight": 1},
        "ours": ours,
        "baselines": baselines,
        "ratio_vs_websockets_echo": ratio,
        "ratio_vs_picows_echo": ours["round_trips_per_s"] / baselines["picows"]["round_trips_per_s"],
        "target": {"ratio_at_least": TARGET, "met": ratio >= TARGET},
        "profile": prof,
    }
    b, p = baselines["websockets"], baselines["picows"]
    md = f"""# Scenario 3: edge efficiency (ping-pong on one connection)

Command: `python -m bench.pingpong --seconds {args.seconds}`

| server | round trips/s | p50 ms | p99 ms | server CPU | load generator CPU |
|---|---|---|---|---|---|
| our edge (`ping` op, authenticated) | {ours["round_trips_per_s"]:.0f} | {ours["p50_ms"]:.3f} | {ours["p99_ms"]:.3f} | {ours["cpu"]["server"]:.2f} | {ours["cpu"]["load_generator"]:.2f} |
| bare `websockets` echo (baseline) | {b["round_trips_per_s"]:.0f} | {b["p50_ms"]:.3f} | {b["p99_ms"]:.3f} | {b["cpu"]["server"]:.2f} | {b["cpu"]["load_generator"]:.2f} |
| bare picows echo (for scale) | {p["round_trips_per_s"]:.0f} | {p["p50_ms"]:.3f} | {p["p99_ms"]:.3f} | {p["cpu"]["server"]:.2f} | {p["cpu"]["load_generator"]:.2f} |

Ratio ours / websockets echo: **{ratio:.2f}** (target at least {TARGET}: {"met" if ratio >= TARGET else "MISSED"}).

Profile of the edge during the ping loop:

{profiling.markdown(prof) if prof else "(not taken)"}
"""
    write_report("pingpong", result, md)
    print(md)
    return result


def main() -> None:
    parser = scenario_parser("pingpong", __doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.5
    run(main_async(args))


if __name__ == "__main__":
    main()
