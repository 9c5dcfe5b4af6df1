"""Entry point of an edge: ``cam-edge --config boot.ini`` (uvicorn on cam.httpPort).

On SIGTERM the edge drains: its health check turns 503 at once (so a load balancer
takes it out), after cam.drainSeconds it closes every client with 4002 ("reconnect
elsewhere") once their queued frames are sent, deregisters its sessions, and exits.
A second signal exits at once.

With ``cam.edgeWorkers`` above 1 this process supervises that many workers on the port
(cam_edge.workers); each worker is this program again, with ``--worker i``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import uvicorn

from camcore import protocol
from camcore.config import Settings
from camcore.runtime import load_or_exit, set_parent_death_signal, setup_logging

from .app import create_app
from .limits import MAX_HEADER_BYTES, header_guarded_h11
from .workers import Supervisor, Worker, reuseport_socket
from .wsproto import EdgeWebSocketProtocol

log = logging.getLogger("cam_edge")

_CLIENT_CLOSE_WAIT = 5.0


class EdgeServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings, state: dict[str, Any]) -> None:
        super().__init__(config)
        self.settings = settings
        self.state = state
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        edge = self.state.get("edge")
        if self._drain is not None or edge is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            self.force_exit = self.force_exit or self._drain is not None
            return
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self.drain())

    async def drain(self) -> None:
        edge = self.state["edge"]
        edge.draining = True
        log.info("draining: health check is 503; closing clients in %.1fs",
                 self.settings.drain_seconds)
        await asyncio.sleep(self.settings.drain_seconds)
        for conn in list(edge.connections):
            conn.close(protocol.CLOSE_RECONNECT_ELSEWHERE, "node shutting down: reconnect elsewhere")
        deadline = time.monotonic() + _CLIENT_CLOSE_WAIT
        while edge.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await edge.presence.shutdown()
        self.should_exit = True


def main() -> None:
    parser = argparse.ArgumentParser(prog="cam-edge")
    parser.add_argument("--config", help="path to boot.ini (default: $CAM_BOOT_INI)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # from the supervisor
    args = parser.parse_args()
    name = "cam-edge" if args.worker is None else f"cam-edge-w{args.worker}"
    setup_logging(name)
    settings = load_or_exit(args.config, needs_database="the edge")
    setup_logging(name, settings)
    worker = None
    if settings.edge_workers > 1:
        if args.worker is None:
            argv = [] if args.config is None else ["--config", args.config]
            sys.exit(Supervisor(settings, argv).run())
        worker = Worker(args.worker, settings.edge_workers)
        # A worker dies with its supervisor, as the processes of a crashed edge do.
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() == 1:
            sys.exit(1)
    app = create_app(settings, worker)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        # h11 rather than httptools: its request-head deadline and size bound are ours
        # (limits.HeaderGuardedH11); WebSocket frames are handled by websockets anyway.
        http=header_guarded_h11(settings.http_header_timeout,
                                settings.http_max_pending_connections),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=settings.http_keep_alive,
        # uvicorn's sans-I/O WebSocket protocol, and a FrameSocket for the write path.
        ws=EdgeWebSocketProtocol,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ws_ping_interval or None,
        ws_ping_timeout=settings.ws_ping_interval or None,
        proxy_headers=False,
        server_header=False,
        # uvicorn's own loggers go through ours (camcore.logs): same format, request ids.
        # Requests are logged by ForwardedMiddleware (cam_edge.access), with the client.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = EdgeServer(config, settings, app.state.cam)
    if worker is None:
        server.run()
    else:
        server.run(sockets=[reuseport_socket(settings.http_host, settings.http_port)])


if __name__ == "__main__":
    main()
