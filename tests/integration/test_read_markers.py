"""Read markers and room summaries, across two nodes: ``mark_read`` moves the user's
marker (never back) and every connection of the user, on both nodes, gets ``read``;
every room object carries ``read_seq``, ``unread`` (others' text messages after the
marker, up to 1000) and ``last_message``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg

from camclient import Client
from tests.conftest import Cluster
from tests.integration.test_membership import Seen, fence, refused, text

Event = dict[str, Any]


def read(room: int, seq: int | None = None) -> Callable[[Event], bool]:
    return lambda e: (e.get("op") == "read" and e["room"] == room
                      and (seq is None or e["read_seq"] == seq))


def room_added(room: int) -> Callable[[Event], bool]:
    return lambda e: e.get("op") == "room_added" and e["room"]["id"] == room


async def room_of(client: Client, room: int) -> Event:
    """The room object of ``room`` in the client's listing (``rooms``)."""
    found = [r for r in await client.list_rooms() if r["id"] == room]
    assert len(found) == 1, found
    return found[0]


async def marker(pool: asyncpg.Pool, user: int, room: int) -> int | None:
    value = await pool.fetchval(
        "SELECT read_seq FROM read_markers WHERE user_id = $1 AND room_id = $2", user, room)
    return None if value is None else int(value)


