"""Fault injection: whatever single fault happens, every acknowledged message reaches
every member exactly once, in room order, and nothing is shown that was not stored.

Rig: 3 NATS servers with routes, PostgreSQL, 3 edges (each on its own NATS server),
2 chat replicas, 1 presence replica; 9 clients spread over the edges, all members of 3
rooms, each sending at a steady rate through a failover ``Session``.

Each scenario also shows that its fault really hit traffic: sends were in flight (started,
not yet acknowledged) at the moment it struck, and then what the fault did to them and
to the clients (held until recovery, re-sent elsewhere after a reconnect, ...).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.msg import Msg

from camclient import Client, Session, login
from camcore import subjects
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
    pending: set[str] = field(default_factory=set)
    """cids of sends started and not yet acknowledged."""
    reader: asyncio.Task[None] | None = None

    @property
    def node(self) -> str | None:
        """The edge this member is connected to now."""
        client = self.session.client
        return client.hello.get("node") if client is not None else None

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
        self.hit: set[str] = set()
        """cids of the sends in flight at the moments a fault struck."""

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
            m.pending.add(cid)
            ack = await m.session.send(room, body, cid=cid, deadline=90)
            m.pending.discard(cid)
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

    def connected_to(self, node: str) -> list[Member]:
        return [m for m in self.members if m.node == node]

    async def in_flight(self, members: list[Member] | None = None,
                        timeout: float = 10.0) -> set[str]:
        """Poll until some of ``members`` (default: all) have sends started but not yet
        acknowledged; return their cids, also kept in ``hit``. The caller strikes at
        once, with no await in between, so these are in flight at that moment."""
        members = self.members if members is None else members
        assert members, "nobody to wait for"
        deadline = time.monotonic() + timeout
        while not (pending := {cid for m in members for cid in m.pending}):
            if time.monotonic() > deadline:
                raise AssertionError(f"no send of {[m.name for m in members]} in flight "
                                     f"within {timeout:g}s")
            await asyncio.sleep(0.001)
        self.hit |= pending
        return pending

    def held_across(self, moment: float) -> list[Member]:
        """Members with a send first tried before ``moment`` and acknowledged after it."""
        return [m for m in self.members
                if any(self.first_try[cid] < moment < at for cid, (_, _, at) in m.acked.items())]

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
        for cid in sorted(self.hit - acked.keys()):
            problems.append(f"{cid}, in flight when the fault struck, was never acknowledged")
        report: dict[str, Any] = {
            "scenario": scenario, "sent": sum(m.sent for m in self.members),
            "acknowledged": len(acked), "delivered": deliveries,
            "in_flight_at_fault": len(self.hit),
            "longest_delivery_delay_s": round(max_delay, 2),
            "reconnects": sum(m.session.connections - 1 for m in self.members),
            "close_codes": {m.name: m.session.close_codes
                            for m in self.members if m.session.close_codes}}
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
    await asyncio.sleep(2.0)  # the load runs for 2 s before the fault...
    idle = [m.name for m in rig_.members if not m.acked]
    assert not idle, f"not sending before the fault: {idle}"
    await fault()
    await asyncio.sleep(after)  # ...and goes on for `after` seconds after it
    await rig_.stop_load()
    report = await rig_.check(scenario)
    # The fault struck while sends were in flight, and each of them was stored (check).
    assert rig_.hit, "no send was in flight when the fault struck"
    return report


def assert_kept_connections(report: dict[str, Any]) -> None:
    """No edge closed a client's connection because of the fault. The nine clients and
    the load share one event loop with the checker, on the same two cores as the whole
    cluster: one client's own liveness ping may time out under that load (1006, then a
    resume that loses nothing), so one such reconnect is tolerated, and no other code."""
    codes = [c for cs in report["close_codes"].values() for c in cs]
    assert all(c == 1006 for c in codes), codes
    assert report["reconnects"] <= 1, report


class ChatServed:
    """The ``served`` counter of each chat replica by pid, from its heartbeats on the bus."""

    def __init__(self) -> None:
        self.served: dict[int, float] = {}
        self.nc: Any = None

    async def start(self, urls: list[str], **opts: Any) -> ChatServed:
        self.nc = await nats.connect(servers=urls, name="test-heartbeats", **opts)
        await self.nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_beat)
        return self

    async def _on_beat(self, msg: Msg) -> None:
        beat = json.loads(msg.data)
        if beat.get("kind") == "chat":
            self.served[int(beat["pid"])] = float(beat.get("load", {}).get("served", 0))

    async def close(self) -> None:
        await self.nc.close()


async def test_kill_9_of_an_edge_mid_stream(fault_rig: Rig):
    victims: list[Member] = []

    async def fault() -> None:
        victims.extend(fault_rig.connected_to("camserver2"))
        await fault_rig.in_flight(victims)  # one of its clients is waiting for an ack
        fault_rig.cluster.procs["camserver2"].kill()

    report = await run(fault_rig, "kill -9 edge", fault)
    assert report["reconnects"] >= 3  # camserver2's clients moved to other edges
    # Every client the edge held lost its connection without a close frame (1006),
    # reconnected to another edge, and got its interrupted send acknowledged there.
    assert len(victims) >= 3
    for m in victims:
        assert 1006 in m.session.close_codes, (m.name, m.session.close_codes)
        assert m.session.connections >= 2 and m.node not in (None, "camserver2"), m.name


async def test_kill_9_of_a_chat_replica_mid_send(fault_rig: Rig):
    chat1 = fault_rig.cluster.procs["chat1"]
    heartbeats = await ChatServed().start(fault_rig.cluster.nats.urls,
                                          **fault_rig.cluster.nats_options())
    served: dict[str, float] = {}

    async def fault() -> None:
        await fault_rig.in_flight()
        served["at_kill"] = heartbeats.served[chat1.pid]
        chat1.kill()

    try:
        deadline = time.monotonic() + 10
        while chat1.pid not in heartbeats.served:
            assert time.monotonic() < deadline, "no heartbeat from chat1"
            await asyncio.sleep(0.05)
        served["at_load"] = heartbeats.served[chat1.pid]
        report = await run(fault_rig, "kill -9 chat replica", fault)
    finally:
        await heartbeats.close()
    # The killed replica was serving the load up to its death: a share of the ~120 sends
    # before the kill, more than the edges' repair checks (a few a second) could make up.
    assert served["at_kill"] - served["at_load"] >= 30, served
    # The clients did not notice beyond a delay: no connection was dropped.
    assert_kept_connections(report)


async def test_kill_9_of_one_nats_server(fault_rig: Rig):
    log = fault_rig.cluster.procs["camserver2"].log_path
    at_kill: dict[str, int] = {}

    async def fault() -> None:
        # camserver2 is attached to this server only: its clients' sends cross it.
        await fault_rig.in_flight(fault_rig.connected_to("camserver2"))
        at_kill["log"] = log.stat().st_size
        fault_rig.cluster.nats.procs[1].kill()

    report = await run(fault_rig, "kill -9 NATS server", fault, after=4.0)
    # The edge that used the dead server moved to another one by itself...
    after_kill = log.read_bytes()[at_kill["log"]:]
    assert b"bus: reconnected" in after_kill, after_kill[-2000:]
    # ...and its clients kept their connections.
    assert_kept_connections(report)


async def test_all_nats_servers_stopped_for_10_seconds(fault_rig: Rig):
    restart: dict[str, float] = {}

    async def fault() -> None:
        await fault_rig.in_flight()
        for proc in fault_rig.cluster.nats.procs:
            proc.kill()
        await asyncio.sleep(10)  # the outage
        restart["begins"] = time.monotonic()
        for i in range(len(fault_rig.cluster.nats.procs)):
            await asyncio.to_thread(fault_rig.cluster.nats.restart, i)

    await run(fault_rig, "all NATS down 10 s", fault, after=4.0)
    # Every client kept sending into the outage: each had a send that could only be
    # acknowledged once the bus was back (and was, exactly once: check).
    held = fault_rig.held_across(restart["begins"])
    assert len(held) == len(fault_rig.members), [m.name for m in held]


async def test_postgres_restart_with_immediate_shutdown(fault_rig: Rig, postgres: rig.Postgres):
    restart: dict[str, float] = {}

    async def fault() -> None:
        await fault_rig.in_flight()
        await asyncio.to_thread(postgres.stop, "immediate")
        await asyncio.sleep(1.0)  # the outage
        restart["begins"] = time.monotonic()
        await asyncio.to_thread(postgres.start)

    report = await run(fault_rig, "Postgres immediate restart", fault, after=4.0)
    # Every client had a send held until the database was back; no connection dropped.
    held = fault_rig.held_across(restart["begins"])
    assert len(held) == len(fault_rig.members), [m.name for m in held]
    assert_kept_connections(report)


async def test_edge_frozen_for_15_seconds(fault_rig: Rig):
    edge = fault_rig.cluster.procs["camserver3"]
    frozen: list[Member] = []
    stuck: set[str] = set()
    thawed: dict[str, float] = {}

    async def fault() -> None:
        frozen.extend(fault_rig.connected_to("camserver3"))
        stuck.update(await fault_rig.in_flight(frozen))
        edge.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(15)  # the freeze
        finally:
            edge.signal(signal.SIGCONT)
            thawed["at"] = time.monotonic()

    report = await run(fault_rig, "SIGSTOP edge 15 s", fault)
    assert report["reconnects"] >= 3
    # The frozen edge's clients gave up on it and moved on by themselves...
    assert len(frozen) >= 3
    for m in frozen:
        assert m.session.connections >= 2 and m.session.close_codes, m.name
    # ...and the sends stuck in it were re-sent elsewhere and acknowledged while it was
    # still frozen.
    acked = {cid: at for m in frozen for cid, (_, _, at) in m.acked.items()}
    late = {cid: round(acked[cid] - thawed["at"], 2) for cid in stuck if acked[cid] >= thawed["at"]}
    assert not late, f"acknowledged only after the edge ran again: {late}"


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
        # While the slow one reads nothing, the others are not held back: they reach
        # every room's head.
        heads = await r.heads()
        fast = r.members[1:]
        deadline = time.monotonic() + 10
        while behind := {(m.name, room) for m in fast for room in r.rooms
                         if m.session.last_seq.get(room, 0) < heads[room]}:
            assert time.monotonic() < deadline, f"fast members held back: {sorted(behind)}"
            await asyncio.sleep(0.05)
        await r.stop_load()
        slow.session.client.ws.transport.resume_reading()
        report = await r.check("slow consumer")
        assert not slow.session.resync
        # The slow one itself was cut off (4001, or 1006 when even the close frame could
        # not reach it), reconnected and got everything by its resume.
        assert slow.session.close_codes and slow.session.close_codes[0] in (4001, 1006)
        assert slow.session.connections >= 2
        assert report["reconnects"] >= 1
    finally:
        await r.close()


async def test_rolling_restart_of_all_edges(fault_rig: Rig):
    cluster = fault_rig.cluster
    exits: dict[str, int | None] = {}

    async def fault() -> None:
        for i, edge in enumerate(EDGES):
            # Each edge gets SIGTERM while one of its clients waits for an ack, and must
            # drain and exit by itself.
            proc = cluster.procs[edge]
            assert isinstance(proc, rig.Proc)
            await fault_rig.in_flight(fault_rig.connected_to(edge))
            proc.signal(signal.SIGTERM)
            await asyncio.to_thread(rig.wait_for, functools.partial(_exited, proc), 15,
                                    f"{edge} to exit")
            exits[edge] = proc.popen.returncode if proc.popen is not None else None
            cluster.start_edge(edge, nats=i)
            await asyncio.to_thread(cluster.wait_edges, edge)
            await asyncio.sleep(1.0)  # pace: one edge a second

    report = await run(fault_rig, "rolling restart", fault)
    assert report["reconnects"] >= 9
    # Every edge drained and exited by itself, and every client was told to reconnect
    # elsewhere (4002; 1012 only if it did not take the close in time) at least once.
    assert exits == dict.fromkeys(EDGES, 0)
    for m in fault_rig.members:
        assert {4002, 1012} & set(m.session.close_codes), (m.name, m.session.close_codes)


def _exited(proc: rig.Proc) -> bool:
    return not proc.alive()
