"""Prometheus metrics of every process: what they share, the ``/metrics`` answer and
the small listener that serves it.

Every process answers ``GET /metrics`` (the Prometheus text format, ``prometheus-client``)
to the bearer token ``cam.monitoringToken`` and to nothing else: the edge on its HTTP
port, every other process on a listener of its own inside its event loop, on
``cam.httpHost`` and ``cam.metricsPort`` (0: none). Names start with ``cam_``. Labels
name kinds of things (a process kind, a node, a video server, an op, an error code),
never a user, a room or a connection: docs/monitoring.md lists every metric.

What is counted on the per-delivery path is plain numbers read when Prometheus scrapes
(:class:`LoopCounter`, :class:`LoopHistogram`): all of a process runs on one event loop,
so they need no lock, and they cost a fraction of a ``prometheus_client`` observation.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import gc
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import asyncpg
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import errors
from .config import Settings

log = logging.getLogger(__name__)

# No ``*_created`` series beside every counter: Prometheus does not need them, and they
# double what a scrape carries. Before any metric of the project is made.
disable_created_metrics()

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0)
"""Seconds: a message on one machine takes about a millisecond, one across a busy
cluster tens of them; past 10 s something is wrong."""

PROBE_BUCKETS: Final = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds of a self-probe round trip; it gives up at 5 s (``cam_edge.probe``)."""


# --------------------------------------------------------------------------- shared metrics

PROCESS = Gauge("cam_process_info", "Always 1: the kind of this process and its node "
                "(cam.nodeName).", ["kind", "node"])
BUS_CONNECTED = Gauge("cam_bus_connected", "1 while the process holds its connection to a "
                      "NATS server, 0 while it reconnects.")
BUS_DISCONNECTS = Counter("cam_bus_disconnects_total", "Times the bus connection was lost.")
BUS_RECONNECTS = Counter("cam_bus_reconnects_total", "Times the bus connection was made "
                         "again after a loss (to the same or another NATS server).")
RPC_REQUESTS = Counter("cam_rpc_requests_total", "Bus requests served, by op and outcome "
                       "('ok' or the error code of the reply).", ["service", "op", "outcome"])
RPC_SECONDS = Histogram("cam_rpc_duration_seconds", "Time to serve one bus request, by op.",
                        ["service", "op"], buckets=LATENCY_BUCKETS)


def identify(kind: str, node: str) -> None:
    """Set ``cam_process_info{kind, node}``: what dashboards group processes by; and
    time this server process's garbage collections."""
    PROCESS.labels(kind=kind, node=node).set(1)
    GC_PAUSES.watch()


def bus_up() -> None:
    BUS_CONNECTED.set(1)


def bus_lost() -> None:
    BUS_CONNECTED.set(0)
    BUS_DISCONNECTS.inc()


def bus_back() -> None:
    BUS_CONNECTED.set(1)
    BUS_RECONNECTS.inc()


Handler = Callable[[Any], Awaitable[Any]]


def timed_handlers(service: str, handlers: Mapping[str, tuple[type[Any], Handler]]
                   ) -> dict[str, tuple[type[Any], Handler]]:
    """The handlers of a bus service, each counted and timed by op
    (``cam_rpc_requests_total``, ``cam_rpc_duration_seconds``)."""
    return {op: (request, _timed(service, op, handler))
            for op, (request, handler) in handlers.items()}


