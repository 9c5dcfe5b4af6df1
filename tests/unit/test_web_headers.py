"""The edge's answers to browsers, in process (httpx's ASGI transport, no lifespan): the
web app's files and their content types, the security headers and the
Content-Security-Policy built from the configuration, and the cross-origin rules
(which Origins may open a WebSocket or change state, and which get CORS)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from cam_edge.app import create_app, origin_allowed
from cam_edge.headers import (
    OriginRules,
    cluster_origins,
    connect_sources,
    content_security_policy,
    origin_key,
    server_url_origin,
    video_origins,
)
from cam_edge.static import content_type

from camcore.config import Settings, load_settings

HOSTS = {"cam.clusterHosts": "camserver1:8080;camserver2:8080;[fd00::3]"}


def settings(**keys: str) -> Settings:
    return load_settings(None, environ={}, overrides=keys)


FILES = {
    "index.html": b"<!doctype html><title>camcluster</title>",
    "main.js": b"export const x = 1;\n",
    "vendor/lib.mjs": b"export default 1;\n",
    "style.css": b"body { margin: 0 }\n",
    "icon.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    "logo.png": b"\x89PNG\r\n\x1a\n",
    "manifest.json": b"{}",
    "font.woff2": b"wOF2",
    "notes.unknownext": b"?",
    ".secret": b"dot file",
    "sub/.hidden/x.js": b"hidden",
}


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "outside.txt").write_text("not part of the web app")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    return root


def client(web_dir: Path, base_url: str = "http://camserver1:8080", **keys: str) -> httpx.AsyncClient:
    app = create_app(settings(**{**HOSTS, **keys}), web_dir=web_dir)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def assert_security_headers(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"].startswith("default-src 'none'; ")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


# ---------------------------------------------------------------- the policy


def test_the_csp_is_the_contracts_with_connect_src_from_the_cluster_hosts_and_public_url() -> None:
    csp = content_security_policy(settings(**HOSTS, **{"cam.serverURLDomain": "chat.example.com"}))
    hosts = ["camserver1:8080", "camserver2:8080", "[fd00::3]:443"]
    connect = " ".join(f"{s}://{h}" for h in hosts for s in ("http", "https", "ws", "wss"))
    assert csp == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' blob:; font-src 'self'; "
        f"connect-src 'self' {connect} https://chat.example.com wss://chat.example.com; "
        "manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def test_without_cluster_hosts_the_page_connects_to_its_own_origin_only() -> None:
    assert connect_sources(settings()) == ()
    assert "connect-src 'self'; " in content_security_policy(settings())


@pytest.mark.parametrize(("value", "origin"), [
    ("", None),
    ("chat.example.com", "https://chat.example.com"),
    ("Chat.Example.com:8443", "https://chat.example.com:8443"),
    ("http://chat.example.com:8080", "http://chat.example.com:8080"),
    ("https://chat.example.com/some/path", "https://chat.example.com"),
])
def test_the_origin_of_the_server_url_domain(value: str, origin: str | None) -> None:
    assert server_url_origin(value) == origin


def test_a_plain_http_server_url_connects_with_ws() -> None:
    sources = connect_sources(settings(**{"cam.serverURLDomain": "http://lb.local:8080"}))
    assert sources == ("http://lb.local:8080", "ws://lb.local:8080")


def test_the_video_servers_public_origins_are_in_connect_src_and_the_api_urls_are_not() -> None:
    s = settings(**HOSTS, **{
        "cam.videoDomains": "v1=50;v2=50;v3=50",
        "cam.videoServerUrls": "v1=http://10.0.0.1:8088/janus;v2=http://10.0.0.2:8088/janus;"
                               "v3=http://Video3.example.com:8088/janus",
        "cam.videoPublicUrls": "v1=https://Video1.example.com/janus;"
                               "v2=https://video2.example.com:8443/janus"})
    # v3 has no public URL: clients use its API URL, as before cam.videoPublicUrls.
    assert video_origins(s) == ("https://video1.example.com", "https://video2.example.com:8443",
                                "http://video3.example.com:8088")
    sources = connect_sources(s)
    assert sources[-3:] == video_origins(s)
    assert not [src for src in sources if "10.0.0." in src]
    csp = content_security_policy(s)
    assert " https://video1.example.com https://video2.example.com:8443 " in csp
    # The web app's own origins are unchanged; without video servers nothing is added.
    assert sources[:-3] == connect_sources(settings(**HOSTS))
    assert video_origins(settings(**HOSTS)) == ()


def test_cluster_origins_are_each_hosts_http_and_https_then_the_public_url() -> None:
    s = settings(**{"cam.clusterHosts": "camserver1:8080;camserver2",
                    "cam.serverURLDomain": "camserver1:8080"})
    assert cluster_origins(s) == ("http://camserver1:8080", "https://camserver1:8080",
                                  "http://camserver2:443", "https://camserver2:443")


# ---------------------------------------------------------------- origin rules


@pytest.mark.parametrize(("origin", "key"), [
    ("https://camserver2", ("https", "camserver2", 443)),
    ("http://CamServer2:80", ("http", "camserver2", 80)),
    ("http://[fd00::3]:8080", ("http", "fd00::3", 8080)),
    ("null", None),
    ("ftp://camserver2", None),
    ("https://camserver2/path", None),
    ("https://user@camserver2", None),
    ("https://camserver2:99999", None),
    ("https://", None),
])
def test_origins_compare_as_browsers_send_them(origin: str, key: Any) -> None:
    assert origin_key(origin) == key


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    (None, "camserver1:8080", True),                          # not a browser
    ("http://camserver1:8080", "camserver1:8080", True),      # same origin
    ("http://camserver2:8080", "camserver1:8080", True),      # another node's web app
    ("https://camserver2:8080", "camserver1:8080", True),
    ("https://fd00::3", "camserver1:8080", False),            # not an origin
    ("https://[fd00::3]", "camserver1:8080", True),           # default port 443
    ("https://chat.example.com", "camserver1:8080", True),    # cam.serverURLDomain
    ("http://chat.example.com", "camserver1:8080", False),    # not its scheme
    ("https://chat.example.com:8443", "camserver1:8080", False),
    ("https://camserver2:8081", "camserver1:8080", False),    # another port
    ("https://camserver2.evil.io:8080", "camserver1:8080", False),
    ("https://evil.example", "camserver1:8080", False),
    ("null", "camserver1:8080", False),
])
def test_which_origins_may_open_a_websocket_or_change_state(
        origin: str | None, host: str, allowed: bool) -> None:
    s = settings(**HOSTS, **{"cam.serverURLDomain": "https://chat.example.com"})
    assert origin_allowed(s, origin, host) is allowed
    assert OriginRules(s).allowed_origin(origin, host) is allowed


def test_the_allow_list_still_works_and_gets_no_cors() -> None:
    s = settings(**HOSTS, **{"cam.allowedOrigins": "https://partner.example"})
    rules = OriginRules(s)
    assert rules.allowed_origin("https://partner.example", "camserver1:8080")
    assert not rules.cross_origin("https://partner.example")
    assert rules.cross_origin("http://camserver2:8080")


# ---------------------------------------------------------------- the web app's files


@pytest.mark.parametrize(("path", "expected"), [
    ("main.js", "text/javascript"), ("vendor/lib.mjs", "text/javascript"),
    ("style.css", "text/css"), ("icon.svg", "image/svg+xml"), ("logo.png", "image/png"),
    ("manifest.json", "application/json"), ("font.woff2", "font/woff2"),
    ("index.html", "text/html"), ("notes.unknownext", "application/octet-stream"),
    ("UPPER.JS", "text/javascript"),
])
def test_content_types_come_from_the_table_not_the_host(path: str, expected: str) -> None:
    assert content_type(path) == expected


async def test_the_page_and_the_files_are_served_with_their_types_and_headers(web_dir: Path) -> None:
    async with client(web_dir) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.content == FILES["index.html"]
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert_security_headers(page)
        for name in ("main.js", "vendor/lib.mjs", "style.css", "icon.svg", "logo.png",
                     "manifest.json", "font.woff2", "index.html"):
            r = await http.get(f"/app/{name}")
            assert r.status_code == 200, name
            assert r.content == FILES[name]
            assert r.headers["content-type"].split(";")[0] == content_type(name)
            assert r.headers["cache-control"] == "no-cache"
            assert_security_headers(r)
        head = await http.head("/")
        assert head.status_code == 200 and head.content == b""
        # Revalidation with the ETag: 304, still with the headers.
        js = await http.get("/app/main.js")
        again = await http.get("/app/main.js", headers={"if-none-match": js.headers["etag"]})
        assert again.status_code == 304
        assert again.headers["cache-control"] == "no-cache"
        assert_security_headers(again)


async def raw_get(app: Any, target: bytes) -> tuple[int, dict[str, str]]:
    """GET ``target`` exactly as given (httpx would drop its dot segments), as uvicorn
    passes it on: ``path`` percent-decoded, ``raw_path`` as sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": unquote(target.decode()), "raw_path": target,
             "query_string": b"", "root_path": "", "headers": [(b"host", b"camserver1:8080")],
             "client": ("127.0.0.1", 5000), "server": ("camserver1", 8080)}
    start: dict[str, Any] = {}
    requested = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if requested.is_set():  # then only the disconnect, which never comes
            await asyncio.Event().wait()
        requested.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)

    await app(scope, receive, send)
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


