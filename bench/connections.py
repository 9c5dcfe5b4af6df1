"""Scenario 4, connections: resident memory per idle authenticated connection on one
edge, over 10,000 connections, and the connect rate.

    python -m bench.connections [--connections 10000] [--quick]

The edge's RSS (/proc, through psutil) is read after 100 warm-up connections, then
again after opening N more authenticated connections (each its own user and session,
64 handshakes in flight) and letting them sit idle for a few seconds. The connect rate
counts WebSocket handshake + ``hello`` + ``auth`` (session lookup, room listing,
presence registration). Open files: the load generator raises its own RLIMIT_NOFILE to
the hard limit, and the edge (a child of this process) is given the same limit with
``prlimit`` before the connections are opened. Writes bench/results/connections.json, .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from . import profiling
from .common import (
    RESULTS,
    BenchCluster,
    CpuMeter,
    rss_bytes,
    scenario_parser,
    versions,
    write_report,
)
from .loadgen import close_all, connect_many, run

TARGET_KIB = 20.0
WARM = 100


async def measure(args: argparse.Namespace, edge_module: str | None, profile: bool,
                  sites: Path | None = None) -> dict[str, Any]:
    """One run; with ``sites``, the edge runs under tracemalloc (bench.edge_memtrace) and
    writes there where the memory of the connections went."""
    n = args.connections
    env = {"CAM_MEMTRACE_OUT": str(sites)} if sites else None
    cluster = await BenchCluster(edges=1, chat=1, presence=1, edge_module=edge_module,
                                 extra_env=env).start()
    prof: dict[str, Any] = {}
    try:
        cluster.pin()
        users = await cluster.make_users_fast(n + WARM, prefix="conn")
        pid = cluster.pids()["camserver1"]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        url = cluster.ws("camserver1")
        warm = await connect_many([url] * WARM, [t for _, t in users[:WARM]])
        await asyncio.sleep(2)
        if sites:
            os.kill(pid, signal.SIGUSR2)  # the baseline
        before = rss_bytes(pid)
        lg_before = rss_bytes(os.getpid())
        meter = CpuMeter({"edge": pid, "chat": cluster.pids()["chat1"],
                          "postgres": cluster.pids()["postgres"], "load_generator": os.getpid()}).start()
        task = (asyncio.create_task(profiling.profile({"edge": pid}, min(6, max(2, n / 800)), "connections"))
                if profile else None)
        t0 = time.perf_counter()
        # Beyond 20,000, the clients come from several loopback addresses (127.0.0.k).
        sources = [f"127.0.0.{k + 1}" for k in range(-(-n // 20_000))] if n > 20_000 else None
        clients = await connect_many([url] * n, [t for _, t in users[WARM:]], sources=sources)
        connect_s = time.perf_counter() - t0
        cpu = meter.stop()
        if task is not None:
            prof = await task
        await asyncio.sleep(args.idle_seconds)
        after = rss_bytes(pid)
        lg_after = rss_bytes(os.getpid())
        if sites:
            await asyncio.to_thread(dump_sites, pid, sites)
        alive = sum(1 for c in clients if c.close_code is None)
        await close_all(clients + warm)
    finally:
        cluster.stop()
    return {
        "rlimit_nofile": [soft, hard],
        "edge_rss_before_mib": before / 2**20,
        "edge_rss_after_mib": after / 2**20,
        "per_connection_kib": (after - before) / n / 1024,
        "connect_seconds": connect_s,
        "connect_rate_per_s": n / connect_s,
        "alive_after_idle": alive,
        "cpu_while_connecting": cpu,
        "load_generator_per_connection_kib": (lg_after - lg_before) / n / 1024,
        "profile": prof,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    ours = await measure(args, None, args.profile)
    what_if = await measure(args, "bench.edge_nodeflate", False) if args.what_if else None
    sites = RESULTS / "connections-memory-sites.txt" if args.memory_sites else None
    traced = await measure(args, "bench.edge_memtrace", False, sites) if sites else None
    per_kib = ours["per_connection_kib"]
    result = {
        "machine": versions(),
        "params": {"connections": n, "warm_up": WARM, "idle_seconds": args.idle_seconds},
        **ours,
        "target": {"kib_under": TARGET_KIB, "met": per_kib < TARGET_KIB},
        "what_if_no_deflate": what_if,
    }
    cpu = ours["cpu_while_connecting"]
    wi = ""
    if what_if:
        wi = (f"| what if: edge with permessage-deflate off (`bench/edge_nodeflate.py`, not shipped) | "
              f"{what_if['per_connection_kib']:.1f} KiB per connection, {what_if['connect_rate_per_s']:.0f} connects/s | |\n")
    md = f"""# Scenario 4: connections

Command: `python -m bench.connections --connections {n}`
Open-files limit: {ours["rlimit_nofile"][0]} (load generator and edge, raised with setrlimit/prlimit).

| measure | value | target |
|---|---|---|
| edge RSS before / after (MiB) | {ours["edge_rss_before_mib"]:.1f} / {ours["edge_rss_after_mib"]:.1f} | |
| **RSS per idle authenticated connection** | **{per_kib:.1f} KiB** | under {TARGET_KIB:.0f} KiB: {"met" if per_kib < TARGET_KIB else "MISSED"} |
| connect rate (handshake + hello + auth), 64 in flight | {ours["connect_rate_per_s"]:.0f} /s ({n} in {ours["connect_seconds"]:.1f} s) | |
| connections still open after {args.idle_seconds:.0f} s idle | {ours["alive_after_idle"]} / {n} | |
| CPU while connecting: edge / chat / postgres / load gen | {cpu["edge"]:.2f} / {cpu["chat"]:.2f} / {cpu["postgres"]:.2f} / {cpu["load_generator"]:.2f} | |
| load generator memory per client (for reference) | {ours["load_generator_per_connection_kib"]:.1f} KiB | |
{wi}
Profile of the edge while connecting:

{profiling.markdown(ours["profile"]) if ours["profile"] else "(not taken)"}
{memory_sites(sites, n) if sites and traced else ""}"""
    write_report("connections", result, md)
    print(md)
    return result


def dump_sites(pid: int, path: Path) -> None:
    """Have the traced edge write its allocation sites to ``path``, and wait for them."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 900  # a snapshot of every traced block takes a while
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def memory_sites(path: Path, n: int) -> str:
    """The biggest allocation sites of the traced run, per connection."""
    rows: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("## ") and rows:
            break  # the first table only: by line
        parts = line.split()
        if len(parts) >= 5 and parts[1] == "B":
            rows.append(f"| `{parts[4]}` | {int(parts[0]) / n:.0f} B |")
    table = "\n".join(rows[:25])
    return f"""
Where the memory of a connection goes (a third run, of the edge under tracemalloc:
`bench/edge_memtrace.py`; Python allocations grown over the {n} connections, per
connection, biggest first; raw in `bench/results/{path.name}`):

| allocated at | per connection |
|---|---|
{table}
"""


def main() -> None:
    parser = scenario_parser("connections", __doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--no-what-if", dest="what_if", action="store_false",
                        help="skip the extra run of the edge with permessage-deflate off")
    parser.add_argument("--memory-sites", action="store_true",
                        help="a third run under tracemalloc: where the memory goes")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.idle_seconds = 1000, 2.0
    run(main_async(args))


if __name__ == "__main__":
    main()
