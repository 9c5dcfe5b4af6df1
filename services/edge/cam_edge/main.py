"""Entry point of an edge: ``cam-edge --config boot.ini`` (uvicorn on cam.httpPort)."""

from __future__ import annotations

import argparse

import uvicorn

from camcore.runtime import load_or_exit, setup_logging

from .app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="cam-edge")
    parser.add_argument("--config", help="path to boot.ini (default: $CAM_BOOT_INI)")
    args = parser.parse_args()
    setup_logging("cam-edge")
    settings = load_or_exit(args.config)
    if not settings.database_url:
        raise SystemExit("config error: cam.databaseUrl='' : expected a postgres:// URL")
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        ws="websockets",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        proxy_headers=False,
        server_header=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
