"""Several edge worker processes on one port (``cam.edgeWorkers``).

``cam-edge`` with ``cam.edgeWorkers`` above 1 becomes a small supervisor: it holds the
port with a bound socket that never listens (so the port is known, and picked when
``cam.httpPort`` is 0), and starts that many workers, ``cam-edge --worker i``. Each
worker opens its own listening socket on the same port with ``SO_REUSEPORT``, so the
kernel spreads new connections over the workers, and a worker that is gone takes no new
connection: the others keep serving. Everything else stays per process, as for one edge
on a host of its own: each worker has its own bus connection and interest routing (it
subscribes only to the rooms and users of its own clients), its own presence identity
(``<node>-w<i>``, so a dead worker's sessions are swept like a dead edge's), heartbeat
and uploads in progress.

The supervisor restarts a worker that exits, after a pause that doubles while it keeps
failing soon after its start (0.5 s up to 30 s); after five such failures in a row it
stops every worker and exits 1, so the service manager sees the edge fail. SIGTERM or
SIGINT is passed on to every worker, which drain as a lone edge does (cam_edge.main); a
second signal kills them. Why a supervisor of our own rather than uvicorn's
``--workers``: uvicorn's runs its own ``Server`` in each child, without the edge's
drain, and shares one accepting socket instead of one per worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from camcore import subjects
from camcore.config import Settings
from camcore.metrics import REGISTRY

log = logging.getLogger("cam_edge.workers")

QUICK_EXIT = 10.0
"""A worker that exits sooner than this after its start counts as failing."""
MOST_QUICK_EXITS = 5
FIRST_PAUSE, LONGEST_PAUSE = 0.5, 30.0
_POLL = 0.2


@dataclass(frozen=True, slots=True)
class Worker:
    """Which worker this process is: ``index`` of ``count``."""

    index: int
    count: int

    def instance(self, node: str) -> str:
        """This worker's name on the bus and in presence."""
        return f"{node}-w{self.index}"

    def share(self, limit: int) -> int:
        """A per-edge cap shared out between the workers: rounded down, so the host never
        allows more than ``limit`` (unless it is below the number of workers: 1 each)."""
        return max(1, limit // self.count)


GATHER_TIMEOUT = 1.0
"""How long a scrape waits for the other workers' metrics (one that is restarting is
left out, and ``cam_edge_workers{state="answering"}`` says so)."""


class WorkerMetrics:
    """``GET /metrics`` of a worker answers for the whole edge: its own exposition and,
    gathered over the bus, every other worker's, each sample with a ``worker`` label."""

    def __init__(self, nc: NATS, node: str, worker: Worker) -> None:
        self.nc = nc
        self.subject = subjects.edge_metrics(node)
        self.worker = worker

    async def start(self) -> None:
        await self.nc.subscribe(self.subject, cb=self._answer)

    async def _answer(self, msg: Msg) -> None:
        asker = (msg.headers or {}).get("worker")
        if msg.reply and asker != str(self.worker.index):
            await self.nc.publish(msg.reply, generate_latest(REGISTRY),
                                  headers={"worker": str(self.worker.index)})

    async def gather(self) -> bytes:
        texts = {self.worker.index: generate_latest(REGISTRY)}
        wanted = self.worker.count - 1
        inbox = self.nc.new_inbox()
        got: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await self.nc.subscribe(inbox, cb=got.put)
        try:
            await self.nc.publish(self.subject, b"", reply=inbox,
                                  headers={"worker": str(self.worker.index)})
            deadline = asyncio.get_running_loop().time() + GATHER_TIMEOUT
            while len(texts) <= wanted:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(got.get(), left)
                except TimeoutError:
                    break
                index = (msg.headers or {}).get("worker", "")
                if index.isdigit():
                    texts[int(index)] = msg.data
        finally:
            await sub.unsubscribe()
        return merge(texts, self.worker.count)


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge(texts: dict[int, bytes], count: int) -> bytes:
    """One exposition of the workers' ``texts`` (by worker index): every sample gets a
    ``worker`` label, and ``cam_edge_workers`` counts who answered."""
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text.decode("utf-8", "replace")):
            into = families.setdefault(family.name, Metric(
                family.name, family.documentation, family.type, family.unit))
            into.samples += [sample._replace(labels={**sample.labels, "worker": str(index)})
                             for sample in family.samples]
    workers = Metric("cam_edge_workers", "Workers of this edge: configured "
                     "(cam.edgeWorkers), and answering (whose metrics this scrape holds).",
                     "gauge")
    workers.add_sample("cam_edge_workers", {"state": "configured"}, count)
    workers.add_sample("cam_edge_workers", {"state": "answering"}, len(texts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), workers]))
    return generate_latest(registry)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


@dataclass(slots=True)
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_exits: int = 0
    restart_at: float = 0.0


class Supervisor:
    """Starts ``settings.edge_workers`` workers on one port and keeps them running."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.children = [_Child(i) for i in range(settings.edge_workers)]
        self.stopping = 0  # signals received
        self.port = 0

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "CAM_HTTP_PORT": str(self.port)}
        child.proc = subprocess.Popen(  # noqa: S603 - our own program, our own arguments
            [sys.executable, "-m", "cam_edge.main", *self.argv, "--worker", str(child.index)],
            env=env)
        child.started = time.monotonic()
        log.info("edge worker %d started (pid %d)", child.index, child.proc.pid)

    def _signal(self, sig: int, _frame: FrameType | None) -> None:
        self.stopping += 1
        passed = sig if self.stopping == 1 else signal.SIGKILL
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(passed)

    def _reap(self, child: _Child, now: float) -> bool:
        """Handle a worker that exited; False when the edge must give up."""
        assert child.proc is not None
        code = child.proc.returncode
        child.proc = None
        if self.stopping:
            return True
        if now - child.started < QUICK_EXIT:
            child.quick_exits += 1
        else:
            child.quick_exits = 0
        if child.quick_exits >= MOST_QUICK_EXITS:
            log.error("edge worker %d keeps exiting (code %s): stopping the edge",
                      child.index, code)
            return False
        pause = min(LONGEST_PAUSE, FIRST_PAUSE * 2 ** max(0, child.quick_exits - 1))
        child.restart_at = now + pause
        log.warning("edge worker %d exited (code %s); restarting it in %.1fs",
                    child.index, code, pause)
        return True

    def run(self) -> int:
        host = self.settings.http_host
        try:
            holder = reuseport_socket(host, self.settings.http_port)
        except OSError as exc:
            log.error("cannot listen on %s port %d: %s", host, self.settings.http_port,
                      exc.strerror or exc)
            return 1
        self.port = holder.getsockname()[1]
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        log.info("edge %s: %d workers on port %d", self.settings.node_name,
                 len(self.children), self.port)
        failed = False
        try:
            for child in self.children:
                self._spawn(child)
            while True:
                now = time.monotonic()
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is not None:
                        if not self._reap(child, now):
                            failed = True
                            self._signal(signal.SIGTERM, None)
                    elif (child.proc is None and not self.stopping
                          and now >= child.restart_at):
                        self._spawn(child)
                if self.stopping and all(c.proc is None for c in self.children):
                    return 1 if failed else 0
                time.sleep(_POLL)
        finally:
            for child in self.children:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
            holder.close()
