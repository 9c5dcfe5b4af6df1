"""Session ops: ``ping`` and ``auth``, the only ops a connection may use before ``auth``.

``auth`` resolves the session token (the accounts tables), subscribes to the user's
events (``cam.user.<id>``) and starts delivering every room of the user, from the
resume point the client gave or from the room's head.

A guest's session (``camcore.guests``) gets no rooms: its connection only hears of its
session's revocation, and may only use the ops marked ``guest`` for its link's room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from camcore import PROTOCOL_VERSION, accounts, errors, guests, protocol, wire
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("session")


@ops.handles(wire.Ping, anonymous=True, guest=True)
async def ping(conn: Connection, frame: wire.Ping) -> dict[str, Any]:
    return {"pong": True}


@ops.handles(wire.Auth, anonymous=True, guest=True)
async def auth(conn: Connection, frame: wire.Auth) -> dict[str, Any]:
    if frame.v != PROTOCOL_VERSION:
        raise CamError(f"protocol version {frame.v} is not supported; this server speaks "
                       f"{PROTOCOL_VERSION}", errors.UNSUPPORTED_VERSION)
    if conn.user is not None:
        raise CamError("already authenticated", errors.ALREADY_AUTHENTICATED)
    token = frame.token or conn.cookie_token
    if not token:
        raise CamError("no session token (log in first)", errors.UNAUTHENTICATED)
    user = await accounts.resolve_session(conn.edge.pool, token)
    if user is None:
        raise CamError("session is invalid, expired or revoked", errors.UNAUTHENTICATED)
    if not conn.edge.counts.open_user(user.id):
        conn.after_reply(lambda: conn.close(protocol.CLOSE_TOO_MANY_CONNECTIONS,
                                            "too many connections of this user"))
        raise CamError(f"{user.username} has {conn.edge.counts.per_user} connections open on "
                       "this node already", errors.LIMIT_REACHED)
    # Subscribe to the user's events before listing rooms, so no room added in
    # between is missed; until the listing succeeds the connection stays anonymous.
    try:
        await conn.edge.hub.add_user(user.id, conn)
    except BaseException:
        conn.edge.counts.close_user(user.id)
        raise
    if user.is_guest:
        return await _guest(conn, user, token)
    try:
        # Every page, though the reply carries only the first: all rooms are delivered.
        first = await conn.edge.chat("list_rooms", wire.ListRooms(user_id=user.id))
        rooms, page = list(first["rooms"]), first
        while page["next"] is not None:
            page = await conn.edge.chat(
                "list_rooms", wire.ListRooms(user_id=user.id, after=page["next"]))
            rooms += page["rooms"]
    except BaseException:
        conn.edge.counts.close_user(user.id)
        await conn.edge.hub.remove_user(user.id, conn)
        raise
    conn.authenticated(user, token)
    resume = frame.resume or {}
    resync = []
    for room in rooms:
        head = room["last_seq"]
        since = min(resume.get(str(room["id"]), head), head)
        if head - since > protocol.RESUME_MAX_MESSAGES:
            resync.append(room["id"])
            since = head
        await conn.track(room["id"], since, recheck=False)
    await conn.recheck(list(conn.cursors))
    return {"user": user.public(), "rooms": first["rooms"], "next": first["next"],
            "node": conn.edge.settings.node_name, "resync": resync}


async def _guest(conn: Connection, user: accounts.User, token: str) -> dict[str, Any]:
    """The rest of ``auth`` for a guest: no rooms, and its link's scope."""
    try:
        scope = await guests.scope(conn.edge.pool, token)
        if scope is None:  # revoked or expired since resolve_session
            raise CamError("session is invalid, expired or revoked", errors.UNAUTHENTICATED)
    except BaseException:
        conn.edge.counts.close_user(user.id)
        await conn.edge.hub.remove_user(user.id, conn)
        raise
    conn.authenticated(user, token)
    return {"user": user.public(), "rooms": [], "next": None,
            "node": conn.edge.settings.node_name, "resync": [], "guest": scope}
