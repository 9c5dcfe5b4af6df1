"""The web-app failover of cluster-spec.md section 2, in the client library.

Without a load balancer the client connects to the hosts of ``cam.clusterHosts`` in
order and moves to the next when its node dies; with one it reconnects through the
load balancer only. Either way it resumes its rooms and keeps chatting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camclient.client import Client, login
from camclient.session import Session

from .lb_fixtures import LbCluster, start_lb_cluster


@pytest.fixture
def direct(cluster_factory: Any, tmp_path: Path) -> Iterator[LbCluster]:
    """Two edges, each listing its own host first; no load balancer in front."""
    made = start_lb_cluster(cluster_factory, tmp_path, kinds=())
    yield made
    made.stop()


def _other(node: str) -> str:
    return "camserver2" if node == "camserver1" else "camserver1"


async def _chat_pair(c: Any, make_user: Any, session_base: str,
                     verify: Any = True) -> tuple[Session, Client, int]:
    """Alice: a Session made from the cluster information of ``session_base``.
    Bob: a plain client on the node Alice is not on (it survives the test)."""
    (a_name, a_pw), (b_name, b_pw) = await make_user(), await make_user()
    token_a = await login(session_base, a_name, a_pw, verify=verify)
    token_b = await login(c.http("camserver1"), b_name, b_pw)
    alice = await (await Session.for_cluster(session_base, token_a, verify=verify)).start()
    assert alice.client is not None
    bob = await Client.connect(c.ws(_other(alice.client.hello["node"])), token_b)
    room = await alice.request("create_room", name="failover", members=[b_name])
    await bob.next_event("room_added")
    return alice, bob, room["id"]


async def _keeps_chatting(alice: Session, bob: Client, room: int, before: int) -> None:
    """Alice sends (retried with the same cid until acknowledged) and receives."""
    ack = await alice.send(room, "after failover", deadline=30)
    got = await bob.next_event("message", where=lambda e: e["body"] == "after failover")
    assert got["seq"] == ack["seq"] == before + 1
    await bob.send(room, "welcome back")
    back = await asyncio.wait_for(alice.events.get(), 10)
    while back.get("body") != "welcome back":
        back = await asyncio.wait_for(alice.events.get(), 10)
    assert back["seq"] == before + 2
    assert alice.last_seq[room] == before + 2


async def test_no_load_balancer_the_client_follows_the_host_order_and_fails_over(
        direct: LbCluster, make_user: Any) -> None:
    c = direct.cluster
    info_urls = [f"ws://127.0.0.1:{c.edge_ports[n]}/ws" for n in ("camserver1", "camserver2")]
    alice, bob, room = await _chat_pair(c, make_user, c.http("camserver1"))
    try:
        # camserver1 lists itself first: its users go there first, camserver2 is next.
        assert alice.cluster is not None and not alice.cluster.load_balancer
        assert alice.urls == info_urls
        assert alice.client is not None and alice.client.hello["node"] == "camserver1"
        ack = await alice.send(room, "before failover")
        assert (await bob.next_event("message"))["seq"] == ack["seq"]

        c.procs["camserver1"].kill()  # the node dies; nobody tells the client
        await _wait_connected_to(alice, "camserver2", 30)
        # One reconnect, after a connection that died without a close frame.
        assert alice.connections == 2 and alice.close_codes == [1006]
        await _keeps_chatting(alice, bob, room, ack["seq"])
    finally:
        await alice.close()
        await bob.close()


async def test_a_user_of_the_second_server_starts_there(direct: LbCluster, make_user: Any) -> None:
    c = direct.cluster
    name, pw = await make_user()
    token = await login(c.http("camserver2"), name, pw)
    session = await Session.for_cluster([c.http("camserver2"), c.http("camserver1")], token)
    assert session.cluster is not None and session.cluster.own_host == (
        f"127.0.0.1:{c.edge_ports['camserver2']}")
    assert session.urls == [c.ws("camserver2"), c.ws("camserver1")]
    await session.start()
    try:
        assert session.client is not None and session.client.hello["node"] == "camserver2"
    finally:
        await session.close()


async def test_behind_a_load_balancer_the_client_reconnects_through_it_only(
        cluster_factory: Any, tmp_path: Path, make_user: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = start_lb_cluster(cluster_factory, tmp_path, kinds=("caddy",))
    c, balancer = made.cluster, made.balancers["caddy"]
    monkeypatch.setenv("SSL_CERT_FILE", str(balancer.ca_file))
    try:
        alice, bob, room = await _chat_pair(c, make_user, balancer.url, balancer.ssl_context())
        try:
            assert alice.cluster is not None and alice.cluster.load_balancer
            assert alice.urls == [balancer.ws_url]
            assert alice.client is not None
            first = alice.client.hello["node"]
            ack = await alice.send(room, "before failover")
            assert (await bob.next_event("message"))["seq"] == ack["seq"]
            c.procs[first].kill()
            await _wait_connected_to(alice, _other(first), 30)
            assert alice.connections == 2 and len(alice.close_codes) == 1
            # Through the load balancer again, never straight to an edge.
            assert alice.urls == [balancer.ws_url]
            await _keeps_chatting(alice, bob, room, ack["seq"])
        finally:
            await alice.close()
            await bob.close()
    finally:
        made.stop()


async def _wait_connected_to(session: Session, node: str, timeout: float) -> None:
    """Poll until ``session`` is connected to ``node``; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        client = session.client
        if session.connected.is_set() and client is not None and client.hello.get("node") == node:
            return
        if time.monotonic() > deadline:
            where = client.hello.get("node") if client is not None else None
            raise AssertionError(f"not connected to {node} after {timeout:g}s (on {where}, "
                                 f"close codes {session.close_codes})")
        await asyncio.sleep(0.05)
