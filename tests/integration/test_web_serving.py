"""The web app served by real edges, and the cross-origin rules of its failover.

Two edges list each other in cam.clusterHosts (own host first) and name a public URL
(cam.serverURLDomain). Each serves ``GET /`` and ``GET /app/<path>`` from the
package's ``web/`` directory with the security headers and a Content-Security-Policy
built from that configuration, refuses every path out of it, and accepts the other
node's page (and the public URL's) as an Origin on the WebSocket and on the REST
calls, with CORS, while any other Origin is still refused."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from cam_edge.static import WEB_DIR, content_type
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from camclient import Client
from camctl import rig
from tests.conftest import Cluster

PUBLIC = "https://chat.example.com"
NODES = ("camserver1", "camserver2")


@pytest.fixture
def web_nodes(cluster_factory: Any) -> Cluster:
    c: Cluster = cluster_factory(2)
    for name in NODES:
        c.edge_ports[name] = rig.free_port()
    c.start_chat()
    c.start_presence()
    for i, name in enumerate(NODES):
        order = NODES[i:] + NODES[:i]
        c.start_edge(name, 0, port=c.edge_ports[name], nats=i,
                     CAM_CLUSTER_HOSTS=";".join(f"127.0.0.1:{c.edge_ports[n]}" for n in order),
                     CAM_SERVER_URL_DOMAIN=PUBLIC)
    c.wait_edges()
    return c


def origin(c: Cluster, node: str) -> str:
    return f"http://127.0.0.1:{c.edge_ports[node]}"


def expected_csp(c: Cluster, node: str) -> str:
    order = NODES[NODES.index(node):] + NODES[:NODES.index(node)]
    hosts = [f"127.0.0.1:{c.edge_ports[n]}" for n in order]
    connect = " ".join(f"{s}://{h}" for h in hosts for s in ("http", "https", "ws", "wss"))
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob:; font-src 'self'; "
            f"connect-src 'self' {connect} {PUBLIC} wss://chat.example.com; "
            "manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def assert_headers(r: httpx.Response, csp: str) -> None:
    assert r.headers["content-security-policy"] == csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


def web_files() -> list[Path]:
    """Every file the web app ships (no dot files), relative to web/."""
    found = []
    for folder, dirs, files in os.walk(WEB_DIR):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [(Path(folder) / f).relative_to(WEB_DIR) for f in files if not f.startswith(".")]
    return sorted(found)


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (HTTP clients drop dot segments): status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_each_node_serves_the_page_and_the_files_with_the_headers(web_nodes: Cluster):
    files = web_files()
    assert files, "the web app has no files"
    for node in NODES:
        csp = expected_csp(web_nodes, node)
        async with httpx.AsyncClient(base_url=web_nodes.http(node)) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert page.content == (WEB_DIR / "index.html").read_bytes()
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["cache-control"] == "no-cache"
            assert_headers(page, csp)
            for name in files:
                r = await http.get(f"/app/{name.as_posix()}")
                assert r.status_code == 200, name
                assert r.content == (WEB_DIR / name).read_bytes()
                assert r.headers["content-type"].split(";")[0] == content_type(name), name
                if name.suffix == ".js":
                    assert r.headers["content-type"].startswith("text/javascript"), name
                assert r.headers["cache-control"] == "no-cache"
                assert_headers(r, csp)
            # Every other answer of the edge carries them as well.
            for other in (await http.get("/api/cluster"), await http.get("/nowhere"),
                          await http.get("/CAMServer/healthCheck")):
                assert_headers(other, csp)
                assert other.headers.get("cache-control") != "no-cache"


@pytest.mark.parametrize("target", [
    "/app/../app.py", "/app/%2e%2e/app.py", "/app/%2E%2E/app.py", "/app/..%2fapp.py",
    "/app/%2e%2e%2fapp.py", "/app/./../app.py", "/app/../../../../../../etc/passwd",
    "/app/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/app/", "/app/vendor/", "/app/nothing.js",
    "/app/.%2e/app.py",
])
async def test_no_path_leads_out_of_the_web_app_or_lists_it(web_nodes: Cluster, target: str):
    source = (WEB_DIR.parent / "app.py").read_bytes()
    status, body = await raw_get(web_nodes.edge_ports["camserver1"], target)
    assert status == 404, (target, body[:200])
    assert source[:200] not in body and b"root:" not in body


# ---------------------------------------------------------------- cross-origin


async def test_the_other_nodes_page_may_open_the_websocket_and_a_foreign_one_may_not(
    web_nodes: Cluster, make_user: Any
):
    url = web_nodes.ws("camserver1")
    for allowed in (origin(web_nodes, "camserver2"), origin(web_nodes, "camserver1"), PUBLIC,
                    f"https://127.0.0.1:{web_nodes.edge_ports['camserver2']}"):
        client = await Client.open(url, origin=allowed)
        assert client.hello["op"] == "hello" and client.hello["node"] == "camserver1"
        await client.close()
    for foreign in ("https://evil.example", "http://127.0.0.1:1", "http://chat.example.com",
                    f"http://localhost:{web_nodes.edge_ports['camserver2']}", "null"):
        with pytest.raises(InvalidStatus) as exc:
            async with ws_connect(url, additional_headers={"Origin": foreign}):
                pass
        assert exc.value.response.status_code == 403, foreign


async def test_the_other_nodes_page_logs_in_with_cors_and_a_foreign_one_is_refused(
    web_nodes: Cluster, make_user: Any
):
    user, password = await make_user()
    page = origin(web_nodes, "camserver2")
    body = {"username": user, "password": password}
    async with httpx.AsyncClient(base_url=web_nodes.http("camserver1")) as http:
        preflight = await http.options("/api/login", headers={
            "Origin": page, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == page
        assert preflight.headers["access-control-allow-methods"] == "GET, POST"
        assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
        assert preflight.headers["access-control-max-age"] == "600"
        assert preflight.headers["vary"] == "Origin"
        assert "access-control-allow-credentials" not in preflight.headers

        logged_in = await http.post("/api/login", json=body, headers={"Origin": page})
        assert logged_in.status_code == 200
        assert logged_in.headers["access-control-allow-origin"] == page
        assert "origin" in logged_in.headers["vary"].lower()
        token = logged_in.json()["token"]
        me = await http.get("/api/me", headers={"Origin": page, "Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["user"]["username"] == user
        assert me.headers["access-control-allow-origin"] == page

        for foreign in ("https://evil.example", "http://127.0.0.1:1"):
            refused = await http.options("/api/login", headers={
                "Origin": foreign, "Access-Control-Request-Method": "POST"})
            assert refused.status_code == 403
            assert not [h for h in refused.headers if h.startswith("access-control-")]
            forged = await http.post("/api/login", json=body, headers={"Origin": foreign})
            assert forged.status_code == 403 and forged.json()["error"]["code"] == "forbidden"
            assert not [h for h in forged.headers if h.startswith("access-control-")]
            out = await http.post("/api/logout", headers={
                "Origin": foreign, "Authorization": f"Bearer {token}"})
            assert out.status_code == 403

    # The token from the other node's page authenticates the WebSocket it opens here.
    client = await Client.connect(web_nodes.ws("camserver1"), token, origin=page)
    assert client.user["username"] == user
    await client.close()
