"""Fixtures that start real servers: PostgreSQL, a NATS cluster, chat replicas, edges."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from camclient import Client, login
from camcore import accounts, db
from camctl import rig
from camctl.cluster import Host, LocalCluster

HEARTBEAT = "0.2"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rig.Postgres]:
    """One PostgreSQL server for the session; each test gets its own database."""
    pg = rig.Postgres(tmp_path_factory.mktemp("pg") / "data").start()
    yield pg
    pg.stop()


@pytest.fixture
async def database(postgres: rig.Postgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = await asyncio.to_thread(postgres.create_app_database, name)
    await db.migrate(dsn)
    return dsn


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database, max_size=4)
    yield p
    await p.close()


MONITORING_TOKEN = secrets.token_urlsafe(24)
"""What the tests show the edges to read the cluster view (cam.monitoringToken)."""
MONITORING = {"Authorization": f"Bearer {MONITORING_TOKEN}"}

TEST_ENV = {
    "CAM_HEARTBEAT_INTERVAL": HEARTBEAT,
    "CAM_NODE_TIMEOUT": "2",
    "CAM_DRAIN_SECONDS": "0.3",
    "CAM_REPAIR_INTERVAL": "0.5",
    "CAM_LOG_LEVEL": "INFO",
    "CAM_MONITORING_TOKEN": MONITORING_TOKEN,
    "CAM_SESSION_RECHECK_INTERVAL": "1",
    # Fault drills send bursts faster than a person types; the limit has its own tests.
    "CAM_REQUEST_RATE_LIMIT": "5000",
    # The self-probe has its own tests (test_metrics.py); elsewhere its connections would
    # count against the limits and presence the tests check.
    "CAM_PROBE_INTERVAL": "0",
}
"""Short timers so that faults show within a test's patience."""


class Cluster(LocalCluster):
    """The local cluster builder with the tests' conveniences: one NATS server per host,
    processes named by the test, and every host on 127.0.0.1 unless asked otherwise."""

    nats: rig.NatsCluster
    """Started by the constructor, so never None here."""

    def __init__(self, workdir: Path, database: str, nats_servers: int = 2, *,
                 own_addresses: bool = False, supervised: bool = False) -> None:
        super().__init__(workdir, hosts=nats_servers, supervised=supervised, autorestart=supervised,
                         database_url=database, data_path=workdir / "data", logdir=workdir,
                         own_addresses=own_addresses)
        self.workdir = workdir
        self.database = database
        self.start_nats()

    def env(self, host: Host | None = None, **extra: str) -> dict[str, str]:
        return {**TEST_ENV, **super().env(host or self.hosts[0], **extra)}

    def start_chat(self, name: str = "chat1", **extra: str) -> rig.Handle:
        return self.start_service("chat", name, 0, **extra)

    def start_presence(self, name: str = "presence1") -> rig.Handle:
        return self.start_service("presence", name, 0)

    def start_files(self, name: str = "files1", **extra: str) -> rig.Handle:
        return self.start_service("files", name, 0, **extra)

    def start_video(self, name: str = "video1") -> rig.Handle:
        return self.start_service("video", name, 0)

    def start_health(self, name: str = "health1") -> rig.Handle:
        return self.start_service("health", name, 0)

    def start_edge(self, name: str, host: Host | int = 0, *, port: int = 0,  # type: ignore[override]
                   nats: int | None = None, **extra: str) -> rig.Handle:
        """An edge; with ``nats``, on that host and connected to its NATS server only."""
        if nats is not None:
            host = nats
            extra.setdefault("CAM_NATS_URL", self.nats_url(nats))
        return super().start_edge(name, host, port=port, **extra)

    def nats_url(self, i: int) -> str:
        assert self.nats is not None
        return self.nats.url(i)

    def wait_edges(self, *names: str, timeout: float = 30.0) -> None:
        self.wait_ready(*(names or tuple(self.edge_ports)), timeout=timeout)
        self.wait_services(timeout)

    async def connect(self, node: str, user: tuple[str, str], **kw: Any) -> Client:
        """Log ``user`` in on ``node`` and open an authenticated WebSocket there."""
        return await Client.connect(self.ws(node), await login(self.http(node), *user), **kw)


@pytest.fixture
def cluster_factory(tmp_path: Path, database: str) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(nats_servers: int = 2, **kw: Any) -> Cluster:
        root = tmp_path if not made else tmp_path / f"cluster{len(made) + 1}"
        c = Cluster(root, database, nats_servers, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def two_nodes(cluster_factory: Any) -> Cluster:
    """Two edges (camserver1 on NATS server 1, camserver2 on server 2), one chat replica."""
    c: Cluster = cluster_factory(2)
    c.start_chat("chat1")
    c.start_presence("presence1")
    c.start_edge("camserver1", nats=0)
    c.start_edge("camserver2", nats=1)
    c.wait_edges()
    return c


@pytest.fixture
def nats_url() -> Iterator[str]:
    """One bare nats-server, without authorization (default 1 MiB payload limit)."""
    port = rig.free_port()
    proc = subprocess.Popen([rig.nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def make_user(pool: asyncpg.Pool) -> Any:
    async def make(name: str | None = None, password: str = "correct horse") -> tuple[str, str]:
        name = name or f"u{uuid.uuid4().hex[:8]}"
        await accounts.create_user(pool, name, password)
        return name, password

    return make


def pytest_report_header() -> str:
    return f"loopback cluster tests; pid {os.getpid()}"
