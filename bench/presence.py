"""Presence benchmark: propagation of status changes across nodes, and cleanup after a
node is killed, with a raw NATS publish/subscribe across the same two servers as the floor.

    python -m bench.presence [--users 1000] [--rate 50] [--seconds 20]

Writes bench/results/presence.json and presence.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import nats

from camclient import Client

from .common import BenchCluster, machine, percentile, write_report

STATUSES = ["online", "away", "busy", "invisible"]


def shown(status: str) -> str:
    return "offline" if status == "invisible" else status


async def nats_floor(urls: list[str], rate: float, count: int, **opts: Any) -> list[float]:
    """Latency of a raw publish on server 1 received on server 2 (seconds)."""
    pub = await nats.connect(urls[0], **opts)
    sub = await nats.connect(urls[1], **opts)
    got: list[float] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        got.append(time.perf_counter() - float(msg.data))
        if len(got) >= count:
            done.set()

    await sub.subscribe("bench.floor", cb=on_msg)
    await sub.flush()
    await asyncio.sleep(0.5)
    for _ in range(count):
        await pub.publish("bench.floor", str(time.perf_counter()).encode())
        await pub.flush()
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(done.wait(), 10)
    await pub.close()
    await sub.close()
    return got


class Run:
    def __init__(
        self, cluster: BenchCluster, users: list[tuple[int, str]], rate: float, seconds: float
    ) -> None:
        self.cluster = cluster
        self.users = users
        self.rate = rate
        self.seconds = seconds
        self.node_of = {
            uid: ("camserver1" if i % 2 == 0 else "camserver2") for i, (uid, _) in enumerate(users)
        }
        self.token = dict(users)
        self.clients: dict[int, Client | None] = {}
        self.chosen: dict[int, str] = {uid: "online" for uid, _ in users}
        self.expect: dict[int, tuple[str, float]] = {}
        self.latencies: list[float] = []
        self.ops = 0
        self.rng = random.Random(7)

    async def connect_all(self) -> None:
        sem = asyncio.Semaphore(50)

        async def one(uid: int) -> None:
            async with sem:
                self.clients[uid] = await Client.connect(self.cluster.ws(self.node_of[uid]), self.token[uid])

        await asyncio.gather(*(one(uid) for uid, _ in self.users))

    def watcher_for(self, uid: int) -> int:
        return 1 if self.node_of[uid] == "camserver1" else 0  # the other node's watcher

    async def read(self, idx: int, watcher: Client) -> None:
        while True:
            event = await watcher.next_event("presence", timeout=3600)
            uid = event["user"]
            exp = self.expect.get(uid)
            if exp and self.watcher_for(uid) == idx and event["status"] == exp[0]:
                self.latencies.append(time.perf_counter() - exp[1])
                del self.expect[uid]

    async def op(self) -> None:
        uid = self.rng.choice([u for u, _ in self.users if u not in self.expect])
        client = self.clients.get(uid)
        now_shown = shown(self.chosen[uid]) if client else "offline"
        roll = self.rng.random()
        if client is None:
            self.expect[uid] = (shown(self.chosen[uid]), time.perf_counter())
            if shown(self.chosen[uid]) == "offline":
                del self.expect[uid]  # invisible: no transition to see
            self.clients[uid] = await Client.connect(self.cluster.ws(self.node_of[uid]), self.token[uid])
        elif roll < 0.5:
            self.clients[uid] = None
            if now_shown != "offline":
                self.expect[uid] = ("offline", time.perf_counter())
            await client.close()
        else:
            status = self.rng.choice([s for s in STATUSES if shown(s) != now_shown])
            self.chosen[uid] = status
            self.expect[uid] = (shown(status), time.perf_counter())
            await client.request("set_status", status=status)
        self.ops += 1

    async def churn(self) -> None:
        start = time.perf_counter()
        n = int(self.rate * self.seconds)
        tasks = []
        for i in range(n):
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.op()))
        await asyncio.gather(*tasks)
        deadline = time.perf_counter() + 10
        while self.expect and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cluster = await BenchCluster(presence=2).start()
    try:
        users = await cluster.make_users(args.users)
        watch_users = await cluster.make_users(2, prefix="watcher")
        run = Run(cluster, users, args.rate, args.seconds)
        t = time.perf_counter()
        await run.connect_all()
        connect_rate = len(users) / (time.perf_counter() - t)
        watchers = [
            await Client.connect(cluster.ws(node), token)
            for node, (_, token) in zip(["camserver1", "camserver2"], watch_users, strict=True)
        ]
        for w in watchers:
            await w.request("watch", users=[uid for uid, _ in users], timeout=60)
        readers = [asyncio.create_task(run.read(i, w)) for i, w in enumerate(watchers)]
        await asyncio.sleep(2)  # let the initial online transitions settle
        run.expect.clear()
        await run.churn()
        missing = len(run.expect)

        # Cleanup after kill -9 of camserver1: the watcher on camserver2 sees them offline.
        node1_online = {
            uid
            for uid, c in run.clients.items()
            if c is not None and run.node_of[uid] == "camserver1" and shown(run.chosen[uid]) != "offline"
        }
        for r in readers:
            r.cancel()
        seen: dict[int, float] = {}
        t_kill = time.perf_counter()
        cluster.procs["camserver1"].kill()

        async def watch_cleanup() -> None:
            while len(seen) < len(node1_online):
                event = await watchers[1].next_event("presence", timeout=60)
                if event["user"] in node1_online and event["status"] == "offline":
                    seen.setdefault(event["user"], time.perf_counter() - t_kill)

        await asyncio.wait_for(watch_cleanup(), 60)
        assert cluster.nats is not None
        floor = await nats_floor(cluster.nats.urls, args.rate, max(200, int(args.rate * 4)),
                                 **cluster.nats_options())
        for uid, c in run.clients.items():
            if c is not None and run.node_of[uid] == "camserver2":
                await c.close()
        await watchers[1].close()
    finally:
        cluster.stop()

    lat = run.latencies
    node_timeout = 6.0
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {"users": args.users, "rate_ops_per_s": args.rate, "seconds": args.seconds},
        "propagation": {
            "count": len(lat),
            "missing": missing,
            "ops": run.ops,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": max(lat) * 1000 if lat else None,
        },
        "nats_floor": {
            "count": len(floor),
            "p50_ms": percentile(floor, 50) * 1000,
            "p99_ms": percentile(floor, 99) * 1000,
        },
        "cleanup": {
            "sessions": len(node1_online),
            "configured_bound_s": node_timeout,
            "all_offline_s": max(seen.values()) if seen else None,
            "p50_s": percentile(list(seen.values()), 50),
        },
        "connect_rate_per_s": connect_rate,
    }
    p = result["propagation"]
    f = result["nats_floor"]
    c = result["cleanup"]
    result["ratios"] = {
        "p50_vs_nats_floor": p["p50_ms"] / f["p50_ms"],
        "p99_vs_nats_floor": p["p99_ms"] / f["p99_ms"],
    }
    md = f"""# Presence benchmark

Machine: {result["machine"]}
Command: `python -m bench.presence --users {args.users} --rate {args.rate} --seconds {args.seconds}`

| measure | ours | raw NATS floor | ratio | target |
|---|---|---|---|---|
| propagation p50 (ms) | {p["p50_ms"]:.1f} | {f["p50_ms"]:.2f} | {result["ratios"]["p50_vs_nats_floor"]:.1f} | |
| propagation p99 (ms) | {p["p99_ms"]:.1f} | {f["p99_ms"]:.2f} | {result["ratios"]["p99_vs_nats_floor"]:.1f} | < 1000 ms |
| transitions observed / missing | {p["count"]} / {p["missing"]} | | | 0 missing |
| cleanup after kill -9, all {c["sessions"]} sessions offline (s) | {c["all_offline_s"]:.2f} | | | <= {node_timeout} s + sweep |
| connect rate (sessions/s, with auth) | {connect_rate:.0f} | | | |
"""
    write_report("presence", result, md)
    print(md)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.presence", description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="churn operations per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
