"""The edge holds its ground against oversized bodies, slow or half-open connections,
bad WebSocket frames, and callers of the cluster view who may not read it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import psutil

from camclient import Client, login
from camcore import accounts
from camctl import rig
from tests.conftest import Cluster

MiB = 2**20


def one_edge(cluster_factory: Any, **env: Any) -> tuple[Cluster, rig.Handle]:
    cluster: Cluster = cluster_factory(1)
    edge = cluster.start_edge("camserver1", 0, **env)
    cluster.wait_edges()
    return cluster, edge


def address(cluster: Cluster) -> tuple[str, int]:
    url = httpx.URL(cluster.http("camserver1"))
    assert url.host and url.port
    return url.host, url.port


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the edge sends until it closes the connection, or TimeoutError."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_body_declared_over_the_limit_gets_413_before_it_is_sent(cluster_factory: Any):
    cluster, _ = one_edge(cluster_factory)
    reader, writer = await asyncio.open_connection(*address(cluster))
    writer.write(b"POST /api/login HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 268435456\r\n\r\n{\"username\": ")
    answer = await closed_within(reader, 5)  # and the connection is closed
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


async def test_a_256_mib_streamed_body_is_refused_and_the_edge_memory_stays_flat(
        cluster_factory: Any):
    cluster, edge = one_edge(cluster_factory)
    process = psutil.Process(edge.pid)
    async with httpx.AsyncClient(base_url=cluster.http("camserver1"), timeout=30) as http:
        await http.get("/api/cluster")
        before = process.memory_info().rss
        for declared in (False, True):
            sent = 0

            async def body() -> AsyncIterator[bytes]:
                nonlocal sent
                chunk = b" " * MiB
                for _ in range(256):
                    sent += len(chunk)
                    yield chunk

            headers = {"content-type": "application/json"}
            if declared:
                headers["content-length"] = str(256 * MiB)
            try:
                r = await http.post("/api/login", content=body(), headers=headers)
            except httpx.TransportError:
                pass  # the edge closed the connection before the client read the answer
            else:
                assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            assert sent < 64 * MiB, f"the edge took {sent >> 20} MiB before refusing"
        after = process.memory_info().rss
    assert after - before < 5 * MiB, f"edge RSS grew by {(after - before) / MiB:.1f} MiB"


async def test_half_open_connections_are_closed_within_the_header_timeout(cluster_factory: Any):
    cluster, _ = one_edge(cluster_factory, CAM_HTTP_HEADER_TIMEOUT="1")
    host, port = address(cluster)
    started = time.monotonic()
    conns = [await asyncio.open_connection(host, port) for _ in range(20)]
    for i, (_, writer) in enumerate(conns):
        if i % 2:
            writer.write(b"GET /api/clu")  # half a request line, never finished
        # the others send nothing at all
    # Meanwhile, complete requests are served.
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        assert (await http.get("/CAMServer/healthCheck")).status_code == 200
    for reader, writer in conns:
        assert await closed_within(reader, 4) == b""
        writer.close()
    assert time.monotonic() - started < 4
    # A keep-alive connection that starts a second request and stalls is closed too.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/cluster HTTP/1.1\r\nHost: edge\r\n\r\nGET /api/cl")
    answer = await closed_within(reader, 4)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


async def test_connections_waiting_for_their_headers_are_bounded(cluster_factory: Any):
    cluster, _ = one_edge(cluster_factory, CAM_HTTP_HEADER_TIMEOUT="2",
                          CAM_HTTP_MAX_PENDING_CONNECTIONS="5")
    host, port = address(cluster)
    waiting = [await asyncio.open_connection(host, port) for _ in range(5)]
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection(host, port)
    assert await closed_within(reader, 1) == b""  # the sixth is closed at once
    writer.close()
    for reader, writer in waiting:
        assert await closed_within(reader, 4) == b""
        writer.close()
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        assert (await http.get("/api/cluster")).status_code == 200


async def test_a_body_that_stops_arriving_gets_408(cluster_factory: Any):
    cluster, _ = one_edge(cluster_factory, CAM_HTTP_HEADER_TIMEOUT="1")
    reader, writer = await asyncio.open_connection(*address(cluster))
    writer.write(b"POST /api/login HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"username\"")
    started = time.monotonic()
    answer = await closed_within(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert time.monotonic() - started < 3


async def test_the_cluster_view_needs_an_admin_session_or_the_monitoring_token(
        cluster_factory: Any, make_user: Any, pool: asyncpg.Pool):
    token = "monitor-0123456789abcdef"
    cluster, _ = one_edge(cluster_factory, CAM_MONITORING_TOKEN=token)
    cluster.start_health()
    base = cluster.http("camserver1")
    await accounts.create_user(pool, "root1", "correct horse", is_admin=True)
    admin = await login(base, "root1", "correct horse")
    user = await login(base, *await make_user())
    async with httpx.AsyncClient(base_url=base) as http:

        async def view(bearer: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            return await http.get("/api/cluster/view", headers=headers)

        anonymous = await view(None)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthenticated"
        assert (await view("not-the-token")).status_code == 401
        forbidden = await view(user)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        for allowed in (admin, token):
            for _ in range(50):  # the health replica may still be starting: 503
                r = await view(allowed)
                if r.status_code != 503:
                    break
                await asyncio.sleep(0.2)
            assert r.status_code == 200 and "processes" in r.json()
        # A browser's admin session cookie works as well.
        http.cookies.set("cam_session", admin)
        assert (await view(None)).status_code == 200


async def test_deep_nesting_and_nul_characters_are_bad_frames_without_a_traceback(
        cluster_factory: Any):
    cluster, edge = one_edge(cluster_factory)
    client = await Client.open(cluster.ws("camserver1"))
    cases = [
        ('{"op": "ping", "id": "deep", "x": ' + "[" * 500 + "]" * 500 + "}", "malformed_frame"),
        ('{"op": "ping", "id": "deeper", "x": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
         "malformed_frame"),
        ('{"op": "ping", "id": "nul\\u0000"}', "bad_request"),
        ('{"op": "auth", "id": "tok", "token": "abc\\u0000def"}', "bad_request"),
    ]
    for raw, code in cases:
        await client.send_raw(raw)
        error = await client.next_event("error", timeout=5)
        assert error["code"] == code, raw[:40]
    # A frame at the depth limit (32 levels) is decoded: this one is only refused
    # because it needs an authenticated connection.
    await client.send_raw('{"op": "conf_signal", "id": "ok", "room": 1, "to": 1, "data": {"x": '
                          + "[" * 30 + "]" * 30 + "}}")
    assert (await client.next_event("error", timeout=5))["code"] == "unauthenticated"
    # They count as bad frames: 20 close the connection with 1008.
    for _ in range(20 - len(cases)):
        await client.send_raw('{"op": "ping", "x": "\\u0000"}')
    assert await client.wait_closed(5) == 1008
    log = edge.log_path.read_text()
    assert "Traceback" not in log and "internal error" not in log
