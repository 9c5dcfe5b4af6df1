"""Entry point of a video-allocator replica: ``cam-video-allocator --config boot.ini``."""

from __future__ import annotations

import logging

from camcore import subjects
from camcore.config import Settings
from camcore.runtime import service_main
from camcore.service import serve_replica

from .service import VideoAllocator


async def serve(settings: Settings) -> None:
    # httpx logs every request at INFO; the allocator makes a few a second, all day long
    # (cam_video_allocator.janus logs them at DEBUG instead).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    await serve_replica(settings, "video", subjects.VIDEO_RPC, subjects.VIDEO_QUEUE,
                        lambda pool, nc: VideoAllocator(pool, nc, settings), pool_size=20)


def main() -> None:
    service_main("cam-video-allocator", serve)


if __name__ == "__main__":
    main()
