"""Two people chat in the web app, each in a browser of their own, each on another node.

Alice's browser uses camserver1, Bob's camserver2; both log in through the login form.
They open a direct room and a group room and chat both ways; unread counts and the
title follow what each has read, and the read markers live on the server: Alice logs
in again on the other node (another device) and finds the same counts. Presence
(status-picker), typing (typing-indicator) and logout work across the nodes.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from tests.waiting import eventually

from .conftest import Browsers, WebCluster
from .pages import TIMEOUT, TITLE, ChatPage, WebUser, connected_to

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _server_unread(web: WebCluster, node: str, user: WebUser) -> dict[int, tuple[int, int]]:
    """room id -> (unread, read_seq) as the server keeps them for ``user``."""
    client = await web.client(node, user)
    return {r["id"]: (r["unread"], r["read_seq"]) for r in client.rooms}


async def _sees(page: ChatPage, body: str, sender: WebUser) -> int:
    """``body`` is shown once in the selected room, acknowledged, under ``sender``'s name."""
    seq = await page.seq_of(body)
    shown = page.message(body)
    await expect(shown.get_by_test_id("message-sender")).to_have_text(sender.names)
    await expect(shown.get_by_test_id("message-time")).not_to_be_empty()
    return seq


async def test_two_users_on_two_nodes_chat_read_and_see_each_other(
        browsers: Browsers, web_cluster: WebCluster, web_user: Any) -> None:
    web = web_cluster
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    team = f"team-{uuid.uuid4().hex[:6]}"

    alice = await browsers.open("alice", web.url("camserver1"))
    bob = await browsers.open("bob", web.url("camserver2"))
    await alice.goto()
    await alice.shot("login")
    await alice.login(alice_user)
    await bob.goto()
    await bob.login(bob_user)
    # Each page connects to its own host first (cam.clusterHosts order).
    await alice.wait_connected("camserver1")
    await bob.wait_connected("camserver2")
    await expect(alice.page).to_have_title(TITLE)

    # ---- a direct room, found in the directory, and a group room
    dm_id = await alice.open_direct(bob_user)
    team_id = await alice.create_room(team, [bob_user])
    assert dm_id != team_id
    # Bob's list gets both (room_added across nodes); his direct room is named after Alice.
    await expect(bob.room_item_by_id(dm_id).get_by_test_id("room-name")).to_have_text(
        alice_user.display_name, timeout=TIMEOUT)
    await expect(bob.room_item_by_id(team_id).get_by_test_id("room-name")).to_have_text(team)

    # ---- chat both ways in the direct room (Enter, and the send button)
    await alice.open_room(bob_user.display_name)
    await alice.send("hello Bob, from camserver1")
    # Bob has no room open: the direct room counts it as unread, and so does his title.
    await expect(bob.unread(alice_user.display_name)).to_have_text("1", timeout=TIMEOUT)
    await expect(bob.page).to_have_title(f"(1) {TITLE}")
    await expect(bob.room_item(alice_user.display_name).get_by_test_id("room-last")).to_contain_text(
        "hello Bob, from camserver1")
    await bob.open_room(alice_user.display_name)
    await _sees(bob, "hello Bob, from camserver1", alice_user)
    await expect(bob.unread(alice_user.display_name)).to_have_count(0)
    await expect(bob.page).to_have_title(TITLE)
    await bob.send("hi Alice, from camserver2", button=True)
    await _sees(alice, "hi Alice, from camserver2", bob_user)
    # Shift+Enter is a new line, not a send.
    composer = alice.tid("composer-input")
    await composer.fill("line one")
    await composer.press("Shift+Enter")
    await composer.press_sequentially("line two")
    await expect(composer).to_have_value("line one\nline two")  # not sent: still there
    await composer.press("Enter")
    two_lines = bob.message("line one line two")
    await expect(two_lines).to_have_count(1, timeout=TIMEOUT)
    assert await bob.text_of(two_lines.get_by_test_id("message-body")) == "line one\nline two"

    # ---- and in the group room
    await alice.open_room(team)
    await alice.send("hello team")
    await bob.open_room(team)
    await _sees(bob, "hello team", alice_user)
    await bob.send("hello Alice, in the team room")
    await _sees(alice, "hello Alice, in the team room", bob_user)
    # Nobody's own messages count, nor those of the open room.
    for page in (alice, bob):
        await expect(page.tid("room-unread")).to_have_count(0)
        await expect(page.page).to_have_title(TITLE)
    await alice.shot("chat")
    await bob.shot("chat")

    # ---- presence: Alice's direct room shows Bob's chosen status
    dot = alice.presence(bob_user.display_name)
    await expect(dot).to_have_attribute("data-status", "online", timeout=TIMEOUT)
    await bob.set_status("away")
    await expect(dot).to_have_attribute("data-status", "away", timeout=TIMEOUT)
    await bob.set_status("invisible")
    await expect(dot).to_have_attribute("data-status", "offline", timeout=TIMEOUT)
    await bob.set_status("online")
    await expect(dot).to_have_attribute("data-status", "online", timeout=TIMEOUT)

    # ---- typing: Alice sees Bob typing in the room she has open, Bob does not see himself
    # At a person's pace: a page tells the room at most about once a second.
    await bob.tid("composer-input").press_sequentially("I am typing", delay=150)
    await expect(alice.tid("typing-indicator")).to_have_text(
        re.compile(f"{re.escape(bob_user.display_name)}|{re.escape(bob_user.username)}"), timeout=TIMEOUT)
    await expect(bob.tid("typing-indicator")).to_have_text("")
    await bob.tid("composer-input").press("Enter")
    await _sees(alice, "I am typing", bob_user)
    await expect(alice.tid("typing-indicator")).to_have_text("", timeout=20_000)

    # ---- unread counts while another room is selected
    await bob.open_room(alice_user.display_name)
    await bob.send("direct one")
    dm_last = await bob.send("direct two")
    await expect(alice.unread(bob_user.display_name)).to_have_text("2", timeout=TIMEOUT)
    await expect(alice.page).to_have_title(f"(2) {TITLE}")
    await expect(alice.room_item(bob_user.display_name).get_by_test_id("room-last")).to_contain_text(
        "direct two")
    await expect(alice.unread(team)).to_have_count(0)
    await alice.shot("unread")
    await alice.open_room(bob_user.display_name)
    await expect(alice.unread(bob_user.display_name)).to_have_count(0, timeout=TIMEOUT)
    await expect(alice.page).to_have_title(TITLE)
    # Now the other way round: one unread in the group room, which Alice leaves unread.
    await bob.open_room(team)
    last_team = await bob.send("team, unread")
    await expect(alice.unread(team)).to_have_text("1", timeout=TIMEOUT)
    await expect(alice.page).to_have_title(f"(1) {TITLE}")

    # The server holds the markers: the direct room read to its end, one unread in the team.

    async def markers_stored() -> dict[int, tuple[int, int]] | None:
        counts = await _server_unread(web, "camserver2", alice_user)
        return counts if counts[dm_id] == (0, dm_last) else None

    counts = await eventually(markers_stored, 10, "Alice's read marker of the direct room", step=0.5)
    assert counts[team_id][0] == 1 and counts[team_id][1] < last_team, counts

    # ---- logout returns to the login form and ends the session
    token = await alice.page.evaluate("() => sessionStorage.getItem('cam.token')")
    assert token, "the page keeps its token in sessionStorage 'cam.token'"
    await alice.logout()
    await alice.shot("logged-out")
    assert await alice.page.evaluate("() => sessionStorage.getItem('cam.token')") is None
    async with httpx.AsyncClient(base_url=web.edge_url("camserver1"), timeout=5) as http:
        me = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401, "logout revokes the session on the server"

    # ---- logged in again, on the other node, in another browser: the same counts
    again = await browsers.open("alice-again", web.url("camserver2"))
    await again.goto()
    await again.login(alice_user)
    await again.wait_connected("camserver2")
    await expect(again.room_item_by_id(dm_id)).to_have_count(1, timeout=TIMEOUT)
    await expect(again.unread(bob_user.display_name)).to_have_count(0)
    await expect(again.unread(team)).to_have_text("1")
    await expect(again.page).to_have_title(f"(1) {TITLE}")
    await again.open_room(team)
    await _sees(again, "team, unread", bob_user)
    await expect(again.unread(team)).to_have_count(0, timeout=TIMEOUT)
    await expect(again.page).to_have_title(TITLE)
    await again.shot("rooms")
    await bob.logout()
    assert connected_to("camserver2") in await bob.banner_log()
    browsers.problems.check()
