"""Entry point of a video-allocator replica: ``cam-video-allocator --config boot.ini``."""

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

from .service import VideoAllocator

log = logging.getLogger("cam_video_allocator")


async def watch(allocator: VideoAllocator, interval: float) -> None:
    while True:
        await allocator.tick()
        await asyncio.sleep(interval)


async def serve(settings: Settings) -> None:
    if not settings.database_url:
        raise Unavailable("cam.databaseUrl is not set; the video allocator needs the database")
    instance = f"{settings.node_name[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(settings.database_url, max_size=20)
    nc = await bus.connect(settings.nats_urls, f"video:{instance}")
    allocator = VideoAllocator(pool, nc, settings)
    await allocator.sync_servers()
    await allocator.probe()
    rpc = bus.RpcServer(nc, subjects.VIDEO_RPC, subjects.VIDEO_QUEUE, allocator.handlers())
    await rpc.start()
    tasks = [
        asyncio.create_task(watch(allocator, settings.video_probe_interval)),
        asyncio.create_task(bus.heartbeat_loop(
            nc, "video", instance, settings.node_name, settings.heartbeat_interval,
            lambda: {"served": float(rpc.served), "decisions": float(allocator.decisions)})),
    ]
    log.info("video allocator %s serving %s.* for %s", instance, subjects.VIDEO_RPC,
             ", ".join(d.name for d in settings.video_domains) or "no video servers")
    try:
        await wait_for_stop_signal()
    finally:
        for task in tasks:
            task.cancel()
        await rpc.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        await allocator.close()
        await pool.close()


def main() -> None:
    service_main("cam-video-allocator", serve)


if __name__ == "__main__":
    main()
