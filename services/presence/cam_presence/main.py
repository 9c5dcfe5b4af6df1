"""Entry point of a presence replica: ``cam-presence --config boot.ini``."""

from __future__ import annotations

from camcore import subjects
from camcore.config import Settings
from camcore.runtime import service_main
from camcore.service import serve_replica

from .service import PresenceService


async def serve(settings: Settings) -> None:
    await serve_replica(
        settings, "presence", subjects.PRESENCE_RPC, subjects.PRESENCE_QUEUE,
        lambda pool, nc: PresenceService(pool, nc, node_timeout=settings.node_timeout,
                                         sweep_interval=min(settings.heartbeat_interval, 1.0)))


def main() -> None:
    service_main("cam-presence", serve)


if __name__ == "__main__":
    main()
