"""The admin console of the web app, in Chromium, against a real two-node cluster.

An administrator's page on camserver1 shows the Admin entry (a member's page does not)
and opens the admin view. The Cluster tab shows both nodes with the cluster's
description and refreshes by itself; the Users tab creates a user from its form and
three from CSV (read from a file; a CSV with a bad row is refused row by row and
creates nobody), and deactivates one of them while that user is logged in on
camserver2: that page is put back to the login form. The Video servers tab shows the
conference on v1, explains its placement, drains v1 (marked draining) and enables it
again. The Audit log tab lists every one of those actions, filtered by the admin.

In the Rooms tab the administrator removes a member of a room and deletes the room,
each after a confirmation inside the page; the members' pages lose the room.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, expect

from camclient import ClientError, login

from .conftest import CLUSTER_DESC, NODES, Browsers, WebCluster
from .pages import TIMEOUT, ChatPage, Problem, WebUser, exact

pytestmark = pytest.mark.asyncio(loop_scope="module")

SESSION_ENDED = "Your session has ended. Please sign in again."


def _refused(status: int) -> Callable[[Problem], bool]:
    """The browser's own console line for an admin call the server refused."""
    return lambda p: p.kind == "console" and f"status of {status}" in p.text


async def _page(web: WebCluster, browsers: Browsers, label: str, node: str,
                user: WebUser) -> ChatPage:
    page = await browsers.open(label, web.url(node))
    await page.goto()
    await page.login(user)
    await page.wait_connected(node)
    return page


async def _open_admin(page: ChatPage, tab: str) -> Locator:
    """The admin view's tab ``tab``, selected; returns its panel."""
    if not await page.tid("admin-view").count():
        await page.tid("admin-button").click()
    await expect(page.tid("admin-view")).to_be_visible()
    button = page.page.locator(f'[data-testid="admin-tab"][data-tab="{tab}"]')
    await button.click()
    await expect(button).to_have_attribute("aria-selected", "true")
    panel = page.tid("admin-panel")
    await expect(panel).to_have_attribute("data-tab", tab)
    return panel


def _user_row(page: ChatPage, username: str) -> Locator:
    return page.page.locator(f'[data-testid="admin-user-row"][data-username="{username}"]')


def _audit(page: ChatPage, action: str) -> Locator:
    return page.page.locator(f'[data-testid="admin-audit-entry"][data-action="{action}"]')


