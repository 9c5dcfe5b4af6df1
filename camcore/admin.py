"""What an administrator does to users and rooms, and reads of the audit log.

The admin console's REST calls (``cam_edge.admin_api``) and ``camctl`` call the same
functions, so the two cannot drift apart. ``actor`` is the admin's user id, or None for
an operator at the command line (``camcore.audit`` records the OS user then). Every
change writes its ``audit_log`` row in the transaction that makes it.

Two things are refused so that nobody locks the cluster out: deactivating oneself, and
taking the last active admin's role or account away. The check locks every active
admin's row, so two admins demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from . import accounts, audit, errors
from .errors import CamError, RequestError

MAX_PAGE: Final = 200
MAX_IMPORT_ROWS: Final = 1000
"""Rows one CSV import may hold (its bytes are bounded by cam.maxRequestBytes)."""

IMPORT_COLUMNS: Final = ("username", "password", "display_name", "admin")
_TRUE: Final = frozenset({"1", "true", "yes", "y", "admin"})
_FALSE: Final = frozenset({"", "0", "false", "no", "n", "user"})
MAX_DISPLAY_NAME: Final = 200
MAX_QUERY: Final = 100

_USER_COLUMNS: Final = ("id, username, display_name, is_admin,"
                        " deactivated_at IS NULL AS active, created_at")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def user_view(row: asyncpg.Record) -> dict[str, Any]:
    """A user as the admin console shows it."""
    return {"id": row["id"], "username": row["username"], "display_name": row["display_name"],
            "is_admin": row["is_admin"], "active": row["active"],
            "created_at": _iso(row["created_at"])}


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise RequestError(f"limit must be 1 to {MAX_PAGE}")
    return limit


def _query(query: str | None) -> str | None:
    if not query:
        return None
    if len(query) > MAX_QUERY or "\x00" in query:
        raise RequestError(f"a search is at most {MAX_QUERY} characters, without NUL")
    return query


def _display_name(name: str | None, username: str) -> str:
    name = (name or "").strip() or username
    if len(name) > MAX_DISPLAY_NAME or "\x00" in name:
        raise RequestError(f"a display name is at most {MAX_DISPLAY_NAME} characters, "
                           "without NUL")
    return name


async def _page(pool: asyncpg.Pool, select: str, search: str, order: str,
                view: Callable[[asyncpg.Record], dict[str, Any]], *, query: str | None,
                after: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """One keyset page: ``select`` (with ``$1`` the id to start after), ``search`` added
    when there is a query (``$3``), then ``order`` (with ``$2`` the limit). The rows and
    the id to page on, or None at the end."""
    limit, query = _limit(limit), _query(query)
    args: list[Any] = [after, limit + 1]
    if query:
        args.append(accounts.like_contains(query))
    rows = await pool.fetch(select + (search if query else "") + order, *args)
    page = [view(r) for r in rows[:limit]]
    return page, page[-1]["id"] if len(rows) > limit else None


# ------------------------------------------------------------------ reading users


async def list_users(pool: asyncpg.Pool, *, query: str | None = None, after: int = 0,
                     limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Members (not guests) in id order after ``after``; with ``query``, those whose user
    name or display name contains it. The id to page on, or None at the end."""
    return await _page(
        pool, f"SELECT {_USER_COLUMNS} FROM users WHERE id > $1 AND guest_link IS NULL"
        " AND system_role IS NULL",  # nor the self-probe's account (camcore.probe)
        " AND (username ILIKE $3 ESCAPE '\\' OR display_name ILIKE $3 ESCAPE '\\')",
        " ORDER BY id LIMIT $2", user_view, query=query, after=after, limit=limit)


async def _user_for_update(conn: asyncpg.Connection, user_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 AND guest_link IS NULL"
        " AND system_role IS NULL FOR UPDATE",
        user_id)
    if row is None:
        raise CamError(f"no user with id {user_id}", errors.NO_SUCH_USER)
    return row


