"""What other people type is shown as text and runs nothing; the page is under a strict
Content-Security-Policy, on every answer of the edge, and the browser enforces it.

A message body, a room name or a display name such as ``<img src=x onerror=alert(1)>``
comes from another user (Bob, a Python client on the other node): Alice's page shows
exactly those characters as text (textContent equals them), no element or handler is
made from them, no dialog opens and the console stays clean. Markup in the URL
fragment does nothing either.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import expect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from camclient import Client
from tests.waiting import eventually

from .conftest import Browsers, WebCluster
from .pages import TIMEOUT, TITLE, Problem

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<svg onload=alert(1)><circle r=9 /></svg>",
    '"><iframe src="javascript:alert(1)"></iframe>',
    "[click me](javascript:alert(1)) <a href=\"javascript:alert(1)\">link</a>",
    "&lt;b&gt;not bold&lt;/b&gt; &amp; <b>not bold either</b> {{constructor.constructor('alert(1)')()}}",
]

MARKUP_MADE = """() => {
  const bad = [];
  for (const e of document.querySelectorAll('*')) {
    for (const a of e.getAttributeNames()) {
      if (a.toLowerCase().startsWith('on')) bad.push(`${e.tagName} ${a}`);
    }
    if (e.matches('iframe, object, embed, img[src="x"], a[href^="javascript:" i]'))
      bad.push(e.outerHTML.slice(0, 80));
    if (e.tagName === 'SCRIPT' && e.textContent.includes('alert(')) bad.push('script alert');
  }
  for (const id of ['message-body', 'message-sender', 'room-name', 'room-title', 'room-last']) {
    for (const e of document.querySelectorAll(`[data-testid="${id}"]`)) {
      if (e.querySelector('img, script, svg, iframe, object, embed, a, b, circle'))
        bad.push(`${id}: ${e.innerHTML.slice(0, 80)}`);
    }
  }
  return bad;
}"""
"""Elements or handlers made from hostile text ([] when there are none)."""


async def test_hostile_text_from_another_user_is_shown_as_text(
        browsers: Browsers, web_cluster: WebCluster, web_user: Any) -> None:
    web = web_cluster
    alice_user = await web_user("Alice")
    bob_user = await web_user("Bob", display_name="<img src=x onerror=alert('name')> Bob")
    room_name = f"<script>alert('room')</script> {uuid.uuid4().hex[:4]}"
    alice = await browsers.open("alice", web.url("camserver1"))
    await alice.goto()
    await alice.login(alice_user)

    bob = await web.client("camserver2", bob_user)
    room = (await bob.request("create_room", name=room_name, members=[alice_user.username]))["id"]
    item = alice.room_item_by_id(room)
    await expect(item).to_have_count(1, timeout=TIMEOUT)
    # Half arrive before the room is opened (read from history), half live.
    first, second = HOSTILE[:3], HOSTILE[3:]
    seqs = {body: (await bob.send(room, body))["seq"] for body in first}
    await expect(item.get_by_test_id("room-unread")).to_have_text(str(len(first)), timeout=TIMEOUT)
    assert await alice.text_of(item.get_by_test_id("room-name")) == room_name
    await item.get_by_test_id("room-name").click()
    await expect(alice.tid("room-title")).to_have_count(1, timeout=TIMEOUT)
    assert await alice.text_of(alice.tid("room-title")) == room_name
    seqs |= {body: (await bob.send(room, body))["seq"] for body in second}

    for body, seq in seqs.items():
        shown = alice.tid("message-list").locator(f'[data-testid="message"][data-seq="{seq}"]')
        await expect(shown).to_have_count(1, timeout=TIMEOUT)
        assert await alice.text_of(shown.get_by_test_id("message-body")) == body
        sender = await alice.text_of(shown.get_by_test_id("message-sender"))
        assert sender.strip() in (bob_user.display_name, bob_user.username), sender
    await expect(item.get_by_test_id("room-last")).to_contain_text("not bold either", timeout=TIMEOUT)
    # A direct room is named after the peer's display name: Bob's hostile one, as text.
    direct = (await bob.request("open_direct", user=alice_user.username))["id"]
    direct_name = alice.room_item_by_id(direct).get_by_test_id("room-name")
    await expect(direct_name).to_have_count(1, timeout=TIMEOUT)
    assert (await alice.text_of(direct_name)).strip() == bob_user.display_name
    # The browser's view: nothing was made of the text, and no dialog opened.
    assert await alice.page.evaluate(MARKUP_MADE) == []
    await expect(alice.page).to_have_title(TITLE)
    await alice.shot("hostile-text")
    assert browsers.problems.dialogs == []
    browsers.problems.check()


# ------------------------------------------------------------------ the policy itself


def _policy(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0].lower() not in directives, f"{words[0]} given twice in {header!r}"
            directives[words[0].lower()] = words[1:]
    return directives


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_policy(response: httpx.Response, hosts: list[str], server_url_domain: str) -> None:
    """The contract's CSP, and the other security headers, on one answer."""
    what = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    headers = response.headers.get_list("content-security-policy")
    assert len(headers) == 1, f"{what}: one Content-Security-Policy expected, got {headers}"
    csp = _policy(headers[0])
    assert csp.get("default-src") == ["'none'"], (what, csp)
    assert csp.get("script-src") == ["'self'"], (what, csp)
    assert csp.get("style-src") == ["'self'"], (what, csp)
    assert set(csp.get("img-src", ["?"])) <= {"'self'", "data:", "blob:"}, (what, csp)
    assert set(csp.get("media-src", ["?"])) <= {"'self'", "blob:"}, (what, csp)
    assert csp.get("font-src") == ["'self'"], (what, csp)
    assert csp.get("manifest-src") == ["'self'"], (what, csp)
    assert csp.get("base-uri") == ["'none'"], (what, csp)
    assert csp.get("form-action") == ["'self'"], (what, csp)
    assert csp.get("frame-ancestors") == ["'none'"], (what, csp)
    for name, sources in csp.items():
        for loose in ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "'strict-dynamic'",
                      "*", "http:", "https:", "ws:", "wss:", "data:" if name != "img-src" else ""):
            assert not loose or loose not in sources, f"{what}: {name} allows {loose}"
    # connect-src: itself, every cluster host in each scheme, the public URL.
    wanted = {"'self'"} | {f"{s}://{h}" for h in hosts for s in ("http", "https", "ws", "wss")}
    allowed = set(wanted)
    if server_url_domain:
        public = _origin(server_url_domain)
        wanted |= {public, re.sub(r"^http", "ws", public)}
        netloc = urlsplit(server_url_domain).netloc
        allowed |= {f"{s}://{netloc}" for s in ("http", "https", "ws", "wss")}
    connect = set(csp.get("connect-src", []))
    assert wanted <= connect, f"{what}: connect-src lacks {sorted(wanted - connect)}"
    assert connect <= allowed | wanted, f"{what}: connect-src also allows {sorted(connect - allowed)}"
    assert response.headers.get("x-content-type-options") == "nosniff", what
    assert response.headers.get("referrer-policy") == "no-referrer", what
    assert response.headers.get("x-frame-options", "").upper() == "DENY", what


