"""Conferences in the web app: real Chromium with its fake camera and microphone, real
Janus SFUs, the video allocator placing and moving the conference.

Alice's browser is on camserver1, Bob's on camserver2. Both press Meet in their room;
each page publishes to the Janus the allocator chose and subscribes to the other, and
each must decode the other's video: the frame counts the page reads from
RTCPeerConnection.getStats() (each tile's ``data-frames``) rise, then rise again. Then
the conference's Janus is killed: both pages move to the other SFU by themselves
(conf_moved, or their own loss of the server) and the video flows again.

A guest opens a meeting link that Alice made in the room, in a fresh browser context
with no account: the guest gives a name, joins that conference and exchanges video
with Alice, and Alice's tile shows the guest's name. Once Alice revokes the link, the
guest's page is put out of the meeting, and the link no longer works.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from playwright.async_api import expect

from .conftest import Browsers, WebCluster
from .pages import MEDIA_TIMEOUT, TIMEOUT, ChatPage, Problem, WebUser, exact

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _user_id(web: WebCluster, user: WebUser) -> int:
    client = await web.client("camserver1", user)
    return int(client.user["id"])


async def _in_room(web: WebCluster, browsers: Browsers, label: str, node: str,
                   user: WebUser, room: str) -> ChatPage:
    page = await browsers.open(label, web.url(node))
    await page.goto()
    await page.login(user)
    await page.wait_connected(node)
    await page.open_room(room)
    return page


def _refused_link(problem: Problem) -> bool:
    """The browser's own console line for the 404 of POST /api/guest."""
    return problem.kind == "console" and "status of 404" in problem.text


async def _server_of(page: ChatPage) -> str:
    conf = page.tid("conference")
    await expect(conf).to_have_attribute("data-server", re.compile(r"^v\d$"), timeout=MEDIA_TIMEOUT)
    return str(await conf.get_attribute("data-server"))


async def test_two_browsers_on_two_nodes_meet_and_move_when_their_janus_dies(
        browsers: Browsers, video_web_cluster: WebCluster, web_user: Any) -> None:
    web = video_web_cluster
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    alice_id, bob_id = await _user_id(web, alice_user), await _user_id(web, bob_user)
    name = f"standup-{uuid.uuid4().hex[:6]}"

    alice = await browsers.open("alice", web.url("camserver1"))
    await alice.goto()
    await alice.login(alice_user)
    await alice.create_room(name, [bob_user])
    bob = await _in_room(web, browsers, "bob", "camserver2", bob_user, name)

    await alice.meet()
    await bob.meet()
    await expect(alice.tid("meet-button")).to_be_disabled()
    # Each decodes the other's video, and keeps decoding it.
    await alice.receives_video_of(bob_id)
    await bob.receives_video_of(alice_id)
    await expect(alice.tile(bob_id).locator("figcaption")).to_have_text(exact(bob_user.display_name))
    await expect(bob.tile(alice_id).locator("figcaption")).to_have_text(exact(alice_user.display_name))
    await expect(alice.tid("conf-status")).to_have_text(exact("Live"), timeout=TIMEOUT)
    first = await _server_of(alice)
    assert await _server_of(bob) == first == "v1"   # fill first
    await alice.shot("conference")
    await bob.shot("conference")

    # Mute and camera toggles change what the page says and sends.
    await alice.tid("conf-mute").click()
    await expect(alice.tid("conf-mute")).to_have_attribute("aria-pressed", "true")
    await alice.tid("conf-mute").click()
    await expect(alice.tid("conf-mute")).to_have_attribute("aria-pressed", "false")

    # The conference's Janus dies: both pages end up on the other one, with video.
    dead = web.sfus[first]
    for page in (alice, bob):
        browsers.problems.tolerate_dead_host(f"{dead.address}:{dead.port}", page.label)
    dead.kill()
    for page in (alice, bob):
        await expect(page.tid("conference")).to_have_attribute("data-server", "v2", timeout=MEDIA_TIMEOUT)
    await alice.receives_video_of(bob_id)
    await bob.receives_video_of(alice_id)
    await expect(bob.tid("conf-status")).to_have_text(exact("Live"), timeout=TIMEOUT)
    await alice.shot("conference-moved")

    # Leaving takes the tile away on the other page.
    await bob.tid("conf-leave").click()
    await expect(bob.tid("conference")).to_have_count(0)
    await expect(alice.tile(bob_id)).to_have_count(0, timeout=MEDIA_TIMEOUT)
    await expect(bob.tid("meet-button")).to_be_enabled()


