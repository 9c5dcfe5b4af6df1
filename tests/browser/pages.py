"""The web app as a person uses it, in the terms of the DOM contract (data-testid names
and texts of /tmp/contract/webapp-contract.md, "DOM contract"), and what the browser
reports while it runs: console errors, uncaught exceptions, CSP violations, dialogs.

Nothing here knows how the app is built; it only reads and clicks what the contract names.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import ConsoleMessage, Dialog, Locator, Page, WebSocket, expect

TIMEOUT = 10_000
"""Milliseconds an expectation waits by default: a round trip through the cluster and a
render, with room for a loaded 2-core machine."""
FAILOVER_TIMEOUT = 40_000
"""Milliseconds for a page to notice a dead node and come back on another."""
MEDIA_TIMEOUT = 30_000
"""Milliseconds for media to flow: ICE, DTLS and the first decoded frames, or a move to
another video server and all of that again."""
TITLE = "camcluster"
RECONNECTING = "Reconnecting…"


def connected_to(node: str) -> str:
    return f"Connected to {node}"


def exact(text: str) -> re.Pattern[str]:
    """A pattern matching exactly ``text`` (as Playwright normalises whitespace)."""
    return re.compile(r"^\s*" + r"\s+".join(re.escape(w) for w in text.split()) + r"\s*$")


@dataclass(frozen=True)
class WebUser:
    username: str
    password: str
    display_name: str

    @property
    def names(self) -> re.Pattern[str]:
        """The user's name as a page may show it: the display name, or (until the page
        has learnt that, as the server's ``sender_name`` is the user name) the user name."""
        return re.compile(rf"^\s*(?:{re.escape(self.display_name)}|{re.escape(self.username)})\s*$")


# ------------------------------------------------------------------ what the browser says


@dataclass(frozen=True)
class Problem:
    """Something a page reported that a correct app never causes."""

    page: str
    kind: str  # console | pageerror | csp | dialog
    text: str
    url: str = ""

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"[{self.page}] {self.kind}: {self.text}{where}"


Tolerance = Callable[[Problem], bool]


class Problems:
    """Every console error, uncaught exception, CSP violation and dialog of the test's
    pages. A test fails on any, except those it declared expected with :meth:`tolerate`
    (a dead node's refused connections during failover, a CSP test's own probe)."""

    def __init__(self) -> None:
        self.found: list[Problem] = []
        self.tolerated: list[Problem] = []
        self.dialogs: list[Problem] = []
        self._tolerances: list[Tolerance] = []
        self.reported = False
        self.closed = False
        self.late: list[Problem] = []
        """What came after the test's body ended (its cluster stopping under the pages)."""

    def add(self, problem: Problem) -> None:
        if self.closed:
            self.late.append(problem)
            return
        if problem.kind == "dialog":
            self.dialogs.append(problem)
        if problem.kind in ("console", "csp") and any(t(problem) for t in self._tolerances):
            self.tolerated.append(problem)
        else:
            self.found.append(problem)

    def tolerate(self, tolerance: Tolerance) -> None:
        """From now on, ``tolerance`` decides which console errors and CSP reports are
        expected (uncaught exceptions and dialogs never are)."""
        self._tolerances.append(tolerance)

    @contextlib.contextmanager
    def expecting(self, tolerance: Tolerance) -> Iterator[list[Problem]]:
        """Within the block only, ``tolerance`` says which problems are expected; the
        list gets those that came (a probe that provokes one checks it came)."""
        came: list[Problem] = []
        active = True

        def during(p: Problem) -> bool:
            if active and tolerance(p):
                came.append(p)
                return True
            return False

        self._tolerances.append(during)
        try:
            yield came
        finally:
            active = False

    def tolerate_dead_host(self, host: str, page: str) -> None:
        """A killed node: the refused or reset connections of the page labelled ``page``
        to ``host`` (host:port), and a load balancer's error answers there while it has
        no healthy edge for the page, are expected."""
        network = re.compile(r"net::ERR_|WebSocket connection to .* failed|Failed to load resource"
                             r"|status of 50[234]|Unexpected response code: 50[234]")

        def dead(p: Problem) -> bool:
            return (p.kind == "console" and p.page == page and host in f"{p.text} {p.url}"
                    and bool(network.search(p.text)))

        self.tolerate(dead)

    def summary(self) -> str:
        return "\n".join(str(p) for p in self.found)

    def check(self) -> None:
        """Fail the test if any page reported a problem."""
        if self.found:
            self.reported = True
            raise AssertionError(f"the pages reported {len(self.found)} problem(s):\n{self.summary()}")


