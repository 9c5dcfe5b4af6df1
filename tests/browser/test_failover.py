"""The web app fails over by itself when its node dies (kill -9 of the edge).

Alice's page is on camserver1, Bob's on camserver2; they chat in a group room. Then
camserver1 is killed while Alice's tab is frozen (its JavaScript halted, as a browser
does to a background tab), and Bob sends messages: they are sent while Alice is away,
however fast her page would reconnect. Her page runs again and, with nobody's help,
shows "Reconnecting…", then "Connected to camserver2"; its message list is then the
store's (the DOM's data-seq and bodies against ``history`` read with the Python
client: every message once, in order, Bob's "while away" ones included), and what it
sends next reaches Bob.

Without a load balancer the page moves to the next host of cam.clusterHosts
(``/api/cluster`` ``hosts``); behind HAProxy (cam.serverURLDomain names it, so
``/api/cluster`` reports a load balancer) it reconnects through the load balancer only,
which sends it to the node left.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from playwright.async_api import expect

from tests.waiting import eventually

from .conftest import Browsers, WebCluster, pin_cookie
from .pages import FAILOVER_TIMEOUT, RECONNECTING, TIMEOUT, ChatPage, Shown, WebUser, connected_to

pytestmark = pytest.mark.asyncio(loop_scope="module")

AWAY = ["sent while Alice was away 1", "sent while Alice was away 2", "sent while Alice was away 3"]


def _differences(shown: list[Shown], stored: list[dict[str, Any]], users: list[WebUser]) -> list[str]:
    """How the page's message list differs from the store ([] when it is the same).

    System messages (room_created ...) may be rendered any way or not at all; every
    text message must be shown exactly once, in seq order, acknowledged, with its body
    and its sender's name (the store's ``sender_name`` is the user name; the page may
    show the display name instead); nothing may be shown that the store does not have."""
    display = {u.username: u.display_name for u in users}
    problems = []
    by_seq = {m["seq"]: m for m in stored}
    text = [m for m in stored if m["kind"] == "text"]
    seqs = [s.seq for s in shown if s.seq is not None]
    pending = [s for s in shown if s.seq is None or s.pending or s.failed]
    if pending:
        problems.append(f"not acknowledged on the page: {pending}")
    if seqs != sorted(set(seqs)):
        problems.append(f"seqs shown out of order or twice: {seqs}")
    unknown = [s for s in seqs if s not in by_seq]
    if unknown:
        problems.append(f"shown but not in the store: {unknown}")
    want = [(m["seq"], m["sender_name"], m["body"]) for m in text]

    def sender(s: Shown) -> str | None:
        """The user name the page names (given its display name, or itself)."""
        stored_name = by_seq[s.seq]["sender_name"]
        return stored_name if s.sender == display.get(stored_name) else s.sender

    got = [(s.seq, sender(s), s.body)
           for s in shown if s.seq is not None and by_seq.get(s.seq, {}).get("kind") == "text"]
    if got != want:
        problems.append(f"text messages shown {got}\n     the store has {want}")
    return problems


async def _same_as_store(web: WebCluster, page: ChatPage, users: list[WebUser], room: int,
                         node: str = "camserver2") -> None:
    stored = await web.history(node, users[0], room)
    assert [m["body"] for m in stored if m["kind"] == "text"].count(AWAY[0]) == 1

    async def same() -> bool:
        return not _differences(await page.messages(), stored, users)

    try:
        await eventually(same, 15, f"{page.label}'s message list to be the store's", step=0.2)
    except AssertionError:
        raise AssertionError("\n".join(_differences(await page.messages(), stored, users))) from None


async def _chat_kill_and_come_back(browsers: Browsers, web: WebCluster, alice: ChatPage,
                                   bob: ChatPage, alice_user: WebUser, bob_user: WebUser,
                                   dead_host: str) -> None:
    """Alice (on camserver1) and Bob (on camserver2) are logged in; camserver1 dies."""
    users = [bob_user, alice_user]
    await alice.wait_connected("camserver1")
    await bob.wait_connected("camserver2")
    room = f"failover-{uuid.uuid4().hex[:6]}"
    room_id = await alice.create_room(room, [bob_user])
    await bob.open_room(room)
    await alice.send("before the crash, from Alice")
    await bob.seq_of("before the crash, from Alice")
    await bob.send("before the crash, from Bob")
    await alice.seq_of("before the crash, from Bob")
    await alice.shot("before")
    seen = len(await alice.banner_log())

    # The dead node's refused connections are expected console errors, nothing else.
    browsers.problems.tolerate_dead_host(dead_host, alice.label)
    async with alice.frozen() as stopped:
        await asyncio.to_thread(web.kill, "camserver1")
        await asyncio.wait_for(stopped.wait(), 15)  # Alice's page is halted now
        for body in AWAY:
            await bob.send(body)
    # Alice's page runs again: it finds its connection dead and comes back by itself.
    await alice.wait_connected("camserver2", timeout=FAILOVER_TIMEOUT)
    shown = (await alice.banner_log())[seen:]
    assert RECONNECTING in shown, shown
    back = len(shown) - 1 - shown[::-1].index(connected_to("camserver2"))
    assert shown.index(RECONNECTING) < back, shown
    await alice.shot("after-failover")

    for body in AWAY:
        await alice.seq_of(body, timeout=TIMEOUT)
    await _same_as_store(web, alice, users, room_id)

    # It sends again, and Bob gets it.
    after = await alice.send("back, on camserver2")
    assert await bob.seq_of("back, on camserver2") == after
    await expect(bob.message("back, on camserver2").get_by_test_id("message-sender")).to_have_text(
        alice_user.names)
    await bob.send("welcome back")
    assert await alice.seq_of("welcome back") == after + 1
    await _same_as_store(web, alice, users, room_id)
    await _same_as_store(web, bob, users, room_id)
    await bob.shot("after-failover")
    browsers.problems.check()


async def test_the_page_fails_over_to_the_next_cluster_host(
        browsers: Browsers, web_cluster: WebCluster, web_user: Any) -> None:
    web = web_cluster
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    alice = await browsers.open("alice", web.url("camserver1"))
    bob = await browsers.open("bob", web.url("camserver2"))
    await alice.goto()
    await alice.login(alice_user)
    await bob.goto()
    await bob.login(bob_user)

    await _chat_kill_and_come_back(browsers, web, alice, bob, alice_user, bob_user,
                                   dead_host=web.host("camserver1"))
    # Own host first, then the next one of cam.clusterHosts, with the page's scheme.
    assert alice.websockets[0].startswith(f"ws://{web.host('camserver1')}/"), alice.websockets
    assert alice.websockets[-1].startswith(f"ws://{web.host('camserver2')}/"), alice.websockets
    assert all(u.startswith(f"ws://{web.host('camserver2')}/") for u in bob.websockets), bob.websockets


async def test_behind_a_load_balancer_the_page_reconnects_through_it(
        browsers: Browsers, lb_web_cluster: WebCluster, web_user: Any) -> None:
    web = lb_web_cluster
    assert web.balancer is not None
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    # Both through HAProxy; its persistence cookie puts Alice on camserver1, Bob on camserver2.
    alice = await browsers.open("alice", web.balancer.url, ignore_https_errors=True,
                                cookies=pin_cookie(web, "camserver1"))
    bob = await browsers.open("bob", web.balancer.url, ignore_https_errors=True,
                              cookies=pin_cookie(web, "camserver2"))
    await alice.goto()
    await alice.login(alice_user)
    await bob.goto()
    await bob.login(bob_user)

    balancer_host = web.balancer.url.removeprefix("https://")
    await _chat_kill_and_come_back(browsers, web, alice, bob, alice_user, bob_user,
                                   dead_host=balancer_host)
    # Never straight to an edge: every connection went to the load balancer.
    assert len(alice.websockets) >= 2, alice.websockets
    assert all(u.startswith(f"wss://{balancer_host}/") for u in alice.websockets), alice.websockets
