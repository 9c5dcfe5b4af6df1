"""Chat across a two-node cluster: real NATS servers with routes, Postgres, edges."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable
from typing import Any

import asyncpg
import httpx
import pytest

from camclient import Client, ClientError, login
from tests.conftest import MONITORING, Cluster
from tests.waiting import T, eventually


async def test_message_sent_on_node1_reaches_member_on_node2(two_nodes: Cluster, make_user: Any):
    alice_u, bob_u = await make_user("alice"), await make_user("bob")
    alice = await two_nodes.connect("camserver1", alice_u)
    bob = await two_nodes.connect("camserver2", bob_u)
    assert alice.hello["node"] == "camserver1" and bob.hello["node"] == "camserver2"

    room = await alice.request("create_room", name="general", members=["bob"])
    added = await bob.next_event("room_added")
    assert added["room"]["id"] == room["id"]

    acks = [await alice.send(room["id"], f"hello {i}") for i in range(5)]
    received = await bob.messages(room["id"], 5)
    assert [m["body"] for m in received] == [f"hello {i}" for i in range(5)]
    assert [m["seq"] for m in received] == [a["seq"] for a in acks]
    assert all(m["sender_name"] == "alice" for m in received)

    reply = await bob.send(room["id"], "hi alice")
    echo = await alice.next_event("message", where=lambda e: e["body"] == "hi alice")
    assert echo["seq"] == reply["seq"] == acks[-1]["seq"] + 1

    h_alice = await alice.history(room["id"])
    h_bob = await bob.history(room["id"])
    assert h_alice["messages"] == h_bob["messages"]
    seqs = [m["seq"] for m in h_alice["messages"]]
    assert seqs == list(range(1, len(seqs) + 1))
    await alice.close()
    await bob.close()


async def test_direct_room_is_one_per_pair_and_invites_reach_other_nodes(
    two_nodes: Cluster, make_user: Any
):
    a_u, b_u, c_u = await make_user(), await make_user(), await make_user()
    a = await two_nodes.connect("camserver1", a_u)
    b = await two_nodes.connect("camserver2", b_u)
    c = await two_nodes.connect("camserver2", c_u)
    direct = await a.request("open_direct", user=b_u[0])
    again = await b.request("open_direct", user=a_u[0])
    assert direct["id"] == again["id"] and direct["kind"] == "direct"
    await a.send(direct["id"], "private")
    got = await b.next_event("message", where=lambda e: e["room"] == direct["id"])
    assert got["body"] == "private"

    group = await a.request("create_room", name="team")
    with pytest.raises(ClientError) as exc:
        await c.history(group["id"])
    assert exc.value.code == "not_a_member"
    result = await a.request("invite", room=group["id"], users=[c_u[0]])
    assert result["added"] == [c_u[0]]
    await c.next_event("room_added", where=lambda e: e["room"]["id"] == group["id"])
    await a.send(group["id"], "welcome")
    got = await c.next_event("message", where=lambda e: e["body"] == "welcome")
    assert got["room"] == group["id"]
    with pytest.raises(ClientError) as exc:
        await a.request("invite", room=group["id"], users=["nobody-such"])
    assert exc.value.code == "no_such_user"
    for client in (a, b, c):
        await client.close()


async def test_concurrent_sends_through_two_chat_replicas_get_gap_free_sequence(
    cluster_factory: Any, make_user: Any, pool: asyncpg.Pool
):
    cluster: Cluster = cluster_factory(2)
    cluster.start_chat("chat1")
    cluster.start_chat("chat2")
    cluster.start_health()
    cluster.start_edge("camserver1", nats=0)
    cluster.start_edge("camserver2", nats=1)
    cluster.wait_edges()
    users = [await make_user() for _ in range(4)]
    clients = [await cluster.connect("camserver1" if i % 2 else "camserver2", u)
               for i, u in enumerate(users)]
    room = await clients[0].request("create_room", name="busy",
                                    members=[u[0] for u in users[1:]])
    for c in clients[1:]:
        await c.next_event("room_added")

    # Requests each chat replica has served, from its heartbeats in the cluster view.
    def served() -> dict[str, float]:
        request = urllib.request.Request(cluster.http("camserver1") + "/api/cluster/view",
                                         headers=MONITORING)
        with urllib.request.urlopen(request) as r:
            view = json.loads(r.read())
        return {p["instance"]: p["load"]["served"] for p in view["processes"]
                if p["kind"] == "chat" and p["alive"]}

    def both_replicas() -> dict[str, float] | None:
        now = served()
        return now if len(now) == 2 else None

    before = await eventually(both_replicas, 10, "both chat replicas in the cluster view")

    async def burst(client: Client, n: int) -> list[int]:
        acks = await asyncio.gather(*(client.send(room["id"], f"m{i}") for i in range(n)))
        return [a["seq"] for a in acks]

    seqs = [s for part in await asyncio.gather(*(burst(c, 50) for c in clients)) for s in part]
    assert len(seqs) == 200
    assert sorted(seqs) == list(range(2, 202))  # seq 1 is the room-created event

    stored = await pool.fetch("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room["id"])
    assert [r["seq"] for r in stored] == list(range(1, 202))

    # A retried send (same client message id) is stored once, even through another node.
    first = await clients[0].send(room["id"], "exactly once", cid="retry-1")
    again = await clients[0].send(room["id"], "exactly once", cid="retry-1")
    other = await cluster.connect("camserver2", users[0])
    third = await other.send(room["id"], "exactly once", cid="retry-1")
    assert first["seq"] == again["seq"] == third["seq"] == 202
    count = await pool.fetchval("SELECT count(*) FROM messages WHERE cid = 'retry-1'")
    assert count == 1
    with pytest.raises(ClientError) as exc:
        await clients[0].send(room["id"], "something else", cid="retry-1")
    assert exc.value.code == "conflict"

    # Both replicas took a real share of the 200 sends (queue group), not just of the
    # edges' periodic repair checks (a few a second): each served at least 40 of them.
    def shares() -> dict[str, float] | None:
        now = served()
        delta = {i: now.get(i, 0) - before[i] for i in before}
        return delta if all(v >= 40 for v in delta.values()) else None

    await eventually(shares, 5, f"each chat replica to serve 40 of the sends (before: {before})")
    for c in [*clients, other]:
        await c.close()


async def test_non_member_cannot_read_send_or_subscribe(two_nodes: Cluster, make_user: Any):
    owner_u, outsider_u = await make_user(), await make_user()
    owner = await two_nodes.connect("camserver1", owner_u)
    outsider = await two_nodes.connect("camserver2", outsider_u)
    room = await owner.request("create_room", name="secret")
    await owner.send(room["id"], "classified")

    for op, fields in [
        ("history", {"room": room["id"]}),
        ("send", {"room": room["id"], "cid": "x1", "body": "let me in"}),
        ("subscribe", {"room": room["id"], "since": 0}),
        ("members", {"room": room["id"]}),
        ("invite", {"room": room["id"], "users": [outsider_u[0]]}),
    ]:
        with pytest.raises(ClientError) as exc:
            await outsider.request(op, **fields)
        assert exc.value.code == "not_a_member", op
        assert "classified" not in exc.value.message

    # A room that does not exist answers exactly the same: nothing is leaked.
    with pytest.raises(ClientError) as exc:
        await outsider.history(room["id"] + 1000)
    assert exc.value.code == "not_a_member"

    await owner.send(room["id"], "still secret")
    with pytest.raises(TimeoutError):
        await outsider.next_event("message", timeout=1.0)
    history = await owner.history(room["id"])
    assert [m["body"] for m in history["messages"] if m["kind"] == "text"] == [
        "classified", "still secret"]
    await owner.close()
    await outsider.close()


async def test_edge_subscribes_only_to_rooms_with_a_local_member(
    cluster_factory: Any, make_user: Any
):
    cluster: Cluster = cluster_factory(2)
    cluster.start_chat()
    cluster.start_health()
    cluster.start_edge("camserver1", nats=0)
    cluster.start_edge("camserver2", nats=1)
    cluster.wait_edges()
    a_u, b_u, c_u = await make_user(), await make_user(), await make_user()
    a = await cluster.connect("camserver1", a_u)
    b = await cluster.connect("camserver1", b_u)
    c = await cluster.connect("camserver2", c_u)
    room = await a.request("create_room", name="local only", members=[b_u[0]])
    await b.next_event("room_added")
    await a.send(room["id"], "here")
    await b.next_event("message", where=lambda e: e["body"] == "here")
    # camserver2's only client has a room of its own.
    own = await c.request("create_room", name="camserver2 only")
    await c.send(own["id"], "there")
    await c.next_event("message", where=lambda e: e["body"] == "there")

    async def rooms() -> dict[str, float]:
        async with httpx.AsyncClient() as http:
            view = (await http.get(cluster.http("camserver1") + "/api/cluster/view",
                                   headers=MONITORING)).json()
        return {p["node"]: p["load"]["rooms"] for p in view["processes"]
                if p["kind"] == "edge" and p["alive"]}

    # Each node is subscribed to the one room of its local members, not to the other.
    want = {"camserver1": 1, "camserver2": 1}
    await eventually(lambda: _equal(rooms(), want), 5, f"room subscriptions {want}")
    # Once the last local member leaves, the node drops its interest; the other keeps its own.
    await a.close()
    await b.close()
    want = {"camserver1": 0, "camserver2": 1}
    await eventually(lambda: _equal(rooms(), want), 5, f"room subscriptions {want}")
    await c.close()


async def _equal(got: Awaitable[T], want: T) -> T | None:
    value = await got
    return value if value == want else None


async def test_login_sets_httponly_cookie_and_logout_revokes_the_session(
    two_nodes: Cluster, make_user: Any
):
    user = await make_user()
    async with httpx.AsyncClient(base_url=two_nodes.http("camserver1")) as http:
        bad = await http.post("/api/login", json={"username": user[0], "password": "wrong!!!"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_credentials"
        nobody = await http.post("/api/login", json={"username": "ghost", "password": "x" * 9})
        assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "bad_credentials"
        garbage = await http.post("/api/login", content=b"{not json")
        assert garbage.status_code == 400

        ok = await http.post("/api/login", json={"username": user[0], "password": user[1]})
        assert ok.status_code == 200
        token = ok.json()["token"]
        cookie = ok.headers["set-cookie"]
        assert f"cam_session={token}" in cookie and "HttpOnly" in cookie
        assert (await http.get("/api/me")).json()["user"]["username"] == user[0]

    # The session works on the other node too (server-side sessions in Postgres).
    client = await Client.connect(two_nodes.ws("camserver2"), token)
    async with httpx.AsyncClient(base_url=two_nodes.http("camserver1")) as http:
        out = await http.post("/api/logout", headers={"Authorization": f"Bearer {token}"})
        assert out.json() == {"revoked": True}
    assert await client.wait_closed(5) == 4403  # its live socket on node 2 is closed
    with pytest.raises(ClientError) as exc:
        await Client.connect(two_nodes.ws("camserver1"), token)
    assert exc.value.code == "unauthenticated"


async def test_websocket_accepts_the_session_cookie(two_nodes: Cluster, make_user: Any):
    from websockets.asyncio.client import connect as ws_connect

    user = await make_user()
    token = await login(two_nodes.http("camserver1"), *user)
    async with ws_connect(two_nodes.ws("camserver1"),
                          additional_headers={"Cookie": f"cam_session={token}"}) as ws:
        assert json.loads(await ws.recv())["op"] == "hello"
        await ws.send(json.dumps({"op": "auth", "id": 1}))
        reply = json.loads(await ws.recv())
        assert reply["op"] == "result" and reply["result"]["user"]["username"] == user[0]


async def test_subscribe_with_since_replays_missed_messages_on_another_node(
    two_nodes: Cluster, make_user: Any
):
    a_u, b_u = await make_user(), await make_user()
    a = await two_nodes.connect("camserver1", a_u)
    b = await two_nodes.connect("camserver1", b_u)
    room = await a.request("create_room", name="resume", members=[b_u[0]])
    await b.next_event("room_added")
    await a.send(room["id"], "seen")
    seen = await b.next_event("message", where=lambda e: e["body"] == "seen")
    await b.close()
    missed = [await a.send(room["id"], f"missed {i}") for i in range(4)]

    b2 = await two_nodes.connect("camserver2", b_u)
    result = await b2.request("subscribe", room=room["id"], since=seen["seq"])
    assert result["resync"] is False
    replayed = await b2.messages(room["id"], 4)
    assert [m["seq"] for m in replayed] == [m["seq"] for m in missed]
    live = await a.send(room["id"], "live")
    nxt = await b2.next_event("message")
    assert nxt["seq"] == live["seq"]  # no duplicate at the seam
    await a.close()
    await b2.close()
