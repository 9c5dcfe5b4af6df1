"""Fixtures that start real servers: PostgreSQL, a NATS cluster, chat replicas, edges."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from camclient import Client, login
from camcore import accounts, bus, db, subjects, wire
from camcore.errors import CamError
from camctl import rig

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
    await asyncio.to_thread(postgres.create_database, name)
    dsn = postgres.dsn(name)
    await db.migrate(dsn)
    return dsn


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database, max_size=4)
    yield p
    await p.close()


class Cluster:
    """A NATS cluster plus our processes, all real, on loopback ports."""

    def __init__(self, workdir: Path, database: str, nats: rig.NatsCluster) -> None:
        self.workdir = workdir
        self.database = database
        self.nats = nats
        self.procs: dict[str, rig.Proc] = {}
        self.edge_ports: dict[str, int] = {}
        self.extra_env: dict[str, str] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CAM_DATABASE_URL": self.database,
            "CAM_NATS_URL": ",".join(self.nats.urls),
            "CAM_SERVER_DATE_PATH": str(self.workdir / "data"),
            "CAM_HEARTBEAT_INTERVAL": HEARTBEAT,
            "CAM_NODE_TIMEOUT": "2",
            "CAM_DRAIN_SECONDS": "0.3",
            "CAM_REPAIR_INTERVAL": "0.5",
            "CAM_LOG_LEVEL": "INFO",
            **self.extra_env,
            **extra,
        }

    def start_chat(self, name: str = "chat1", **extra: str) -> rig.Proc:
        proc = rig.service("chat", name, self.env(CAM_NODE_NAME=name, **extra), self.workdir)
        self.procs[name] = proc.start()
        return proc

    def start_presence(self, name: str = "presence1") -> rig.Proc:
        proc = rig.service("presence", name, self.env(CAM_NODE_NAME=name), self.workdir)
        self.procs[name] = proc.start()
        return proc

    def start_video(self, name: str = "video1") -> rig.Proc:
        proc = rig.service("video", name, self.env(CAM_NODE_NAME=name), self.workdir)
        self.procs[name] = proc.start()
        return proc

    def start_health(self, name: str = "health1") -> rig.Proc:
        proc = rig.service("health", name, self.env(CAM_NODE_NAME=name), self.workdir)
        self.procs[name] = proc.start()
        return proc

    def start_edge(self, name: str, *, nats: int | None = None, **extra: str) -> rig.Proc:
        port = self.edge_ports.get(name) or rig.free_port()
        self.edge_ports[name] = port
        env = self.env(CAM_NODE_NAME=name, CAM_HTTP_PORT=str(port), CAM_HTTP_HOST="127.0.0.1",
                       **extra)
        if nats is not None:
            env["CAM_NATS_URL"] = self.nats.url(nats)
        proc = rig.service("edge", name, env, self.workdir)
        self.procs[name] = proc.start()
        return proc

    def wait_services(self, timeout: float = 30.0) -> None:
        """Until every started bus service answers (its queue subscription is in place)."""
        probes = {"chat": (subjects.chat_rpc("room_heads"), wire.RoomHeads(rooms=[])),
                  "presence": (subjects.presence_rpc("query"), wire.PresenceQuery(users=[])),
                  "video": (subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))}
        wanted = [probes[k] for k in probes if any(n.startswith(k) for n in self.procs)]

        async def probe() -> None:
            # Through every NATS server: interest crosses routes asynchronously, so a
            # service reachable from one server may not be from another yet.
            for url in self.nats.urls:
                nc = await bus.connect([url], "test-readiness", connect_deadline=timeout)
                try:
                    for subject, request in wanted:
                        deadline = time.monotonic() + timeout
                        while True:
                            try:
                                await bus.call(nc, subject, request, timeout=2)
                                break
                            except CamError:
                                if time.monotonic() > deadline:
                                    raise
                                await asyncio.sleep(0.05)
                finally:
                    await nc.close()

        if wanted:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, probe()).result()

    def wait_edges(self, *names: str, timeout: float = 30.0) -> None:
        for name in names or tuple(self.edge_ports):
            port, proc = self.edge_ports[name], self.procs[name]
            rig.wait_for(lambda port=port, proc=proc: (proc.check_alive(), rig.edge_ready(port))[1],
                         timeout, f"edge {name}")
        self.wait_services(timeout)

    def http(self, name: str) -> str:
        return f"http://127.0.0.1:{self.edge_ports[name]}"

    def ws(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.edge_ports[name]}/ws"

    async def connect(self, node: str, user: tuple[str, str], **kw: Any) -> Client:
        """Log ``user`` in on ``node`` and open an authenticated WebSocket there."""
        return await Client.connect(self.ws(node), await login(self.http(node), *user), **kw)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.nats.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path, database: str) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(nats_servers: int = 2) -> Cluster:
        nats = rig.NatsCluster(tmp_path / f"nats{len(made)}", size=nats_servers).start()
        c = Cluster(tmp_path, database, nats)
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
def make_user(pool: asyncpg.Pool) -> Any:
    async def make(name: str | None = None, password: str = "correct horse") -> tuple[str, str]:
        name = name or f"u{uuid.uuid4().hex[:8]}"
        await accounts.create_user(pool, name, password)
        return name, password

    return make


def pytest_report_header() -> str:
    return f"loopback cluster tests; pid {os.getpid()}"