async def test_every_answer_carries_the_strict_policy(web_cluster: WebCluster) -> None:
    web = web_cluster
    for node in ("camserver1", "camserver2"):
        async with httpx.AsyncClient(base_url=web.edge_url(node), timeout=5) as http:
            info = (await http.get("/api/cluster")).json()
            hosts, public = info["hosts"], info["server_url_domain"]
            assert web.host(node) in hosts and len(hosts) == 2, info

            index = await http.get("/")
            assert index.status_code == 200, index.text[:200]
            assert index.headers["content-type"].startswith("text/html"), index.headers
            assert "no-cache" in index.headers.get("cache-control", ""), index.headers
            check_policy(index, hosts, public)
            # Nothing inline for the policy to block: scripts are files of the app.
            html = index.text
            scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
            assert scripts, "index.html loads the app with a <script src=...>"
            assert all(re.search(r"\bsrc=", attrs) and not body.strip() for attrs, body in scripts), scripts
            assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler in index.html"
            assert not re.search(r"\sstyle\s*=", html, re.I), "inline style in index.html"

            paths = {"/app/main.js"} | {
                src for src in re.findall(r"<script\b[^>]*\bsrc=[\"']?([^\"' >]+)", html, re.I)
                if src.startswith("/")}
            for path in sorted(paths):
                js = await http.get(path)
                assert js.status_code == 200, path
                assert js.headers["content-type"].split(";")[0] == "text/javascript", (path, js.headers)
                check_policy(js, hosts, public)
            for path in ("/api/cluster", "/CAMServer/healthCheck", "/api/me", "/app/no-such-file.js"):
                check_policy(await http.get(path), hosts, public)
            check_policy(await http.post("/api/login", json={"username": "nobody", "password": "x" * 12}),
                         hosts, public)


async def test_app_files_stay_inside_the_web_directory(web_cluster: WebCluster) -> None:
    async with httpx.AsyncClient(base_url=web_cluster.edge_url("camserver1"), timeout=5) as http:
        for raw in ("/app/%2e%2e/app.py", "/app/..%2fapp.py", "/app/%2e%2e%2f%2e%2e%2fpyproject.toml",
                    "/app/%2e%2e/__init__.py", "/app//etc/passwd"):
            r = await http.get(httpx.URL(web_cluster.edge_url("camserver1") + raw))
            assert r.status_code in (400, 403, 404), (raw, r.status_code, r.text[:200])
            assert "import " not in r.text and "root:" not in r.text, raw
        listing = await http.get("/app/")
        assert listing.status_code != 200 or "main.js" not in listing.text, "no directory listing"