def _timed(service: str, op: str, handler: Handler) -> Handler:
    seconds = RPC_SECONDS.labels(service=service, op=op)

    @functools.wraps(handler)
    async def timed(request: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await handler(request)
        except Exception as exc:
            outcome = errors.failure(exc).code  # one of the project's codes: a short list
            raise
        finally:
            seconds.observe(time.perf_counter() - started)
            RPC_REQUESTS.labels(service=service, op=op, outcome=outcome).inc()

    return timed


# --------------------------------------------------------------------------- database pools

# asyncpg pools take no weak references: kept by id, and dropped once closed.
_pools: dict[int, tuple[asyncpg.Pool, str]] = {}


def watch_pool(pool: asyncpg.Pool, name: str = "main") -> asyncpg.Pool:
    """Report ``pool`` in ``cam_db_pool_*`` (labelled ``pool=name``) until it closes."""
    for key, (old, _) in list(_pools.items()):
        if old.is_closing():
            del _pools[key]
    _pools[id(pool)] = (pool, name)
    return pool


class _Pools(Collector):
    def describe(self) -> Iterable[Metric]:
        return self._families(())

    def collect(self) -> Iterable[Metric]:
        return self._families([(p, n) for p, n in list(_pools.values()) if not p.is_closing()])

    @staticmethod
    def _families(pools: Iterable[tuple[asyncpg.Pool, str]]) -> list[Metric]:
        used = GaugeMetricFamily("cam_db_pool_connections", "Database connections of the "
                                 "pool: busy (acquired) or idle.", labels=["pool", "state"])
        most = GaugeMetricFamily("cam_db_pool_max_connections", "The most connections the "
                                 "pool opens; busy ones at this bound make requests wait.",
                                 labels=["pool"])
        for pool, name in pools:
            size, idle = pool.get_size(), pool.get_idle_size()
            used.add_metric([name, "busy"], size - idle)
            used.add_metric([name, "idle"], idle)
            most.add_metric([name], pool.get_max_size())
        return [used, most]


REGISTRY.register(_Pools())


# --------------------------------------------------------------------------- loop-only metrics


class LoopCounter:
    """A counter updated from the event loop only (no lock); read when scraped."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopHistogram:
    """A histogram updated from the event loop only (no lock); read when scraped.

    ``counts[i]`` holds the observations in ``(bounds[i-1], bounds[i]]``, the last one
    those above every bound; :meth:`buckets` gives them cumulative, as Prometheus wants.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """``times`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), float(total)))
        return out

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        family.add_metric(list(labels), self.buckets(), self.sum)


GC_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_SLOW: Final = 0.1
"""A collection pausing the process for longer than this is logged (a warning)."""


class _GcPauses(Collector):
    """How long the garbage collector stops the process, per generation: a full
    collection walks every live object, and a process holding thousands of connections
    holds millions of them (``cam_gc_pause_seconds``)."""

    def __init__(self) -> None:
        self.pauses = [LoopHistogram(GC_BUCKETS) for _ in range(3)]
        self._started = 0.0

    def watch(self) -> None:
        """Time every collection from now on (a server process, from ``identify``)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        self.pauses[min(generation, 2)].observe(took)
        if took > GC_SLOW:
            log.warning("garbage collection of generation %d stopped the process for "
                        "%.0f ms (%d objects collected)", generation, took * 1000,
                        info.get("collected", 0))

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily("cam_gc_pause_seconds", "Seconds the garbage "
                                       "collector stopped the process, per generation.",
                                       labels=["generation"])
        for generation, pauses in enumerate(self.pauses):
            pauses.add_to(family, [str(generation)])
        return [family]


GC_PAUSES: Final = _GcPauses()
REGISTRY.register(GC_PAUSES)


# --------------------------------------------------------------------------- /metrics


def authorized(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant time).
    With no token configured nothing is authorized."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def exposition(registry: CollectorRegistry = REGISTRY) -> Response:
    """The answer to an authorized ``GET /metrics``."""
    return exposition_of(generate_latest(registry))


def exposition_of(text: bytes) -> Response:
    """An authorized ``GET /metrics`` answered with ``text`` (the exposition format)."""
    return Response(text, media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})


REFUSED: Final = b'{"error":{"code":"unauthenticated","message":"give the monitoring token ' \
    b'(Authorization: Bearer <cam.monitoringToken>)"}}'


def metrics_app(token: str, registry: CollectorRegistry = REGISTRY) -> Starlette:
    """An ASGI app with one route, ``GET /metrics``, for the bearer ``token`` only."""

    async def metrics(request: Request) -> Response:
        if not authorized(request.headers.get("authorization"), token):
            return Response(REFUSED, status_code=401, media_type="application/json",
                            headers={"www-authenticate": 'Bearer realm="cam"'})
        return exposition(registry)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


class _InLoopServer(uvicorn.Server):
    """uvicorn inside a process that owns its signals: it leaves them alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def listener(host: str, port: int, token: str,
                   registry: CollectorRegistry = REGISTRY) -> AsyncIterator[int]:
    """Serve ``/metrics`` on ``host:port`` in this event loop until the block ends;
    yields the port (a free one when ``port`` is 0). A port that is taken raises
    ``OSError`` here, before the block."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.create_server(address[:2], family=family)
    sock.setblocking(False)
    config = uvicorn.Config(metrics_app(token, registry), lifespan="off", http="h11",
                            log_config=None, log_level="warning", access_log=False,
                            server_header=False, timeout_keep_alive=10,
                            timeout_graceful_shutdown=1, limit_concurrency=64)
    server = _InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics listener")
    try:
        while not server.started:
            if task.done():
                task.result()  # its failure, or SystemExit from uvicorn
                raise OSError(f"the metrics listener on {host}:{port} did not start")
            await asyncio.sleep(0.01)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        sock.close()


@contextlib.asynccontextmanager
async def serving(settings: Settings, kind: str, *collectors: Collector
                  ) -> AsyncIterator[int]:
    """A bus process's metrics: ``cam_process_info``, its own ``collectors`` (registered
    for the time of the block), and the listener on ``cam.httpHost:cam.metricsPort``
    unless that is 0. Yields the listener's port, 0 for none: a port that is taken is
    logged, and the process serves without metrics."""
    identify(kind, settings.node_name)
    for collector in collectors:
        REGISTRY.register(collector)
    try:
        async with _listening(settings) as port:
            yield port
    finally:
        for collector in collectors:
            REGISTRY.unregister(collector)


@contextlib.asynccontextmanager
async def _listening(settings: Settings) -> AsyncIterator[int]:
    if not settings.metrics_port:
        yield 0
        return
    if not settings.monitoring_token:
        log.warning("cam.metricsPort is set but cam.monitoringToken is empty: every "
                    "scrape of /metrics is refused")
    host = settings.http_host
    async with contextlib.AsyncExitStack() as stack:
        try:
            port = await stack.enter_async_context(
                listener(host, settings.metrics_port, settings.monitoring_token))
        except OSError as exc:
            log.error("no metrics: cannot listen on %s:%d (cam.httpHost, cam.metricsPort): %s",
                      host, settings.metrics_port, exc)
            port = 0
        else:
            log.info("metrics on http://%s:%d/metrics (bearer cam.monitoringToken)", host, port)
        yield port
