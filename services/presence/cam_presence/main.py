"""Entry point of a presence replica: ``cam-presence --config boot.ini``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid

from camcore import bus, db, subjects
from camcore.config import Settings
from camcore.errors import Unavailable
from camcore.runtime import service_main, wait_for_stop_signal

from .service import PresenceService

log = logging.getLogger("cam_presence")


async def sweeper(service: PresenceService, interval: float) -> None:
    """Every replica sweeps; row locks make each silent node handled once."""
    while True:
        await asyncio.sleep(interval)
        try:
            await service.sweep()
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("sweep failed: %s", exc)


async def serve(settings: Settings) -> None:
    if not settings.database_url:
        raise Unavailable("cam.databaseUrl is not set; the presence service needs the database")
    instance = f"{settings.node_name[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(settings.database_url, max_size=10)
    nc = await bus.connect(settings.nats_urls, f"presence:{instance}")
    service = PresenceService(pool, nc, node_timeout=settings.node_timeout)
    rpc = bus.RpcServer(nc, subjects.PRESENCE_RPC, subjects.PRESENCE_QUEUE, service.handlers())
    await rpc.start()
    tasks = [
        asyncio.create_task(sweeper(service, min(settings.heartbeat_interval, 1.0))),
        asyncio.create_task(bus.heartbeat_loop(
            nc, "presence", instance, settings.node_name, settings.heartbeat_interval,
            lambda: {"served": float(rpc.served), "published": float(service.published),
                     "swept_nodes": float(service.swept_nodes)})),
    ]
    log.info("presence replica %s serving %s.*", instance, subjects.PRESENCE_RPC)
    try:
        await wait_for_stop_signal()
    finally:
        for task in tasks:
            task.cancel()
        await rpc.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()


def main() -> None:
    service_main("cam-presence", serve)


if __name__ == "__main__":
    main()
