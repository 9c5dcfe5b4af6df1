"""What the commands of ``camctl`` share: reading the configuration, finding the running
local cluster's state, its database and its bus, and closing revoked sessions' sockets."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from camcore import bus, db, subjects, wire
from camcore.config import ConfigError, Settings, load_settings
from camcore.errors import CamError

from . import cluster


def settings_of(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def data_root(settings: Settings) -> Path:
    return Path(settings.server_date_path).expanduser().resolve()


def state_of(settings: Settings) -> dict[str, Any]:
    path = data_root(settings) / "run" / cluster.STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return state
    except (OSError, ValueError):
        return {}


def operator_credentials(settings: Settings) -> str | None:
    """The operator's bus credentials: cam.natsCredentials, else the running cluster's."""
    return (settings.nats_credentials
            or str(state_of(settings).get("nats_operator_credentials") or "") or None)


def database_url(settings: Settings) -> str:
    url = settings.database_url or str(state_of(settings).get("database_url", ""))
    if not url:
        raise SystemExit("no database: set cam.databaseUrl, or start the cluster with 'camctl up'")
    return url


def bus_urls(settings: Settings) -> list[str]:
    """The running local cluster's NATS servers, else those of the config."""
    state_urls = state_of(settings).get("nats_urls")
    if isinstance(state_urls, list) and state_urls:
        return [str(u) for u in state_urls]
    return list(settings.nats_urls)


async def close_revoked(settings: Settings, user_id: int, fingerprints: list[str]) -> str:
    """Tell every edge to close the sockets of these revoked sessions; what happened."""
    if not fingerprints:
        return ""
    try:
        nc = await bus.connect(bus_urls(settings), "camctl-user", connect_deadline=5,
                               credentials=operator_credentials(settings))
    except CamError as exc:
        return (f"; the bus is unreachable ({exc.message}): their sockets close within "
                f"cam.sessionRecheckInterval ({settings.session_recheck_interval:g} s)")
    try:
        for fingerprint in fingerprints:
            await nc.publish(subjects.user_session(user_id), wire.encode(
                {"type": "session_revoked", "token_hash": fingerprint}))
        await nc.flush(timeout=5)
    finally:
        await nc.close()
    return "; their sockets are closed on every node"


@contextlib.asynccontextmanager
async def operator_bus(settings: Settings, name: str) -> AsyncIterator[NATS]:
    """A connection to the bus with the operator's credential."""
    nc = await bus.connect(bus_urls(settings), name, connect_deadline=5,
                           credentials=operator_credentials(settings))
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the cluster's database."""
    pool = await db.create_pool(database_url(settings), max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