async def user_id_by_name(pool: asyncpg.Pool | asyncpg.Connection, username: str) -> int:
    """The id of a member named ``username`` (``no_such_user`` otherwise, also for a
    guest or a system account)."""
    if not accounts.USERNAME_RE.fullmatch(username):
        raise CamError(f"no user {username!r}", errors.NO_SUCH_USER)
    found: int | None = await pool.fetchval(
        "SELECT id FROM users WHERE username = $1 AND guest_link IS NULL"
        " AND system_role IS NULL", username)
    if found is None:
        raise CamError(f"no user {username!r}", errors.NO_SUCH_USER)
    return found


async def _keep_an_admin(conn: asyncpg.Connection, user_id: int) -> None:
    """Refuse to take the last active admin away (``user_id`` is about to lose it)."""
    admins = [r["id"] for r in await conn.fetch(
        "SELECT id FROM users WHERE is_admin AND deactivated_at IS NULL ORDER BY id FOR UPDATE")]
    if admins == [user_id]:
        raise CamError("this is the last active admin: make another admin first",
                       errors.CONFLICT)


# ------------------------------------------------------------------ changing users


async def create_user(pool: asyncpg.Pool, actor: int | None, username: str, password: str, *,
                      min_length: int, display_name: str | None = None,
                      is_admin: bool = False) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        user = await accounts.create_user(conn, username, password, min_length=min_length,
                                          display_name=_display_name(display_name, username),
                                          is_admin=is_admin)
        await audit.record(conn, actor, "create_user", user=user.id,
                           detail={"username": user.username, "admin": is_admin})
        return user_view(await _user_for_update(conn, user.id))


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    username: str
    password: str
    display_name: str
    is_admin: bool


