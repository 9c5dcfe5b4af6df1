"""The life of a bus service replica: connect, serve its queue group, heartbeat, stop.

Chat, presence, files and the video allocator differ only in what they serve; this is
the rest, written once. Their background loops run watched (``camcore.loops``): a crash
is logged and the loop restarted, or, for a fatal loop, the replica stops with an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from nats.aio.client import Client as NATS

from . import bus, db, metrics
from .config import Settings, require_database_url
from .loops import Body, Loops
from .runtime import wait_for_stop_signal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Loop:
    """A background loop of a replica: ``body`` runs under ``camcore.loops.watch``."""

    name: str
    body: Body
    fatal: bool = False


class Replica(Protocol):
    """What a service provides; everything else is run by ``serve_replica``."""

    def handlers(self) -> dict[str, tuple[type[Any], Any]]: ...

    async def start(self) -> None: ...

    def background(self) -> list[Loop]: ...

    def load(self) -> dict[str, float]: ...

    async def close(self) -> None: ...


class ReplicaBase:
    """Defaults for the optional parts of a ``Replica``."""

    async def start(self) -> None:
        """Work to do before serving (e.g. reading the configuration into the store)."""

    def background(self) -> list[Loop]:
        return []

    def load(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        """Release what the replica holds besides the pool and the bus."""


def instance_name(settings: Settings) -> str:
    return f"{settings.node_name[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def serve_replica(settings: Settings, kind: str, prefix: str, queue: str,
                        build: Callable[[asyncpg.Pool, NATS], Replica], *,
                        pool_size: int = 10) -> None:
    """Run one replica of a bus service until SIGTERM or SIGINT, with its metrics
    (``camcore.metrics``: its bus connection, its pool, every op it serves)."""
    require_database_url(settings, f"the {kind} service")
    async with metrics.serving(settings, kind):
        await _serve(settings, kind, prefix, queue, build, pool_size)


async def _serve(settings: Settings, kind: str, prefix: str, queue: str,
                 build: Callable[[asyncpg.Pool, NATS], Replica], pool_size: int) -> None:
    instance = instance_name(settings)
    pool = await db.create_pool(settings.database_url, max_size=pool_size)
    nc = await bus.connect(settings.nats_urls, f"{kind}:{instance}",
                           credentials=settings.nats_credentials or None)
    replica = build(pool, nc)
    await replica.start()
    rpc = bus.RpcServer(nc, prefix, queue, metrics.timed_handlers(kind, replica.handlers()))
    await rpc.start()
    log.info("%s replica %s serving %s.*", kind, instance, prefix)
    try:
        async with Loops() as loops:
            for loop in replica.background():
                loops.start(f"{kind} {loop.name}", loop.body, fatal=loop.fatal)
            loops.start(f"{kind} heartbeat", bus.heartbeat(
                nc, kind, instance, settings.node_name, settings.heartbeat_interval,
                lambda: {"served": float(rpc.served), **replica.load()}))
            await loops.run_until(wait_for_stop_signal())
    finally:
        log.info("%s replica %s stopping", kind, instance)
        await rpc.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        await replica.close()
        await pool.close()
