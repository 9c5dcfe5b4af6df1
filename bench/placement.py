"""Conference placement benchmark: latency and decisions per second of the video
allocator under 100 concurrent joiners, each opening a new conference, on real Janus
SFUs; the floor is the Janus room creation alone, measured in the same run.

    python -m bench.placement [--rooms 500] [--joiners 100]

Writes bench/results/placement.json and placement.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from cam_video_allocator.janus import Janus

from camcore import bus, subjects, wire
from camctl import rig

from .common import BenchCluster, machine, percentile, write_report

ADMIN_KEY = "bench-admin-key"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if rig.janus_binary() is None:
        raise SystemExit("Janus is not installed (apt-get install janus)")
    cluster = BenchCluster(edges=1, presence=1)
    sfus = [rig.Janus(cluster.tmp, f"v{i + 1}", admin_key=ADMIN_KEY,
                      rtp_range=(30000 + i * 200, 30199 + i * 200)) for i in range(3)]
    cap = max(1, args.rooms // 3)
    cluster.extra_env = {
        "CAM_VIDEO_DOMAINS": ";".join(f"v{i + 1}={cap}" for i in range(3)),
        "CAM_VIDEO_SERVER_URLS": ";".join(f"v{i + 1}={s.url}" for i, s in enumerate(sfus)),
        "CAM_VIDEO_ADMIN_KEY": ADMIN_KEY,
    }
    try:
        for s in sfus:
            s.start()
        await cluster.start()
        for i in range(2):
            name = f"video{i + 1}"
            cluster.start_service("video", name, i)
        users = await cluster.make_users_fast(1)
        uid = users[0][0]
        rooms = [await cluster.make_room(f"r{i}", [uid]) for i in range(args.rooms)]
        assert cluster.nats is not None
        nc = await bus.connect(cluster.nats.urls, "bench-placement",
                               credentials=cluster.credential("operator"))
        # Wait until an allocator answers.
        for _ in range(200):
            try:
                await bus.call(nc, subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.1)

        latencies: list[float] = []
        queue = list(enumerate(rooms))

        async def joiner() -> None:
            while queue:
                k, room = queue.pop()
                t = time.perf_counter()
                await bus.call(nc, subjects.video_rpc("join"), wire.ConfJoin(
                    room=room, user_id=uid, session=k + 1, node="bench"), timeout=30)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(joiner() for _ in range(args.joiners)))
        wall = time.perf_counter() - t0
        status = await bus.call(nc, subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))
        await nc.close()

        # The floor: creating rooms on Janus directly, with the same concurrency.
        janus = Janus(sfus[0].url, admin_key=ADMIN_KEY)
        floor: list[float] = []
        ids = list(range(10_000_000, 10_000_000 + args.rooms))

        async def creator() -> None:
            while ids:
                room = ids.pop()
                t = time.perf_counter()
                await janus.create_room(room, "pin", "floor")
                floor.append(time.perf_counter() - t)

        t1 = time.perf_counter()
        await asyncio.gather(*(creator() for _ in range(args.joiners)))
        floor_wall = time.perf_counter() - t1
        await janus.close()
    finally:
        cluster.stop()
        for s in sfus:
            s.stop()

    result = {
        "machine": machine(),
        "params": {"rooms": args.rooms, "joiners": args.joiners, "allocators": 2, "sfus": 3,
                   "capacity_each": cap},
        "placement": {"p50_ms": percentile(latencies, 50) * 1000,
                      "p99_ms": percentile(latencies, 99) * 1000,
                      "decisions_per_s": len(latencies) / wall},
        "janus_create_floor": {"p50_ms": percentile(floor, 50) * 1000,
                               "p99_ms": percentile(floor, 99) * 1000,
                               "per_s": len(floor) / floor_wall},
        "servers": status["servers"],
    }
    p, f = result["placement"], result["janus_create_floor"]
    result["ratios"] = {"decisions_vs_janus_creates": p["decisions_per_s"] / f["per_s"]}
    md = f"""# Placement benchmark

Machine: {result['machine']}
Command: `python -m bench.placement --rooms {args.rooms} --joiners {args.joiners}`
(2 allocator replicas, 3 Janus servers, every join opens a new conference)

| measure | placement (ours) | Janus room creation alone | ratio |
|---|---|---|---|
| p50 latency (ms) | {p['p50_ms']:.1f} | {f['p50_ms']:.1f} | |
| p99 latency (ms) | {p['p99_ms']:.1f} | {f['p99_ms']:.1f} | |
| per second | {p['decisions_per_s']:.0f} decisions | {f['per_s']:.0f} creates | {result['ratios']['decisions_vs_janus_creates']:.2f} |

Conferences per server afterwards: {', '.join(f"{s['name']}={s['conferences']} (load {s['load']}/{s['capacity']})" for s in status['servers'])}
"""
    write_report("placement", result, md)
    print(md)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.placement", description=__doc__)
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--joiners", type=int, default=100)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