class ImportRefused(RequestError):
    """A CSV import with bad rows: none of it was created. ``rows`` says what is wrong
    with each bad row (``{"line", "message"}``)."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


def parse_import(text: str, *, min_length: int) -> list[ImportRow]:
    """The rows of a CSV import, every one checked; ImportRefused lists the bad ones.

    The first line names the columns: ``username`` and ``password`` are required,
    ``display_name`` and ``admin`` (true/false, yes/no, 1/0) are optional.
    """
    if "\x00" in text:
        raise ImportRefused("the CSV holds a NUL character", [])
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    missing = [c for c in ("username", "password") if c not in columns]
    unknown = [c for c in columns if c not in IMPORT_COLUMNS]
    if missing or unknown:
        raise ImportRefused(
            "the first line must name the columns username,password[,display_name][,admin]"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown[:5])}" if unknown else ""), [])
    reader.fieldnames = columns
    rows: list[ImportRow] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        for record in reader:
            line = reader.line_num
            if len(rows) + len(bad) >= MAX_IMPORT_ROWS:
                raise ImportRefused(f"an import holds at most {MAX_IMPORT_ROWS} users", [])
            if None in record:
                bad.append({"line": line, "message": "more fields than columns"})
                continue
            username = (record.get("username") or "").strip()
            password = record.get("password") or ""
            flag = (record.get("admin") or "").strip().lower()
            try:
                accounts.validate_username(username)
                if username.lower() in seen:
                    raise RequestError(f"user name {username!r} appears twice")
                accounts.check_password(password, min_length=min_length)
                if flag not in _TRUE and flag not in _FALSE:
                    raise RequestError(f"admin must be true or false, not {flag[:20]!r}")
                display = _display_name(record.get("display_name"), username)
            except CamError as exc:
                bad.append({"line": line, "message": exc.message})
                continue
            seen.add(username.lower())
            rows.append(ImportRow(line, username, password, display, flag in _TRUE))
    except csv.Error as exc:
        raise ImportRefused(f"the CSV cannot be read: line {reader.line_num}: {exc}",
                            bad) from None
    if bad:
        raise ImportRefused(_summary(bad), bad)
    if not rows:
        raise ImportRefused("the CSV has no users after its first line", [])
    return rows


def _summary(bad: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"line {b['line']}: {b['message']}" for b in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"{len(bad)} rows are wrong, nothing was created: {shown}{more}"


async def import_users(pool: asyncpg.Pool, actor: int | None, text: str, *,
                       min_length: int) -> list[dict[str, Any]]:
    """Create every user of a CSV (``parse_import``) in one transaction, or none."""
    rows = parse_import(text, min_length=min_length)
    taken = {r["username"] for r in await pool.fetch(
        "SELECT username FROM users WHERE username = ANY($1::text[])",
        [r.username for r in rows])}
    if taken:
        bad = [{"line": r.line, "message": f"user {r.username!r} already exists"}
               for r in rows if r.username in taken]
        raise ImportRefused(_summary(bad), bad)
    hashes = await asyncio.gather(*(accounts.hash_password(r.password) for r in rows))
    async with pool.acquire() as conn, conn.transaction():
        made = []
        for row, pw_hash in zip(rows, hashes, strict=True):
            user = await accounts.insert_user(conn, row.username, pw_hash,
                                              display_name=row.display_name,
                                              is_admin=row.is_admin)
            made.append(user.id)
        await audit.record(conn, actor, "import_users", detail={
            "count": len(made), "usernames": [r.username for r in rows[:100]]})
        found = await conn.fetch(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ANY($1)"
                                 " ORDER BY id", made)
        return [user_view(r) for r in found]


async def deactivate(pool: asyncpg.Pool, actor: int | None, user_id: int
                     ) -> tuple[dict[str, Any], list[str]]:
    """Deactivate a user: no login, every session revoked. The revoked sessions'
    fingerprints come back, so the caller closes their sockets on every node."""
    if actor == user_id:
        raise CamError("you cannot deactivate yourself", errors.CONFLICT)
    async with pool.acquire() as conn, conn.transaction():
        row = await _user_for_update(conn, user_id)
        if row["is_admin"] and row["active"]:
            await _keep_an_admin(conn, user_id)
        await conn.execute("UPDATE users SET deactivated_at = coalesce(deactivated_at, now())"
                           " WHERE id = $1", user_id)
        revoked = await accounts.revoke_user_sessions(conn, user_id)
        await audit.record(conn, actor, "deactivate_user", user=user_id,
                           detail={"username": row["username"], "sessions": len(revoked)})
        return user_view(await _user_for_update(conn, user_id)), revoked


async def reactivate(pool: asyncpg.Pool, actor: int | None, user_id: int) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        row = await _user_for_update(conn, user_id)
        await conn.execute("UPDATE users SET deactivated_at = NULL WHERE id = $1", user_id)
        await audit.record(conn, actor, "reactivate_user", user=user_id,
                           detail={"username": row["username"]})
        return user_view(await _user_for_update(conn, user_id))


async def reset_password(pool: asyncpg.Pool, actor: int | None, user_id: int, password: str, *,
                         min_length: int) -> tuple[dict[str, Any], list[str]]:
    """A new password for a user; every session of theirs is revoked (fingerprints back)."""
    accounts.check_password(password, min_length=min_length)
    pw_hash = await accounts.hash_password(password)
    async with pool.acquire() as conn, conn.transaction():
        row = await _user_for_update(conn, user_id)
        await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, pw_hash)
        revoked = await accounts.revoke_user_sessions(conn, user_id)
        await audit.record(conn, actor, "reset_password", user=user_id,
                           detail={"username": row["username"], "sessions": len(revoked)})
        return user_view(row), revoked


async def set_admin(pool: asyncpg.Pool, actor: int | None, user_id: int, admin: bool
                    ) -> dict[str, Any]:
    """Grant or remove the admin role (the last active admin keeps it)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _user_for_update(conn, user_id)
        if row["is_admin"] and not admin and row["active"]:
            await _keep_an_admin(conn, user_id)
        if row["is_admin"] != admin:
            await conn.execute("UPDATE users SET is_admin = $2 WHERE id = $1", user_id, admin)
            await audit.record(conn, actor, "grant_admin" if admin else "revoke_admin",
                               user=user_id, detail={"username": row["username"]})
        return user_view(await _user_for_update(conn, user_id))


