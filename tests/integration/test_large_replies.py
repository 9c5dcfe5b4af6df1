"""Replies that would not fit in one bus message: a user in 10,000 rooms, a room of
maximum-size messages. Every such answer is paged in bytes as well as in count, and an
answer that still does not fit is refused with ``too_large`` at once, not a timeout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from camclient import Client
from camcore import bus
from camcore.errors import CamError
from tests.conftest import Cluster
from tests.integration.test_delivery import commit_without_publish

BIG = "\U0001d11e" * 4000  # 4000 four-byte characters: 16 KB, the longest message body
MESSAGES = 200  # 3.2 MB of bodies: 200 of them are six times the bus payload limit


async def store_big_messages(pool: asyncpg.Pool, room: int, sender: int, count: int) -> None:
    """Store ``count`` maximum-size messages as chat does, without publishing them."""
    await pool.execute(
        "SELECT cam_post_message($1, $2, 'big-' || g, 'text', $3)"
        " FROM generate_series(1, $4) g", room, sender, BIG, count)


async def all_seqs(pool: asyncpg.Pool, room: int) -> list[int]:
    return [r["seq"] for r in await pool.fetch(
        "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room)]


async def test_a_member_of_10000_rooms_logs_in_on_every_node_and_lists_them_all(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    user = await make_user()
    uid = await pool.fetchval("SELECT id FROM users WHERE username = $1", user[0])
    # Names of 95 four-byte characters: the whole list is about 4 MB of JSON.
    await pool.execute(
        "INSERT INTO rooms (kind, name, created_by)"
        " SELECT 'group', repeat($2, 90) || g, $1 FROM generate_series(1, 10000) g",
        uid, "\U0001d11e")
    await pool.execute("INSERT INTO room_members (room_id, user_id)"
                       " SELECT id, $1 FROM rooms WHERE created_by = $1", uid)
    stored = [r["id"] for r in await pool.fetch(
        "SELECT room_id AS id FROM room_members WHERE user_id = $1 ORDER BY room_id", uid)]
    assert len(stored) == 10_000
    for node in ("camserver1", "camserver2"):
        client = await two_nodes.connect(node, user)
        # auth answered its first page and a cursor; the client paged the rest.
        assert [r["id"] for r in client.rooms] == stored
        listed = await client.list_rooms()
        assert [r["id"] for r in listed] == stored
        assert all(r["name"].startswith("\U0001d11e" * 90) for r in listed)
        # A page asked by count stops at that count, and its cursor continues after it.
        page = await client.request("rooms", after=stored[99], limit=50)
        assert [r["id"] for r in page["rooms"]] == stored[100:150]
        assert page["next"] == stored[149]
        # Every room is delivered, not only those of the first page.
        ack = await client.send(stored[-1], f"last room on {node}")
        got = await client.next_event("message", where=lambda e: e["room"] == stored[-1])
        assert got["seq"] == ack["seq"]
        await client.close()


async def test_a_room_of_maximum_size_messages_pages_with_the_largest_history_limit(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    alice = await two_nodes.connect("camserver1", await make_user())
    room = (await alice.request("create_room", name="big"))["id"]
    await store_big_messages(pool, room, alice.user["id"], MESSAGES)
    stored = await all_seqs(pool, room)

    forward: list[dict[str, Any]] = []
    after, pages = 0, 0
    while True:
        page = await alice.history(room, after=after, limit=200)
        assert page["messages"], page
        forward += page["messages"]
        pages += 1
        if not page["has_more"]:
            break
        after = page["messages"][-1]["seq"]
    assert [m["seq"] for m in forward] == stored
    assert all(m["body"] == BIG for m in forward if m["kind"] == "text")
    assert pages > 5  # cut by bytes, not by the limit of 200

    backward: list[dict[str, Any]] = []
    page = await alice.history(room, limit=200)
    backward = page["messages"]
    while page["has_more"]:
        page = await alice.history(room, before=backward[0]["seq"], limit=200)
        backward = page["messages"] + backward
    assert [m["seq"] for m in backward] == stored
    await alice.close()


async def test_a_client_resuming_from_0_on_another_node_gets_every_maximum_size_message_once(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    room = (await alice.request("create_room", name="big", members=[b_u[0]]))["id"]
    for i in range(3):  # a few through the client, the rest stored as chat stores them
        await alice.send(room, BIG, cid=f"sent-{i}")
    await store_big_messages(pool, room, alice.user["id"], MESSAGES - 3)
    stored = await all_seqs(pool, room)

    bob = await two_nodes.connect("camserver2", b_u, resume={room: 0})
    assert bob.resync == []
    got = await bob.messages(room, len(stored), timeout=30)
    assert [m["seq"] for m in got] == stored
    assert all(m["body"] == BIG for m in got if m["kind"] == "text")
    await asyncio.sleep(1.0)
    assert not [e for e in drain(bob) if e.get("op") == "message"]  # nothing twice
    await alice.close()
    await bob.close()


async def test_a_lost_tail_of_maximum_size_messages_is_repaired_in_order(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    room = (await alice.request("create_room", name="big", members=[b_u[0]]))["id"]
    await bob.next_event("room_added")
    # Committed, never published: only the edges' repair check can find them.
    lost = [await commit_without_publish(pool, room, alice.user["id"], BIG)
            for _ in range(MESSAGES)]
    for client in (alice, bob):
        got = await client.messages(room, MESSAGES, timeout=30)
        assert [m["seq"] for m in got] == lost
        assert all(m["body"] == BIG for m in got)
    await asyncio.sleep(1.5)  # more than two repair intervals
    for client in (alice, bob):
        assert not [e for e in drain(client) if e.get("op") == "message"]
    await alice.close()
    await bob.close()


def drain(client: Client) -> list[dict[str, Any]]:
    events = []
    while not client.events.empty():
        events.append(client.events.get_nowait())
    return events


# ---------------------------------------------------------------- the bus itself


class Ask(msgspec.Struct):
    size: int


@pytest.fixture
async def rpc(nats_url: str) -> AsyncIterator[tuple[Any, str]]:
    nc = await bus.connect([nats_url], "test-large-replies", connect_deadline=10)

    async def answer(req: Ask) -> str:
        return "x" * req.size

    prefix = f"test.{uuid.uuid4().hex}"
    server = bus.RpcServer(nc, prefix, "q", {"answer": (Ask, answer)})
    await server.start()
    yield nc, prefix
    await server.stop()
    await nc.close()


async def test_an_answer_larger_than_the_bus_payload_is_refused_with_too_large_at_once(
    rpc: tuple[Any, str]
):
    nc, prefix = rpc
    assert await bus.call(nc, f"{prefix}.answer", Ask(size=1000)) == "x" * 1000
    started = time.monotonic()
    with pytest.raises(CamError) as exc:
        await bus.call(nc, f"{prefix}.answer", Ask(size=nc.max_payload + 1), timeout=5)
    assert exc.value.code == bus.TOO_LARGE
    assert "payload limit" in exc.value.message
    assert time.monotonic() - started < 2  # an answer, not the requester's timeout
