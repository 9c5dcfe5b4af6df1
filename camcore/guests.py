"""Meeting links and the guests they let in (docs/protocol.md, "Meeting links").

A room member makes a link (``conf_link_create``, in the chat service); whoever has it
opens ``<page origin>/#meet/<token>``, gives a name, and the edge's ``POST /api/guest``
redeems the token here: a guest user and a session scoped to the link's room. The
token is 32 random bytes handed out once; the store keeps only its SHA-256, so a
database leak does not leak usable links (as for sessions, ``camcore.accounts``).

A guest user has no password (so no login), is never listed, invited or made a room
member, and its session ends when the link expires, or at once when it is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from . import errors
from .accounts import User, create_session_in, token_digest
from .errors import CamError, RequestError

TOKEN_BYTES: Final = 32
"""A link token: 32 random bytes, base64url without padding (43 characters)."""
MAX_TOKEN_CHARS: Final = 256
"""A longer "token" is not one of ours: refused without asking the store."""
NAME_MAX_CHARS: Final = 64
NAME_MAX_BYTES: Final = 256
PURGE_AFTER: Final = timedelta(days=1)
"""A link expired or revoked this long ago is deleted, with its guest users."""
INVALID_LINK: Final = "this meeting link is invalid, expired or revoked"
"""One answer for an unknown, expired or revoked link, or a deleted room: no oracle."""

# Characters a display name may not hold: controls (C0, DEL, C1), lone surrogates,
# and line or paragraph separators (a name is one line of a video tile's caption).
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Combining marks belong to the character before them: "é" written e + U+0301 is one
# character. Marks stacked without end (Zalgo text) hit the byte bound instead.
_MARKS: Final = frozenset({"Mn", "Mc", "Me"})


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    """The SHA-256 of a link token, as ``meeting_links.token_hash`` stores it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def name_length(name: str) -> int:
    """Characters as a person counts them: code points other than combining marks."""
    return sum(1 for c in name if unicodedata.category(c) not in _MARKS)


def check_name(name: str) -> str:
    """The guest's display name, stripped; ``bad_request`` unless 1-64 characters
    (``name_length``), at most 256 bytes of UTF-8 and free of control characters."""
    name = name.strip()
    bad = next((c for c in name if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise RequestError(f"the name may not hold control characters (U+{ord(bad):04X})")
    chars = name_length(name)
    if chars == 0:
        raise RequestError("give a name (1 to 64 characters)")
    if chars > NAME_MAX_CHARS:
        raise RequestError(f"the name is {chars} characters; at most {NAME_MAX_CHARS}")
    size = len(name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        raise RequestError(f"the name is {size} bytes of UTF-8; at most {NAME_MAX_BYTES}")
    return name


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as the protocol's ``expires_at`` fields."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def link_object(row: asyncpg.Record, token: str | None = None) -> dict[str, Any]:
    """A ``meeting_links`` row as the protocol shows it; ``token`` only on creation."""
    link: dict[str, Any] = {"id": row["id"], "room": row["room_id"]}
    if token is not None:
        link["token"] = token
    link.update({"expires_at": iso(row["expires_at"]), "max_guests": row["max_guests"],
                 "guests": row["guests"], "created_by": row["created_by"],
                 "created_at": iso(row["created_at"])})
    return link


@dataclass(frozen=True, slots=True)
class Guest:
    """A redeemed link: the guest user, its session token and where it may go."""

    user: User
    token: str
    room: int
    room_name: str
    expires_at: datetime

    def public(self) -> dict[str, Any]:
        """The ``POST /api/guest`` answer."""
        return {"token": self.token, "user": self.user.public(),
                "room": {"id": self.room, "name": self.room_name},
                "expires_at": iso(self.expires_at)}


async def redeem(pool: asyncpg.Pool, token: str, name: str, session_ttl: timedelta) -> Guest:
    """Let one guest in through the link of ``token``, in one transaction.

    The link's row lock orders redemptions of one link (and its revocation), so
    ``guests`` never passes ``max_guests`` and no guest is made after a revocation
    commits. The session ends at the link's expiry, or after ``session_ttl`` if sooner.
    ``not_found`` (one message for every reason) or ``limit_reached``.
    """
    name = check_name(name)
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise CamError(INVALID_LINK, errors.NOT_FOUND)
    async with pool.acquire() as conn, conn.transaction():
        link = await conn.fetchrow(
            "SELECT l.id, l.room_id, l.expires_at, l.max_guests, l.guests, r.name"
            " FROM meeting_links l JOIN rooms r ON r.id = l.room_id"
            " WHERE l.token_hash = $1 AND l.revoked_at IS NULL AND l.expires_at > now()"
            " AND r.deleted_at IS NULL FOR UPDATE OF l",
            digest(token))
        if link is None:
            raise CamError(INVALID_LINK, errors.NOT_FOUND)
        if link["guests"] >= link["max_guests"]:
            raise CamError(f"this meeting link has let in {link['guests']} guests, the most "
                           "it may; ask for a new link", errors.LIMIT_REACHED)
        await conn.execute("UPDATE meeting_links SET guests = guests + 1 WHERE id = $1",
                           link["id"])
        row = await conn.fetchrow(
            "INSERT INTO users (username, display_name, password_hash, guest_link)"
            " VALUES ($1, $2, NULL, $3) RETURNING id, username, display_name",
            f"guest-{secrets.token_hex(8)}", name, link["id"])
        assert row is not None
        session, expires_at = await create_session_in(
            conn, row["id"], session_ttl, not_after=link["expires_at"])
    user = User(row["id"], row["username"], row["display_name"], False,
                guest_room=link["room_id"])
    return Guest(user, session, link["room_id"], link["name"], expires_at)


async def scope(pool: asyncpg.Pool, token: str) -> dict[str, Any] | None:
    """What a guest session may reach, as the ``auth`` result's ``guest`` object:
    ``{"room", "room_name", "expires_at"}``; None if the session is no guest's (or
    no longer live)."""
    row = await pool.fetchrow(
        "SELECT l.room_id, r.name, s.expires_at FROM sessions s"
        " JOIN users u ON u.id = s.user_id JOIN meeting_links l ON l.id = u.guest_link"
        " JOIN rooms r ON r.id = l.room_id"
        " WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()",
        token_digest(token))
    if row is None:
        return None
    return {"room": row["room_id"], "room_name": row["name"], "expires_at": iso(row["expires_at"])}


async def end_sessions(conn: asyncpg.Connection, links: list[int]) -> list[tuple[int, str]]:
    """Delete every session of the guests of ``links``; (user id, fingerprint) of each,
    so their live sockets can be closed on every node (``Edge.revoked``)."""
    rows = await conn.fetch(
        "DELETE FROM sessions s USING users u WHERE u.id = s.user_id"
        " AND u.guest_link = ANY($1::bigint[]) RETURNING s.user_id, s.token_hash",
        links)
    return [(r["user_id"], bytes(r["token_hash"]).hex()) for r in rows]


async def purge(pool: asyncpg.Pool) -> int:
    """Delete the links dead for over ``PURGE_AFTER`` (and so, by ON DELETE CASCADE,
    their guest users with their sessions and status rows); how many went. The audit
    log keeps their ids (plain columns, not foreign keys)."""
    status = await pool.execute(
        "DELETE FROM meeting_links WHERE least(expires_at, coalesce(revoked_at, expires_at))"
        " < now() - $1::interval", PURGE_AFTER)
    return int(status.split()[-1])