# ------------------------------------------------------------------ rooms


def _room_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "kind": row["kind"],
            "members": row["members"], "last_seq": row["last_seq"],
            "created_at": _iso(row["created_at"])}


_PEOPLES_ROOM: Final = ("r.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM users s"
                        " WHERE s.id = r.created_by AND s.system_role IS NOT NULL)")
"""Live rooms but the system accounts' own (the self-probe's room)."""
_ROOM_COLUMNS: Final = ("r.id, r.name, r.kind, r.last_seq, r.created_at,"
                        " (SELECT count(*) FROM room_members m WHERE m.room_id = r.id)::int"
                        " AS members")


async def list_rooms(pool: asyncpg.Pool, *, query: str | None = None, after: int = 0,
                     limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Live rooms in id order after ``after``; with ``query``, those whose name contains it."""
    return await _page(
        pool, f"SELECT {_ROOM_COLUMNS} FROM rooms r WHERE r.id > $1 AND {_PEOPLES_ROOM}",
        " AND r.name ILIKE $3 ESCAPE '\\'", " ORDER BY r.id LIMIT $2", _room_view,
        query=query, after=after, limit=limit)


async def room_members(pool: asyncpg.Pool, room: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        f"SELECT {_ROOM_COLUMNS} FROM rooms r WHERE r.id = $1 AND {_PEOPLES_ROOM}", room)
    if row is None:
        raise CamError(f"no room with id {room}", errors.NOT_FOUND)
    members = await pool.fetch(
        "SELECT u.id, u.username, u.display_name, u.guest_link IS NOT NULL AS guest"
        " FROM room_members m JOIN users u ON u.id = m.user_id WHERE m.room_id = $1"
        " ORDER BY u.username", room)
    return {"room": _room_view(row),
            "members": [{"id": m["id"], "username": m["username"],
                         "display_name": m["display_name"], "guest": m["guest"]}
                        for m in members]}


# ------------------------------------------------------------------ the audit log


async def audit_page(pool: asyncpg.Pool, *, actor: str | None = None, action: str | None = None,
                     before: int | None = None, limit: int = 50
                     ) -> tuple[list[dict[str, Any]], int | None]:
    """Audit entries, newest first, older than ``before``; filtered by the actor's user
    name and by action. The id to page on, or None at the end."""
    limit = _limit(limit)
    where = ["($1::bigint IS NULL OR a.id < $1)"]
    args: list[Any] = [before, limit + 1]
    if actor:
        args.append(await user_id_by_name(pool, actor))
        where.append(f"a.actor_id = ${len(args)}")
    if action:
        if len(action) > 64:
            raise RequestError("an action is at most 64 characters")
        args.append(action)
        where.append(f"a.action = ${len(args)}")
    rows = await pool.fetch(
        "SELECT a.id, a.at, a.actor_id, actor.username AS actor_name, a.action, a.room_id,"
        " a.user_id, target.username AS user_name, a.seq, a.detail::text AS detail"
        " FROM audit_log a LEFT JOIN users actor ON actor.id = a.actor_id"
        " LEFT JOIN users target ON target.id = a.user_id"
        f" WHERE {' AND '.join(where)} ORDER BY a.id DESC LIMIT $2", *args)
    entries = [{
        "id": r["id"], "at": _iso(r["at"]),
        "actor": ({"id": r["actor_id"], "username": r["actor_name"]}
                  if r["actor_id"] is not None else None),
        "action": r["action"], "room": r["room_id"], "user": r["user_id"],
        "user_name": r["user_name"], "seq": r["seq"], "detail": json.loads(r["detail"]),
    } for r in rows[:limit]]
    return entries, entries[-1]["id"] if len(rows) > limit else None
