"""User accounts and server-side sessions.

Passwords are hashed with Argon2id (argon2-cffi). A session token is 256 random bits
handed to the client once; only its SHA-256 is stored, so a database leak does not
leak usable sessions. Logout revokes the row.

Guests (``camcore.guests``) are user rows too, made by a meeting link: they have no
password and are left out of logins and the directory here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import errors
from .errors import CamError, RequestError

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

_hasher = PasswordHasher()
# Verified against when the user does not exist, so timing does not reveal user names.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    display_name: str
    is_admin: bool
    guest_room: int | None = None
    """For a guest (``users.guest_link`` set): the room of its link, the only one it
    may reach. None for members."""

    @property
    def is_guest(self) -> bool:
        return self.guest_room is not None

    def public(self) -> dict[str, object]:
        """The user object of the protocol. A guest's has ``"guest": true``; a member's
        has no ``guest`` field (so the objects members always had are unchanged)."""
        public: dict[str, object] = {"id": self.id, "username": self.username,
                                     "display_name": self.display_name}
        if self.guest_room is not None:
            public["guest"] = True
        return public


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["username"], row["display_name"], row["is_admin"])


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_digest(token: str) -> bytes:
    """The SHA-256 of a session token, as the sessions table stores it."""
    return _token_hash(token)


def token_hash_hex(token: str) -> str:
    """Public fingerprint of a session token, used to revoke its live connections."""
    return _token_hash(token).hex()


def validate_username(username: str) -> None:
    if not USERNAME_RE.match(username):
        raise RequestError(
            f"user name {username!r} is invalid: expected 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )


def check_password(password: str, *, min_length: int = MIN_PASSWORD) -> None:
    """The password policy: ``min_length`` (cam.userPasswordMinLength) to MAX_PASSWORD
    characters, no NUL."""
    if not min_length <= len(password) <= MAX_PASSWORD:
        raise RequestError(f"password must be {min_length} to {MAX_PASSWORD} characters long")
    if "\x00" in password:
        raise RequestError("a password cannot hold a NUL character")


async def hash_password(password: str) -> str:
    """The Argon2id hash of ``password``, made off the event loop."""
    return await asyncio.to_thread(_hasher.hash, password)


async def create_user(
    conn: asyncpg.Pool | asyncpg.Connection,
    username: str,
    password: str,
    *,
    min_length: int = MIN_PASSWORD,
    display_name: str | None = None,
    is_admin: bool = False,
) -> User:
    validate_username(username)
    check_password(password, min_length=min_length)
    return await insert_user(conn, username, await hash_password(password),
                             display_name=display_name, is_admin=is_admin)


async def insert_user(conn: asyncpg.Pool | asyncpg.Connection, username: str, pw_hash: str, *,
                      display_name: str | None = None, is_admin: bool = False) -> User:
    """A new member with an already hashed password (``conflict`` if the name is taken)."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO users (username, display_name, password_hash, is_admin)"
            " VALUES ($1, $2, $3, $4) RETURNING id, username, display_name, is_admin",
            username,
            display_name or username,
            pw_hash,
            is_admin,
        )
    except asyncpg.UniqueViolationError:
        raise CamError(f"user {username!r} already exists", errors.CONFLICT) from None
    assert row is not None
    return _user(row)


async def list_users(pool: asyncpg.Pool) -> list[User]:
    rows = await pool.fetch("SELECT id, username, display_name, is_admin FROM users"
                            " WHERE system_role IS NULL ORDER BY id")  # not the probe's
    return [_user(r) for r in rows]