async def test_an_admin_creates_imports_deactivates_drains_and_finds_it_all_in_the_audit_log(
        browsers: Browsers, admin_video_web_cluster: WebCluster, web_user: Any,
        tmp_path: Path) -> None:
    web = admin_video_web_cluster
    root = await web_user("Root", admin=True)
    tag = uuid.uuid4().hex[:6]
    newbie = WebUser(f"newbie{tag}", "a long enough password", f"Newbie {tag}")
    # Display names with markup: shown as the text they are.
    imported = [WebUser(f"imp{i}{tag}", f"imported password {i}", f"<b>Imported {i}</b> {tag}")
                for i in range(3)]
    victim = imported[1]

    # A conference on v1 (the first in fill order), held by the admin's own client.
    owner = await web.client("camserver1", root)
    room = await owner.request("create_room", name=f"ops-{tag}", members=[])
    joined = await owner.request("conf_join", room=room["id"])
    assert joined["conference"]["server"] == "v1", joined

    admin = await _page(web, browsers, "admin", "camserver1", root)
    await expect(admin.tid("admin-button")).to_have_text(exact("Admin"))

    # ---- Cluster: both nodes, described, alive; and it refreshes by itself
    panel = await _open_admin(admin, "cluster")
    for node in NODES:
        row = panel.locator(f'[data-testid="admin-node"][data-node="{node}"]')
        await expect(row).to_have_attribute("data-alive", "true", timeout=TIMEOUT)
        await expect(row.get_by_test_id("admin-node-desc")).to_have_text(exact(CLUSTER_DESC))
    await expect(admin.tid("admin-cluster-desc")).to_have_text(exact(CLUSTER_DESC))
    await expect(panel.locator('[data-testid="admin-process"][data-kind="chat"]')).to_have_count(1)
    await expect(panel.locator('[data-testid="admin-process"][data-kind="video"]')).to_have_count(1)
    await expect(panel.locator('[data-testid="admin-db"][data-role="primary"]')).to_have_count(1)
    # No backups replica runs here: the backups block says so.
    await expect(admin.tid("admin-backups")).to_have_attribute("data-ok", "false")
    await expect(admin.tid("admin-backup-warning").first).to_contain_text("backups replica")
    updated = admin.tid("admin-updated")
    first = await updated.get_attribute("data-at")
    assert first
    await expect(updated).not_to_have_attribute("data-at", first, timeout=TIMEOUT)
    await admin.shot("cluster")

    # ---- Users: one from the form, with the server's password policy as the hint
    await _open_admin(admin, "users")
    await expect(admin.tid("admin-password-hint")).to_have_text(exact("At least 8 characters."))
    await admin.tid("admin-create-username").fill(newbie.username)
    await admin.tid("admin-create-display").fill(newbie.display_name)
    await admin.tid("admin-create-password").fill(newbie.password)
    await admin.tid("admin-create-submit").click()
    await expect(admin.tid("admin-create-done")).to_have_text(exact(f"Created @{newbie.username}."))

    # A CSV with a bad row is refused whole, row by row.
    header = "username,password,display_name,admin\n"
    bad = header + f"ok{tag},a long enough password,OK,false\nshort{tag},short,Short,false\n"
    with browsers.problems.expecting(_refused(400)) as came:
        await admin.tid("admin-import-csv").fill(bad)
        await admin.tid("admin-import-submit").click()
        rows = admin.tid("admin-import-row")
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("data-line", "3")
        await expect(rows).to_contain_text("password")
        await expect(admin.tid("admin-import-error")).to_be_visible()
    assert came, "the refused import is the 400 the console reported"

    # Three from a file (read with FileReader into the text area).
    csv = header + "".join(f"{u.username},{u.password},{u.display_name},false\n" for u in imported)
    people = tmp_path / "people.csv"
    people.write_text(csv, encoding="utf-8")
    await admin.tid("admin-import-file").set_input_files(people)
    await expect(admin.tid("admin-import-csv")).to_have_value(csv)
    await admin.tid("admin-import-submit").click()
    await expect(admin.tid("admin-import-done")).to_contain_text("Created 3 users")
    await expect(admin.tid("admin-import-error")).to_have_count(0)

    # The list finds the four by search; nobody from the refused CSV exists.
    await admin.tid("admin-user-search").fill(tag)
    await expect(admin.tid("admin-user-row")).to_have_count(4, timeout=TIMEOUT)
    for user in [newbie, *imported]:
        await expect(_user_row(admin, user.username)).to_have_attribute("data-active", "true")
    await expect(_user_row(admin, imported[0].username).locator("td").nth(1)).to_have_text(
        exact(imported[0].display_name))
    await admin.shot("users")
    assert await login(web.edge_url("camserver2"), newbie.username, newbie.password)

    # ---- a member's page: no Admin entry
    member = await _page(web, browsers, "member", "camserver2", victim)
    await expect(member.tid("me-name")).to_have_text(exact(victim.display_name))
    await expect(member.tid("admin-button")).to_have_count(0)
    await member.shot("no-admin")

    # ---- deactivating the member ends that page's session on the other node
    row = _user_row(admin, victim.username)
    await row.get_by_test_id("admin-user-deactivate").click()
    await expect(row).to_have_attribute("data-active", "false")
    await expect(row.get_by_test_id("admin-user-reactivate")).to_be_visible()
    await expect(admin.tid("admin-user-note")).to_have_text(
        exact(f"@{victim.username} was deactivated. Sessions ended: 1."))
    await expect(member.tid("login-notice")).to_have_text(exact(SESSION_ENDED), timeout=TIMEOUT)
    await expect(member.tid("me-name")).to_have_count(0)
    assert any(f.startswith("closed ") for f in member.frames), "its socket was closed"
    await member.shot("deactivated")
    with pytest.raises(ClientError) as refused:
        await login(web.edge_url("camserver2"), victim.username, victim.password)
    assert refused.value.code == "account_deactivated"

    # ---- Video servers: the conference on v1, its placement, drain and enable
    panel = await _open_admin(admin, "video")
    v1 = panel.locator('[data-testid="admin-video-server"][data-server="v1"]')
    await expect(v1).to_have_attribute("data-state", "active", timeout=TIMEOUT)
    await expect(v1.locator(f'[data-testid="admin-video-conference"][data-room="{room["id"]}"]')
                 ).to_have_count(1, timeout=TIMEOUT)
    await expect(v1.get_by_test_id("admin-video-load")).not_to_have_attribute("data-load", "0")
    await admin.tid("admin-explain-room").fill(str(room["id"]))
    await admin.tid("admin-explain-submit").click()
    await expect(admin.tid("admin-explain-result")).to_have_attribute("data-server", "v1")
    await expect(admin.tid("admin-explain-step").first).to_contain_text("v1")

    await v1.get_by_test_id("admin-video-drain").click()
    await expect(v1).to_have_attribute("data-state", "draining", timeout=TIMEOUT)
    await expect(v1.get_by_test_id("admin-video-draining")).to_have_text(exact("Draining"))
    await expect(panel.locator('[data-testid="admin-video-server"][data-server="v2"]')
                 ).to_have_attribute("data-state", "active")
    await admin.shot("video-draining")
    await v1.get_by_test_id("admin-video-enable").click()
    await expect(v1).to_have_attribute("data-state", "active", timeout=TIMEOUT)
    await expect(v1.get_by_test_id("admin-video-draining")).to_have_count(0)

    # ---- Audit log: every one of those, by this admin
    await _open_admin(admin, "audit")
    await admin.tid("admin-audit-actor").fill(root.username)
    await admin.tid("admin-audit-apply").click()
    for action in ("create_user", "import_users", "deactivate_user", "drain_video", "enable_video"):
        await expect(_audit(admin, action)).to_have_count(1, timeout=TIMEOUT)
    await expect(_audit(admin, "create_user").get_by_test_id("admin-audit-target")).to_have_text(
        exact(f"user @{newbie.username}"))
    await expect(_audit(admin, "import_users").get_by_test_id("admin-audit-detail")).to_contain_text(
        imported[2].username)
    await expect(_audit(admin, "deactivate_user").get_by_test_id("admin-audit-target")).to_have_text(
        exact(f"user @{victim.username}"))
    await expect(_audit(admin, "drain_video").get_by_test_id("admin-audit-detail")).to_contain_text("v1")
    await expect(admin.tid("admin-audit-entry").get_by_test_id("admin-audit-actor-name").first
                 ).to_have_text(exact(f"@{root.username}"))
    await admin.shot("audit")
    # Filtered by action too: the one deactivation.
    await admin.tid("admin-audit-action").select_option("deactivate_user")
    await expect(admin.tid("admin-audit-entry")).to_have_count(1, timeout=TIMEOUT)
    await expect(_audit(admin, "deactivate_user")).to_have_count(1)

    # Back to the chat.
    await admin.tid("admin-button").click()
    await expect(admin.tid("admin-view")).to_have_count(0)
    await expect(admin.tid("room-list")).to_be_visible()