INIT_SCRIPT = r"""
(() => {
  // CSP violations: reported to the test through the exposed binding.
  document.addEventListener('securitypolicyviolation', (e) => {
    try {
      window.__camCspViolation({directive: e.violatedDirective, blocked: e.blockedURI,
                                sample: e.sample, source: e.sourceFile, line: e.lineNumber});
    } catch (err) { /* binding not there: the console error still reports it */ }
  }, true);
  // Every text the connection banner showed, in order (a state may last a moment only).
  const log = [];
  Object.defineProperty(window, '__camBannerLog', {value: log});
  let last = null;
  const look = () => {
    const el = document.querySelector('[data-testid="conn-banner"]');
    const text = el ? el.textContent.trim() : null;
    if (text !== last) {
      last = text;
      if (text) log.push(text);
    }
  };
  new MutationObserver(look).observe(document, {subtree: true, childList: true,
                                                characterData: true, attributes: true});
})();
"""
"""Runs before the app in every page (injected by the browser, not subject to the CSP)."""

MESSAGES_JS = """els => els.map(e => {
  const part = (id) => {
    const p = e.querySelector(`[data-testid="${id}"]`);
    return p ? p.textContent : null;
  };
  return {seq: e.getAttribute('data-seq'), cid: e.getAttribute('data-cid'),
          pending: e.getAttribute('data-pending'), failed: e.getAttribute('data-failed'),
          sender: part('message-sender'), body: part('message-body')};
})"""


@dataclass(frozen=True)
class Shown:
    """One ``message`` element of the message list."""

    seq: int | None
    cid: str | None
    pending: bool
    failed: bool
    sender: str | None
    body: str | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Shown:
        seq = raw["seq"]
        return cls(int(seq) if seq not in (None, "") else None, raw["cid"], raw["pending"] == "true",
                   raw["failed"] == "true", (raw["sender"] or "").strip() or None, raw["body"])


# ------------------------------------------------------------------ the page object


