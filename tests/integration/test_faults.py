"""Fault injection: whatever single fault happens, every acknowledged message reaches
every member exactly once, in room order, and nothing is shown that was not stored.

Rig: 3 NATS servers with routes, PostgreSQL, 3 edges (each on its own NATS server),
2 chat replicas, 1 presence replica; 9 clients spread over the edges, all members of 3
rooms, each sending at a steady rate through a failover ``Session``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from camclient import Client, Session, login
from camctl import rig
from tests.conftest import Cluster

EDGES = ["camserver1", "camserver2", "camserver3"]
SEND_EVERY = 0.15
SETTLE = 45.0


@dataclass
class Member:
    name: str
    session: Session
    home: str
    start: dict[int, int] = field(default_factory=dict)
    log: list[tuple[int, int, str, str, float]] = field(default_factory=list)
    sent: int = 0
    acked: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        while True:
            event = await self.session.events.get()
            if event.get("op") == "message":
                self.log.append((event["room"], event["seq"], event["cid"], event["body"],
                                 time.monotonic()))


class Rig:
    def __init__(self, cluster: Cluster, pool: asyncpg.Pool) -> None:
        self.cluster = cluster
        self.pool = pool
        self.members: list[Member] = []
        self.rooms: list[int] = []
        self.first_try: dict[str, float] = {}
        self.sending = False
        self.senders: list[asyncio.Task[None]] = []

    async def setup(self, make_user: Any, n: int = 9, **session_kw: Any) -> None:
        users = [await make_user() for _ in range(n)]
        for i, user in enumerate(users):
            home = EDGES[i % len(EDGES)]
            token = await login(self.cluster.http(home), *user)
            order = EDGES[EDGES.index(home):] + EDGES[:EDGES.index(home)]
            session = Session([self.cluster.ws(e) for e in order], token,
                              rng=random.Random(i), **session_kw)
            self.members.append(Member(user[0], session, home))
        owner = await Client.connect(self.cluster.ws("camserver1"),
                                     await login(self.cluster.http("camserver1"), *users[0]))
        for r in range(3):
            room = await owner.request("create_room", name=f"room{r}",
                                       members=[u[0] for u in users[1:]])
            self.rooms.append(room["id"])
        await owner.close()
        for m in self.members:
            await m.session.start()
            m.start = {room: m.session.last_seq[room] for room in self.rooms}
            m.reader = asyncio.create_task(m.read())

    async def _send_loop(self, m: Member, rng: random.Random, body_size: int,
                         every: float, limit: int | None) -> None:
        sent = 0
        while self.sending and (limit is None or sent < limit):
            sent += 1
            room = rng.choice(self.rooms)
            cid = f"{m.name}-{m.sent}"
            m.sent += 1  # one event loop: no two loops of a member take the same number
            self.first_try[cid] = time.monotonic()
            # Random text: compression must not shrink the load away.
            pad = base64.b64encode(rng.randbytes(body_size)).decode()
            body = f"{cid} {pad}"[:max(body_size, len(cid))]
            ack = await m.session.send(room, body, cid=cid, deadline=90)
            m.acked[cid] = (ack["room"], ack["seq"], time.monotonic())
            await asyncio.sleep(every * rng.uniform(0.5, 1.5))

    def start_load(self, *, body_size: int = 40, members: list[Member] | None = None,
                   every: float = SEND_EVERY, per_member: int = 1,
                   limit: int | None = None) -> None:
        self.sending = True
        for i, m in enumerate(members or self.members):
            for k in range(per_member):
                self.senders.append(asyncio.create_task(self._send_loop(
                    m, random.Random(1000 + i * 10 + k), body_size, every, limit)))

    async def stop_load(self) -> None:
        self.sending = False
        await asyncio.gather(*self.senders)
        self.senders.clear()

    async def heads(self) -> dict[int, int]:
        rows = await self.pool.fetch("SELECT id, last_seq FROM rooms WHERE id = ANY($1)", self.rooms)
        return {r["id"]: r["last_seq"] for r in rows}

    async def settle(self) -> dict[int, int]:
        heads = await self.heads()
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if all(m.session.last_seq.get(r, 0) >= h for m in self.members for r, h in heads.items()):
                await asyncio.sleep(0.5)  # anything duplicated would show up now
                return heads
            await asyncio.sleep(0.1)
        return heads

    async def check(self, scenario: str) -> dict[str, Any]:
        heads = await self.settle()
        stored = {(r["room_id"], r["seq"]): (r["cid"], r["body"]) for r in await self.pool.fetch(
            "SELECT room_id, seq, cid, body FROM messages WHERE room_id = ANY($1)", self.rooms)}
        problems: list[str] = []
        deliveries, max_delay = 0, 0.0
        acked = {cid: a for m in self.members for cid, a in m.acked.items()}
        for m in self.members:
            for room in self.rooms:
                seqs = [seq for r, seq, *_ in m.log if r == room]
                want = list(range(m.start[room] + 1, heads[room] + 1))
                if seqs != want:
                    missing = sorted(set(want) - set(seqs))
                    dup = sorted({s for s in seqs if seqs.count(s) > 1})
                    problems.append(f"{m.name} room {room}: missing {missing[:10]} duplicated "
                                    f"{dup[:10]} out of order {seqs != sorted(seqs)}")
            for room, seq, cid, body, t in m.log:
                deliveries += 1
                if stored.get((room, seq)) != (cid, body):
                    problems.append(f"{m.name} was shown ({room}, {seq}, {cid}) not as stored")
                if cid in self.first_try:
                    max_delay = max(max_delay, t - self.first_try[cid])
        for cid, (room, seq, _) in acked.items():
            if stored.get((room, seq), ("",))[0] != cid:
                problems.append(f"acknowledged {cid} at ({room}, {seq}) is not stored there")
        report = {"scenario": scenario, "sent": sum(m.sent for m in self.members),
                  "acknowledged": len(acked), "delivered": deliveries,
                  "longest_delivery_delay_s": round(max_delay, 2),
                  "reconnects": sum(m.session.connections - 1 for m in self.members)}
        print(f"\nfault report: {report}")
        assert not problems, "\n".join(problems[:20])
        assert report["acknowledged"] > 0
        return report

    async def close(self) -> None:
        for m in self.members:
            if m.reader:
                m.reader.cancel()
            await m.session.close()


@pytest.fixture
async def fault_rig(cluster_factory: Any, pool: asyncpg.Pool, make_user: Any) -> Any:
    cluster: Cluster = cluster_factory(3)
    cluster.start_chat("chat1")
    cluster.start_chat("chat2")
    cluster.start_presence()
    for i, edge in enumerate(EDGES):
        cluster.start_edge(edge, nats=i)
    cluster.wait_edges()
    r = Rig(cluster, pool)
    await r.setup(make_user)
    yield r
    await r.close()


async def run(rig_: Rig, scenario: str, fault: Callable[[], Awaitable[None]],
              after: float = 3.0) -> dict[str, Any]:
    rig_.start_load()
    await asyncio.sleep(2.0)
    await fault()
    await asyncio.sleep(after)
    await rig_.stop_load()
    return await rig_.check(scenario)


async def test_kill_9_of_an_edge_mid_stream(fault_rig: Rig):
    async def fault() -> None:
        fault_rig.cluster.procs["camserver2"].kill()

    report = await run(fault_rig, "kill -9 edge", fault)
    assert report["reconnects"] >= 3  # camserver2's clients moved to other edges


async def test_kill_9_of_a_chat_replica_mid_send(fault_rig: Rig):
    async def fault() -> None:
        fault_rig.cluster.procs["chat1"].kill()

    await run(fault_rig, "kill -9 chat replica", fault)


async def test_kill_9_of_one_nats_server(fault_rig: Rig):
    async def fault() -> None:
        fault_rig.cluster.nats.procs[1].kill()

    await run(fault_rig, "kill -9 NATS server", fault, after=4.0)


async def test_all_nats_servers_stopped_for_10_seconds(fault_rig: Rig):
    async def fault() -> None:
        for proc in fault_rig.cluster.nats.procs:
            proc.kill()
        await asyncio.sleep(10)
        for i in range(len(fault_rig.cluster.nats.procs)):
            await asyncio.to_thread(fault_rig.cluster.nats.restart, i)

    await run(fault_rig, "all NATS down 10 s", fault, after=4.0)


async def test_postgres_restart_with_immediate_shutdown(fault_rig: Rig, postgres: rig.Postgres):
    async def fault() -> None:
        await asyncio.to_thread(postgres.stop, "immediate")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres.start)

    await run(fault_rig, "Postgres immediate restart", fault, after=4.0)


async def test_edge_frozen_for_15_seconds(fault_rig: Rig):
    edge = fault_rig.cluster.procs["camserver3"]

    async def fault() -> None:
        edge.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(15)
        finally:
            edge.signal(signal.SIGCONT)

    report = await run(fault_rig, "SIGSTOP edge 15 s", fault)
    assert report["reconnects"] >= 3


async def test_slow_consumer_is_cut_off_and_resumes_while_others_keep_up(
    cluster_factory: Any, pool: asyncpg.Pool, make_user: Any
):
    cluster: Cluster = cluster_factory(3)
    cluster.start_chat("chat1")
    cluster.start_chat("chat2")
    cluster.start_presence()
    for i, edge in enumerate(EDGES):
        # Protocol pings off: only the full outgoing queue may cut the slow client.
        cluster.start_edge(edge, nats=i, CAM_OUTGOING_QUEUE_FRAMES="64",
                           CAM_WS_PING_INTERVAL="0")
    cluster.wait_edges()
    r = Rig(cluster, pool)
    # No client-side liveness pings: only the server may decide this client is too slow.
    # No compression either, so every byte of the flood reaches the socket buffers.
    await r.setup(make_user, ping_interval=3600, ping_timeout=3600, compression=None)
    try:
        slow = r.members[0]
        assert slow.session.client is not None
        sock = slow.session.client.ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.session.client.ws.transport.pause_reading()
        # A flood of large messages, far more than socket buffers and the queue hold
        # (about 9 MB), yet less than one resume replays (under 1000 a room).
        r.start_load(body_size=3900, members=r.members[1:], every=0.0, per_member=3, limit=100)
        log = cluster.procs[slow.home].log_path
        await asyncio.to_thread(rig.wait_for, lambda: b"cannot keep up" in log.read_bytes(),
                                120, "the edge to close the slow client", 0.2)
        # While the slow one reads nothing, the others are not held back.
        heads = await r.heads()
        await asyncio.sleep(1.0)
        fast = r.members[1:]
        assert all(m.session.last_seq[room] >= heads[room] for m in fast for room in r.rooms)
        await r.stop_load()
        slow.session.client.ws.transport.resume_reading()
        report = await r.check("slow consumer")
        assert not slow.session.resync
        assert slow.session.close_codes and slow.session.close_codes[0] in (4001, 1006)
        assert report["reconnects"] >= 1
    finally:
        await r.close()


async def test_rolling_restart_of_all_edges(fault_rig: Rig):
    cluster = fault_rig.cluster

    async def fault() -> None:
        for i, edge in enumerate(EDGES):
            await asyncio.to_thread(cluster.procs[edge].stop)
            cluster.start_edge(edge, nats=i)
            await asyncio.to_thread(cluster.wait_edges, edge)
            await asyncio.sleep(1.0)

    report = await run(fault_rig, "rolling restart", fault)
    assert report["reconnects"] >= 9
