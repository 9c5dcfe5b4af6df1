"""Edges behind real load balancers (HAProxy and Caddy), for the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import httpx

from camcore import accounts, db
from camctl import lb, rig
from tests.conftest import Cluster

CLIENT_ADDRESS = "127.0.0.2"
"""Tests talk to the load balancers from this loopback address, and the load balancers
to the edges from lb.SOURCE_ADDRESS (127.0.2.1, the only trusted proxy, as camctl up
sets them up), so the edge can tell them apart; 127.0.0.1, where local programs come
from, is no proxy."""


class EdgeEnv(TypedDict):
    """The settings of each edge behind the load balancers."""

    CAM_CLUSTER_HOSTS: str
    CAM_TRUSTED_PROXIES: str
    CAM_SERVER_URL_DOMAIN: str
    CAM_NATS_URL: NotRequired[str]


@dataclass
class LbCluster:
    """Two or more edges with chat and presence, and load balancers in front of them."""

    cluster: Cluster
    balancers: dict[str, lb.LoadBalancer] = field(default_factory=dict)
    private_bus: dict[str, rig.NatsCluster] = field(default_factory=dict)

    def stop(self) -> None:
        for balancer in self.balancers.values():
            balancer.stop()
        for bus in self.private_bus.values():
            bus.stop()


def start_lb_cluster(cluster_factory: Any, workdir: Path, kinds: Sequence[str] = lb.KINDS, *,
                     nodes: int = 2, private_bus: Sequence[str] = (),
                     edge_env: Mapping[str, str] | None = None,
                     video_env: Mapping[str, str] | None = None) -> LbCluster:
    """Edges camserver1..N listed in cam.clusterHosts (own host first), trusting only
    lb.SOURCE_ADDRESS, the address the load balancers connect from (as ``camctl up``
    runs them), with cam.serverURLDomain naming the first load balancer of ``kinds``
    (with none, naming the edge itself: no load balancer in front). ``edge_env`` adds
    settings to every edge. ``video_env`` (cam.videoDomains and the rest, for every
    process) also starts a video allocator.

    An edge named in ``private_bus`` gets a NATS server of its own (and so can lose
    its bus, and its health, alone); the others share a two-server NATS cluster.
    """
    c: Cluster = cluster_factory(2)
    made = LbCluster(c)
    names = [f"camserver{i + 1}" for i in range(nodes)]
    for name in names:
        c.edge_ports[name] = rig.free_port()
    ports = {kind: rig.free_port() for kind in kinds}
    public = f"https://{lb.LB_HOST}:{ports[kinds[0]]}" if kinds else ""
    c.extra_env.update(video_env or {})
    c.start_chat("chat1")
    c.start_presence("presence1")
    c.start_files("files1")
    if video_env:
        c.start_video("video1")
    try:
        for i, name in enumerate(names):
            order = names[i:] + names[:i]
            env: EdgeEnv = {"CAM_CLUSTER_HOSTS": ";".join(f"127.0.0.1:{c.edge_ports[n]}" for n in order),
                            "CAM_TRUSTED_PROXIES": lb.SOURCE_ADDRESS,
                            # Without a load balancer the public URL is the node's own host.
                            "CAM_SERVER_URL_DOMAIN": public or f"http://127.0.0.1:{c.edge_ports[name]}"}
            if name in private_bus:
                bus = rig.NatsCluster(workdir / f"bus-{name}", size=1, name=f"own-{name}")
                made.private_bus[name] = bus.start()
                env["CAM_NATS_URL"] = bus.url(0)
            # host, port and nats given, so that mypy lets the settings be any CAM_* key.
            c.start_edge(name, 0, port=c.edge_ports[name], nats=None, **env, **dict(edge_env or {}))
        c.wait_edges()
        backends = [lb.Backend(n, "127.0.0.1", c.edge_ports[n]) for n in names]
        for kind in kinds:
            made.balancers[kind] = lb.make(kind, workdir / kind, backends, port=ports[kind],
                                           source=lb.SOURCE_ADDRESS).start()
    except BaseException:
        made.stop()
        raise
    return made


@contextlib.contextmanager
def lb_cluster_in_own_database(postgres: rig.Postgres, workdir: Path) -> Iterator[LbCluster]:
    """:func:`start_lb_cluster` with a database of its own, for a module-scoped fixture
    (the conftest's ``database`` is per test)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_app_database(name)
    asyncio.run(db.migrate(dsn))
    clusters: list[Cluster] = []

    def factory(nats_servers: int = 2) -> Cluster:
        clusters.append(Cluster(workdir, dsn, nats_servers))
        return clusters[-1]

    try:
        made = start_lb_cluster(factory, workdir)
        yield made
        made.stop()
    finally:
        for c in clusters:
            c.stop()


async def new_user(database_url: str) -> tuple[str, str]:
    """A user in the cluster's database: (name, password)."""
    name, password = f"u{uuid.uuid4().hex[:8]}", "correct horse"
    pool = await db.create_pool(database_url, max_size=1)
    try:
        await accounts.create_user(pool, name, password)
    finally:
        await pool.close()
    return name, password


def https_client(balancer: lb.LoadBalancer, *, source: str | None = CLIENT_ADDRESS,
                 **kwargs: Any) -> httpx.Client:
    """A client that trusts the balancer's certificate, from ``source``."""
    ctx = balancer.ssl_context()
    transport = httpx.HTTPTransport(verify=ctx, local_address=source)
    return httpx.Client(base_url=balancer.url, transport=transport, timeout=5, **kwargs)


def node_of(client: httpx.Client, path: str = "/api/cluster") -> str:
    r = client.get(path)
    r.raise_for_status()
    return str(r.json()["node"])


def fresh_nodes(balancer: lb.LoadBalancer, count: int) -> list[str]:
    """The node that answers each of ``count`` new clients (no cookie)."""
    nodes = []
    for _ in range(count):
        with https_client(balancer) as client:
            try:
                nodes.append(node_of(client))
            except httpx.HTTPError:
                nodes.append("")
    return nodes


def edge_log(c: Cluster, name: str) -> str:
    return (c.workdir / f"{name}.log").read_text(errors="replace")


# ------------------------------------------------------------------ fake edges


class FakeEdge:
    """A tiny HTTP server whose health answer the test sets: (status, body)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health: tuple[int, bytes] = lb.HEALTH_OK
        edge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == lb.HEALTH_PATH:
                    status, body = edge.health
                else:
                    status, body = 200, json.dumps({"node": edge.name}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def backend(self) -> lb.Backend:
        return lb.Backend(self.name, "127.0.0.1", self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def fake_edges(names: Sequence[str]) -> Iterator[list[FakeEdge]]:
    edges = [FakeEdge(n) for n in names]
    try:
        yield edges
    finally:
        for e in edges:
            e.close()
