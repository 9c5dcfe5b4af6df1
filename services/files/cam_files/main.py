"""Entry point of a files replica: ``cam-files --config boot.ini``."""

from __future__ import annotations

from camcore import subjects
from camcore.config import Settings
from camcore.runtime import service_main
from camcore.service import serve_replica

from .service import FilesService


async def serve(settings: Settings) -> None:
    await serve_replica(
        settings, "files", subjects.FILES_RPC, subjects.FILES_QUEUE,
        lambda pool, nc: FilesService(pool, nc, settings), pool_size=10)


def main() -> None:
    service_main("cam-files", serve)


if __name__ == "__main__":
    main()
