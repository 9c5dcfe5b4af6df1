"""Password guessing is slowed down per account and per client address, a login flood
cannot exhaust the edge, and state-changing REST calls refuse what browsers forge."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import psutil

from camctl import rig
from tests.conftest import Cluster


def one_edge(cluster_factory: Any, **env: Any) -> tuple[Cluster, rig.Handle]:
    """One edge on one NATS server: logins need nothing else."""
    cluster: Cluster = cluster_factory(1)
    edge = cluster.start_edge("camserver1", 0, **env)
    cluster.wait_edges()
    return cluster, edge


async def login(http: httpx.AsyncClient, user: str, password: str, **headers: str) -> httpx.Response:
    return await http.post("/api/login", json={"username": user, "password": password},
                           headers=headers)


async def test_wrong_passwords_lock_the_account_with_429_until_the_window_passes(
        cluster_factory: Any, make_user: Any):
    cluster, edge = one_edge(cluster_factory, CAM_LOGIN_MAX_FAILURES="3", CAM_LOGIN_FAILURE_WINDOW="2")
    user, password = await make_user()
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        for _ in range(3):
            r = await login(http, user, "wrong password")
            assert r.status_code == 401 and r.json()["error"]["code"] == "bad_credentials"
        # Locked: even the right password is not tried.
        locked = await login(http, user, password)
        assert locked.status_code == 429
        assert locked.json()["error"]["code"] == "rate_limited"
        retry_after = int(locked.headers["retry-after"])
        assert 1 <= retry_after <= 2
        # Another account from the same address is not locked.
        other = await make_user()
        assert (await login(http, *other)).status_code == 200
        await asyncio.sleep(retry_after + 0.2)
        ok = await login(http, user, password)
        assert ok.status_code == 200 and ok.json()["user"]["username"] == user
        assert ok.headers["cache-control"] == "no-store"
    # Each failure is logged with the user name and the client address.
    failures = [line for line in edge.log_path.read_text().splitlines()
                if "failed login" in line]
    assert len(failures) == 3
    assert all(f"user={user!r}" in line and "client=127.0.0.1" in line for line in failures)


async def test_an_address_guessing_many_accounts_is_locked_by_its_real_address(
        cluster_factory: Any, make_user: Any):
    # Behind a trusted proxy (the test itself), the address is the forwarded one.
    cluster, edge = one_edge(cluster_factory, CAM_LOGIN_ADDRESS_MAX_FAILURES="4",
                       CAM_TRUSTED_PROXIES="127.0.0.1")
    user, password = await make_user()
    guesser = {"X-Forwarded-For": "203.0.113.5"}
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        for i in range(4):
            assert (await login(http, f"nobody{i}", "guess", **guesser)).status_code == 401
        refused = await login(http, user, password, **guesser)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        # The proxy's other clients are not locked out with it.
        ok = await login(http, user, password, **{"X-Forwarded-For": "203.0.113.6"})
        assert ok.status_code == 200
    log = edge.log_path.read_text()
    assert "user='nobody0' client=203.0.113.5" in log


async def test_a_login_flood_queues_or_gets_429_and_the_edge_memory_stays_flat(
        cluster_factory: Any, make_user: Any):
    cluster, edge = one_edge(cluster_factory, CAM_LOGIN_CONCURRENCY="1",
                       CAM_LOGIN_MAX_FAILURES="100000", CAM_LOGIN_ADDRESS_MAX_FAILURES="100000")
    user, password = await make_user()
    process = psutil.Process(edge.pid)
    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=cluster.http("camserver1"), limits=limits,
                                 timeout=60) as http:
        await login(http, user, "warm up")
        before = process.memory_info().rss
        started = time.monotonic()
        answers = await asyncio.gather(*(login(http, user, f"guess {i}") for i in range(300)))
        elapsed = time.monotonic() - started
        after = process.memory_info().rss
        statuses = {r.status_code for r in answers}
        assert statuses <= {401, 429}, statuses
        # One slot and 8 waiting: most of the flood is turned away at once.
        assert sum(r.status_code == 429 for r in answers) > 200
        assert all(r.headers.get("retry-after") for r in answers if r.status_code == 429)
        assert after - before < 20 * 2**20, f"edge RSS grew by {(after - before) >> 20} MiB"
        assert elapsed < 30
        assert (await login(http, user, password)).status_code == 200


async def test_login_and_logout_take_only_json_from_allowed_origins(
        cluster_factory: Any, make_user: Any):
    cluster, edge = one_edge(cluster_factory, CAM_ALLOWED_ORIGINS="https://chat.example.com")
    user, password = await make_user()
    body = {"username": user, "password": password}
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        form = await http.post("/api/login", data=body)
        assert form.status_code == 415
        assert form.json()["error"]["code"] == "unsupported_media_type"
        plain = await http.post("/api/login", content=b'{"username": "x", "password": "y"}',
                                headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        evil = await http.post("/api/login", json=body, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "forbidden"
        allowed = await http.post("/api/login", content=json.dumps(body).encode(), headers={
            "Origin": "https://chat.example.com", "content-type": "application/json; charset=utf-8"})
        assert allowed.status_code == 200
        token = allowed.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        forged = await http.post("/api/logout", headers={**bearer, "Origin": "https://evil.example"})
        assert forged.status_code == 403
        text = await http.post("/api/logout", content=b"x",
                               headers={**bearer, "content-type": "text/plain"})
        assert text.status_code == 415
        assert (await http.get("/api/me", headers=bearer)).status_code == 200  # still logged in
        out = await http.post("/api/logout", headers=bearer)
        assert out.status_code == 200 and out.json() == {"revoked": True}
        assert out.headers["cache-control"] == "no-store"