async def test_a_guest_joins_by_meeting_link_until_it_is_revoked(
        browsers: Browsers, video_web_cluster: WebCluster, web_user: Any) -> None:
    web = video_web_cluster
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    alice_id = await _user_id(web, alice_user)
    name = f"client-call-{uuid.uuid4().hex[:6]}"
    guest_name = "Guest <b>Ōta</b>"

    alice = await browsers.open("alice", web.url("camserver1"))
    await alice.goto()
    await alice.login(alice_user)
    await alice.create_room(name, [bob_user])
    await alice.tid("guest-links-button").click()
    await alice.tid("guest-link-create").click()
    url_box = alice.tid("guest-link-url")
    await expect(url_box).to_have_value(re.compile(r"/#meet/[A-Za-z0-9_-]{20,}$"), timeout=TIMEOUT)
    link = await url_box.input_value()
    await expect(alice.tid("guest-link-item")).to_have_count(1)
    await alice.shot("guest-links")
    await alice.meet()

    # A fresh context with no session, on the other node's origin.
    guest = await browsers.open("guest", web.url("camserver2"))
    await guest.page.goto(link.replace(web.url("camserver1"), web.url("camserver2")))
    await expect(guest.tid("guest-name")).to_be_visible(timeout=TIMEOUT)
    await guest.shot("guest-join")
    await guest.tid("guest-name").fill(guest_name)
    await guest.tid("guest-join").click()
    await expect(guest.tid("conference")).to_be_visible(timeout=TIMEOUT)
    # The guest sees the meeting only: no rooms, no composer.
    await expect(guest.tid("room-list")).to_have_count(0)
    await expect(guest.tid("composer-input")).to_have_count(0)
    await guest.receives_video_of(alice_id)
    guest_tiles = alice.page.locator('[data-testid="conf-tile"]:not([data-local])')
    await expect(guest_tiles).to_have_count(1, timeout=MEDIA_TIMEOUT)
    guest_id = int(await guest_tiles.get_attribute("data-user") or 0)
    await alice.receives_video_of(guest_id)
    # The name the guest typed, as text, from the server's participant list.
    await expect(alice.tile(guest_id).locator("figcaption")).to_have_text(exact(guest_name))
    assert await alice.tile(guest_id).locator("figcaption b").count() == 0
    await guest.shot("guest-meeting")

    # Revoked: the guest is put out at once, and the link no longer works.
    await alice.tid("guest-link-revoke").click()
    await expect(alice.tid("guest-link-item")).to_have_count(0, timeout=TIMEOUT)
    await expect(guest.tid("guest-ended")).to_be_visible(timeout=TIMEOUT)
    await expect(guest.tid("conference")).to_have_count(0)
    await expect(alice.tile(guest_id)).to_have_count(0, timeout=MEDIA_TIMEOUT)
    with browsers.problems.expecting(_refused_link) as refused:
        await guest.tid("guest-name").fill("Guest again")
        await guest.tid("guest-join").click()
        await expect(guest.tid("guest-error")).to_have_text(
            exact("This meeting link is invalid, expired or revoked."), timeout=TIMEOUT)
        # A page opened fresh on the link fares no better.
        late = await browsers.open("late-guest", web.url("camserver1"))
        await late.page.goto(link)
        await late.tid("guest-name").fill("Late")
        await late.tid("guest-join").click()
        await expect(late.tid("guest-error")).to_be_visible(timeout=TIMEOUT)
    assert {p.page for p in refused} == {"guest", "late-guest"}, refused
