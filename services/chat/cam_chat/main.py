"""Entry point of a chat replica: ``cam-chat --config boot.ini``."""

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

from .service import ChatService

log = logging.getLogger("cam_chat")


async def serve(settings: Settings) -> None:
    if not settings.database_url:
        raise Unavailable("cam.databaseUrl is not set; the chat service needs the database")
    instance = f"{settings.node_name[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(settings.database_url, max_size=20)
    nc = await bus.connect(settings.nats_urls, f"chat:{instance}")
    service = ChatService(pool, nc, max_message_chars=settings.max_message_chars)
    rpc = bus.RpcServer(nc, subjects.CHAT_RPC, subjects.CHAT_QUEUE, service.handlers())
    await rpc.start()
    beat = asyncio.create_task(
        bus.heartbeat_loop(nc, "chat", instance, settings.node_name, settings.heartbeat_interval,
                           lambda: {"served": float(rpc.served)})
    )
    log.info("chat replica %s serving %s", instance, subjects.CHAT_RPC_ALL)
    try:
        await wait_for_stop_signal()
    finally:
        log.info("chat replica %s stopping", instance)
        beat.cancel()
        await rpc.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()


def main() -> None:
    service_main("cam-chat", serve)


if __name__ == "__main__":
    main()
