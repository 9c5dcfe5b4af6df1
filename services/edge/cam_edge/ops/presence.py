"""Presence ops: the user's status, watching other users, the user directory.

Statuses are kept by the presence service (``cam.presence.rpc.<op>``); watches are
served by the edge's ``PresenceWatch`` (one subscription per watched user per edge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from camcore import accounts, bus, errors, subjects, wire
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("presence")


@ops.handles(wire.SetStatusFrame)
async def set_status(conn: Connection, frame: wire.SetStatusFrame) -> dict[str, Any]:
    return await bus.call(
        conn.edge.nc, subjects.presence_rpc("set_status"),
        wire.SetStatus(user_id=conn.uid, status=frame.status))


@ops.handles(wire.WatchFrame)
async def watch(conn: Connection, frame: wire.WatchFrame) -> dict[str, Any]:
    users = list(dict.fromkeys(frame.users))
    cap = conn.edge.settings.watch_per_connection
    if len(conn.watching | set(users)) > cap:
        raise CamError(f"at most {cap} users can be watched by one connection",
                       errors.LIMIT_REACHED)
    states = await conn.edge.watch.watch(conn, users)
    conn.watching.update(users)
    return {"presence": [{"user": u, "status": states.get(u, "offline")} for u in users]}


@ops.handles(wire.UnwatchFrame)
async def unwatch(conn: Connection, frame: wire.UnwatchFrame) -> dict[str, Any]:
    users = [u for u in frame.users if u in conn.watching]
    conn.watching.difference_update(users)
    await conn.edge.watch.unwatch(conn, users)
    return {"unwatched": users}


@ops.handles(wire.DirectoryFrame)
async def directory(conn: Connection, frame: wire.DirectoryFrame) -> dict[str, Any]:
    users = await accounts.directory(conn.edge.pool, after=frame.after, limit=frame.limit + 1,
                                     query=frame.query)
    page = users[: frame.limit]
    return {"users": [u.public() for u in page], "has_more": len(users) > frame.limit}