async def test_only_the_cluster_s_own_pages_may_call_across_origins(web_cluster: WebCluster) -> None:
    """A page served by camserver1 that fails over calls camserver2 cross-origin: CORS and
    the WebSocket Origin check let exactly the cluster's origins through (CSWSH)."""
    web = web_cluster
    ours, evil = f"http://{web.host('camserver1')}", "http://evil.example"
    async with httpx.AsyncClient(base_url=web.edge_url("camserver2"), timeout=5) as http:
        ask = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        pre = await http.options("/api/login", headers={"Origin": ours, **ask})
        assert pre.status_code == 204, (pre.status_code, pre.text[:200])
        assert pre.headers.get("access-control-allow-origin") == ours, pre.headers
        assert {m.strip() for m in pre.headers["access-control-allow-methods"].split(",")} == {"GET", "POST"}
        allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert allowed == {"authorization", "content-type"}, pre.headers
        assert pre.headers.get("access-control-max-age") == "600", pre.headers
        assert "origin" in pre.headers.get("vary", "").lower(), pre.headers
        assert "access-control-allow-credentials" not in pre.headers, pre.headers
        foreign = await http.options("/api/login", headers={"Origin": evil, **ask})
        assert "access-control-allow-origin" not in foreign.headers, foreign.headers

        creds = {"username": "nobody", "password": "wrong password"}
        answer = await http.post("/api/login", json=creds, headers={"Origin": ours})
        assert answer.status_code == 401 and answer.headers.get("access-control-allow-origin") == ours
        refused = await http.post("/api/login", json=creds, headers={"Origin": evil})
        assert refused.status_code == 403, refused.status_code
        assert "access-control-allow-origin" not in refused.headers, refused.headers

    welcome = await Client.open(web.cluster.ws("camserver2"), origin=ours)
    try:
        assert welcome.hello["node"] == "camserver2"
    finally:
        await welcome.close()
    with pytest.raises((InvalidHandshake, ConnectionClosed)):  # refused: 403, or closed 1008
        await Client.open(web.cluster.ws("camserver2"), origin=evil)


# ------------------------------------------------------------------ the browser enforces it


PROBE_END = "cam-test: end of the CSP probe"


def _csp_report(p: Problem) -> bool:
    return p.kind == "csp" or (p.kind == "console" and (
        "Content Security Policy" in p.text or PROBE_END in p.text))


async def test_the_browser_enforces_the_policy(browsers: Browsers, web_cluster: WebCluster,
                                               web_user: Any) -> None:
    """An inline script, eval and a connection to an origin not listed are refused, and
    reported (so the tests' own CSP watch works: a violation fails any other test)."""
    web = web_cluster
    alice = await browsers.open("alice", web.url("camserver1"))
    await alice.goto()
    await alice.login(await web_user("Alice"))
    with browsers.problems.expecting(_csp_report) as came:
        outcome = await alice.page.evaluate("""async (end) => {
          const s = document.createElement('script');
          s.textContent = 'window.__camInlineRan = true';
          document.body.append(s);
          // eval from the page's own task (DevTools' evaluation itself may eval).
          const evaluated = await new Promise((done) => setTimeout(() => {
            try { done(String(eval('6 * 7'))); } catch (e) { done(e.name); }
          }, 0));
          let fetched;
          try { await fetch('http://127.0.0.2:9/steal'); fetched = 'sent'; } catch (e) { fetched = e.name; }
          console.error(end);  // after every report of the probe
          return {inline: window.__camInlineRan === true, evaluated, fetched};
        }""", PROBE_END)

        def reported() -> set[str]:
            directives = {p.text.split()[0] for p in came if p.kind == "csp"}
            ended = any(PROBE_END in p.text for p in came)
            # script-src-elem: the inline script; script-src: eval; connect-src: fetch.
            everything = {"script-src-elem", "script-src", "connect-src"} <= directives
            return directives if ended and everything else set()

        try:
            directives = await eventually(reported, 10, "the CSP violation reports of the probe")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; came: {[str(p) for p in came]}") from None
    assert outcome == {"inline": False, "evaluated": "EvalError", "fetched": "TypeError"}, (
        outcome, directives)
    browsers.problems.check()


async def test_markup_in_the_url_fragment_does_nothing(browsers: Browsers, web_cluster: WebCluster,
                                                       web_user: Any) -> None:
    web = web_cluster
    page = await browsers.open("alice", web.url("camserver1"))
    fragments = ["#<img src=x onerror=alert(1)>", "#<script>alert(1)</script>",
                 "#javascript:alert(1)", "#/room/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
                 "#'-alert(1)-'"]
    for fragment in fragments:
        await page.goto("/" + fragment)
        await expect(page.tid("login-username")).to_be_visible(timeout=TIMEOUT)
        assert await page.page.evaluate(MARKUP_MADE) == [], fragment
    await page.login(await web_user("Alice"))
    for fragment in fragments:
        await page.page.evaluate("f => { location.hash = f; }", fragment[1:])
        await expect(page.tid("room-list")).to_be_attached()
        await expect(page.page).to_have_title(TITLE)
        assert await page.page.evaluate(MARKUP_MADE) == [], fragment
    await page.page.reload()
    await expect(page.tid("me-name")).to_have_count(1, timeout=TIMEOUT)
    assert await page.page.evaluate(MARKUP_MADE) == []
    await page.shot("fragment")
    assert browsers.problems.dialogs == []
    browsers.problems.check()
