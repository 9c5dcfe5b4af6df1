"""What one client can take from an edge is bounded: memory in bytes for a client that
never reads, requests per connection, connections per user and per address, presence
watches; and a socket lives no longer than its session."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from websockets.asyncio.client import connect

from camclient import Client, ClientError, login
from camcore import accounts, protocol
from tests.conftest import Cluster
from tests.integration.test_large_replies import store_big_messages
from tests.waiting import eventually

MiB = 2**20


def one_edge(cluster_factory: Any, **env: Any) -> Cluster:
    """One edge with one chat replica on one NATS server."""
    cluster: Cluster = cluster_factory(1)
    cluster.start_chat("chat1")
    cluster.start_edge("camserver1", 0, **env)
    cluster.wait_edges()
    return cluster


async def user_id(pool: asyncpg.Pool, name: str) -> int:
    uid = await pool.fetchval("SELECT id FROM users WHERE username = $1", name)
    assert uid is not None
    return int(uid)


async def test_a_client_that_never_reads_cannot_grow_the_edge_past_the_byte_bound(
        cluster_factory: Any, make_user: Any, pool: asyncpg.Pool):
    bound = 2 * MiB
    cluster = one_edge(cluster_factory, CAM_OUTGOING_QUEUE_BYTES=str(bound))
    edge = psutil.Process(cluster.procs["camserver1"].pid)
    user = await make_user()
    owner = await cluster.connect("camserver1", user)
    room = (await owner.request("create_room", name="big"))["id"]
    await store_big_messages(pool, room, owner.user["id"], 200)
    # Each answer below is a 512 KiB history page: 80 of them are 40 MiB, all well
    # within the frame-count bound (cam.outgoingQueueFrames), 20 times the byte bound.
    pages = 80
    token = await login(cluster.http("camserver1"), *user)
    log = cluster.procs["camserver1"].log_path
    before = peak = edge.memory_info().rss

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, edge.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    # max_queue=1: the client stops reading after one frame; with a small receive buffer
    # the kernel holds little, so the edge must hold whatever else it is sent.
    async with connect(cluster.ws("camserver1"), max_queue=1, max_size=2**24,
                       compression=None) as ws:
        ws.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await ws.send(json.dumps({"op": "auth", "id": 0, "token": token}))
        for i in range(pages):
            await ws.send(json.dumps({"op": "history", "id": i + 1, "room": room, "limit": 200}))
        await eventually(lambda: "closing a client that cannot keep up" in log.read_text(),
                         60, "the edge to close the client as too slow")
        # The edge cuts it off once the close frame could not be sent either.
        await asyncio.sleep(protocol.SLOW_CLOSE_GRACE + 1)
    sampler.cancel()
    grown = peak - before
    # The bound, the protocol's write buffer, a page being decoded and encoded on its way
    # through the edge, and the allocator's slack: far below the 40 MiB asked for.
    assert grown < bound + 12 * MiB, f"edge RSS grew by {grown / MiB:.1f} MiB"
    # The owner, who reads, was never disturbed.
    assert (await owner.request("ping"))["pong"] is True
    await owner.close()


async def test_requests_past_the_per_connection_rate_get_rate_limited_with_retry_after(
        cluster_factory: Any, make_user: Any):
    cluster = one_edge(cluster_factory, CAM_REQUEST_RATE_LIMIT="20", CAM_REQUEST_RATE_WINDOW="2")
    user = await make_user()
    client = await cluster.connect("camserver1", user)  # auth was request 1
    other = await cluster.connect("camserver1", user)
    answered = [await client.request("ping") for _ in range(19)]
    assert all(a == {"pong": True} for a in answered)
    rid = 1000
    await client.send_raw(json.dumps({"op": "ping", "id": rid}))
    # The reply is an error frame with a retry_after hint, matched by the client.
    with pytest.raises(ClientError) as refused:
        await client.request("ping")
    assert refused.value.code == "rate_limited"
    retry_after = refused.value.retry_after
    assert retry_after is not None and 0 < retry_after <= 2
    # Another connection of the same user has its own budget.
    assert (await other.request("ping"))["pong"] is True
    # The connection stays open, and is served again once the window has passed.
    await asyncio.sleep(retry_after)

    async def served_again() -> bool:
        try:
            return (await client.request("ping"))["pong"] is True
        except ClientError as exc:
            assert exc.code == "rate_limited"
            await asyncio.sleep(exc.retry_after or 0.1)
            return False

    await eventually(served_again, 10, "the connection to be served again")
    assert client.close_code is None
    await client.close()
    await other.close()


async def test_connections_per_user_are_capped_on_each_edge(
        cluster_factory: Any, make_user: Any):
    cluster = one_edge(cluster_factory, CAM_MAX_CONNECTIONS_PER_USER="3")
    user, someone = await make_user(), await make_user()
    open_ = [await cluster.connect("camserver1", user) for _ in range(3)]
    token = await login(cluster.http("camserver1"), *user)
    with pytest.raises(ClientError) as refused:
        await Client.connect(cluster.ws("camserver1"), token)
    assert refused.value.code == "limit_reached"
    # Other users are not affected.
    other = await cluster.connect("camserver1", someone)
    # Closing one makes room for one.
    await open_.pop().close()

    async def room_again() -> bool:
        try:
            open_.append(await Client.connect(cluster.ws("camserver1"), token))
            return True
        except ClientError as exc:
            assert exc.code == "limit_reached"
            return False

    await eventually(room_again, 10, "a connection to be accepted again")
    for c in [*open_, other]:
        await c.close()


async def test_a_refused_connection_of_a_user_is_closed_with_4429(
        cluster_factory: Any, make_user: Any):
    cluster = one_edge(cluster_factory, CAM_MAX_CONNECTIONS_PER_USER="1")
    user = await make_user()
    first = await cluster.connect("camserver1", user)
    second = await Client.open(cluster.ws("camserver1"))
    with pytest.raises(ClientError):
        await second.request("auth", token=await login(cluster.http("camserver1"), *user))
    assert await second.wait_closed() == protocol.CLOSE_TOO_MANY_CONNECTIONS
    assert (await first.request("ping"))["pong"] is True
    await first.close()


async def test_connections_per_client_address_are_capped(cluster_factory: Any, make_user: Any):
    cluster = one_edge(cluster_factory, CAM_MAX_CONNECTIONS_PER_ADDRESS="4")
    anonymous = [await Client.open(cluster.ws("camserver1")) for _ in range(4)]
    refused = await connect(cluster.ws("camserver1"))
    with pytest.raises(Exception):  # noqa: B017 - the hello never comes: the socket closes
        await asyncio.wait_for(refused.recv(), 5)
    assert refused.close_code == protocol.CLOSE_TOO_MANY_CONNECTIONS
    await anonymous.pop().close()

    async def accepted_again() -> bool:
        try:
            anonymous.append(await Client.open(cluster.ws("camserver1")))
            return anonymous[-1].hello.get("op") == "hello"
        except Exception:  # noqa: BLE001 - refused while the count has not dropped yet
            return False

    await eventually(accepted_again, 10, "the address to be accepted again")
    for c in anonymous:
        await c.close()


async def test_presence_watches_are_capped_per_connection_and_per_edge(
        cluster_factory: Any, make_user: Any):
    cluster: Cluster = cluster_factory(1)
    cluster.start_chat("chat1")
    cluster.start_presence("presence1")
    cluster.start_edge("camserver1", 0, CAM_WATCH_PER_CONNECTION="10", CAM_WATCH_PER_EDGE="15")
    cluster.wait_edges()
    a, b, c = [await cluster.connect("camserver1", await make_user()) for _ in range(3)]
    assert len((await a.request("watch", users=list(range(1, 11))))["presence"]) == 10
    with pytest.raises(ClientError) as per_connection:
        await a.request("watch", users=[11])
    assert per_connection.value.code == "limit_reached"
    # The same users again cost the edge nothing more: it holds one subscription each.
    await b.request("watch", users=list(range(1, 6)))
    await b.request("watch", users=list(range(11, 16)))  # 15 distinct users now
    with pytest.raises(ClientError) as per_edge:
        await c.request("watch", users=[16])
    assert per_edge.value.code == "limit_reached"
    assert (await c.request("watch", users=[3]))["presence"][0]["user"] == 3
    await a.request("unwatch", users=list(range(1, 11)))
    # 6-10 are no longer watched by anyone: room for more.
    assert (await c.request("watch", users=[16]))["presence"][0]["user"] == 16
    for client in (a, b, c):
        await client.close()


async def test_a_socket_whose_session_expired_is_closed(
        cluster_factory: Any, make_user: Any, pool: asyncpg.Pool):
    cluster = one_edge(cluster_factory)  # cam.sessionRecheckInterval is 1 s in tests
    user, other = await make_user(), await make_user()
    client = await cluster.connect("camserver1", user)
    bystander = await cluster.connect("camserver1", other)
    assert (await client.request("ping"))["pong"] is True
    await pool.execute("UPDATE sessions SET expires_at = now() WHERE user_id = $1",
                       await user_id(pool, user[0]))
    assert await client.wait_closed(15) == protocol.CLOSE_SESSION_REVOKED
    assert bystander.close_code is None
    assert (await bystander.request("ping"))["pong"] is True
    await bystander.close()


async def test_a_revocation_whose_event_was_lost_still_closes_the_socket(
        cluster_factory: Any, make_user: Any, pool: asyncpg.Pool):
    cluster = one_edge(cluster_factory)
    user = await make_user()
    client = await cluster.connect("camserver1", user)
    # Revoked in the store only: no event on the bus, as if it was lost.
    await pool.execute("UPDATE sessions SET revoked_at = now() WHERE user_id = $1",
                       await user_id(pool, user[0]))
    assert await client.wait_closed(15) == protocol.CLOSE_SESSION_REVOKED


async def test_a_password_change_revokes_the_other_sessions_on_every_node(
        two_nodes: Cluster, make_user: Any):
    user, password = await make_user()
    here_token = await login(two_nodes.http("camserver1"), user, password)
    here = await Client.connect(two_nodes.ws("camserver1"), here_token)
    there = await two_nodes.connect("camserver2", (user, password))
    async with httpx.AsyncClient(base_url=two_nodes.http("camserver1")) as http:
        auth = {"Authorization": f"Bearer {here_token}"}
        wrong = await http.post("/api/password", headers=auth,
                                json={"current": "not it at all", "new": "a new secret"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "bad_credentials"
        short = await http.post("/api/password", headers=auth,
                                json={"current": password, "new": "short"})
        assert short.status_code == 400 and short.json()["error"]["code"] == "bad_request"
        assert there.close_code is None  # refused changes revoke nothing
        r = await http.post("/api/password", headers=auth,
                            json={"current": password, "new": "a new secret"})
        assert r.status_code == 200, r.text
        assert r.json() == {"changed": True, "revoked_sessions": 1}
        assert r.headers["cache-control"] == "no-store"
        anonymous = await http.post("/api/password",
                                    json={"current": password, "new": "a new secret"})
        assert anonymous.status_code == 401
    # The other node closes its socket at once (the event), this one keeps its own.
    assert await there.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    assert (await here.request("ping"))["pong"] is True
    with pytest.raises(ClientError) as old:
        await login(two_nodes.http("camserver2"), user, password)
    assert old.value.code == "bad_credentials"
    assert await login(two_nodes.http("camserver2"), user, "a new secret")
    await here.close()


def camctl(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """``camctl`` as an operator runs it against this cluster: its database and bus."""
    env = {**os.environ, "CAM_DATABASE_URL": cluster.database,
           "CAM_NATS_URL": cluster.nats_url(0),
           "CAM_NATS_CREDENTIALS": cluster.credential("operator"),
           "CAM_SERVER_DATE_PATH": str(cluster.data_path)}
    return subprocess.run([sys.executable, "-m", "camctl.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=60)


async def test_an_operator_logs_a_user_out_everywhere_and_resets_a_password(
        two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool):
    user, password = await make_user()
    other = await make_user()
    sockets = [await two_nodes.connect(node, (user, password))
               for node in ("camserver1", "camserver2")]
    bystander = await two_nodes.connect("camserver2", other)
    revoked = camctl(two_nodes, "user", "revoke", user)
    assert revoked.returncode == 0, revoked.stderr
    assert f"logged out {user}: 2 sessions revoked; their sockets are closed" in revoked.stdout
    for sock in sockets:
        assert await sock.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    assert (await bystander.request("ping"))["pong"] is True
    # A password reset revokes the sessions opened since, and the old password is gone.
    again = await two_nodes.connect("camserver1", (user, password))
    reset = camctl(two_nodes, "user", "passwd", user, "--password", "reset by operator")
    assert reset.returncode == 0, reset.stderr
    assert "1 sessions revoked" in reset.stdout
    assert await again.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    with pytest.raises(ClientError):
        await login(two_nodes.http("camserver2"), user, password)
    assert await login(two_nodes.http("camserver2"), user, "reset by operator")
    unknown = camctl(two_nodes, "user", "revoke", "nobody-by-this-name")
    assert unknown.returncode == 1 and "no user 'nobody-by-this-name'" in unknown.stderr
    audited = await pool.fetch(
        "SELECT action, actor_id, detail FROM audit_log WHERE user_id = $1 ORDER BY id",
        await user_id(pool, user))
    assert [(r["action"], r["actor_id"], json.loads(r["detail"])["via"]) for r in audited] == [
        ("revoke_sessions", None, "camctl"), ("reset_password", None, "camctl")]
    await bystander.close()


async def test_an_admin_revokes_every_session_of_a_user_and_a_non_admin_cannot(
        two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool):
    admin_name = f"admin{os.getpid()}{id(pool) % 10000}"
    await accounts.create_user(pool, admin_name, "correct horse", is_admin=True)
    admin = await two_nodes.connect("camserver1", (admin_name, "correct horse"))
    user, someone = await make_user(), await make_user()
    sockets = [await two_nodes.connect(node, user) for node in ("camserver1", "camserver2")]
    peer = await two_nodes.connect("camserver2", someone)
    with pytest.raises(ClientError) as refused:
        await peer.admin_revoke_sessions(user[0])
    assert refused.value.code == "forbidden"
    assert all(s.close_code is None for s in sockets)
    result = await admin.admin_revoke_sessions(user[0])
    assert result == {"user": user[0], "revoked_sessions": 2}
    for sock in sockets:
        assert await sock.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    with pytest.raises(ClientError) as unknown:
        await admin.admin_revoke_sessions("nobody-by-this-name")
    assert unknown.value.code == "no_such_user"
    rows = await pool.fetch(
        "SELECT a.action, a.user_id, a.detail, u.username AS actor FROM audit_log a"
        " JOIN users u ON u.id = a.actor_id WHERE a.user_id = $1",
        await user_id(pool, user[0]))
    assert [(r["action"], r["actor"], json.loads(r["detail"])) for r in rows] == [
        ("revoke_sessions", admin_name, {"sessions": 2})]
    assert (await peer.request("ping"))["pong"] is True
    await admin.close()
    await peer.close()
