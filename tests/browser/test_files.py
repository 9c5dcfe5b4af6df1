"""File attachments in the web app, between two people on two nodes.

Alice's browser uses camserver1, Bob's camserver2 (no load balancer). Alice pastes a
PNG into the composer: she sees its upload's progress, then the file message; Bob sees
its thumbnail (fetched with his token, shown through an object URL), opens the preview
and downloads the original, byte for byte what Alice pasted. Files picked with the
attach button's file input, or dropped on the room, are uploaded one after another and
shown as download buttons with their names and sizes. A cluster with a small
cam.maxUploadBytes refuses a larger file: the upload shows the error, with retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright._impl._api_structures import FilePayload
from playwright.async_api import expect

from tests.conftest import Cluster
from tests.integration.lb_fixtures import start_lb_cluster
from tests.waiting import eventually

from .conftest import NODES, Browsers, WebCluster, _cluster_info
from .pages import TIMEOUT, ChatPage, Problem, WebUser

pytestmark = pytest.mark.asyncio(loop_scope="module")

ODD_NAME = "<img src=x onerror=alert(1)> notes.txt"
"""A file name that would be markup if the page rendered names as HTML."""

SMALL_LIMIT = 200_000
"""cam.maxUploadBytes of the cluster that refuses a larger file."""

UPLOAD_LOG_JS = """() => {
  // Every state of every upload-item, as the page showed it (a state may last a moment).
  if (window.__camUploads) return;
  const log = [];
  Object.defineProperty(window, '__camUploads', {value: log});
  const look = () => {
    const items = [...document.querySelectorAll('[data-testid="upload-item"]')].map((e) => ({
      name: e.getAttribute('data-name'), state: e.getAttribute('data-state'),
      percent: Number(e.getAttribute('data-percent')), error: e.getAttribute('data-error')}));
    const last = log.length ? JSON.stringify(log[log.length - 1]) : null;
    if (JSON.stringify(items) !== last) log.push(items);
  };
  new MutationObserver(look).observe(document, {subtree: true, childList: true,
                                                attributes: true, characterData: true});
}"""

PASTE_JS = """([testId, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type}));
  const target = document.querySelector(`[data-testid="${testId}"]`);
  target.focus();
  const ev = new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
  target.dispatchEvent(ev);
  return ev.defaultPrevented;
}"""

DROP_JS = """([testId, b64, name, type, phase]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, {type}));
  const target = document.querySelector(`[data-testid="${testId}"]`);
  const fire = (kind) => target.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true,
                                                                    cancelable: true}));
  if (phase === 'enter') { fire('dragenter'); fire('dragover'); return true; }
  return !fire('drop');   // true: the page took the drop (preventDefault)
}"""

IMAGE_SIZE_JS = """img => img.complete && img.naturalWidth > 0
  ? {natural: [img.naturalWidth, img.naturalHeight], src: img.src,
     attrs: [img.getAttribute('width'), img.getAttribute('height')]}
  : null"""


def _png(width: int = 400, height: int = 300) -> bytes:
    """A PNG with something on it (so that it is not one flat colour)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (240, 244, 250))
    draw = ImageDraw.Draw(img)
    for i in range(0, width, 20):
        draw.line([(i, 0), (width - i, height)], fill=(47, 111, 237), width=2)
    draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(192, 57, 43),
                 outline=(20, 20, 20), width=4)
    draw.rectangle([10, 10, 90, 60], fill=(47, 158, 91))
    draw.text((20, height - 30), "camcluster", fill=(0, 0, 0))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _pdf(extra: int = 3000) -> bytes:
    """A small document that starts like a PDF."""
    body = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + b"% filler\n" * (extra // 9)
    return body + b"trailer << /Root 1 0 R >>\n%%EOF\n"


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------ the cluster


async def _files_web_cluster(cluster_factory: Any, tmp_path: Path,
                             stops: list[Callable[[], Awaitable[None]]],
                             edge_env: dict[str, str] | None = None) -> WebCluster:
    """``web_cluster`` (two edges, each listing both, no load balancer, and a files
    replica), with ``edge_env`` added to the edges' settings."""

    def start() -> Any:
        made = start_lb_cluster(cluster_factory, tmp_path, kinds=(), edge_env=edge_env)
        c: Cluster = made.cluster
        try:
            c.wait_services(30)
        except BaseException:
            made.stop()
            raise
        return made

    made = await asyncio.to_thread(start)
    web = WebCluster(made.cluster, made, None)

    async def stop() -> None:
        await web.close_clients()
        await asyncio.to_thread(made.stop)

    stops.append(stop)
    for i, node in enumerate(NODES):
        info = _cluster_info(web.edge_url(node))
        assert info["hosts"] == [web.host(n) for n in NODES[i:] + NODES[:i]], info
        assert info["node"] == node and info["load_balancer"] is False, info
    return web


@pytest.fixture
async def files_web(cluster_factory: Any, tmp_path: Path, cluster_stops: list[Any]) -> WebCluster:
    return await _files_web_cluster(cluster_factory, tmp_path, cluster_stops)


@pytest.fixture
async def small_limit_web(cluster_factory: Any, tmp_path: Path,
                          cluster_stops: list[Any]) -> WebCluster:
    return await _files_web_cluster(cluster_factory, tmp_path, cluster_stops,
                                    {"CAM_MAX_UPLOAD_BYTES": str(SMALL_LIMIT)})


# ------------------------------------------------------------------ helpers


async def _two_in_a_room(browsers: Browsers, web: WebCluster, web_user: Any
                         ) -> tuple[ChatPage, ChatPage, WebUser, WebUser, str, int]:
    """Alice on camserver1 and Bob on camserver2, both in a new group room, open."""
    alice_user, bob_user = await web_user("Alice"), await web_user("Bob")
    alice = await browsers.open("alice", web.url("camserver1"))
    bob = await browsers.open("bob", web.url("camserver2"))
    for page, user, node in ((alice, alice_user, "camserver1"), (bob, bob_user, "camserver2")):
        await page.goto()
        await page.login(user)
        await page.wait_connected(node)
    team = f"files-{uuid.uuid4().hex[:6]}"
    room_id = await alice.create_room(team, [bob_user])
    await expect(bob.room_item_by_id(room_id)).to_have_count(1, timeout=TIMEOUT)
    await bob.open_room(team)
    for page in (alice, bob):
        await page.page.evaluate(UPLOAD_LOG_JS)
    return alice, bob, alice_user, bob_user, team, room_id


def _file_messages(page: ChatPage, name: str | None = None) -> Any:
    """The file messages of the selected room (whose file is called ``name``)."""
    found = page.tid("message-list").locator('[data-testid="message"][data-kind="file"]')
    if name is not None:
        found = found.filter(has=page.page.get_by_test_id("file-name").filter(
            has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")))
    return found


async def _upload_log(page: ChatPage) -> list[list[dict[str, Any]]]:
    """Every list of upload-items the page showed since the room opened, in order."""
    return list(await page.page.evaluate("() => window.__camUploads.slice()"))


def _states(log: list[list[dict[str, Any]]], name: str) -> list[str]:
    """The states the upload of ``name`` went through (repeats collapsed)."""
    seen: list[str] = []
    for snapshot in log:
        for item in snapshot:
            if item["name"] == name and (not seen or seen[-1] != item["state"]):
                seen.append(item["state"])
    return seen


def _payload(name: str, mime: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": mime, "buffer": data}


async def _loaded_image(locator: Any, what: str) -> dict[str, Any]:
    """Once the <img> has loaded: its natural size, src and width/height attributes."""
    await expect(locator).to_have_count(1, timeout=TIMEOUT)

    async def loaded() -> dict[str, Any] | None:
        got = await locator.evaluate(IMAGE_SIZE_JS)
        return dict(got) if got else None

    return await eventually(loaded, TIMEOUT / 1000, what, step=0.1)


async def _download(page: ChatPage, button: Any) -> tuple[str, bytes]:
    async with page.page.expect_download(timeout=TIMEOUT) as info:
        await button.click()
    download = await info.value
    path = await download.path()
    return download.suggested_filename, await asyncio.to_thread(Path(path).read_bytes)


@contextlib.asynccontextmanager
async def _slow_uploads(page: ChatPage, bytes_per_second: int) -> AsyncIterator[None]:
    """The page's requests send at most ``bytes_per_second`` (DevTools network
    throttling), so that an upload lasts long enough to be watched and cancelled."""
    cdp = await page.page.context.new_cdp_session(page.page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": bytes_per_second})
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await cdp.send("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        with contextlib.suppress(Exception):
            await cdp.detach()


def _api_error(status: int) -> Callable[[Problem], bool]:
    """The browser's console line for a REST answer with ``status``."""
    return lambda p: (p.kind == "console" and "/files" in f"{p.text} {p.url}"
                      and f"status of {status}" in p.text)


# ------------------------------------------------------------------ tests


async def test_a_pasted_image_is_a_thumbnail_a_preview_and_the_original_on_the_other_node(
        browsers: Browsers, files_web: WebCluster, web_user: Any) -> None:
    web = files_web
    alice, bob, alice_user, _bob_user, team, room_id = await _two_in_a_room(browsers, web, web_user)
    png = _png(400, 300)

    # ---- Alice pastes the image into the composer: an upload with its progress, then the message
    taken = await alice.page.evaluate(PASTE_JS, ["composer-input", _b64(png), "drawing.png", "image/png"])
    assert taken, "the page handles a paste that carries a file (preventDefault)"
    mine = _file_messages(alice, "drawing.png")
    await expect(mine).to_have_count(1, timeout=TIMEOUT)
    await expect(mine).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    await expect(alice.tid("upload-item")).to_have_count(0, timeout=TIMEOUT)
    log = await _upload_log(alice)
    assert "uploading" in _states(log, "drawing.png"), log
    assert "failed" not in _states(log, "drawing.png"), log
    assert all(0 <= i["percent"] <= 100 for snapshot in log for i in snapshot), log
    await expect(alice.tid("composer-input")).to_have_value("")   # nothing pasted as text
    mine_thumb = await _loaded_image(mine.get_by_test_id("file-thumb"), "Alice's thumbnail")
    assert mine_thumb["src"].startswith("blob:"), mine_thumb

    # ---- Bob, on the other node, sees it once, as a thumbnail under Alice's name
    theirs = _file_messages(bob, "drawing.png")
    await expect(theirs).to_have_count(1, timeout=TIMEOUT)
    await expect(theirs.get_by_test_id("message-sender")).to_have_text(alice_user.names)
    await expect(theirs.get_by_test_id("file-size")).to_have_text(re.compile(r"^\s*[\d.,]+ (B|KB)\s*$"))
    thumb = theirs.get_by_test_id("file-thumb")
    seen = await _loaded_image(thumb, "Bob's thumbnail")
    width, height = seen["natural"]
    assert 0 < width <= 320 and 0 < height <= 320, seen
    assert abs(width / height - 400 / 300) < 0.02, seen
    assert seen["attrs"] == ["320", "240"], "width and height attributes hold the place"
    assert seen["src"].startswith("blob:"), seen
    await expect(bob.room_item(team).get_by_test_id("room-last")).to_contain_text("drawing.png")
    await bob.shot("thumbnail")

    # ---- the preview, and the original from it
    await thumb.click()
    preview = bob.tid("file-preview")
    await expect(preview).to_be_visible(timeout=TIMEOUT)
    await expect(bob.tid("file-preview-name")).to_have_text("drawing.png")
    big = await _loaded_image(bob.tid("file-preview-image"), "the preview")
    assert big["natural"][0] > width and big["natural"][0] <= 1280, big
    await bob.shot("preview")
    name, data = await _download(bob, bob.tid("file-preview-download"))
    assert name == "drawing.png"
    assert data == png, "the download is the original, byte for byte"
    await bob.page.keyboard.press("Escape")
    await expect(preview).to_have_count(0)

    # ---- and from the message's own download button, on Alice's side too
    name, data = await _download(alice, mine.get_by_test_id("file-download"))
    assert (name, data) == ("drawing.png", png)

    # The message is stored once, and shown once on both pages.
    stored = [m for m in await web.history("camserver2", alice_user, room_id) if m["kind"] == "file"]
    assert len(stored) == 1 and stored[0]["file"]["name"] == "drawing.png", stored
    assert stored[0]["file"]["width"] == 400 and stored[0]["file"]["height"] == 300, stored
    await alice.send("after the picture")
    await expect(bob.message("after the picture")).to_have_count(1, timeout=TIMEOUT)
    for page in (alice, bob):
        await expect(_file_messages(page)).to_have_count(1)

    # ---- switching rooms lets go of the thumbnail's object URL
    other = f"other-{uuid.uuid4().hex[:6]}"
    await bob.create_room(other, [])
    await expect(bob.tid("file-thumb")).to_have_count(0)
    with browsers.problems.expecting(lambda p: p.kind == "console" and "blob:" in f"{p.text} {p.url}"):
        alive = await bob.page.evaluate(
            "src => fetch(src).then(() => 'alive', () => 'revoked')", seen["src"])
    assert alive == "revoked", "the thumbnail's object URL is revoked with its message element"
    browsers.problems.check()


async def test_attached_and_dropped_files_upload_one_after_another_and_download(
        browsers: Browsers, files_web: WebCluster, web_user: Any) -> None:
    web = files_web
    alice, bob, _alice_user, _bob_user, _team, room_id = await _two_in_a_room(browsers, web, web_user)
    pdf = _pdf(3000)
    notes = ("plain notes\n" * 400).encode()

    # ---- two files through the attach button's file input
    await expect(alice.tid("attach-button")).to_be_visible()
    await alice.tid("attach-input").set_input_files(files=[
        _payload("report.pdf", "application/pdf", pdf),
        _payload(ODD_NAME, "text/plain", notes),
    ])
    for name in ("report.pdf", ODD_NAME):
        await expect(_file_messages(bob, name)).to_have_count(1, timeout=TIMEOUT)
        await expect(_file_messages(alice, name)).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    await expect(alice.tid("upload-item")).to_have_count(0, timeout=TIMEOUT)
    log = await _upload_log(alice)
    assert all(sum(i["state"] == "uploading" for i in snapshot) <= 1 for snapshot in log), \
        f"one upload at a time: {log}"
    assert any(any(i["state"] == "queued" for i in snapshot) for snapshot in log), log
    # In the order they were picked; no thumbnails, a download button with name and size.
    seqs = [int(await _file_messages(bob, n).get_attribute("data-seq") or 0)
            for n in ("report.pdf", ODD_NAME)]
    assert seqs[0] < seqs[1], seqs
    await expect(bob.tid("message-list").get_by_test_id("file-thumb")).to_have_count(0)
    report = _file_messages(bob, "report.pdf")
    await expect(report.get_by_test_id("file-size")).to_have_text(re.compile(r"^\s*[\d.]+ KB\s*$"))
    # The name is text, not markup.
    odd = _file_messages(bob, ODD_NAME)
    assert await odd.locator("img").count() == 0
    assert (await bob.text_of(odd.get_by_test_id("file-name"))).strip() == ODD_NAME
    await expect(odd.get_by_test_id("file-size")).to_have_text(re.compile(r"^\s*4\.7 KB\s*$"))
    await bob.shot("files")

    name, data = await _download(bob, report.get_by_test_id("file-download"))
    assert (name, data) == ("report.pdf", pdf)
    name, data = await _download(bob, odd.get_by_test_id("file-download"))
    assert data == notes and name.endswith(".txt"), name

    # ---- a file dragged over the room shows the drop zone; dropped, it is sent
    args = ["message-list", _b64(b"dropped bytes\n"), "dropped.txt", "text/plain"]
    await expect(alice.tid("drop-zone")).to_have_count(0)
    await alice.page.evaluate(DROP_JS, [*args, "enter"])
    await expect(alice.tid("drop-zone")).to_be_visible()
    await alice.shot("drop-zone")
    assert await alice.page.evaluate(DROP_JS, [*args, "drop"]), "the room takes the drop"
    await expect(alice.tid("drop-zone")).to_have_count(0)
    await expect(_file_messages(bob, "dropped.txt")).to_have_count(1, timeout=TIMEOUT)
    name, data = await _download(bob, _file_messages(bob, "dropped.txt").get_by_test_id("file-download"))
    assert (name, data) == ("dropped.txt", b"dropped bytes\n")

    # ---- a slow upload shows its progress, and its cancel button stops it
    slow = bytes(range(256)) * 24000   # 6 MB: at 250 kB/s, far from done when cancelled
    async with _slow_uploads(alice, 250_000):
        await alice.tid("attach-input").set_input_files(
            files=[_payload("slow.bin", "application/octet-stream", slow)])
        item = alice.tid("upload-item")
        await expect(item).to_have_attribute("data-state", "uploading", timeout=TIMEOUT)
        await expect(item).to_have_attribute("data-percent", re.compile(r"^[1-9]\d?$"), timeout=TIMEOUT)
        await expect(item.get_by_test_id("upload-name")).to_have_text("slow.bin")
        await expect(item.get_by_test_id("upload-percent")).to_have_text(re.compile(r"^\s*\d+%\s*$"))
        await expect(item.get_by_test_id("upload-progress")).to_be_visible()
        await alice.shot("upload-progress")
        await item.get_by_test_id("upload-cancel").click()
        await expect(alice.tid("upload-item")).to_have_count(0)
    percents = [i["percent"] for snapshot in await _upload_log(alice) for i in snapshot
                if i["name"] == "slow.bin"]
    assert percents == sorted(percents) and 0 < max(percents) < 100, percents

    stored = [m["file"]["name"] for m in await web.history("camserver1", _bob_user, room_id)
              if m["kind"] == "file"]
    assert stored == ["report.pdf", ODD_NAME, "dropped.txt"], stored
    browsers.problems.check()


async def test_a_file_over_the_limit_shows_too_large_with_retry(
        browsers: Browsers, small_limit_web: WebCluster, web_user: Any) -> None:
    web = small_limit_web
    alice, bob, _alice_user, _bob_user, _team, _room_id = await _two_in_a_room(browsers, web, web_user)
    big = bytes(range(256)) * (3 * SMALL_LIMIT // 256)

    with browsers.problems.expecting(_api_error(413)) as refused:
        await alice.tid("attach-input").set_input_files(
            files=[_payload("huge.bin", "application/octet-stream", big)])
        item = alice.tid("upload-item")
        await expect(item).to_have_attribute("data-state", "failed", timeout=TIMEOUT)
        await expect(item).to_have_attribute("data-error", re.compile(r"^(file_)?too_large$"))
        await expect(item.get_by_test_id("upload-name")).to_have_text("huge.bin")
        await expect(item.get_by_test_id("upload-error")).to_contain_text("The file is too large.")
        await alice.shot("too-large")
        # Retry asks again (and is refused again); the error stays with the upload.
        await item.get_by_test_id("upload-retry").click()
        await expect(item).to_have_attribute("data-state", "failed", timeout=TIMEOUT)
        await expect(item.get_by_test_id("upload-error")).to_contain_text("The file is too large.")
    assert refused, "the page asked the server, which refused the upload"
    states = _states(await _upload_log(alice), "huge.bin")
    assert states[-1] == "failed" and states.count("failed") == 2 and "uploading" in states, states
    await item.get_by_test_id("upload-cancel").click()
    await expect(alice.tid("upload-item")).to_have_count(0)

    # Nothing was sent; a file under the limit still goes through.
    await expect(_file_messages(bob)).to_have_count(0)
    await alice.tid("attach-input").set_input_files(
        files=[_payload("small.bin", "application/octet-stream", big[:50_000])])
    await expect(_file_messages(bob, "small.bin")).to_have_count(1, timeout=TIMEOUT)
    await expect(_file_messages(bob)).to_have_count(1)
    browsers.problems.check()
