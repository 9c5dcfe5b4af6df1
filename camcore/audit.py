"""The audit log: one row per administrative action, written where the action is.

Chat writes the moderation ops in their own transactions; the edge writes session
revocations by admins; ``camctl`` writes what operators do (``actor_id`` NULL, and
who ran it in ``detail``). The admin console (``camcore.admin.audit_page``) pages the
table by id and filters by actor and action (the indexes of migration 0004).
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import asyncpg

from . import errors
from .errors import CamError

NOT_ADMIN = "this op needs admin rights"


async def require_admin(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> None:
    """``forbidden`` unless the store says the user is an admin (never the edge's copy)."""
    if not await conn.fetchval("SELECT is_admin FROM users WHERE id = $1", user_id):
        raise CamError(NOT_ADMIN, errors.FORBIDDEN)


async def record(conn: asyncpg.Connection | asyncpg.Pool, actor: int | None, action: str, *,
                 room: int | None = None, user: int | None = None, seq: int | None = None,
                 detail: dict[str, Any] | None = None) -> None:
    """One audit row; ``actor`` None is an operator at the command line."""
    if actor is None:
        detail = {"via": "camctl", "os_user": os_user(), **(detail or {})}
    await conn.execute(
        "INSERT INTO audit_log (actor_id, action, room_id, user_id, seq, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        actor, action, room, user, seq, json.dumps(detail or {}),
    )


def os_user() -> str:
    """Who runs this process (the OS user), for audit rows of operators."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
