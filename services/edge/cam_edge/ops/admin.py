"""Admin ops: remove a member, delete a room or a message (``cam.chat.rpc.admin_*``),
and log a user out everywhere.

The edge only forwards the moderation ops: the chat service reads the caller's
``users.is_admin`` itself and refuses anyone else with ``forbidden``, so a forged or
stale flag on the edge grants nothing. Members' edges stop delivering a room through
``room_removed`` events, as for ``leave``. ``admin_revoke_sessions`` is the edge's own
(sessions are the edge's business): it reads the flag from the store the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from camcore import accounts, audit, errors, wire
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("admin")


@ops.handles(wire.AdminRemoveMemberFrame)
async def admin_remove_member(conn: Connection, frame: wire.AdminRemoveMemberFrame
                              ) -> dict[str, Any]:
    return await conn.edge.chat("admin_remove_member", wire.AdminRemoveMember(
        user_id=conn.uid, room=frame.room, user=frame.user))


@ops.handles(wire.AdminDeleteRoomFrame)
async def admin_delete_room(conn: Connection, frame: wire.AdminDeleteRoomFrame
                            ) -> dict[str, Any]:
    result: dict[str, Any] = await conn.edge.chat("admin_delete_room", wire.AdminDeleteRoom(
        user_id=conn.uid, room=frame.room))
    return await conn.edge.close_guests(result)  # the room's meeting links die with it


@ops.handles(wire.AdminDeleteMessageFrame)
async def admin_delete_message(conn: Connection, frame: wire.AdminDeleteMessageFrame
                               ) -> dict[str, Any]:
    return await conn.edge.chat("admin_delete_message", wire.AdminDeleteMessage(
        user_id=conn.uid, room=frame.room, seq=frame.seq))


@ops.handles(wire.AdminRevokeSessionsFrame)
async def admin_revoke_sessions(conn: Connection, frame: wire.AdminRevokeSessionsFrame
                                ) -> dict[str, Any]:
    async with conn.edge.pool.acquire() as db, db.transaction():
        await audit.require_admin(db, conn.uid)
        target = await accounts.user_by_name(db, frame.user)
        if target is None:
            raise CamError(f"no such user: {frame.user}", errors.NO_SUCH_USER)
        revoked = await accounts.revoke_user_sessions(db, target.id)
        await audit.record(db, conn.uid, "revoke_sessions", user=target.id,
                           detail={"sessions": len(revoked)})
    # After the commit; the edges' session check closes them if this is lost.
    await conn.edge.revoked(target.id, revoked)
    return {"user": target.username, "revoked_sessions": len(revoked)}
