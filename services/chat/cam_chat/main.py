"""Entry point of a chat replica: ``cam-chat --config boot.ini``."""

from __future__ import annotations

from camcore import subjects
from camcore.config import Settings
from camcore.runtime import service_main
from camcore.service import serve_replica

from .service import ChatService


async def serve(settings: Settings) -> None:
    await serve_replica(
        settings, "chat", subjects.CHAT_RPC, subjects.CHAT_QUEUE,
        lambda pool, nc: ChatService(pool, nc, max_message_chars=settings.max_message_chars,
                                     rooms_per_hour=settings.rooms_per_hour,
                                     max_room_members=settings.max_room_members),
        pool_size=20)


def main() -> None:
    service_main("cam-chat", serve)


if __name__ == "__main__":
    main()
