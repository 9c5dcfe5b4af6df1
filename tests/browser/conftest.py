"""Fixtures of the browser tests: the web app in real Chromium against a real cluster.

- ``browser``: one headless Chromium per test module (Debian's ``/usr/bin/chromium``,
  or ``$CAM_CHROMIUM``), driven by Playwright; a missing Chromium fails the tests.
  Every module runs its tests in the module's event loop, where the browser lives:
  ``pytestmark = pytest.mark.asyncio(loop_scope="module")``.
- ``browsers``: a new browser context (its own cookies and storage, as another device)
  per user page; collects each page's console errors, uncaught exceptions, CSP
  violations and dialogs, and fails the test on any that the test did not declare
  expected. Screenshots go to ``$CAM_TEST_ARTIFACTS/<test>/`` (default
  ``tests/browser/artifacts/``); a failed test also leaves a screenshot, the console and
  the last WebSocket frames of every page there (any test does with ``CAM_TEST_TRACE=1``).
- ``web_cluster``: two edges (camserver1, camserver2) on 127.0.0.1, each with its own
  port, chat and presence: ``cam.clusterHosts`` lists every edge as the browser
  reaches it (``127.0.0.1:PORT``, own host first), so a page can fail over to the
  other edge; no load balancer (cam.serverURLDomain names the edge itself).
- ``lb_web_cluster``: the same behind HAProxy (tests/integration/lb_fixtures.py), with
  cam.serverURLDomain naming the load balancer, so ``/api/cluster`` reports one.
- ``video_web_cluster``: ``web_cluster`` with conferences: two real Janus SFUs (v1
  first in fill order, then v2) and a video allocator probing them every 0.3 s, so a
  killed Janus's conferences move to the other.
- ``admin_web_cluster``, ``admin_video_web_cluster``: ``web_cluster`` and
  ``video_web_cluster`` with what the admin console's Cluster tab reads: a health
  service and cam.clusterHostsDesc (:data:`CLUSTER_DESC`).
- ``web_user``: a user with a display name of its own (what sender names show);
  ``admin=True`` makes an administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright._impl._api_structures import SetCookieParam
from playwright.async_api import Browser, BrowserContext, async_playwright

from camclient import Client, login
from camcore import accounts, db
from camctl import lb, rig
from tests.conftest import Cluster
from tests.integration.lb_fixtures import LbCluster, start_lb_cluster

from .pages import INIT_SCRIPT, ChatPage, Problems, WebUser

ARTIFACTS = Path(os.environ.get("CAM_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
CHROMIUM = os.environ.get("CAM_CHROMIUM") or "/usr/bin/chromium"
NODES = ("camserver1", "camserver2")
VIDEO_ADMIN_KEY = "browser-video-admin-key"
CLUSTER_DESC = "browser test rig: two edges on 127.0.0.1"
"""cam.clusterHostsDesc of the admin clusters (one text, so every node's row shows it)."""
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures know whether the test failed."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    browsers = getattr(item, "funcargs", {}).get("browsers")
    if report.when == "call" and isinstance(browsers, Browsers):
        # The test is over: what the pages say while the fixtures stop the cluster under
        # them (refused reconnects) is no fault of the app.
        browsers.problems.closed = True
    return report


# ------------------------------------------------------------------ Chromium


def chromium_executable() -> str:
    found = shutil.which(CHROMIUM)
    if not found:
        pytest.fail(f"Chromium not found at {CHROMIUM!r}: install Debian's chromium "
                    "(apt-get install chromium) or set CAM_CHROMIUM; the browser tests need it")
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the module, with fake camera and microphone."""
    executable = chromium_executable()
    root = os.geteuid() == 0
    args = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    if root:
        args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True, args=args,
                                            chromium_sandbox=not root)
        try:
            yield launched
        finally:
            await launched.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120]


class Browsers:
    """The test's pages, each in a browser context of its own."""

    def __init__(self, browser: Browser, test_name: str) -> None:
        self.browser = browser
        self.problems = Problems()
        self.artifacts = ARTIFACTS / _safe(test_name)
        shutil.rmtree(self.artifacts, ignore_errors=True)  # nothing left from an earlier run
        self.pages: list[ChatPage] = []
        self.contexts: list[BrowserContext] = []

    async def open(self, label: str, base_url: str, *, locale: str = "en-US",
                   ignore_https_errors: bool = False,
                   cookies: Sequence[SetCookieParam] = ()) -> ChatPage:
        """A new context (another device) with one page, not yet navigated."""
        context = await self.browser.new_context(locale=locale, viewport={"width": 1280, "height": 860},
                                                 ignore_https_errors=ignore_https_errors)
        self.contexts.append(context)
        context.set_default_timeout(15_000)
        if cookies:
            await context.add_cookies(list(cookies))
        page = await context.new_page()
        chat = ChatPage(page, base_url.rstrip("/"), label, self.artifacts, self.problems)
        await page.expose_binding("__camCspViolation", lambda _source, info: chat.csp_violation(info))
        await page.add_init_script(INIT_SCRIPT)
        self.pages.append(chat)
        return chat

    async def finish(self, failed: bool) -> None:
        if failed or os.environ.get("CAM_TEST_TRACE"):
            for chat in self.pages:
                try:
                    await chat.shot("failed" if failed else "end")
                except Exception as exc:  # a page that died still leaves its console
                    chat.console.append(f"(no screenshot: {exc})")
                self.artifacts.mkdir(parents=True, exist_ok=True)
                (self.artifacts / f"{chat.label}-console.txt").write_text(
                    "\n".join(chat.console) + "\n", encoding="utf-8")
                (self.artifacts / f"{chat.label}-frames.txt").write_text(
                    "\n".join(chat.frames) + "\n", encoding="utf-8")
        for context in self.contexts:
            with contextlib.suppress(Exception):  # what a failed test left behind
                await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def cluster_stops(cluster_factory: Any) -> AsyncIterator[list[Callable[[], Awaitable[None]]]]:
    """What stops the test's load balancers and clients, run after the pages are closed
    (and before ``cluster_factory`` stops the edges): a failed test's screenshots show
    the page as the test left it, not under a cluster going away."""
    stops: list[Callable[[], Awaitable[None]]] = []
    yield stops
    for stop in reversed(stops):
        await stop()


@pytest_asyncio.fixture(loop_scope="module")
async def browsers(browser: Browser, request: pytest.FixtureRequest,
                   cluster_stops: list[Any]) -> AsyncIterator[Browsers]:
    made = Browsers(browser, request.node.name)
    yield made
    reports = request.node.stash.get(REPORTS, {})
    failed = any(r.failed for r in reports.values())
    await made.finish(failed)
    # A problem the test did not look at itself still fails it.
    if not failed and not made.problems.reported and made.problems.found:
        pytest.fail(f"the pages reported problems:\n{made.problems.summary()}", pytrace=False)


# ------------------------------------------------------------------ users


@pytest.fixture
def web_user(database: str) -> Callable[..., Awaitable[WebUser]]:
    """``await web_user("Alice")``: a new user, user name ``alice<hex>``, display name
    ``Alice <hex>`` (so that a sender name is told from a user name); ``admin=True``
    for an administrator."""

    async def make(first: str, display_name: str | None = None, *, admin: bool = False) -> WebUser:
        tag = uuid.uuid4().hex[:6]
        user = WebUser(f"{first.lower()}{tag}", "correct horse battery",
                       display_name or f"{first} {tag}")
        pool = await db.create_pool(database, max_size=1)
        try:
            await accounts.create_user(pool, user.username, user.password,
                                       display_name=user.display_name, is_admin=admin)
        finally:
            await pool.close()
        return user

    return make


# ------------------------------------------------------------------ clusters


@dataclass
class WebCluster:
    """Edges as the browser reaches them, directly or through a load balancer."""

    cluster: Cluster
    made: LbCluster
    balancer: lb.LoadBalancer | None = None
    sfus: dict[str, rig.Janus] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    def edge_url(self, node: str) -> str:
        return self.cluster.http(node)

    def url(self, node: str = "camserver1") -> str:
        """Where a browser opens the app: the load balancer if there is one, else the edge."""
        return self.balancer.url if self.balancer is not None else self.edge_url(node)

    def host(self, node: str) -> str:
        """``node``'s cam.clusterHosts entry: host:port as the browser reaches the edge."""
        return f"127.0.0.1:{self.cluster.edge_ports[node]}"

    def kill(self, node: str) -> None:
        """kill -9 of the node's edge: no close frame, no drain."""
        self.cluster.procs[node].kill()

    async def client(self, node: str, user: WebUser) -> Client:
        """``user`` logged in straight on ``node`` with the Python client (closed at the end)."""
        token = await login(self.edge_url(node), user.username, user.password)
        client = await Client.connect(self.cluster.ws(node), token)
        self.clients.append(client)
        return client

    async def history(self, node: str, user: WebUser, room: int) -> list[dict[str, Any]]:
        """Every message of ``room`` in the store, in seq order, read through ``node``."""
        client = await self.client(node, user)
        messages: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await client.history(room, after=after, limit=200)
            messages += page["messages"]
            if not page["has_more"] or not page["messages"]:
                return messages
            after = messages[-1]["seq"]

    async def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):  # its node may be dead
                await client.close()