@pytest.mark.parametrize("target", [
    "/app/", "/app/vendor", "/app/vendor/", "/app/missing.js", "/app/.secret",
    "/app/sub/.hidden/x.js", "/app/link.txt", "/app/../outside.txt",
    "/app/vendor/../../outside.txt", "/app/..%2foutside.txt", "/app/%2e%2e/outside.txt",
    "/app/%2E%2E%2Foutside.txt", "/app/main.js%00.png", "/app//etc/passwd",
])
async def test_nothing_else_is_served(web_dir: Path, target: str) -> None:
    app = create_app(settings(**HOSTS), web_dir=web_dir)
    status, headers = await raw_get(app, target.encode())
    assert status == 404, target
    assert headers["x-content-type-options"] == "nosniff"
    assert headers.get("cache-control") != "no-cache"
    # The same names are served when they are in the web app.
    assert (await raw_get(app, b"/app/vendor/lib.mjs"))[0] == 200


async def test_without_a_web_app_the_page_is_404(tmp_path: Path) -> None:
    async with client(tmp_path / "none") as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/app/main.js")).status_code == 404


async def test_every_answer_of_the_edge_carries_the_security_headers(web_dir: Path) -> None:
    async with client(web_dir, **{"cam.serverURLDomain": "chat.example.com"}) as http:
        for r in (await http.get("/api/cluster"), await http.get("/nowhere"),
                  await http.post("/api/login", json={}, headers={"origin": "https://evil.example"})):
            assert_security_headers(r)
            assert "wss://chat.example.com" in r.headers["content-security-policy"]
            assert r.headers.get("cache-control") != "no-cache"


