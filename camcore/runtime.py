"""Process entry helpers shared by every service: config, logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import logs
from .config import ConfigError, Settings, load_settings, require_database_url

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def setup_logging(name: str, settings: Settings | None = None) -> None:
    """Log to stderr in cam.logFormat at cam.logLevel.

    Called once before the settings are read (from their CAM_* variables, so that what
    loading them warns about comes out alike; a bad value counts as the default, and
    loading then stops with its config error) and once after, with them.
    """
    if settings is not None:
        logs.configure(name, fmt=settings.log_format, level=settings.log_level,
                       node=settings.node_name)
        return
    fmt = os.environ.get("CAM_LOG_FORMAT", "").strip().lower()
    level = os.environ.get("CAM_LOG_LEVEL", "").strip().upper()
    logs.configure(name, fmt=fmt if fmt in logs.FORMATS else "text",
                   level=level if level in logs.LEVELS else "INFO",
                   node=os.environ.get("CAM_NODE_NAME", "").strip())


def load_or_exit(config: str | None, *, needs_database: str = "") -> Settings:
    """Settings from boot.ini and the environment; a bad value ends the process (exit 2),
    as does a missing cam.databaseUrl when ``needs_database`` names who needs it."""
    try:
        settings = load_settings(config)
        if needs_database:
            require_database_url(settings, needs_database)
        return settings
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def service_main(name: str, serve: Callable[[Settings], Coroutine[Any, Any, None]], *,
                 needs_database: bool = True) -> None:
    """Standard ``main`` of a bus service: ``--config boot.ini``, then serve until a signal."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--config", help="path to boot.ini (default: $CAM_BOOT_INI)")
    args = parser.parse_args()
    setup_logging(name)
    settings = load_or_exit(args.config, needs_database=f"the {name} service" if needs_database else "")
    setup_logging(name, settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