def _cluster_info(url: str, verify: Any = True) -> dict[str, Any]:
    with httpx.Client(base_url=url, verify=verify, timeout=5) as http:
        r = http.get("/api/cluster")
        r.raise_for_status()
        return dict(r.json())


async def _start(cluster_factory: Any, tmp_path: Path, stops: list[Callable[[], Awaitable[None]]],
                 kinds: tuple[str, ...], sfus: dict[str, rig.Janus] | None = None, *,
                 edge_env: dict[str, str] | None = None) -> WebCluster:
    video_env = None
    if sfus:
        video_env = {
            "CAM_VIDEO_DOMAINS": ";".join(f"{n}=10" for n in sfus),
            "CAM_VIDEO_SERVER_URLS": ";".join(f"{n}={s.url}" for n, s in sfus.items()),
            "CAM_VIDEO_PROBE_INTERVAL": "0.3",
            "CAM_VIDEO_ADMIN_KEY": VIDEO_ADMIN_KEY,
        }
    # Started in a thread: the module's event loop also carries the browser's connection.
    made = await asyncio.to_thread(start_lb_cluster, cluster_factory, tmp_path, kinds=kinds,
                                   video_env=video_env, edge_env=edge_env)
    web = WebCluster(made.cluster, made, made.balancers.get(kinds[0]) if kinds else None,
                     sfus=dict(sfus or {}))

    async def stop() -> None:
        await web.close_clients()
        await asyncio.to_thread(made.stop)
        for sfu in web.sfus.values():
            sfu.stop()

    stops.append(stop)
    return web


