"""Membership under the user's control, across two nodes: leaving rooms, blocking users,
the rooms-per-hour and members-per-room limits, and admin moderation with its audit
log. Each removal reaches the user's edges by ``room_removed``, or, when that event is
lost, by the not_a_member answer to the gap repair that follows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import nats
import pytest

from camclient import Client, ClientError
from camcore import subjects, wire
from tests.conftest import Cluster
from tests.integration.test_delivery import commit_without_publish
from tests.waiting import eventually

Event = dict[str, Any]


class Seen:
    """Every event a client got, kept (``Client.next_event`` drops what it skips)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[Event] = []

    def pull(self) -> list[Event]:
        while not self.client.events.empty():
            self.events.append(self.client.events.get_nowait())
        return self.events

    def matching(self, check: Callable[[Event], bool]) -> list[Event]:
        return [e for e in self.pull() if check(e)]

    async def wait(self, what: str, check: Callable[[Event], bool], timeout: float = 10) -> Event:
        found = await eventually(lambda: self.matching(check), timeout, what)
        return found[0]

    def messages(self, room: int) -> list[Event]:
        return self.matching(lambda e: e.get("op") == "message" and e["room"] == room)


def system(event: Event, name: str) -> bool:
    return event.get("op") == "message" and event["kind"] == "system" and \
        json.loads(event["body"]).get("event") == name


def removed(room: int) -> Callable[[Event], bool]:
    return lambda e: e.get("op") == "room_removed" and e["room"] == room


def text(room: int, body: str) -> Callable[[Event], bool]:
    return lambda e: e.get("op") == "message" and e["room"] == room and e["body"] == body


async def refused(code: str, call: Any) -> ClientError:
    with pytest.raises(ClientError) as exc:
        await call
    assert exc.value.code == code, exc.value
    return exc.value


async def fence(sender: Client, room: int, *watchers: Seen) -> None:
    """A message in ``room`` that every watcher gets: what was published before it in a
    room they no longer get has had its chance to arrive."""
    body = f"fence {id(sender)} {asyncio.get_running_loop().time()}"
    await sender.send(room, body)
    for seen in watchers:
        await seen.wait(f"the fence in room {room}", text(room, body))


async def user_id(pool: asyncpg.Pool, name: str) -> int:
    return int(await pool.fetchval("SELECT id FROM users WHERE username = $1", name))


async def member_ids(pool: asyncpg.Pool, room: int) -> list[int]:
    return [r["user_id"] for r in await pool.fetch(
        "SELECT user_id FROM room_members WHERE room_id = $1 ORDER BY user_id", room)]