async def test_an_admin_removes_a_member_and_deletes_a_room_after_confirming_in_the_page(
        browsers: Browsers, admin_web_cluster: WebCluster, web_user: Any) -> None:
    web = admin_web_cluster
    root = await web_user("Root", admin=True)
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    name = f"ops-{uuid.uuid4().hex[:6]}"
    alice_client = await web.client("camserver2", alice_user)
    room = await alice_client.request("create_room", name=name, members=[bob_user.username])

    alice = await _page(web, browsers, "alice", "camserver2", alice_user)
    bob = await _page(web, browsers, "bob", "camserver1", bob_user)
    for page in (alice, bob):
        await expect(page.room_item_by_id(room["id"])).to_have_count(1, timeout=TIMEOUT)
    admin = await _page(web, browsers, "admin", "camserver1", root)

    panel = await _open_admin(admin, "rooms")
    await admin.tid("admin-room-search").fill(name)
    row = panel.locator(f'[data-testid="admin-room-row"][data-room-id="{room["id"]}"]')
    await expect(row).to_have_count(1, timeout=TIMEOUT)
    await expect(admin.tid("admin-room-row")).to_have_count(1)
    await expect(row).to_have_attribute("data-name", name)
    await row.get_by_test_id("admin-room-members").click()
    members = admin.tid("admin-room-members-list").get_by_test_id("admin-room-member")
    await expect(members).to_have_count(2)

    # Removing Bob asks first; then his page loses the room, Alice's keeps it.
    bob_item = admin.page.locator(f'[data-testid="admin-room-member"][data-username="{bob_user.username}"]')
    await bob_item.get_by_test_id("admin-member-remove").click()
    await expect(bob_item.get_by_test_id("admin-member-remove-ask")).to_contain_text(bob_user.username)
    await admin.shot("rooms-confirm")
    await bob_item.get_by_test_id("admin-member-remove-confirm").click()
    await expect(members).to_have_count(1, timeout=TIMEOUT)
    await expect(admin.tid("admin-room-note")).to_contain_text(f"@{bob_user.username} was removed")
    await expect(bob.room_item_by_id(room["id"])).to_have_count(0, timeout=TIMEOUT)
    await expect(alice.room_item_by_id(room["id"])).to_have_count(1)

    # Deleting the room: cancelled once, then confirmed.
    await row.get_by_test_id("admin-room-delete").click()
    await row.get_by_test_id("admin-room-delete-cancel").click()
    await expect(row.get_by_test_id("admin-room-delete-ask")).to_have_count(0)
    await expect(row).to_have_count(1)
    await row.get_by_test_id("admin-room-delete").click()
    await row.get_by_test_id("admin-room-delete-confirm").click()
    await expect(row).to_have_count(0, timeout=TIMEOUT)
    await expect(admin.tid("admin-room-note")).to_have_text(exact(f"The room “{name}” was deleted."))
    await expect(alice.room_item_by_id(room["id"])).to_have_count(0, timeout=TIMEOUT)

    # A member's page cannot open the admin view, and the server refuses its calls.
    await expect(alice.tid("admin-button")).to_have_count(0)
    # (The browser logs the refusal on the console whenever it likes: expected from now on.)
    browsers.problems.tolerate(lambda p: p.page == "alice" and _refused(403)(p))
    status = await alice.page.evaluate("""async () => (await fetch('/api/admin/rooms', {
        headers: {authorization: `Bearer ${sessionStorage.getItem('cam.token')}`}})).status""")
    assert status == 403

    await _open_admin(admin, "audit")
    await admin.tid("admin-audit-actor").fill(root.username)
    await admin.tid("admin-audit-apply").click()
    await expect(_audit(admin, "remove_member")).to_have_count(1, timeout=TIMEOUT)
    await expect(_audit(admin, "delete_room")).to_have_count(1)
    await expect(_audit(admin, "delete_room").get_by_test_id("admin-audit-target")).to_have_text(
        re.compile(rf"room #{room['id']}"))
    await admin.shot("rooms-audit")