@dataclass
class ChatPage:
    """One browser tab of the web app, logged in (or not) as one user."""

    page: Page
    base_url: str
    label: str
    artifacts: Path
    problems: Problems
    user: WebUser | None = None
    websockets: list[str] = field(default_factory=list)
    """The URL of every WebSocket the page opened, in order."""
    console: list[str] = field(default_factory=list)
    """Everything the page logged (an artifact when the test fails)."""
    frames: deque[str] = field(default_factory=lambda: deque(maxlen=1000))
    """The last WebSocket frames of the page (an artifact when the test fails)."""

    def __post_init__(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_pageerror)
        self.page.on("dialog", self._on_dialog)
        self.page.on("websocket", self._on_websocket)

    # -- browser reports

    def _on_console(self, msg: ConsoleMessage) -> None:
        url = str(msg.location.get("url", "")) if msg.location else ""
        self.console.append(f"{msg.type}: {msg.text} {url}".rstrip())
        if msg.type == "error":
            self.problems.add(Problem(self.label, "console", msg.text, url))

    def _on_pageerror(self, error: Exception) -> None:
        self.console.append(f"pageerror: {error}")
        self.problems.add(Problem(self.label, "pageerror", str(error)))

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.console.append(f"dialog {dialog.type}: {dialog.message}")
        self.problems.add(Problem(self.label, "dialog", f"{dialog.type}: {dialog.message}"))
        with contextlib.suppress(Exception):
            await dialog.dismiss()

    def _on_websocket(self, ws: WebSocket) -> None:
        self.websockets.append(ws.url)
        self.frames.append(f"open {ws.url}")
        ws.on("framesent", lambda payload: self.frames.append(f"> {str(payload)[:300]}"))
        ws.on("framereceived", lambda payload: self.frames.append(f"< {str(payload)[:300]}"))
        ws.on("close", lambda _ws: self.frames.append(f"closed {ws.url}"))

    def csp_violation(self, info: dict[str, Any]) -> None:
        self.console.append(f"csp: {info}")
        self.problems.add(Problem(self.label, "csp", f"{info.get('directive')} blocked "
                                  f"{info.get('blocked')!r} sample {info.get('sample')!r}",
                                  str(info.get("source") or "")))

    # -- parts of the page

    def tid(self, test_id: str) -> Locator:
        return self.page.get_by_test_id(test_id)

    @property
    def banner(self) -> Locator:
        return self.tid("conn-banner")

    async def banner_log(self) -> list[str]:
        """Every text the connection banner had since the page loaded, in order."""
        return list(await self.page.evaluate("() => window.__camBannerLog.slice()"))

    def room_item(self, name: str) -> Locator:
        """The room list's entry whose room-name is exactly ``name``."""
        return self.tid("room-list").get_by_test_id("room-item").filter(
            has=self.page.get_by_test_id("room-name").filter(has_text=exact(name)))

    def room_item_by_id(self, room_id: int) -> Locator:
        return self.tid("room-list").locator(
            f'[data-testid="room-item"][data-room-id="{room_id}"]')

    def unread(self, name: str) -> Locator:
        return self.room_item(name).get_by_test_id("room-unread")

    def presence(self, name: str) -> Locator:
        return self.room_item(name).get_by_test_id("presence-dot")

    def message(self, body: str) -> Locator:
        """The message element(s) of the selected room whose body reads ``body``."""
        return self.tid("message-list").get_by_test_id("message").filter(
            has=self.page.get_by_test_id("message-body").filter(has_text=exact(body)))

    # -- actions

    async def goto(self, path: str = "/") -> None:
        await self.page.goto(self.base_url + path)

    async def login(self, user: WebUser) -> None:
        """Log in through the login form and wait for the shell."""
        await expect(self.tid("login-username")).to_be_visible(timeout=TIMEOUT)
        await self.tid("login-username").fill(user.username)
        await self.tid("login-password").fill(user.password)
        await self.tid("login-submit").click()
        await expect(self.tid("me-name")).to_have_text(user.names, timeout=TIMEOUT)
        await expect(self.tid("room-list")).to_be_attached(timeout=TIMEOUT)
        self.user = user

    async def wait_connected(self, node: str, timeout: int = TIMEOUT) -> None:
        await expect(self.banner).to_have_text(connected_to(node), timeout=timeout)

    async def logout(self) -> None:
        await self.tid("logout").click()
        await expect(self.tid("login-username")).to_be_visible(timeout=TIMEOUT)
        await expect(self.tid("me-name")).to_have_count(0)
        self.user = None

    async def open_room(self, name: str) -> None:
        """Select the room called ``name`` in the room list."""
        item = self.room_item(name)
        await expect(item).to_have_count(1, timeout=TIMEOUT)
        await item.get_by_test_id("room-name").click()
        await expect(self.tid("room-title")).to_have_text(exact(name), timeout=TIMEOUT)

    async def create_room(self, name: str, members: list[WebUser]) -> int:
        """A new group room through the new-room form; it is selected. Returns its id."""
        await self.tid("new-room-button").click()
        await self.tid("new-room-name").fill(name)
        await self.tid("new-room-members").fill(", ".join(m.username for m in members))
        await self.tid("new-room-create").click()
        await expect(self.tid("room-title")).to_have_text(exact(name), timeout=TIMEOUT)
        return await self.room_id(name)

    async def open_direct(self, peer: WebUser) -> int:
        """The direct room with ``peer``, found in the directory; it is selected."""
        await self.tid("new-dm-button").click()
        await self.tid("directory-search").fill(peer.username)
        hit = self.page.locator(f'[data-testid="directory-item"][data-username="{peer.username}"]')
        await expect(hit).to_have_count(1, timeout=TIMEOUT)
        await hit.click()
        await expect(self.tid("room-title")).to_have_text(exact(peer.display_name), timeout=TIMEOUT)
        return await self.room_id(peer.display_name)

    async def room_id(self, name: str) -> int:
        item = self.room_item(name)
        await expect(item).to_have_count(1, timeout=TIMEOUT)
        await expect(item).to_have_attribute("data-room-id", re.compile(r"^\d+$"))
        return int(await item.get_attribute("data-room-id") or 0)

    async def send(self, body: str, *, button: bool = False) -> int:
        """Send ``body`` in the selected room (Enter, or the send button); returns its seq
        once the server acknowledged it (the message has data-seq, no data-pending)."""
        composer = self.tid("composer-input")
        await composer.fill(body)
        if button:
            await self.tid("composer-send").click()
        else:
            await composer.press("Enter")
        await expect(composer).to_have_value("", timeout=TIMEOUT)
        return await self.seq_of(body)

    async def seq_of(self, body: str, timeout: int = TIMEOUT) -> int:
        """The seq of the one message reading ``body``, once it has one."""
        shown = self.message(body)
        await expect(shown).to_have_count(1, timeout=timeout)
        await expect(shown).to_have_attribute("data-seq", re.compile(r"^\d+$"), timeout=timeout)
        await expect(shown).not_to_have_attribute("data-pending", "true", timeout=timeout)
        return int(await shown.get_attribute("data-seq") or 0)

    async def messages(self) -> list[Shown]:
        """Every message element of the selected room, in DOM order."""
        raw = await self.tid("message-list").get_by_test_id("message").evaluate_all(MESSAGES_JS)
        return [Shown.of(r) for r in raw]

    # -- conferences

    def tile(self, user_id: int) -> Locator:
        """The conference tile of another participant, ``user_id``."""
        return self.page.locator(f'[data-testid="conf-tile"][data-user="{user_id}"]:not([data-local])')

    async def meet(self) -> None:
        """Join the selected room's conference with the Meet button."""
        await self.tid("meet-button").click()
        await expect(self.tid("conference")).to_be_visible(timeout=TIMEOUT)

    async def video_frames(self, user_id: int) -> int:
        """Inbound video frames decoded of ``user_id``'s feed, as the page read them from
        its RTCPeerConnection.getStats() (the tile's ``data-frames``)."""
        return int(await self.tile(user_id).get_attribute("data-frames") or 0)

    async def receives_video_of(self, user_id: int, timeout: int = MEDIA_TIMEOUT) -> int:
        """Wait until this page decodes ``user_id``'s video and keeps decoding it: the
        frame count rises above zero, then rises again. Returns the last count."""
        tile = self.tile(user_id)
        await expect(tile).to_have_count(1, timeout=timeout)
        await expect(tile).to_have_attribute("data-frames", re.compile(r"^[1-9]\d*$"), timeout=timeout)
        first = await self.video_frames(user_id)
        await expect(tile).not_to_have_attribute("data-frames", str(first), timeout=timeout)
        later = await self.video_frames(user_id)
        assert later > first, (first, later)
        return later

    async def set_status(self, status: str) -> None:
        await self.tid("status-picker").select_option(status)
        await expect(self.tid("status-picker")).to_have_value(status)

    async def text_of(self, locator: Locator) -> str:
        """The exact textContent (no whitespace normalising)."""
        return str(await locator.evaluate("e => e.textContent"))

    async def shot(self, name: str) -> Path:
        """A screenshot artifact of the whole page."""
        path = self.artifacts / f"{self.label}-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[asyncio.Event]:
        """Halt the page's JavaScript, as a browser freezes a background tab, until the
        block ends; the event is set once the page has actually stopped. What happens
        meanwhile (a node dies, others chat) the page learns only when it runs again,
        so "while it was away" does not depend on how fast it reconnects."""
        cdp = await self.page.context.new_cdp_session(self.page)
        paused = asyncio.Event()
        cdp.on("Debugger.paused", lambda _event: paused.set())
        await cdp.send("Debugger.enable")
        await cdp.send("Debugger.pause")
        try:
            yield paused
        finally:
            with contextlib.suppress(Exception):
                await cdp.send("Debugger.resume")
            with contextlib.suppress(Exception):
                await cdp.send("Debugger.disable")
            with contextlib.suppress(Exception):
                await cdp.detach()
