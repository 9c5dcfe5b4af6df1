"""Every benchmark in one run, on one machine: each scenario against its baseline or peer,
then a summary of the ratios against the targets.

    python -m bench.run_all [--quick] [--only latency fanout ...]

Each scenario runs as its own process (``python -m bench.<name>``), one after the
other, so no state leaks between them. Writes bench/results/<name>.json/.md for each,
and bench/results/summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from typing import Any

from .common import RESULTS, versions, write_report

SCENARIOS = ["loadgen", "latency", "fanout", "pingpong", "connections", "persist", "presence"]
# A smoke run: shorter steps, no profiles, no what-if variants.
QUICK_ARGS = {
    "presence": ["--users", "100", "--seconds", "3"],
    "loadgen": ["--quick"],
    "latency": ["--quick", "--no-profile"],
    "fanout": ["--quick", "--no-profile", "--no-what-if"],
    "pingpong": ["--quick", "--no-profile"],
    "connections": ["--quick", "--no-profile", "--no-what-if"],
    "persist": ["--quick", "--no-profile"],
}


def load(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def summary_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if (r := load("latency")) is not None:
        light = r["steps"][0]
        rows.append({"scenario": "1. cross-node latency, p50 at light load",
                     "ours": f"{fmt(light['p50_ms'], '.2f')} ms at {light['rate']:.0f} msg/s",
                     "baseline": f"{fmt(r['floor']['request_publish_p50_ms'], '.2f')} ms raw NATS request/publish",
                     "ratio": r["ratio_light_p50_vs_floor"], "target": "<= 3", "met": r["target"]["met"]})
        rows.append({"scenario": "1. highest rate with p99 < 200 ms", "ours": f"{r['max_rate_under_bound']} msg/s",
                     "baseline": "", "ratio": None, "target": "(reported)", "met": None})
    if (r := load("fanout")) is not None:
        bo, bp = r["best_ours"], r["best_socketio"]
        wi = r.get("best_what_if_no_deflate")
        rows.append({"scenario": "2. fan-out deliveries/s at p99 < 200 ms",
                     "ours": f"{fmt(bo and bo['deliveries_per_s'], '.0f')}"
                             + (f" (deflate off: {wi['deliveries_per_s']:.0f})" if wi else ""),
                     "baseline": f"{fmt(bp and bp['deliveries_per_s'], '.0f')} Socket.IO + Redis adapter",
                     "ratio": r["ratio_deliveries_vs_socketio"], "target": ">= 1", "met": r["target"]["met"]})
    if (r := load("pingpong")) is not None:
        rows.append({"scenario": "3. ping-pong round trips/s, one connection",
                     "ours": f"{r['ours']['round_trips_per_s']:.0f}",
                     "baseline": f"{r['baselines']['websockets']['round_trips_per_s']:.0f} bare websockets echo",
                     "ratio": r["ratio_vs_websockets_echo"], "target": ">= 0.5", "met": r["target"]["met"]})
    if (r := load("connections")) is not None:
        wi = r.get("what_if_no_deflate")
        rows.append({"scenario": f"4. RSS per idle connection ({r['params']['connections']} on one edge)",
                     "ours": f"{r['per_connection_kib']:.1f} KiB"
                             + (f" (deflate off: {wi['per_connection_kib']:.1f})" if wi else ""),
                     "baseline": "", "ratio": None, "target": "< 20 KiB", "met": r["target"]["met"]})
        rows.append({"scenario": "4. connect rate (handshake + auth)", "ours": f"{r['connect_rate_per_s']:.0f} /s",
                     "baseline": "", "ratio": None, "target": "(reported)", "met": None})
    if (r := load("persist")) is not None:
        rows.append({"scenario": "5. acknowledged sends/s through the chat service",
                     "ours": f"{r['chat_via_bus']['per_s']:.0f}",
                     "baseline": f"{r['raw_asyncpg']['per_s']:.0f} raw asyncpg INSERT",
                     "ratio": r["ratio_bus_vs_raw"], "target": ">= 0.8", "met": r["target"]["met"]})
    if (r := load("loadgen")) is not None:
        rows.append({"scenario": "load generator capacity (frames/s, one core)",
                     "ours": f"{r['capacity_frames_per_s']:.0f}", "baseline": "", "ratio": None,
                     "target": "(reported)", "met": None})
    if (r := load("presence")) is not None:
        rows.append({"scenario": "presence propagation p50 / NATS floor",
                     "ours": f"{r['propagation']['p50_ms']:.1f} ms",
                     "baseline": f"{r['nats_floor']['p50_ms']:.2f} ms raw NATS pub/sub",
                     "ratio": r["ratios"]["p50_vs_nats_floor"], "target": "(reported)", "met": None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run of every scenario")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these")
    args = parser.parse_args()
    started = time.time()
    timings: dict[str, Any] = {}
    for name in args.only or SCENARIOS:
        extra = (QUICK_ARGS.get(name, ["--quick"]) if args.quick else [])
        cmd = [sys.executable, "-m", f"bench.{name}", *extra]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        child = subprocess.Popen(cmd)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            # Let the scenario stop its own servers (it handles SIGINT), then stop too.
            child.send_signal(signal.SIGINT)
            child.wait(60)
            raise
        timings[name] = {"seconds": round(time.time() - t, 1), "exit_code": rc}
    rows = summary_rows()
    lines = ["# Benchmark summary", "",
             f"Command: `python -m bench.run_all{' --quick' if args.quick else ''}`, "
             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
             f"{round(time.time() - started)} s in all.", "",
             "| scenario | ours | baseline / peer | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['scenario']} | {r['ours']} | {r['baseline']} | {fmt(r['ratio'], '.2f')} | "
                     f"{r['target']} | {met} |")
    m = versions()
    lines += ["", "Machine and versions:", "", *[f"- {k}: {v}" for k, v in m.items()], "",
              "Per-scenario details: " + ", ".join(f"`{n}.md`" for n in timings), ""]
    failed = [n for n, t in timings.items() if t["exit_code"] != 0]
    if failed:
        lines.append(f"Scenarios that failed: {', '.join(failed)} (see the output above).")
    write_report("summary", {"machine": m, "quick": args.quick, "timings": timings, "rows": rows},
                 "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