def like_contains(text: str) -> str:
    """A LIKE pattern (escape character ``\\``) matching any string that contains ``text``."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def directory(pool: asyncpg.Pool, *, after: int = 0, limit: int = 100,
                    query: str | None = None) -> list[User]:
    """Users in id order, after the given id (keyset paging); with ``query``, only those
    whose user name or display name contains it, case-insensitively. Guests and system
    accounts (the self-probe's) are never listed."""
    if query is None:
        rows = await pool.fetch(
            "SELECT id, username, display_name, is_admin FROM users WHERE id > $1"
            " AND guest_link IS NULL AND system_role IS NULL ORDER BY id LIMIT $2",
            after, limit,
        )
    else:
        rows = await pool.fetch(
            "SELECT id, username, display_name, is_admin FROM users WHERE id > $1"
            " AND guest_link IS NULL AND system_role IS NULL"
            " AND (username ILIKE $3 ESCAPE '\\' OR display_name ILIKE $3 ESCAPE '\\')"
            " ORDER BY id LIMIT $2",
            after, limit, like_contains(query),
        )
    return [_user(r) for r in rows]


async def authenticate(pool: asyncpg.Pool, username: str, password: str) -> User:
    """The user whose password this is; BAD_CREDENTIALS otherwise (same for unknown users).

    A name no account can have, or a password longer than any account's, is refused
    without asking the database (a NUL would make it fail) or hashing a megabyte.
    A guest has no password: its name is answered like an unknown one.
    """
    if not USERNAME_RE.fullmatch(username) or len(password) > MAX_PASSWORD:
        raise CamError("wrong user name or password", errors.BAD_CREDENTIALS)
    row = await pool.fetchrow(
        "SELECT id, username, display_name, is_admin, password_hash,"
        " deactivated_at IS NOT NULL AS deactivated FROM users"
        " WHERE username = $1 AND guest_link IS NULL AND system_role IS NULL",
        username,
    )
    if not await _matches(row["password_hash"] if row else None, password) or row is None:
        raise CamError("wrong user name or password", errors.BAD_CREDENTIALS)
    if row["deactivated"]:
        # Said only to whoever knows the password: it tells them nothing new.
        raise CamError("this account is deactivated: ask an administrator",
                       errors.ACCOUNT_DEACTIVATED)
    return _user(row)


async def _matches(stored: str | None, password: str) -> bool:
    """Argon2id verification off the event loop. With no stored hash (no such user) a
    dummy one is verified, so the answer takes as long and is False."""
    try:
        await asyncio.to_thread(_hasher.verify, stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return stored is not None


async def create_session(pool: asyncpg.Pool, user_id: int, ttl: timedelta) -> str:
    token, _ = await create_session_in(pool, user_id, ttl)
    return token


async def create_session_in(conn: asyncpg.Pool | asyncpg.Connection, user_id: int,
                            ttl: timedelta, *, not_after: datetime | None = None
                            ) -> tuple[str, datetime]:
    """A new session of the user (in the caller's transaction when ``conn`` is one):
    its token and expiry, ``ttl`` from now but never after ``not_after``."""
    token = secrets.token_urlsafe(32)
    expires_at = await conn.fetchval(
        "INSERT INTO sessions (token_hash, user_id, expires_at)"
        " VALUES ($1, $2, least(now() + $3, coalesce($4, 'infinity'::timestamptz)))"
        " RETURNING expires_at",
        _token_hash(token),
        user_id,
        ttl,
        not_after,
    )
    return token, expires_at


async def resolve_session(pool: asyncpg.Pool, token: str) -> User | None:
    """The user of a live session, or None when the token is unknown, expired or revoked.

    A guest's user carries the room of its link (``guest_room``); a guest whose link
    was revoked has no session left, and the check of the link here covers a
    revocation whose session deletion is somehow not seen yet.
    """
    if not token or len(token) > 256:
        return None
    row = await pool.fetchrow(
        "SELECT u.id, u.username, u.display_name, u.is_admin, l.room_id AS guest_room"
        " FROM sessions s JOIN users u ON u.id = s.user_id"
        " LEFT JOIN meeting_links l ON l.id = u.guest_link"
        " WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()"
        " AND u.deactivated_at IS NULL AND (u.guest_link IS NULL OR l.revoked_at IS NULL)",
        _token_hash(token),
    )
    if row is None:
        return None
    return User(row["id"], row["username"], row["display_name"], row["is_admin"],
                guest_room=row["guest_room"])


async def revoke_session(pool: asyncpg.Pool, token: str) -> bool:
    status = await pool.execute(
        "UPDATE sessions SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        _token_hash(token),
    )
    return status.endswith(" 1")


async def live_sessions(pool: asyncpg.Pool, digests: list[bytes]) -> set[bytes]:
    """Those of ``digests`` (token SHA-256s) whose session is neither expired nor revoked."""
    live: set[bytes] = set()
    for i in range(0, len(digests), 10_000):
        rows = await pool.fetch(
            "SELECT token_hash FROM sessions WHERE token_hash = ANY($1::bytea[])"
            " AND revoked_at IS NULL AND expires_at > now()",
            digests[i:i + 10_000],
        )
        live.update(bytes(r["token_hash"]) for r in rows)
    return live


async def revoke_user_sessions(conn: asyncpg.Pool | asyncpg.Connection, user_id: int, *,
                               keep: str | None = None) -> list[str]:
    """Revoke every live session of a user but ``keep`` (a token).

    Returns the revoked sessions' fingerprints (``token_hash_hex``), so their live
    sockets can be closed on every node.
    """
    rows = await conn.fetch(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL"
        " AND expires_at > now() AND token_hash IS DISTINCT FROM $2 RETURNING token_hash",
        user_id, _token_hash(keep) if keep else None,
    )
    return [bytes(r["token_hash"]).hex() for r in rows]


async def set_password(pool: asyncpg.Pool, user_id: int, password: str, *,
                       keep: str | None = None, min_length: int = MIN_PASSWORD) -> list[str]:
    """Give the user a new password and revoke their sessions but ``keep`` (a token).

    Returns the revoked sessions' fingerprints (see ``revoke_user_sessions``). Both
    happen in one transaction, so a session stolen with the old password does not
    outlive the change.
    """
    check_password(password, min_length=min_length)
    pw_hash = await hash_password(password)
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, pw_hash)
        if status != "UPDATE 1":
            raise CamError("no such user", errors.NO_SUCH_USER)
        return await revoke_user_sessions(conn, user_id, keep=keep)


async def verify_password(pool: asyncpg.Pool, user_id: int, password: str) -> bool:
    """Whether ``password`` is the user's (Argon2id verification off the event loop)."""
    if len(password) > MAX_PASSWORD:
        return False
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    return await _matches(stored, password)


async def user_by_name(pool: asyncpg.Pool | asyncpg.Connection, username: str) -> User | None:
    if not USERNAME_RE.fullmatch(username):
        return None
    row = await pool.fetchrow(
        "SELECT id, username, display_name, is_admin FROM users WHERE username = $1", username)
    return _user(row) if row else None
