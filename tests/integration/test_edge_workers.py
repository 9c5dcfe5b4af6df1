"""Edge workers (cam.edgeWorkers): several processes share one port with SO_REUSEPORT;
each routes its own clients' interest, one that dies is restarted while the others
serve, and a SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from camclient import Client
from camctl import rig
from tests.conftest import MONITORING, Cluster
from tests.waiting import eventually

NODE = "camserver1"


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return sorted(int(p) for p in children)


async def scrape(cluster: Cluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(cluster.http(NODE) + "/metrics", headers=MONITORING)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def members_per_worker(samples: dict[Any, float]) -> dict[str, float]:
    return {dict(labels)["worker"]: value for (name, labels), value in samples.items()
            if name == "cam_edge_connections" and dict(labels).get("kind") == "member"}


def listening(port: int) -> int:
    """Sockets listening on ``port``: one per worker that is up."""
    return sum(1 for c in psutil.net_connections("tcp")
               if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port)


async def two_workers(cluster_factory: Any) -> Cluster:
    cluster: Cluster = cluster_factory(1)
    cluster.start_chat()
    cluster.start_presence()
    cluster.start_edge(NODE, CAM_EDGE_WORKERS="2")
    cluster.wait_edges()
    await eventually(lambda: listening(cluster.edge_ports[NODE]) == 2, 20, "two listening workers")
    return cluster


async def room_of(cluster: Cluster, make_user: Any, n: int) -> tuple[list[Client], int]:
    users = [await make_user() for _ in range(n)]
    owner = await cluster.connect(NODE, users[0])
    room = (await owner.request("create_room", name="workers",
                                members=[u[0] for u in users[1:]]))["id"]
    return [owner] + [await cluster.connect(NODE, u) for u in users[1:]], room


async def test_two_workers_share_the_port_and_the_rooms(cluster_factory: Any, make_user: Any):
    cluster = await two_workers(cluster_factory)
    clients, room = await room_of(cluster, make_user, 16)
    # The kernel spread the connections over both workers, and one scrape shows both.
    samples = await eventually(lambda: _both_serving(cluster), 10, "both workers' metrics")
    assert sum(members_per_worker(samples).values()) == 16
    assert samples[("cam_edge_workers", (("state", "answering"),))] == 2
    # A message reaches every member, whichever worker holds the sender and the others.
    ack = await clients[3].send(room, "across workers")
    for c in clients:
        event = await c.next_event("message", timeout=10)
        assert (event["seq"], event["body"]) == (ack["seq"], "across workers")
    for c in clients:
        await c.close()


async def _both_serving(cluster: Cluster) -> dict[Any, float] | None:
    samples = await scrape(cluster)
    per_worker = members_per_worker(samples)
    return samples if len(per_worker) == 2 and all(per_worker.values()) else None


async def test_a_killed_worker_is_restarted_while_the_other_serves(cluster_factory: Any,
                                                                   make_user: Any):
    cluster = await two_workers(cluster_factory)
    clients, room = await room_of(cluster, make_user, 16)
    await eventually(lambda: _both_serving(cluster), 10, "both workers serving")
    supervisor = cluster.procs[NODE].pid
    before = worker_pids(supervisor)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    # Its clients are cut; the other worker's stay, and new connections go to it.
    await eventually(lambda: any(c.close_code is not None for c in clients), 10,
                     "the killed worker's clients to be cut")
    alive = [c for c in clients if c.close_code is None]
    assert 0 < len(alive) < len(clients)
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(20):
            r = await http.get(cluster.http(NODE) + "/CAMServer/healthCheck")
            assert r.status_code == 200, r.text
    ack = await alive[0].send(room, "still here")
    for c in alive:
        event = await c.next_event("message", timeout=10)
        assert event["seq"] == ack["seq"]
    # The supervisor starts a new worker in its place; the cut clients come back.
    await eventually(lambda: len(worker_pids(supervisor)) == 2
                     and before[0] not in worker_pids(supervisor), 20, "a new worker")
    await eventually(lambda: listening(cluster.edge_ports[NODE]) == 2, 20, "it to listen")
    assert await eventually(lambda: _answering(cluster, 2), 20, "two workers answering")
    for c in clients:
        await c.close()


async def _answering(cluster: Cluster, n: int) -> dict[Any, float] | None:
    samples = await scrape(cluster)
    return samples if samples[("cam_edge_workers", (("state", "answering"),))] == n else None


async def test_sigterm_drains_every_worker(cluster_factory: Any, make_user: Any):
    cluster = await two_workers(cluster_factory)
    clients, _ = await room_of(cluster, make_user, 8)
    await eventually(lambda: _both_serving(cluster), 10, "both workers serving")
    proc = cluster.procs[NODE]
    assert isinstance(proc, rig.Proc)
    pids = worker_pids(proc.pid)
    await asyncio.to_thread(proc.stop, 30.0)
    assert proc.popen is not None and proc.popen.returncode == 0
    codes = [await c.wait_closed() for c in clients]
    assert codes == [4002] * len(clients), codes
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)  # noqa: ASYNC240 - /proc
