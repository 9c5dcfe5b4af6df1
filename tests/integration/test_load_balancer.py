"""The load balancer of cluster-spec.md section 5, with real HAProxy and real Caddy.

Both run the production configurations of deploy/ (camctl/lb.py changes only
addresses, ports, the certificate and the list of edges) in front of real edges, as
``camctl up`` runs them: clients connect on 127.0.0.1, the balancers connect to the
edges from lb.SOURCE_ADDRESS, and the edges trust that address only:

1. TLS termination ........ test_tls_termination_and_plain_http_to_the_edges
2. round robin + cookie ... test_round_robin_spreads_new_clients_and_the_cookie_sticks
3. headers, WebSocket ..... test_the_edge_sees_the_client_behind_the_balancer_and_no_forgery,
                            test_logins_are_limited_by_the_real_client_and_only_the_balancer_is_believed,
                            test_websocket_chat_through_the_load_balancer
4. http://HOST:8080/ ...... test_production_configs_as_shipped (the server lines), and every
                            test here (the edges speak plain HTTP)
5. health check ........... test_a_node_whose_health_check_fails_is_taken_out_and_put_back,
                            test_health_check_needs_status_200_and_the_exact_body
"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from camclient.client import Client, login
from camctl import lb, rig

from .lb_fixtures import (
    CLIENT_ADDRESS,
    LbCluster,
    edge_log,
    fake_edges,
    fresh_nodes,
    https_client,
    lb_cluster_in_own_database,
    new_user,
    node_of,
    start_lb_cluster,
)

COOKIE = {"haproxy": "CAMSERVERID", "caddy": "cam_lb"}
#: How each one redirects plain HTTP: deploy/haproxy/haproxy.cfg says 301, Caddy's
#: automatic HTTPS answers 308.
REDIRECT = {"haproxy": 301, "caddy": 308}


@pytest.fixture(scope="module")
def lbc(postgres: rig.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LbCluster]:
    """Edges camserver1 and camserver2 behind HAProxy and Caddy, shared by the module's
    tests that only read or add their own users and rooms."""
    with lb_cluster_in_own_database(postgres, tmp_path_factory.mktemp("lbc")) as made:
        yield made


# ------------------------------------------------------------------ configs as shipped


def test_production_configs_as_shipped(tmp_path: Path) -> None:
    deploy = lb.deploy_dir()
    # HAProxy: the file as shipped is valid (its edge names need not resolve yet) ...
    shipped = (deploy / "haproxy" / "haproxy.cfg").read_text()
    pem, _ = lb.self_signed(tmp_path)
    as_shipped = tmp_path / "as-shipped.cfg"
    as_shipped.write_text(shipped.replace("/etc/haproxy/certs/cam.pem", str(pem)))
    check = subprocess.run([lb.haproxy_binary(), "-c", "-f", str(as_shipped)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for line in ("bind :443 ssl crt", "balance roundrobin", "cookie CAMSERVERID insert",
                 "http-request set-header X-Forwarded-Proto https", "option forwardfor",
                 "timeout tunnel 1h", "http-check send meth GET uri /CAMServer/healthCheck",
                 "http-check expect status 200", "server camserver1 camserver1:8080",
                 "server camserver2 camserver2:8080"):
        assert line in shipped, line
    # ... and the local rendering changes only addresses, certificate and edges.
    backends = [lb.Backend("camserver1", "127.0.0.1", 18080), lb.Backend("n3", "127.0.0.1", 18082)]
    rendered = lb.render_haproxy(shipped, https_bind="127.0.0.1:18443", http_bind="127.0.0.1:18000",
                                 cert=pem, backends=backends)
    changed = set(rendered.splitlines()) ^ set(shipped.splitlines())
    assert {ln.split()[0] for ln in changed} <= {"bind", "server", "chroot", "user", "group"}
    assert "server n3 127.0.0.1:18082 cookie n3\n" in rendered
    # camctl up's: the backend connects to the edges from the one address they trust.
    sourced = lb.render_haproxy(shipped, https_bind="127.0.0.1:18443", http_bind="127.0.0.1:18000",
                                cert=pem, backends=backends, source=lb.SOURCE_ADDRESS)
    assert set(sourced.splitlines()) - set(rendered.splitlines()) == {f"    source {lb.SOURCE_ADDRESS}"}
    assert f"backend cam_edges\n    source {lb.SOURCE_ADDRESS}\n" in sourced

    # Caddy: the file as shipped adapts, to upstreams camserver1:8080 and camserver2:8080.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAM_LB_")}
    adapt = subprocess.run([lb.caddy_binary(), "adapt", "--config", str(deploy / "caddy" / "Caddyfile")],
                           capture_output=True, text=True, env=env)
    assert adapt.returncode == 0, adapt.stderr
    handlers = list(_handlers(json.loads(adapt.stdout)["apps"]["http"]["servers"]["srv0"]))
    handler = next(h for h in handlers if h["handler"] == "reverse_proxy")
    # Upload bodies are capped (cam.maxUploadBytes' default plus the multipart envelope).
    assert {"handler": "request_body", "max_size": 104923136} in handlers
    assert [u["dial"] for u in handler["upstreams"]] == ["camserver1:8080", "camserver2:8080"]
    active = handler["health_checks"]["active"]
    assert (active["uri"], active["expect_status"]) == ("/CAMServer/healthCheck", 200)
    assert active["expect_body"] == r'^\{"status":200\}$'
    policy = handler["load_balancing"]["selection_policy"]
    assert (policy["policy"], policy["fallback"]["policy"]) == ("cookie", "round_robin")
    # As shipped the kernel picks the address Caddy connects from; camctl up fixes it.
    assert "local_address" not in handler["transport"]
    local = {**env, "CAM_LB_TRANSPORT_OPTIONS": f"local_address {lb.SOURCE_ADDRESS}"}
    adapt = subprocess.run([lb.caddy_binary(), "adapt", "--config", str(deploy / "caddy" / "Caddyfile")],
                           capture_output=True, text=True, env=local)
    assert adapt.returncode == 0, adapt.stderr
    handlers = list(_handlers(json.loads(adapt.stdout)["apps"]["http"]["servers"]["srv0"]))
    handler = next(h for h in handlers if h["handler"] == "reverse_proxy")
    # Upload bodies are capped (cam.maxUploadBytes' default plus the multipart envelope).
    assert {"handler": "request_body", "max_size": 104923136} in handlers
    assert handler["transport"]["local_address"] == lb.SOURCE_ADDRESS


# ------------------------------------------------------------------ 1. TLS


@pytest.mark.parametrize("kind", lb.KINDS)
def test_tls_termination_and_plain_http_to_the_edges(lbc: LbCluster, kind: str) -> None:
    balancer = lbc.balancers[kind]
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=5) as raw, \
            balancer.ssl_context().wrap_socket(raw, server_hostname=lb.LB_HOST) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        cert = tls.getpeercert()
        assert cert is not None
        alt_names = cast("tuple[tuple[str, str], ...]", cert["subjectAltName"])
        names = [v for k, v in alt_names if k == "DNS"]
        assert lb.LB_HOST in names
    # An unknown certificate is refused: the client really verifies it.
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", balancer.port), timeout=5) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname=lb.LB_HOST)

    assert balancer.get(lb.HEALTH_PATH) == lb.HEALTH_OK
    with https_client(balancer) as client:
        # The edge itself was reached over plain HTTP and told the client used HTTPS.
        assert client.get("/api/cluster").json()["client"]["scheme"] == "https"
    for port in lbc.cluster.edge_ports.values():
        assert rig.http_get(f"http://127.0.0.1:{port}{lb.HEALTH_PATH}") == lb.HEALTH_OK
    # Plain HTTP to the load balancer is sent to HTTPS, to the same path, permanently.
    r = httpx.get(f"http://{lb.LB_HOST}:{balancer.http_port}/api/cluster?x=1", timeout=5)
    assert r.status_code == REDIRECT[kind], r.headers
    location = httpx.URL(r.headers["location"])
    assert (location.scheme, location.host) == ("https", lb.LB_HOST)
    assert (location.path, location.query) == ("/api/cluster", b"x=1")


# ------------------------------------------------------------------ 2. balancing


@pytest.mark.parametrize("kind", lb.KINDS)
def test_round_robin_spreads_new_clients_and_the_cookie_sticks(lbc: LbCluster, kind: str) -> None:
    balancer = lbc.balancers[kind]
    nodes = fresh_nodes(balancer, 6)
    assert set(nodes) == {"camserver1", "camserver2"}, nodes
    for _ in range(2):
        with https_client(balancer) as client:
            first = node_of(client)
            assert COOKIE[kind] in client.cookies
            assert [node_of(client) for _ in range(8)] == [first] * 8
    # The cookie alone decides: a new client that presents it lands on the same node.
    with https_client(balancer) as client:
        first = node_of(client)
        cookie = client.cookies[COOKIE[kind]]
    with https_client(balancer, cookies={COOKIE[kind]: cookie}) as other:
        assert [node_of(other) for _ in range(4)] == [first] * 4


# ------------------------------------------------------------------ 3. headers


@pytest.mark.parametrize("kind", lb.KINDS)
async def test_the_edge_sees_the_client_behind_the_balancer_and_no_forgery(
        lbc: LbCluster, kind: str) -> None:
    balancer = lbc.balancers[kind]
    c = lbc.cluster
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"}
    marker = uuid.uuid4().hex
    with https_client(balancer) as client:
        seen = client.get("/api/cluster", headers=forged).json()
        assert seen["client"] == {"address": CLIENT_ADDRESS, "scheme": "https"}
        assert seen["load_balancer"] is True
        node = seen["node"]
        client.get(f"/probe-lb-{marker}", headers=forged)  # a 404, but logged
    # Straight to an edge, the same headers are not believed: the peer is no proxy. Nor
    # from 127.0.0.1, where every local program comes from: only lb.SOURCE_ADDRESS is.
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=c.http("camserver1"), timeout=5) as client:
        assert client.get("/api/cluster", headers=headers).json()["client"] == {
            "address": "127.0.0.1", "scheme": "http"}
    direct = httpx.HTTPTransport(local_address=CLIENT_ADDRESS)
    with httpx.Client(base_url=c.http("camserver1"), transport=direct, timeout=5) as client:
        assert client.get("/api/cluster", headers=headers).json()["client"] == {
            "address": CLIENT_ADDRESS, "scheme": "http"}
        client.get(f"/probe-direct-{marker}", headers=headers)

    # The log line of each request names the real client.
    def logged(name: str, path: str) -> str:
        lines = [ln for ln in edge_log(c, name).splitlines() if path in ln]
        return lines[-1] if lines else ""

    rig.wait_for(lambda: logged(node, f"/probe-lb-{marker}") != "", 5, "the access log line")
    line = logged(node, f"/probe-lb-{marker}")
    assert f"client={CLIENT_ADDRESS} scheme=https via={lb.SOURCE_ADDRESS}" in line
    assert "203.0.113.9" not in line
    rig.wait_for(lambda: logged("camserver1", f"/probe-direct-{marker}") != "", 5, "log line")
    line = logged("camserver1", f"/probe-direct-{marker}")
    assert f"client={CLIENT_ADDRESS} scheme=http" in line and "203.0.113.9" not in line
    assert "via=" not in line

    # X-Forwarded-Proto reaches what the edge does: the session cookie is Secure
    # through the load balancer, not when forged directly over plain HTTP.
    name, password = await new_user(c.database)
    body = {"username": name, "password": password}
    async with httpx.AsyncClient(verify=balancer.ssl_context(), base_url=balancer.url) as http:
        via_lb = await http.post("/api/login", json=body)
    direct_async = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDRESS)
    async with httpx.AsyncClient(base_url=c.http("camserver2"), transport=direct_async) as http:
        forged_direct = await http.post("/api/login", json=body,
                                        headers={"X-Forwarded-Proto": "https"})
    session_cookie = [v for v in via_lb.headers.get_list("set-cookie") if "HttpOnly" in v
                      and not v.startswith(COOKIE[kind])]
    assert session_cookie and "Secure" in session_cookie[0]
    assert "Secure" not in forged_direct.headers["set-cookie"]


#: Loopback addresses of the clients in the login test: one guesser per load balancer,
#: a bystander, and the address a local program forges.
GUESSER = {"haproxy": "127.0.0.3", "caddy": "127.0.0.4"}
BYSTANDER, FORGED = "127.0.0.5", "127.0.0.9"


def _login(client: httpx.Client, username: str, password: str = "guess",
           **headers: str) -> httpx.Response:
    return client.post("/api/login", json={"username": username, "password": password},
                       headers=headers)


async def test_logins_are_limited_by_the_real_client_and_only_the_balancer_is_believed(
        cluster_factory: Any, tmp_path: Path) -> None:
    """The per-address login limit, through each load balancer and around them.

    Through a balancer, failed logins lock the client's own address: not the balancer's
    (its other clients still log in) and not a forged one. Straight to the edge from
    127.0.0.1, as any local program connects, a forged X-Forwarded-For is not believed:
    the failures lock 127.0.0.1, and the forged address stays free.
    """
    limit = 3
    made = start_lb_cluster(cluster_factory, tmp_path, nodes=1,
                            edge_env={"CAM_LOGIN_ADDRESS_MAX_FAILURES": str(limit)})
    try:
        c = made.cluster
        user, password = await new_user(c.database)
        for kind, balancer in made.balancers.items():
            with https_client(balancer, source=GUESSER[kind]) as client:
                for i in range(limit):
                    # A forged X-Forwarded-For through the balancer changes nothing either.
                    r = _login(client, f"nobody-{kind}{i}", **{"X-Forwarded-For": FORGED})
                    assert r.status_code == 401, r.text
                locked = _login(client, user, password)
                assert locked.status_code == 429 and "retry-after" in locked.headers, locked.text
            with https_client(balancer, source=BYSTANDER) as client:
                assert _login(client, user, password).status_code == 200

        with httpx.Client(base_url=c.http("camserver1"), timeout=5) as direct:  # from 127.0.0.1
            forged = {"X-Forwarded-For": FORGED}
            for i in range(limit):
                assert _login(direct, f"nobody-direct{i}", **forged).status_code == 401
            assert _login(direct, user, password, **forged).status_code == 429
        for balancer in made.balancers.values():
            with https_client(balancer, source=FORGED) as client:
                assert _login(client, user, password).status_code == 200

        def failures() -> list[str]:
            return [ln for ln in edge_log(c, "camserver1").splitlines() if "failed login" in ln]

        rig.wait_for(lambda: len(failures()) == 3 * limit, 5, "every failed login logged")
        for kind, address in GUESSER.items():
            mine = [ln for ln in failures() if f"nobody-{kind}" in ln]
            assert len(mine) == limit and all(f"client={address}" in ln for ln in mine), mine
        direct_lines = [ln for ln in failures() if "nobody-direct" in ln]
        assert all("client=127.0.0.1" in ln for ln in direct_lines), direct_lines
        assert not any(FORGED in ln for ln in failures())
    finally:
        made.stop()


# ------------------------------------------------------------------ 3. WebSocket


@pytest.mark.parametrize("kind", lb.KINDS)
async def test_websocket_chat_through_the_load_balancer(lbc: LbCluster, kind: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    balancer = lbc.balancers[kind]
    # The WebSocket client verifies with the default trust store: point it at the CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(balancer.ca_file))
    database = lbc.cluster.database
    (alice_name, pw_a), (bob_name, pw_b) = await new_user(database), await new_user(database)
    ctx = balancer.ssl_context()
    token_a = await login(balancer.url, alice_name, pw_a, verify=ctx)
    token_b = await login(balancer.url, bob_name, pw_b, verify=ctx)

    logged_before = {n: len(edge_log(lbc.cluster, n)) for n in lbc.cluster.edge_ports}
    alice = await Client.connect(balancer.ws_url, token_a)
    bobs = [await Client.connect(balancer.ws_url, token_b)]
    # Round robin: a next connection lands on the other node; chat across nodes.
    while bobs[-1].hello["node"] == alice.hello["node"] and len(bobs) < 4:
        bobs.append(await Client.connect(balancer.ws_url, token_b))
    bob = bobs[-1]
    try:
        assert alice.hello["node"] != bob.hello["node"]
        room = await alice.request("create_room", name="via-lb", members=[bob_name])
        await bob.next_event("room_added")
        ack = await alice.send(room["id"], "hello through the load balancer")
        got = await bob.next_event("message", where=lambda e: e["room"] == room["id"])
        assert (got["seq"], got["body"]) == (ack["seq"], "hello through the load balancer")
        await bob.send(room["id"], "hi back")
        back = await alice.next_event("message", where=lambda e: e["body"] == "hi back")
        assert back["seq"] == ack["seq"] + 1
    finally:
        for client in [alice, *bobs]:
            await client.close()
    # Each edge logged one WebSocket open per connection it got, each through the load
    # balancer (from lb.SOURCE_ADDRESS) and over TLS as the client used it.
    opened = {n: sum(c.hello["node"] == n for c in [alice, *bobs]) for n in logged_before}

    def ws_opens(node: str) -> list[str]:
        return [ln for ln in edge_log(lbc.cluster, node)[logged_before[node]:].splitlines()
                if "WS /ws open" in ln]

    def opened_all(node: str, count: int) -> bool:
        return len(ws_opens(node)) >= count

    for node, count in opened.items():
        rig.wait_for(functools.partial(opened_all, node, count), 5,
                     f"{count} WebSocket open lines in {node}'s log")
        lines = ws_opens(node)
        assert len(lines) == count, lines
        assert all(f"scheme=wss via={lb.SOURCE_ADDRESS}" in ln for ln in lines), lines


# ------------------------------------------------------------------ 5. health check


def _only(balancer: lb.LoadBalancer, nodes: set[str], count: int = 6) -> bool:
    return set(fresh_nodes(balancer, count)) == nodes


def _uses(balancer: lb.LoadBalancer, node: str, count: int) -> bool:
    return node in fresh_nodes(balancer, count)


def test_a_node_whose_health_check_fails_is_taken_out_and_put_back(cluster_factory: Any,
                                                                     tmp_path: Path) -> None:
    # camserver2 has a NATS server of its own: stopping it fails camserver2's health
    # check (503 "bus unavailable") while its HTTP port keeps answering.
    made = start_lb_cluster(cluster_factory, tmp_path, private_bus=["camserver2"])
    try:
        c = made.cluster
        sticky = {}
        for kind, balancer in made.balancers.items():
            client = https_client(balancer)
            while node_of(client) != "camserver2":  # get a cookie for camserver2
                client.close()
                client = https_client(balancer)
            sticky[kind] = client

        bus = made.private_bus["camserver2"]
        bus.procs[0].stop()
        rig.wait_for(lambda: rig.http_get(c.http("camserver2") + lb.HEALTH_PATH)[0] == 503, 10,
                     "camserver2's health check to fail")
        for kind, balancer in made.balancers.items():
            rig.wait_for(functools.partial(_only, balancer, {"camserver1"}), 20,
                         f"{kind} to take it out")
            # A client stuck to the failed node is served by the healthy one.
            assert node_of(sticky[kind]) == "camserver1"

        bus.restart(0)
        rig.wait_for(lambda: rig.edge_ready(c.edge_ports["camserver2"]), 20, "camserver2 to recover")
        for kind, balancer in made.balancers.items():
            rig.wait_for(functools.partial(_uses, balancer, "camserver2", 4), 20,
                         f"{kind} to put it back")
        for client in sticky.values():
            client.close()
    finally:
        made.stop()


def test_health_check_needs_status_200_and_the_exact_body(tmp_path: Path) -> None:
    """A 503 carrying the good body, and a 200 carrying another body, both take a node out."""
    with fake_edges(["good", "bad-status", "bad-body"]) as edges:
        everyone = {e.name for e in edges}
        balancers = [lb.make(kind, tmp_path / kind, [e.backend for e in edges]).start()
                     for kind in lb.KINDS]
        try:
            for balancer in balancers:
                rig.wait_for(functools.partial(_only, balancer, everyone, 6),
                             10, f"{balancer.kind} to use every node")
            edges[1].health = (503, b'{"status":200}')
            edges[2].health = (200, b'{"status":503}')
            for balancer in balancers:
                rig.wait_for(functools.partial(_only, balancer, {"good"}), 20,
                             f"{balancer.kind} to take out both bad nodes")
            edges[1].health = edges[2].health = lb.HEALTH_OK
            for balancer in balancers:
                rig.wait_for(functools.partial(_only, balancer, everyone, 6),
                             20, f"{balancer.kind} to put them back")
        finally:
            for balancer in balancers:
                balancer.stop()


def _handlers(node: Any) -> Iterator[dict[str, Any]]:
    """Every handler of an adapted Caddy config, depth first in order."""
    if isinstance(node, dict):
        if "handler" in node:
            yield node
        for value in node.values():
            yield from _handlers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _handlers(item)