@pytest_asyncio.fixture(loop_scope="module")
async def web_cluster(cluster_factory: Any, tmp_path: Path, cluster_stops: list[Any]) -> WebCluster:
    """camserver1 and camserver2 on 127.0.0.1, each listing both (own host first)."""
    web = await _start(cluster_factory, tmp_path, cluster_stops, ())
    for i, node in enumerate(NODES):
        info = _cluster_info(web.edge_url(node))
        order = NODES[i:] + NODES[:i]
        # What the page fails over along: every edge, as this browser reaches it.
        assert info["hosts"] == [web.host(n) for n in order], info
        assert info["node"] == node and info["load_balancer"] is False, info
    return web


async def _janus_pair(tmp_path: Path) -> dict[str, rig.Janus]:
    """Two real Janus SFUs, v1 first in fill order, then v2, started."""
    if rig.janus_binary() is None:
        pytest.fail("janus not found: the conference tests need a real Janus SFU "
                    "(apt-get install -y janus)")
    sfus = {name: rig.Janus(tmp_path, name, admin_key=VIDEO_ADMIN_KEY,
                            rtp_range=(23000 + i * 200, 23199 + i * 200))
            for i, name in enumerate(("v1", "v2"))}
    try:
        for sfu in sfus.values():
            await asyncio.to_thread(sfu.start)
    except BaseException:
        for sfu in sfus.values():
            sfu.stop()
        raise
    return sfus


@pytest_asyncio.fixture(loop_scope="module")
async def video_web_cluster(cluster_factory: Any, tmp_path: Path,
                            cluster_stops: list[Any]) -> WebCluster:
    """``web_cluster`` with two real Janus SFUs, v1 and v2, and a video allocator."""
    sfus = await _janus_pair(tmp_path)
    try:
        return await _start(cluster_factory, tmp_path, cluster_stops, (), sfus)
    except BaseException:
        for sfu in sfus.values():
            sfu.stop()
        raise


async def _admin_cluster(cluster_factory: Any, tmp_path: Path, stops: list[Any],
                         sfus: dict[str, rig.Janus] | None = None) -> WebCluster:
    """A web cluster as the admin console's Cluster tab reads it: cam.clusterHostsDesc
    on every edge, and a health service collecting the heartbeats."""
    try:
        web = await _start(cluster_factory, tmp_path, stops, (), sfus,
                           edge_env={"CAM_CLUSTER_HOSTS_DESC": CLUSTER_DESC})
    except BaseException:
        for sfu in (sfus or {}).values():
            sfu.stop()
        raise
    await asyncio.to_thread(web.cluster.start_health)  # stopped with the cluster
    return web


@pytest_asyncio.fixture(loop_scope="module")
async def admin_web_cluster(cluster_factory: Any, tmp_path: Path,
                            cluster_stops: list[Any]) -> WebCluster:
    """``web_cluster`` with a health service and cam.clusterHostsDesc."""
    return await _admin_cluster(cluster_factory, tmp_path, cluster_stops)


@pytest_asyncio.fixture(loop_scope="module")
async def admin_video_web_cluster(cluster_factory: Any, tmp_path: Path,
                                  cluster_stops: list[Any]) -> WebCluster:
    """``video_web_cluster`` with a health service and cam.clusterHostsDesc."""
    return await _admin_cluster(cluster_factory, tmp_path, cluster_stops,
                                await _janus_pair(tmp_path))


@pytest_asyncio.fixture(loop_scope="module")
async def lb_web_cluster(cluster_factory: Any, tmp_path: Path, cluster_stops: list[Any]) -> WebCluster:
    """The two edges behind HAProxy; cam.serverURLDomain names HAProxy's URL."""
    web = await _start(cluster_factory, tmp_path, cluster_stops, ("haproxy",))
    assert web.balancer is not None
    for node in NODES:
        info = _cluster_info(web.edge_url(node))
        assert info["load_balancer"] is True and info["server_url_domain"] == web.balancer.url, info
    return web


def pin_cookie(web: WebCluster, node: str) -> list[SetCookieParam]:
    """HAProxy's persistence cookie for ``node`` (deploy/haproxy/haproxy.cfg: CAMSERVERID),
    so a page behind the load balancer starts on a known node."""
    assert web.balancer is not None
    return [{"name": "CAMSERVERID", "value": node, "url": web.balancer.url}]
