"""Cluster information for clients: load balancer detection, URL order, forwarded headers.

The edge's real ``/api/cluster`` route answers here (in process through httpx's ASGI
transport, without the lifespan that would connect to the bus and the database), for
each deployment configuration of cluster-spec.md sections 2 and 3.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import httpx
import pytest
from cam_edge.app import create_app
from cam_edge.forwarded import ForwardedMiddleware, parse_address, parse_networks, resolve

from camclient.cluster import ClusterInfo, host_ws_url, public_base_url
from camclient.session import Session
from camcore.config import load_settings


async def cluster_json(base_url: str = "http://camserver1:8080", **keys: str) -> dict[str, Any]:
    """What GET /api/cluster answers on a node configured with these boot.ini keys."""
    settings = load_settings(None, environ={}, overrides=keys)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        r = await client.get("/api/cluster")
    assert r.status_code == 200
    return r.json()


async def info(base_url: str = "http://camserver1:8080", **keys: str) -> ClusterInfo:
    return ClusterInfo.from_json(await cluster_json(base_url, **keys), base_url)


# --------------------------------------------------------------- spec configurations


async def test_small_start_two_servers_on_443_no_load_balancer() -> None:
    # cluster-spec.md section 3 example: plain names mean port 443.
    i = await info("https://camserver1", **{"cam.clusterHosts": "camserver1;camserver2",
                                       "cam.clusterHostsDesc": "camserver1 is the main server",
                                       "cam.serverURLDomain": "camserver1"})
    assert i.load_balancer is False and i.load_balancer_url is None
    assert i.hosts == ("camserver1:443", "camserver2:443")
    assert i.own_host == "camserver1:443"
    assert i.description == "camserver1 is the main server"
    assert i.ws_urls() == ["wss://camserver1/ws", "wss://camserver2/ws"]


async def test_no_server_url_domain_means_no_load_balancer() -> None:
    i = await info(**{"cam.clusterHosts": "camserver1;camserver2"})
    assert i.load_balancer is False
    assert i.ws_urls() == ["wss://camserver1/ws", "wss://camserver2/ws"]


async def test_per_department_lists_each_server_its_own_host_first() -> None:
    # Sales users connect to sales1, support users to support1; each server's file
    # starts with its own host, so its users try it first and fail over to the other.
    sales = await info("https://sales1.example.com",
                 **{"cam.clusterHosts": "sales1.example.com;support1.example.com",
                    "cam.serverURLDomain": "https://sales1.example.com"})
    support = await info("https://support1.example.com",
                   **{"cam.clusterHosts": "support1.example.com;sales1.example.com",
                      "cam.serverURLDomain": "support1.example.com"})
    assert not sales.load_balancer and not support.load_balancer
    assert sales.own_host == "sales1.example.com:443"
    assert support.own_host == "support1.example.com:443"
    assert sales.ws_urls() == ["wss://sales1.example.com/ws", "wss://support1.example.com/ws"]
    assert support.ws_urls() == ["wss://support1.example.com/ws", "wss://sales1.example.com/ws"]


async def test_standby_server_lists_the_main_server_second() -> None:
    i = await info(**{"cam.clusterHosts": "camserver2;camserver1", "cam.serverURLDomain": "camserver2"})
    assert i.own_host == "camserver2:443"
    assert i.ws_urls() == ["wss://camserver2/ws", "wss://camserver1/ws"]


async def test_load_balancer_in_front_of_8080_servers() -> None:
    # Section 3: "camserver1:8080;camserver2:8080" behind an L7 load balancer.
    i = await info("https://chat.example.com",
             **{"cam.clusterHosts": "camserver1:8080;camserver2:8080",
                "cam.serverURLDomain": "https://chat.example.com"})
    assert i.load_balancer is True
    assert i.hosts == ("camserver1:8080", "camserver2:8080")
    assert i.load_balancer_url == "https://chat.example.com"
    # The load balancer owns failover: the client reconnects through it only.
    assert i.ws_urls() == ["wss://chat.example.com/ws"]


async def test_load_balancer_domain_without_scheme_and_with_443_hosts() -> None:
    i = await info(**{"cam.clusterHosts": "camserver1;camserver2",
                "cam.serverURLDomain": "chat.example.com"})
    assert i.load_balancer is True
    assert i.ws_urls() == ["wss://chat.example.com/ws"]
    lb_port = await info(**{"cam.clusterHosts": "camserver1:8080",
                      "cam.serverURLDomain": "chat.example.com:8443"})
    assert lb_port.ws_urls() == ["wss://chat.example.com:8443/ws"]


async def test_8080_servers_without_load_balancer_are_reached_directly() -> None:
    # The public name is one of the hosts: no load balancer, the client fails over.
    i = await info("http://camserver1:8080", **{"cam.clusterHosts": "camserver1:8080;camserver2:8080",
                                          "cam.serverURLDomain": "http://camserver1:8080"})
    assert i.load_balancer is False
    assert i.ws_urls() == ["ws://camserver1:8080/ws", "ws://camserver2:8080/ws"]
    # Fetched over HTTPS (a TLS-terminating proxy per host), the same ports use wss.
    secure = await info("https://camserver1:8080", **{"cam.clusterHosts": "camserver1:8080;camserver2:8080"})
    assert secure.ws_urls() == ["wss://camserver1:8080/ws", "wss://camserver2:8080/ws"]


async def test_a_single_server_without_cluster_hosts_is_the_one_asked() -> None:
    i = await info("http://127.0.0.1:8080")
    assert i.hosts == () and i.own_host is None and not i.load_balancer
    assert i.ws_urls() == ["ws://127.0.0.1:8080/ws"]


def test_url_rules() -> None:
    assert host_ws_url("camserver1:443", secure_default=False) == "wss://camserver1/ws"
    assert host_ws_url("camserver1:80", secure_default=True) == "ws://camserver1/ws"
    assert host_ws_url("[::1]:8080", secure_default=False) == "ws://[::1]:8080/ws"
    assert host_ws_url("[::1]:443", secure_default=False) == "wss://[::1]/ws"
    assert public_base_url("chat.example.com") == "https://chat.example.com"
    assert public_base_url("https://chat.example.com/some/path") == "https://chat.example.com"
    assert public_base_url("http://lb:8000") == "http://lb:8000"


async def test_session_from_cluster_info_keeps_the_order_or_only_the_load_balancer() -> None:
    direct = await info(**{"cam.clusterHosts": "camserver2;camserver1"})
    assert Session.from_cluster_info(direct, "t").urls == ["wss://camserver2/ws",
                                                           "wss://camserver1/ws"]
    behind = await info(**{"cam.clusterHosts": "camserver1;camserver2",
                     "cam.serverURLDomain": "chat.example.com"})
    session = Session.from_cluster_info(behind, "t")
    assert session.urls == ["wss://chat.example.com/ws"] and session.cluster is behind


def test_reconnect_backoff_is_jittered_and_capped() -> None:
    # Clients of a dead node must not come back at the same instant.
    # Attempt 3 of base 0.2 s: anywhere in [0, 1.6 s], spread over the whole range.
    delays = [Session(["ws://x/ws"], "t", rng=random.Random(seed))._delay(3) for seed in range(50)]
    assert all(0 <= d <= 1.6 for d in delays)
    assert len({round(d, 6) for d in delays}) > 40
    assert min(delays) < 0.4 and max(delays) > 1.2
    # However many attempts failed, no wait is longer than the cap; the waits still spread.
    capped = Session(["ws://x/ws"], "t", backoff_cap=3.0, rng=random.Random(7))
    waits = [capped._delay(20) for _ in range(100)]
    assert all(0 <= w <= 3.0 for w in waits) and max(waits) > 2.0


# --------------------------------------------------------------- forwarded headers


def scope(peer: str, headers: dict[str, str] | None = None, kind: str = "http",
          scheme: str = "http") -> dict[str, Any]:
    return {"type": kind, "scheme": scheme, "client": (peer, 40000), "path": "/",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


TRUSTED = parse_networks(["10.0.0.5", "192.168.1.0/24"])


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    s = scope("203.0.113.7", {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"})
    assert resolve(s, TRUSTED) == ("203.0.113.7", "http", False)
    # And with no trusted proxies configured at all.
    assert resolve(scope("10.0.0.5", {"X-Forwarded-For": "1.2.3.4"}), ()) == (
        "10.0.0.5", "http", False)


def test_a_trusted_proxy_gives_the_client_address_and_scheme() -> None:
    s = scope("10.0.0.5", {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"})
    assert resolve(s, TRUSTED) == ("198.51.100.20", "https", True)
    ws = scope("10.0.0.5", {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"},
               kind="websocket", scheme="ws")
    assert resolve(ws, TRUSTED) == ("198.51.100.20", "wss", True)


def test_a_forged_entry_left_of_the_proxy_entry_is_not_believed() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; a proxy that appends adds the real one.
    s = scope("10.0.0.5", {"X-Forwarded-For": "6.6.6.6, 198.51.100.20"})
    assert resolve(s, TRUSTED)[0] == "198.51.100.20"
    # Chains of trusted proxies are walked from the right.
    chain = scope("10.0.0.5", {"X-Forwarded-For": "6.6.6.6, 198.51.100.20, 192.168.1.9"})
    assert resolve(chain, TRUSTED)[0] == "198.51.100.20"


def test_garbage_and_ports_in_forwarded_for() -> None:
    assert resolve(scope("10.0.0.5", {"X-Forwarded-For": "not-an-ip"}), TRUSTED)[0] == "10.0.0.5"
    assert resolve(scope("10.0.0.5", {"X-Forwarded-For": "198.51.100.20:5555"}), TRUSTED)[0] == (
        "198.51.100.20")
    assert resolve(scope("10.0.0.5", {"X-Forwarded-Proto": "gopher"}), TRUSTED) == (
        "10.0.0.5", "http", True)
    assert parse_address("[2001:db8::1]:443") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("[2001:db8::1") is None
    assert str(parse_address("::ffff:10.0.0.5")) == "10.0.0.5"


@pytest.mark.parametrize(("peer", "expected"), [("10.0.0.5", ("198.51.100.20", "https")),
                                                ("203.0.113.7", ("203.0.113.7", "http"))])
async def test_middleware_rewrites_the_scope_starlette_reads(peer: str,
                                                             expected: tuple[str, str]) -> None:
    seen: dict[str, Any] = {}

    async def app(s: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(s)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    middleware = ForwardedMiddleware(app, ["10.0.0.5"])
    s = scope(peer, {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"})
    s["method"] = "GET"
    await middleware(s, receive, send)
    assert (seen["client"][0], seen["scheme"]) == expected
    assert seen["cam.peer"] == (peer, 40000)
    assert sent[0]["status"] == 204