async def audit(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM audit_log ORDER BY id"))


@pytest.fixture
def make_admin(pool: asyncpg.Pool, make_user: Any) -> Any:
    async def make() -> tuple[str, str]:
        name, password = await make_user()
        await pool.execute("UPDATE users SET is_admin = true WHERE username = $1", name)
        return name, password

    return make


def limited(cluster_factory: Any, **chat_env: str) -> Cluster:
    """Two edges and two chat replicas with the given limits: the replicas count from
    the store, so they agree whichever serves a request."""
    c: Cluster = cluster_factory(2)
    c.start_chat("chat1", **chat_env)
    c.start_chat("chat2", **chat_env)
    c.start_presence()
    c.start_edge("camserver1", nats=0)
    c.start_edge("camserver2", nats=1)
    c.wait_edges()
    return c


# ---------------------------------------------------------------- leave


async def test_a_member_who_leaves_stops_getting_the_room_on_every_node(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob1 = await two_nodes.connect("camserver1", b_u)
    bob2 = await two_nodes.connect("camserver2", b_u)
    seen_a, seen_b1, seen_b2 = Seen(alice), Seen(bob1), Seen(bob2)
    room = (await alice.request("create_room", name="team", members=[b_u[0]]))["id"]
    other = (await alice.request("create_room", name="other", members=[b_u[0]]))["id"]
    for seen in (seen_b1, seen_b2):
        await seen.wait("room_added", lambda e: e.get("op") == "room_added"
                        and e["room"]["id"] == other)
    await fence(alice, room, seen_b1, seen_b2)

    left = await bob1.leave(room)
    assert left["room"] == room
    event = await seen_a.wait("member_left", lambda e: system(e, "member_left"))
    assert json.loads(event["body"]) == {"event": "member_left", "users": [b_u[0]]}
    assert event["seq"] == left["seq"] and event["sender_name"] == b_u[0]
    # Both of bob's connections, the one that left and the one on the other node.
    for seen in (seen_b1, seen_b2):
        await seen.wait("room_removed", removed(room))
        assert len(seen.matching(removed(room))) == 1

    await alice.send(room, "after bob left")
    await fence(alice, other, seen_b1, seen_b2)
    await seen_a.wait("alice's own message", text(room, "after bob left"))
    for seen in (seen_b1, seen_b2):
        assert not seen.matching(text(room, "after bob left"))

    for op, fields in [("send", {"room": room, "cid": "x1", "body": "still here?"}),
                       ("history", {"room": room}), ("members", {"room": room}),
                       ("subscribe", {"room": room, "since": 0}), ("typing", {"room": room}),
                       ("invite", {"room": room, "users": [a_u[0]]}), ("leave", {"room": room})]:
        for bob in (bob1, bob2):
            await refused("not_a_member", bob.request(op, **fields))
    for bob in (bob1, bob2):
        assert room not in [r["id"] for r in await bob.list_rooms()]
        assert room not in bob.last_seq
    members = await alice.request("members", room=room)
    assert [m["username"] for m in members["members"]] == [a_u[0]]
    assert await member_ids(pool, room) == [alice.user["id"]]
    # The sequence stayed gap-free: the member_left message took its own seq.
    history = await alice.history(room, limit=200)
    assert [m["seq"] for m in history["messages"]] == list(range(1, history["last_seq"] + 1))
    for c in (alice, bob1, bob2):
        await c.close()


async def test_leaving_a_direct_room_leaves_it_to_the_other_side_until_it_is_opened_again(
    two_nodes: Cluster, make_user: Any
):
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    seen_b = Seen(bob)
    direct = (await alice.request("open_direct", user=b_u[0]))["id"]
    await seen_b.wait("room_added", lambda e: e.get("op") == "room_added")
    await bob.leave(direct)
    await seen_b.wait("room_removed", removed(direct))
    assert direct not in [r["id"] for r in await bob.list_rooms()]
    kept = [r for r in await alice.list_rooms() if r["id"] == direct]
    assert kept and kept[0]["members"] == 1
    assert kept[0]["name"] == bob.user["display_name"]  # still named after the peer
    await alice.send(direct, "are you there?")  # stored: alice is still a member

    # Opening it again brings bob back, with what he missed in history.
    again = await alice.request("open_direct", user=b_u[0])
    assert again["id"] == direct and again["members"] == 2
    await seen_b.wait("room_added again", lambda e: e.get("op") == "room_added"
                      and e["room"]["id"] == direct)
    await alice.send(direct, "welcome back")
    await seen_b.wait("the next message", text(direct, "welcome back"))
    bodies = [m["body"] for m in (await bob.history(direct))["messages"] if m["kind"] == "text"]
    assert bodies == ["are you there?", "welcome back"]
    await alice.close()
    await bob.close()


async def test_a_lost_room_removed_is_made_up_for_by_the_gap_repair(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    """The membership row goes without any event; the next gap the edge fills for the
    room answers not_a_member, and the edge drops the room instead of retrying."""
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    seen_b = Seen(bob)
    room = (await alice.request("create_room", name="r", members=[b_u[0]]))["id"]
    quiet = (await alice.request("create_room", name="quiet", members=[b_u[0]]))["id"]
    still = (await alice.request("create_room", name="still", members=[b_u[0]]))["id"]
    await seen_b.wait("room_added", lambda e: e.get("op") == "room_added"
                      and e["room"]["id"] == still)
    await fence(alice, room, seen_b)
    await fence(alice, quiet, seen_b)
    bob_id = bob.user["id"]
    await pool.execute("DELETE FROM room_members WHERE room_id = ANY($1::bigint[]) AND user_id = $2",
                       [room, quiet], bob_id)

    # A lost bus message, then a live one: the gap is repaired from the store.
    await commit_without_publish(pool, room, alice.user["id"], "lost on the bus")
    await alice.send(room, "live after the gap")
    await seen_b.wait("room_removed from the repair", removed(room), timeout=15)
    # A lost message with nothing after it: the edge's repair check finds it.
    await commit_without_publish(pool, quiet, alice.user["id"], "stranded")
    await seen_b.wait("room_removed from the repair check", removed(quiet), timeout=15)

    for r in (room, quiet):
        assert len(seen_b.matching(removed(r))) == 1
        assert not [e for e in seen_b.messages(r)
                    if e["kind"] == "text" and "fence" not in e["body"]]
        await refused("not_a_member", bob.request("typing", room=r))
    await alice.send(room, "much later")
    await fence(alice, still, seen_b)  # the room bob is still in goes on as before
    assert not seen_b.matching(text(room, "much later"))
    assert [r["id"] for r in await bob.list_rooms()] == [still]
    await alice.close()
    await bob.close()


# ---------------------------------------------------------------- block


async def test_a_blocked_user_can_neither_write_to_nor_invite_the_blocker(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    a_u, b_u, c_u = await make_user(), await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    carol = await two_nodes.connect("camserver2", c_u)
    direct = (await bob.request("open_direct", user=a_u[0]))["id"]
    group = (await bob.request("create_room", name="bob's", members=[c_u[0]]))["id"]
    kept = await bob.send(direct, "sent before the block", cid="before-block")

    assert await alice.block(b_u[0]) == {"user": b_u[0], "blocked": True}
    assert await alice.block(b_u[0]) == {"user": b_u[0], "blocked": True}  # idempotent
    assert await alice.blocks() == [b_u[0]]
    assert await bob.blocks() == [] and await carol.blocks() == []  # private to alice

    rooms_before = await pool.fetchval("SELECT count(*) FROM rooms")
    last_before = await pool.fetchval("SELECT last_seq FROM rooms WHERE id = $1", direct)
    for call in (bob.request("open_direct", user=a_u[0]),
                 bob.send(direct, "let me explain"),
                 bob.request("invite", room=group, users=[a_u[0]]),
                 bob.request("create_room", name="trap", members=[c_u[0], a_u[0]])):
        error = await refused("forbidden", call)
        assert error.message == f"{a_u[0]} does not accept direct messages or invitations from you"
    assert await pool.fetchval("SELECT count(*) FROM rooms") == rooms_before
    assert await pool.fetchval("SELECT last_seq FROM rooms WHERE id = $1", direct) == last_before
    assert alice.user["id"] not in await member_ids(pool, group)
    # A retry of a message stored before the block still gets its acknowledgement.
    assert (await bob.send(direct, "sent before the block", cid="before-block"))["seq"] == kept["seq"]
    # The blocker may still write, and others are not affected.
    await alice.send(direct, "I blocked you")
    await carol.request("invite", room=group, users=[a_u[0]])  # carol is not blocked
    await bob.request("create_room", name="without alice", members=[c_u[0]])

    await refused("bad_request", alice.block(a_u[0]))
    await refused("no_such_user", alice.block("nobody-such"))

    assert await alice.unblock(b_u[0]) == {"user": b_u[0], "blocked": False}
    assert await alice.blocks() == []
    await bob.send(direct, "thanks")
    assert (await bob.request("open_direct", user=a_u[0]))["id"] == direct
    other = await bob.request("create_room", name="with alice", members=[a_u[0]])
    assert other["members"] == 2
    for c in (alice, bob, carol):
        await c.close()


# ---------------------------------------------------------------- limits


async def test_rooms_per_hour_are_counted_in_the_store_for_every_replica(
    cluster_factory: Any, make_user: Any, pool: asyncpg.Pool
):
    cluster = limited(cluster_factory, CAM_ROOMS_PER_HOUR="3")
    a_u, b_u, c_u = await make_user(), await make_user(), await make_user()
    alice = await cluster.connect("camserver1", a_u)
    alice2 = await cluster.connect("camserver2", a_u)
    bob = await cluster.connect("camserver2", b_u)
    await alice.request("create_room", name="one")
    await alice2.request("open_direct", user=b_u[0])  # direct rooms count too
    await alice.request("create_room", name="three")
    uid = alice.user["id"]
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE created_by = $1", uid) == 3

    for client, call in ((alice, "create_room"), (alice2, "create_room"), (alice2, "open_direct")):
        fields = {"name": "too many"} if call == "create_room" else {"user": c_u[0]}
        error = await refused("rate_limited", client.request(call, **fields))
        assert "at most 3 new rooms per hour" in error.message and "retry in" in error.message
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE created_by = $1", uid) == 3
    # Opening an existing direct room creates nothing and is not limited; others are not.
    await alice.request("open_direct", user=b_u[0])
    await bob.request("create_room", name="bob's own")

    # An hour later for the oldest room: one more fits, and no second one.
    await pool.execute(
        "UPDATE rooms SET created_at = now() - interval '61 minutes' WHERE id ="
        " (SELECT min(id) FROM rooms WHERE created_by = $1)", uid)
    await alice2.request("create_room", name="next hour")
    await refused("rate_limited", alice.request("create_room", name="again too many"))
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE created_by = $1", uid) == 4
    for c in (alice, alice2, bob):
        await c.close()


async def test_members_per_room_hold_on_create_invite_and_concurrent_invites(
    cluster_factory: Any, make_user: Any, pool: asyncpg.Pool
):
    cluster = limited(cluster_factory, CAM_MAX_ROOM_MEMBERS="4")
    owner_u = await make_user()
    names = [(await make_user())[0] for _ in range(6)]
    owner = await cluster.connect("camserver1", owner_u)

    full = await owner.request("create_room", name="full", members=names[:3])
    assert full["members"] == 4
    rooms_before = await pool.fetchval("SELECT count(*) FROM rooms")
    error = await refused("limit_reached",
                          owner.request("create_room", name="too big", members=names[:4]))
    assert "limit of 4 members per room" in error.message
    assert await pool.fetchval("SELECT count(*) FROM rooms") == rooms_before
    await refused("limit_reached", owner.request("invite", room=full["id"], users=[names[5]]))
    # Inviting members again adds nobody, so it is no refusal.
    assert (await owner.request("invite", room=full["id"], users=names[:2]))["added"] == []
    assert len(await member_ids(pool, full["id"])) == 4

    # Six invites at once, one user each, through both nodes and both chat replicas:
    # exactly three fit.
    room = (await owner.request("create_room", name="race"))["id"]
    owner2 = await cluster.connect("camserver2", owner_u)
    inviters = [owner, owner2]
    results = await asyncio.gather(
        *(inviters[i % 2].request("invite", room=room, users=[name])
          for i, name in enumerate(names)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if isinstance(r, ClientError)]
    assert len(ok) == 3 and len(failed) == 3, results
    assert {e.code for e in failed} == {"limit_reached"}
    assert len(await member_ids(pool, room)) == 4
    # Two invites of two users each, into a room of one: one fits, not both.
    room2 = (await owner.request("create_room", name="race 2"))["id"]
    pairs = await asyncio.gather(
        owner.request("invite", room=room2, users=names[0:2]),
        owner2.request("invite", room=room2, users=names[2:4]), return_exceptions=True)
    assert sorted(type(r).__name__ for r in pairs) == ["ClientError", "dict"], pairs
    assert len(await member_ids(pool, room2)) == 3
    # Every accepted invite took one seq, the refused ones none.
    seqs = [r["seq"] for r in await pool.fetch(
        "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room)]
    assert seqs == [1, 2, 3, 4]
    await owner.close()
    await owner2.close()


# ---------------------------------------------------------------- moderation


async def test_an_admin_removes_a_member_and_it_is_audited(
    two_nodes: Cluster, make_user: Any, make_admin: Any, pool: asyncpg.Pool
):
    a_u, b_u, root_u = await make_user(), await make_user(), await make_admin()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    root = await two_nodes.connect("camserver1", root_u)  # not a member of the room
    seen_a, seen_b = Seen(alice), Seen(bob)
    room = (await alice.request("create_room", name="r", members=[b_u[0]]))["id"]
    await seen_b.wait("room_added", lambda e: e.get("op") == "room_added")

    result = await root.admin_remove_member(room, b_u[0])
    assert result["room"] == room and result["user"] == b_u[0]
    event = await seen_a.wait("member_removed", lambda e: system(e, "member_removed"))
    assert json.loads(event["body"]) == {"event": "member_removed", "users": [b_u[0]],
                                         "by": root_u[0]}
    assert event["seq"] == result["seq"] and event["sender_name"] == root_u[0]
    await seen_b.wait("room_removed", removed(room))
    await refused("not_a_member", bob.send(room, "hello?"))
    assert await member_ids(pool, room) == [alice.user["id"]]
    await refused("not_a_member", root.admin_remove_member(room, b_u[0]))  # not any more

    [row] = await audit(pool)
    assert (row["actor_id"], row["action"], row["room_id"], row["user_id"], row["seq"]) == (
        root.user["id"], "remove_member", room, bob.user["id"], result["seq"])
    assert json.loads(row["detail"]) == {"username": b_u[0]}
    for c in (alice, bob, root):
        await c.close()


async def test_an_admin_deletes_a_message_and_history_keeps_its_seq(
    two_nodes: Cluster, make_user: Any, make_admin: Any, pool: asyncpg.Pool
):
    a_u, b_u, root_u = await make_user(), await make_user(), await make_admin()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    root = await two_nodes.connect("camserver2", root_u)
    seen_a, seen_b = Seen(alice), Seen(bob)
    room = (await alice.request("create_room", name="r", members=[b_u[0]]))["id"]
    await seen_b.wait("room_added", lambda e: e.get("op") == "room_added")
    acks = [await alice.send(room, body, cid=f"m{i}")
            for i, body in enumerate(["fine", "offensive", "fine too"])]
    target = acks[1]["seq"]

    result = await root.admin_delete_message(room, target)
    assert result["seq"] == target and result["event_seq"] == acks[2]["seq"] + 1
    for seen in (seen_a, seen_b):
        event = await seen.wait("message_deleted", lambda e: system(e, "message_deleted"))
        assert json.loads(event["body"]) == {"event": "message_deleted", "seq": target}
        assert event["seq"] == result["event_seq"]
    for client in (alice, bob):
        history = (await client.history(room))["messages"]
        assert [m["seq"] for m in history] == list(range(1, result["event_seq"] + 1))
        deleted = next(m for m in history if m["seq"] == target)
        assert (deleted["kind"], deleted["body"], deleted["sender"]) == (
            "deleted", "", alice.user["id"])
        assert "offensive" not in json.dumps(history)
    # The sender's retry of the deleted message is acknowledged, not a conflict.
    assert (await alice.send(room, "offensive", cid="m1"))["seq"] == target
    assert await pool.fetchval(
        "SELECT body FROM messages WHERE room_id = $1 AND seq = $2", room, target) == ""
    await refused("bad_request", root.admin_delete_message(room, target))  # already deleted
    await refused("bad_request", root.admin_delete_message(room, 1))  # room_created
    await refused("bad_request", root.admin_delete_message(room, 999))

    [row] = await audit(pool)
    assert (row["actor_id"], row["action"], row["room_id"], row["user_id"], row["seq"]) == (
        root.user["id"], "delete_message", room, alice.user["id"], target)
    assert json.loads(row["detail"]) == {"kind": "text", "event_seq": result["event_seq"]}
    for c in (alice, bob, root):
        await c.close()


async def test_an_admin_deletes_a_room_for_every_member_on_every_node(
    two_nodes: Cluster, make_user: Any, make_admin: Any, pool: asyncpg.Pool
):
    a_u, b_u, root_u = await make_user(), await make_user(), await make_admin()
    alice = await two_nodes.connect("camserver1", a_u)
    bob1 = await two_nodes.connect("camserver1", b_u)
    bob2 = await two_nodes.connect("camserver2", b_u)
    root = await two_nodes.connect("camserver2", root_u)
    seen = [Seen(c) for c in (alice, bob1, bob2)]
    room = (await alice.request("create_room", name="doomed", members=[b_u[0]]))["id"]
    direct = (await alice.request("open_direct", user=b_u[0]))["id"]
    for s in seen[1:]:
        await s.wait("room_added", lambda e: e.get("op") == "room_added"
                     and e["room"]["id"] == direct)
    await alice.send(room, "last words")

    result = await root.admin_delete_room(room)
    assert result["room"] == room and result["members"] == 2
    for s in seen:
        await s.wait("room_removed", removed(room))
    for client in (alice, bob1, bob2):
        assert room not in [r["id"] for r in await client.list_rooms()]
        await refused("not_a_member", client.history(room))
        await refused("not_a_member", client.send(room, "anyone?"))
    stored = await pool.fetchrow("SELECT deleted_at, last_seq FROM rooms WHERE id = $1", room)
    assert stored["deleted_at"] is not None and stored["last_seq"] == result["seq"]
    assert await member_ids(pool, room) == []
    kinds = await pool.fetch("SELECT seq, kind, body FROM messages WHERE room_id = $1 ORDER BY seq",
                             room)
    assert [r["seq"] for r in kinds] == list(range(1, result["seq"] + 1))
    assert all(r["kind"] == "deleted" and r["body"] == "" for r in kinds[:-1])
    assert json.loads(kinds[-1]["body"]) == {"event": "room_deleted"}
    await refused("not_a_member", root.admin_delete_room(room))  # once

    # A deleted direct room lets the pair open a new one.
    await root.admin_delete_room(direct)
    for s in seen:
        await s.wait("room_removed", removed(direct))
    fresh = await bob2.request("open_direct", user=a_u[0])
    assert fresh["id"] != direct and fresh["members"] == 2

    rows = await audit(pool)
    assert [(r["actor_id"], r["action"], r["room_id"]) for r in rows] == [
        (root.user["id"], "delete_room", room), (root.user["id"], "delete_room", direct)]
    assert json.loads(rows[0]["detail"]) == {"name": "doomed", "kind": "group", "members": 2}
    for c in (alice, bob1, bob2, root):
        await c.close()


async def test_admin_ops_are_refused_to_anyone_the_store_does_not_call_admin(
    two_nodes: Cluster, make_user: Any, make_admin: Any, pool: asyncpg.Pool
):
    a_u, b_u, demoted_u = await make_user(), await make_user(), await make_admin()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    # An admin when the connection authenticated, no longer in the store.
    demoted = await two_nodes.connect("camserver2", demoted_u)
    await pool.execute("UPDATE users SET is_admin = false WHERE username = $1", demoted_u[0])
    room = (await alice.request("create_room", name="r", members=[b_u[0]]))["id"]
    ack = await alice.send(room, "keep me")
    before = await pool.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room)

    for client in (alice, bob, demoted):  # members of the room, and not
        for call in (client.admin_remove_member(room, b_u[0]),
                     client.admin_delete_message(room, ack["seq"]),
                     client.admin_delete_room(room),
                     client.admin_delete_room(room + 1000)):  # no existence leaked either
            error = await refused("forbidden", call)
            assert "admin" in error.message
    assert await pool.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room) == before
    assert len(await member_ids(pool, room)) == 2
    assert await pool.fetchval("SELECT deleted_at FROM rooms WHERE id = $1", room) is None
    assert (await alice.history(room))["messages"][-1]["body"] == "keep me"
    assert await audit(pool) == []
    for c in (alice, bob, demoted):
        await c.close()


async def test_the_removal_message_itself_stops_delivery_when_room_removed_is_lost(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    """The chat replica dies after publishing the room's member_removed message and
    before publishing bob's room_removed: the message in the room's stream is enough."""
    a_u, b_u = await make_user(), await make_user()
    alice = await two_nodes.connect("camserver1", a_u)
    bob = await two_nodes.connect("camserver2", b_u)
    seen_b = Seen(bob)
    room = (await alice.request("create_room", name="r", members=[b_u[0]]))["id"]
    still = (await alice.request("create_room", name="still", members=[b_u[0]]))["id"]
    await seen_b.wait("room_added", lambda e: e.get("op") == "room_added"
                      and e["room"]["id"] == still)
    await fence(alice, room, seen_b)
    # What the chat service's removal commits, and the one event it published of two.
    body = json.dumps({"event": "member_removed", "users": [b_u[0]], "by": a_u[0]})
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT seq, created_at FROM cam_post_message($1, $2, $3, 'system', $4)",
            room, alice.user["id"], f"sys:{uuid.uuid4()}", body)
        await conn.execute("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2",
                           room, bob.user["id"])
    event = wire.Message(room=room, seq=row["seq"], cid="sys", sender=alice.user["id"],
                         sender_name=a_u[0], kind="system", body=body,
                         ts=int(row["created_at"].timestamp() * 1000))
    nc = await nats.connect(two_nodes.nats_url(0), **two_nodes.nats_options("chat"))
    try:
        await nc.publish(subjects.room_events(room), wire.encode(event))
        await nc.flush()
    finally:
        await nc.close()
    got = await seen_b.wait("the removal message", lambda e: system(e, "member_removed"))
    assert got["seq"] == row["seq"]
    await seen_b.wait("room_removed from the room's stream", removed(room))
    await alice.send(room, "after bob left")
    await fence(alice, still, seen_b)
    assert not seen_b.matching(text(room, "after bob left"))
    await refused("not_a_member", bob.request("typing", room=room))
    await alice.close()
    await bob.close()