async def test_a_read_marker_reaches_every_connection_of_the_user_on_both_nodes(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob1 = await two_nodes.connect("camserver1", b_u)
    bob2 = await two_nodes.connect("camserver2", b_u)
    seen_a, seen_b1, seen_b2 = Seen(alice), Seen(bob1), Seen(bob2)
    room = (await alice.request("create_room", name="team", members=[b_u[0]]))["id"]
    for seen in (seen_b1, seen_b2):
        await seen.wait("room_added", room_added(room))
    acks = [await alice.send(room, f"hello {i}") for i in range(3)]
    for seen in (seen_b1, seen_b2):
        await seen.wait("the last message", text(room, "hello 2"))

    # Marked on camserver2: the caller's connection and the one on camserver1 hear it.
    result = await bob2.mark_read(room, acks[1]["seq"])
    assert result == {"room": room, "read_seq": acks[1]["seq"]}
    for seen in (seen_b1, seen_b2):
        event = await seen.wait("read", read(room, acks[1]["seq"]))
        assert event == {"op": "read", "room": room, "read_seq": acks[1]["seq"]}
    assert await marker(pool, bob1.user["id"], room) == acks[1]["seq"]
    # Each node lists it from the store, and so does a new connection's auth.
    for bob in (bob1, bob2):
        listed = await room_of(bob, room)
        assert listed["read_seq"] == acks[1]["seq"] and listed["unread"] == 1
    bob3 = await two_nodes.connect("camserver1", b_u)
    [fresh] = [r for r in bob3.rooms if r["id"] == room]
    assert fresh["read_seq"] == acks[1]["seq"] and fresh["unread"] == 1

    # Marked on camserver1 now: all three of bob's connections hear it.
    await bob1.mark_read(room, acks[2]["seq"])
    for seen in (seen_b1, seen_b2, Seen(bob3)):
        await seen.wait("the second read", read(room, acks[2]["seq"]))
    assert (await room_of(bob3, room))["unread"] == 0
    # Bob's marker is bob's: alice is told nothing and her own marker did not move.
    await fence(bob1, room, seen_a)
    assert not seen_a.matching(lambda e: e.get("op") == "read")
    mine = await room_of(alice, room)
    assert mine["read_seq"] == 0 and mine["unread"] == 1  # bob's fence message
    for c in (alice, bob1, bob2, bob3):
        await c.close()


async def test_a_read_marker_never_goes_back_nor_past_the_rooms_head(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u = await make_user()
    alice1 = await two_nodes.connect("camserver1", a_u)
    alice2 = await two_nodes.connect("camserver2", a_u)
    seen1, seen2 = Seen(alice1), Seen(alice2)
    room = (await alice1.request("create_room", name="notes"))["id"]
    for i in range(5):
        await alice1.send(room, f"note {i}")
    head = (await room_of(alice1, room))["last_seq"]
    assert head == 6

    assert await alice1.mark_read(room, 10**9) == {"room": room, "read_seq": head}
    assert await alice2.mark_read(room, 2) == {"room": room, "read_seq": head}
    assert await alice1.mark_read(room, 0) == {"room": room, "read_seq": head}
    assert await marker(pool, alice1.user["id"], room) == head
    for seen in (seen1, seen2):
        await seen.wait("read", read(room, head))

    # Concurrent marks from both nodes end at the highest of them; no connection is
    # ever told a lower marker after a higher one.
    for i in range(6):
        await alice1.send(room, f"more {i}")
    head = (await room_of(alice1, room))["last_seq"]
    seqs = [7, 12, 9, 8, 11, 10, 12, 7]
    results = await asyncio.gather(*(
        (alice1 if i % 2 else alice2).mark_read(room, s) for i, s in enumerate(seqs)))
    assert all(r["read_seq"] >= s for r, s in zip(results, seqs, strict=True))
    assert await marker(pool, alice1.user["id"], room) == head == 12
    for seen in (seen1, seen2):
        await seen.wait("the highest read", read(room, 12))
        told = [e["read_seq"] for e in seen.matching(read(room))]
        assert told == sorted(told), told
    for c in (alice1, alice2):
        await c.close()


async def test_unread_counts_others_text_messages_after_the_marker(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    created = await alice.request("create_room", name="team", members=[b_u[0]])
    room = created["id"]
    # A new room: its room_created message is a system message, not unread.
    assert created["read_seq"] == 0 and created["unread"] == 0
    await Seen(bob).wait("room_added", room_added(room))
    a_acks = [await alice.send(room, f"from alice {i}") for i in range(3)]
    b_acks = [await bob.send(room, f"from bob {i}") for i in range(2)]

    # Nobody's own messages count, and sending moved nobody's marker.
    a_room, b_room = await room_of(alice, room), await room_of(bob, room)
    assert (a_room["read_seq"], a_room["unread"]) == (0, 2)
    assert (b_room["read_seq"], b_room["unread"]) == (0, 3)
    assert await marker(pool, alice.user["id"], room) is None

    await bob.mark_read(room, a_acks[1]["seq"])
    assert (await room_of(bob, room))["unread"] == 1
    await alice.mark_read(room, b_acks[0]["seq"])
    assert (await room_of(alice, room))["unread"] == 1
    # System messages and deleted ones do not count either.
    await alice.request("invite", room=room, users=[(await make_user())[0]])
    await pool.execute("UPDATE messages SET kind = 'deleted', body = ''"
                       " WHERE room_id = $1 AND seq = $2", room, a_acks[2]["seq"])
    assert (await room_of(bob, room))["unread"] == 0
    assert (await room_of(alice, room))["unread"] == 1
    await alice.close()
    await bob.close()


async def test_unread_is_counted_up_to_1000(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    room = (await alice.request("create_room", name="busy", members=[b_u[0]]))["id"]
    alice_id = alice.user["id"]
    await alice.close()
    # Stored as chat stores them, while nobody is connected to be delivered them.
    await pool.execute("SELECT cam_post_message($1, $2, 'bulk-' || g, 'text', 'm' || g)"
                       " FROM generate_series(1, 1005) g", room, alice_id)
    bob = await two_nodes.connect("camserver2", b_u)
    [listed] = [r for r in bob.rooms if r["id"] == room]
    assert listed["last_seq"] == 1006
    assert listed["unread"] == 1000  # 1005 of them: "1000 or more"
    assert listed["last_message"]["body"] == "m1005"
    await bob.mark_read(room, 1006 - 1000)
    assert (await room_of(bob, room))["unread"] == 1000
    await bob.mark_read(room, 1006 - 999)
    assert (await room_of(bob, room))["unread"] == 999
    await bob.mark_read(room, 1006 - 7)
    assert (await room_of(bob, room))["unread"] == 7
    alice = await two_nodes.connect("camserver1", a_u)
    assert (await room_of(alice, room))["unread"] == 0  # her own
    await alice.close()
    await bob.close()


async def test_every_room_object_carries_the_last_message_cut_to_200_characters(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u, c_u = await make_user(), await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    carol = await two_nodes.connect("camserver2", c_u)
    seen_c = Seen(carol)

    # A new direct room has no message yet.
    direct = await alice.request("open_direct", user=b_u[0])
    assert direct["last_message"] is None
    assert (direct["read_seq"], direct["unread"]) == (0, 0)

    created = await alice.request("create_room", name="ops")
    room = created["id"]
    first = created["last_message"]
    assert first["seq"] == 1 and first["kind"] == "system"
    assert json.loads(first["body"])["event"] == "room_created"
    assert first["sender"] == alice.user["id"] and first["sender_name"] == a_u[0]

    long_body = "\u00e9\U0001d11e" * 150  # 300 characters, 900 bytes
    await alice.send(room, "short one")
    ack = await alice.send(room, long_body)
    last = (await room_of(alice, room))["last_message"]
    assert last == {"seq": ack["seq"], "sender": alice.user["id"], "sender_name": a_u[0],
                    "kind": "text", "body": long_body[:200], "ts": ack["ts"]}

    # An invited user's room_added carries the same summary (the invitation is newest),
    # and the marker at the invitation: what was said before is history, not unread.
    await alice.request("invite", room=room, users=[c_u[0]])
    added = (await seen_c.wait("room_added", room_added(room)))["room"]
    assert added["read_seq"] == added["last_seq"] == added["last_message"]["seq"]
    assert added["unread"] == 0
    assert added["last_message"]["kind"] == "system"
    assert json.loads(added["last_message"]["body"]) == {"event": "members_added",
                                                         "users": [c_u[0]]}
    assert added["last_message"]["sender_name"] == a_u[0]
    assert (await room_of(carol, room))["last_message"] == added["last_message"]

    # A deleted message is never the last one: the one before it is.
    other = (await alice.request("create_room", name="other"))["id"]
    kept = await alice.send(other, "kept")
    gone = await alice.send(other, "deleted by an admin")
    await pool.execute("UPDATE messages SET kind = 'deleted', body = ''"
                       " WHERE room_id = $1 AND seq = $2", other, gone["seq"])
    last = (await room_of(alice, other))["last_message"]
    assert (last["seq"], last["body"], last["ts"]) == (kept["seq"], "kept", kept["ts"])
    await alice.close()
    await carol.close()


async def test_only_a_member_can_mark_a_room_read(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    room = (await alice.request("create_room", name="private"))["id"]
    shared = (await alice.request("create_room", name="shared", members=[b_u[0]]))["id"]
    await Seen(bob).wait("room_added", room_added(shared))

    await refused("not_a_member", bob.mark_read(room, 1))
    await refused("not_a_member", bob.mark_read(2**62, 1))
    await bob.leave(shared)
    await refused("not_a_member", bob.mark_read(shared, 1))
    assert await marker(pool, bob.user["id"], room) is None
    assert await marker(pool, bob.user["id"], shared) is None
    for fields in ({"room": room, "seq": -1}, {"room": room}, {"room": 0, "seq": 1},
                   {"room": room, "seq": 2**63}, {"room": room, "seq": "1"}):
        await refused("bad_request", alice.request("mark_read", **fields))
    assert await alice.mark_read(room, 1) == {"room": room, "read_seq": 1}
    await alice.close()
    await bob.close()