# ---------------------------------------------------------------- CORS


async def test_a_preflight_from_another_node_is_answered_204() -> None:
    async with client(Path("/nonexistent")) as http:
        r = await http.options("/api/login", headers={
            "origin": "http://camserver2:8080", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})
        assert r.status_code == 204 and r.content == b""
        assert r.headers["access-control-allow-origin"] == "http://camserver2:8080"
        assert r.headers["access-control-allow-methods"] == "GET, POST"
        assert r.headers["access-control-allow-headers"] == "authorization, content-type"
        assert r.headers["access-control-max-age"] == "600"
        assert r.headers["vary"] == "Origin"
        assert "access-control-allow-credentials" not in r.headers
        assert_security_headers(r)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://camserver2:8081", "null"])
async def test_a_preflight_from_any_other_origin_is_refused_without_cors(origin: str) -> None:
    async with client(Path("/nonexistent")) as http:
        r = await http.options("/api/login", headers={
            "origin": origin, "access-control-request-method": "POST"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert not [h for h in r.headers if h.startswith("access-control-")]
        assert_security_headers(r)


async def test_answers_to_another_node_carry_its_origin_and_others_none() -> None:
    async with client(Path("/nonexistent")) as http:
        ok = await http.get("/api/cluster", headers={"origin": "http://camserver2:8080"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "http://camserver2:8080"
        assert "origin" in ok.headers["vary"].lower()
        foreign = await http.get("/api/cluster", headers={"origin": "https://evil.example"})
        assert foreign.status_code == 200
        assert "access-control-allow-origin" not in foreign.headers
        refused = await http.post("/api/login", json={"username": "a", "password": "b"},
                                  headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers


async def test_the_web_app_gets_no_cors() -> None:
    async with client(Path("/nonexistent")) as http:
        r = await http.get("/app/main.js", headers={"origin": "http://camserver2:8080"})
        assert "access-control-allow-origin" not in r.headers
