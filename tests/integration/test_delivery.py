"""Delivery guarantees that do not need a crash to show: commit without publish, gap
repair on the live stream, loud failures during outages, resume limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypedDict, Unpack

import asyncpg
import pytest

from camclient import Client, ClientError
from camctl import rig
from tests.conftest import Cluster


async def send_once_back(client: Client, room: int, body: str, cid: str,
                         timeout: float = 30.0) -> dict[str, Any]:
    """Re-send with the same cid until the outage is over, as a client must; while it
    lasts, the only answer allowed is ``unavailable``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.send(room, body, cid=cid)
        except ClientError as e:
            assert e.code == "unavailable", e
            if time.monotonic() > deadline:
                raise AssertionError(f"still unavailable after {timeout:g}s: {e}") from None
            await asyncio.sleep(0.2)


async def commit_without_publish(pool: asyncpg.Pool, room: int, sender: int, body: str) -> int:
    """What a chat replica leaves behind when it dies between commit and publish."""
    seq = await pool.fetchval("SELECT seq FROM cam_post_message($1, $2, $3, 'text', $4)",
                              room, sender, f"c-{uuid.uuid4().hex}", body)
    assert seq is not None
    return int(seq)


class EdgeEnv(TypedDict, total=False):
    """The edge settings these tests change."""

    CAM_REPAIR_INTERVAL: str
    CAM_DRAIN_SECONDS: str


def cluster_with(cluster_factory: Any, **edge_env: Unpack[EdgeEnv]) -> Cluster:
    c: Cluster = cluster_factory(2)
    c.start_chat()
    c.start_presence()
    c.start_edge("camserver1", nats=0, **edge_env)
    c.start_edge("camserver2", nats=1, **edge_env)
    c.wait_edges()
    return c


async def test_message_committed_but_never_published_still_reaches_online_members(
    cluster_factory: Any, make_user: Any, pool: asyncpg.Pool
):
    cluster = cluster_with(cluster_factory, CAM_REPAIR_INTERVAL="1.0")
    a_u, b_u = await make_user(), await make_user()
    a = await cluster.connect("camserver1", a_u)
    b = await cluster.connect("camserver2", b_u)
    room = await a.request("create_room", name="r", members=[b_u[0]])
    await b.next_event("room_added")
    seq = await commit_without_publish(pool, room["id"], a.user["id"], "stranded")
    # No later message comes: the edges' repair check finds it (cam.repairInterval).
    for client in (a, b):
        got = await client.next_event("message", where=lambda e: e["kind"] == "text", timeout=10)
        assert (got["seq"], got["body"]) == (seq, "stranded")
    await a.close()
    await b.close()


async def test_a_sequence_jump_on_the_live_stream_is_filled_from_the_store_in_order(
    cluster_factory: Any, make_user: Any, pool: asyncpg.Pool
):
    # A repair interval far longer than the test: only gap detection can fill the hole.
    cluster = cluster_with(cluster_factory, CAM_REPAIR_INTERVAL="60")
    a_u, b_u = await make_user(), await make_user()
    a = await cluster.connect("camserver1", a_u)
    b = await cluster.connect("camserver2", b_u)
    room = await a.request("create_room", name="r", members=[b_u[0]])
    await b.next_event("room_added")
    lost = [await commit_without_publish(pool, room["id"], a.user["id"], f"lost {i}")
            for i in range(3)]
    ack = await a.send(room["id"], "after the gap")
    got = await b.messages(room["id"], 4)
    assert [m["seq"] for m in got] == [*lost, ack["seq"]]
    assert [m["body"] for m in got] == ["lost 0", "lost 1", "lost 2", "after the gap"]
    await a.close()
    await b.close()


