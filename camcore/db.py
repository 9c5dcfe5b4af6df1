"""Database access: connection pools and schema migrations."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from . import metrics

log = logging.getLogger(__name__)

#: Errors that mean "the database cannot be reached right now" (not "the request is bad").
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
)

# Any fixed number works; it only has to be the same for every process.
_MIGRATION_LOCK = 0x63616D00


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      name: str = "main") -> asyncpg.Pool:
    """A pool whose connections give up quickly, so an outage fails fast; its use is in
    ``cam_db_pool_*{pool=name}`` (``camcore.metrics``)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=5,
        command_timeout=10,
        max_inactive_connection_lifetime=60,
        # No session state is ever left on a pooled connection (no SET, LISTEN, temp
        # tables), so the reset round trip on every release is pure cost.
        reset=_no_reset,
    )
    return metrics.watch_pool(pool, name)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Keep a released connection as it is (see create_pool)."""


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped in the package, in order."""
    folder = resources.files("camcore") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not applied yet; safe when several processes race."""
    conn = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.close()
    return applied