async def test_sends_fail_loudly_while_the_database_is_down_and_retry_stores_once(
    tmp_path: Any, cluster_factory: Any, make_user: Any
):
    from camcore import accounts, db

    pg = rig.Postgres(tmp_path / "own-pg").start()
    try:
        dsn = pg.create_app_database("cam")
        await db.migrate(dsn)
        own = await db.create_pool(dsn, max_size=2)
        await accounts.create_user(own, "alice", "alice-password")
        await own.close()
        cluster: Cluster = cluster_factory(1)
        cluster.database = cluster.database_url = dsn  # this test's own PostgreSQL
        cluster.start_chat()
        cluster.start_edge("camserver1")
        cluster.wait_edges()
        alice = await cluster.connect("camserver1", ("alice", "alice-password"))
        room = await alice.request("create_room", name="r")
        pg.stop("immediate")
        with pytest.raises(ClientError) as exc:
            await alice.send(room["id"], "during the outage", cid="outage-1")
        assert exc.value.code == "unavailable"
        pg.start()
        # The same cid, retried once the database is back, is stored exactly once.
        ack = await send_once_back(alice, room["id"], "during the outage", "outage-1")
        again = await alice.send(room["id"], "during the outage", cid="outage-1")
        assert again["seq"] == ack["seq"]
        history = await alice.history(room["id"])
        assert [m["body"] for m in history["messages"] if m["kind"] == "text"] == [
            "during the outage"]
        await alice.close()
    finally:
        pg.stop()


async def test_sends_fail_loudly_while_the_bus_is_down(two_nodes: Cluster, make_user: Any):
    alice = await two_nodes.connect("camserver1", await make_user())
    room = await alice.request("create_room", name="r")
    for proc in two_nodes.nats.procs:
        proc.kill()
    with pytest.raises(ClientError) as exc:
        await alice.send(room["id"], "nobody hears this", cid="bus-1")
    assert exc.value.code == "unavailable"
    for i in range(len(two_nodes.nats.procs)):
        await asyncio.to_thread(two_nodes.nats.restart, i)
    ack = await send_once_back(alice, room["id"], "nobody hears this", "bus-1")
    history = await alice.history(room["id"])
    assert [m["seq"] for m in history["messages"] if m["kind"] == "text"] == [ack["seq"]]
    await alice.close()


async def test_resume_with_too_large_a_gap_asks_the_client_to_page(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    a = await two_nodes.connect("camserver1", a_u)
    room = await a.request("create_room", name="big", members=[b_u[0]])
    await pool.execute(
        "SELECT cam_post_message($1, $2, 'bulk-' || g, 'text', 'm' || g)"
        " FROM generate_series(1, 1100) g", room["id"], a.user["id"])
    b = await two_nodes.connect("camserver2", b_u, resume={room["id"]: 1})
    assert b.resync == [room["id"]]
    # Live delivery continues from the head; nothing was replayed.
    ack = await a.send(room["id"], "fresh")
    got = await b.next_event("message")
    assert got["seq"] == ack["seq"]
    # A small gap is replayed exactly.
    await b.close()
    more = [await a.send(room["id"], f"m{i}") for i in range(3)]
    b = await two_nodes.connect("camserver2", b_u, resume={room["id"]: ack["seq"]})
    assert b.resync == []
    replayed = await b.messages(room["id"], 3)
    assert [m["seq"] for m in replayed] == [m["seq"] for m in more]
    await a.close()
    await b.close()


async def test_sigterm_drains_health_first_then_closes_clients_with_4002(
    cluster_factory: Any, make_user: Any
):
    cluster = cluster_with(cluster_factory, CAM_DRAIN_SECONDS="1.5")
    alice = await cluster.connect("camserver1", await make_user())
    edge = cluster.procs["camserver1"]
    edge.signal(15)
    # First the health check turns 503 while the client is still connected...
    await asyncio.to_thread(rig.wait_for, lambda: rig.http_get(
        cluster.http("camserver1") + "/CAMServer/healthCheck")[0] == 503, 5, "503 on drain")
    assert alice.close_code is None
    assert (await alice.request("ping"))["pong"] is True
    # ...then the client is told to reconnect elsewhere, and only then the process exits,
    # by itself and cleanly: exit status 0, not death by the signal.
    assert await alice.wait_closed(10) == 4002
    await asyncio.to_thread(rig.wait_for, lambda: not edge.alive(), 15, "edge exit")
    assert isinstance(edge, rig.Proc)
    assert edge.popen is not None and edge.popen.returncode == 0, edge.tail()
