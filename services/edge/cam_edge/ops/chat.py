"""Chat ops: rooms, messages, typing, leaving and blocking, and meeting links
(``cam.chat.rpc.<op>``, ``cam.room.<id>.*``).

The chat service checks membership and stores; the edge starts delivering a room to
the connection as soon as it knows the user is a member (``Connection.track``), and
stops when it learns the user is not any more (``Connection.forget_room``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from camcore import errors, protocol, subjects, wire
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("chat")


@ops.handles(wire.ListRoomsFrame)
async def rooms(conn: Connection, frame: wire.ListRoomsFrame) -> dict[str, Any]:
    return await conn.edge.chat(
        "list_rooms", wire.ListRooms(user_id=conn.uid, after=frame.after, limit=frame.limit))


@ops.handles(wire.CreateRoomFrame)
async def create_room(conn: Connection, frame: wire.CreateRoomFrame) -> dict[str, Any]:
    room: dict[str, Any] = await conn.edge.chat(
        "create_room", wire.CreateRoom(user_id=conn.uid, name=frame.name, members=frame.members))
    await conn.track(room["id"], room["last_seq"])
    return room


@ops.handles(wire.OpenDirectFrame)
async def open_direct(conn: Connection, frame: wire.OpenDirectFrame) -> dict[str, Any]:
    room: dict[str, Any] = await conn.edge.chat(
        "open_direct", wire.OpenDirect(user_id=conn.uid, peer=frame.user))
    if room["id"] not in conn.cursors:
        await conn.track(room["id"], room["last_seq"])
    return room


@ops.handles(wire.InviteFrame)
async def invite(conn: Connection, frame: wire.InviteFrame) -> dict[str, Any]:
    return await conn.edge.chat(
        "invite", wire.Invite(user_id=conn.uid, room=frame.room, users=frame.users))


@ops.handles(wire.SendFrame)
async def send(conn: Connection, frame: wire.SendFrame) -> dict[str, Any]:
    limit = conn.edge.settings.max_message_chars
    if len(frame.body) > limit:
        raise CamError(f"message is {len(frame.body)} characters; the limit is {limit}",
                       errors.MESSAGE_TOO_LARGE)
    return await conn.edge.chat(
        "send", wire.SendMessage(user_id=conn.uid, room=frame.room, cid=frame.cid,
                                 body=frame.body))


@ops.handles(wire.HistoryFrame)
async def history(conn: Connection, frame: wire.HistoryFrame) -> dict[str, Any]:
    return await conn.edge.chat(
        "history", wire.History(user_id=conn.uid, room=frame.room, before=frame.before,
                                after=frame.after, limit=frame.limit))


@ops.handles(wire.MembersFrame)
async def members(conn: Connection, frame: wire.MembersFrame) -> dict[str, Any]:
    return await conn.edge.chat(
        "members", wire.Members(user_id=conn.uid, room=frame.room))


@ops.handles(wire.SubscribeFrame)
async def subscribe(conn: Connection, frame: wire.SubscribeFrame) -> dict[str, Any]:
    """(Re)subscribe to a room, optionally replaying what came after ``since``."""
    room = await conn.edge.chat("room_info", wire.RoomInfo(user_id=conn.uid, room=frame.room))
    last = room["last_seq"]
    since = last if frame.since is None else min(frame.since, last)
    resync = last - since > protocol.RESUME_MAX_MESSAGES
    if resync:
        since = last
    cursor = conn.cursors.get(frame.room)
    if cursor is None:
        await conn.track(frame.room, since)
    else:
        cursor.restart(since, last)
        conn.start_repair(frame.room)
    return {"room": frame.room, "last_seq": last, "since": since, "resync": resync}


@ops.handles(wire.MarkReadFrame)
async def mark_read(conn: Connection, frame: wire.MarkReadFrame) -> dict[str, Any]:
    """Move the user's read marker; chat tells every connection of the user (``read``)."""
    return await conn.edge.chat(
        "mark_read", wire.MarkRead(user_id=conn.uid, room=frame.room, seq=frame.seq))


@ops.handles(wire.TypingFrame)
async def typing(conn: Connection, frame: wire.TypingFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    now = time.monotonic()
    if now - conn.typing_sent.get(frame.room, -1e9) >= protocol.TYPING_MIN_INTERVAL:
        # More often than this adds nothing a person can see: drop it quietly.
        conn.typing_sent[frame.room] = now
        event = {"room": frame.room, "user": conn.uid,
                 "user_name": conn.user.username if conn.user else ""}
        await conn.edge.nc.publish(subjects.room_typing(frame.room), wire.encode(event))
    return {"room": frame.room}


@ops.handles(wire.LeaveFrame)
async def leave(conn: Connection, frame: wire.LeaveFrame) -> dict[str, Any]:
    result: dict[str, Any] = await conn.edge.chat(
        "leave", wire.Leave(user_id=conn.uid, room=frame.room))
    # The user's other connections learn it from room_removed; this one at once.
    conn.after_reply(lambda: _forget(conn, frame.room))
    return result


def _forget(conn: Connection, room: int) -> None:
    conn.forget_room(room)


@ops.handles(wire.BlockFrame)
async def block(conn: Connection, frame: wire.BlockFrame) -> dict[str, Any]:
    return await conn.edge.chat("block", wire.Block(user_id=conn.uid, user=frame.user))


@ops.handles(wire.UnblockFrame)
async def unblock(conn: Connection, frame: wire.UnblockFrame) -> dict[str, Any]:
    return await conn.edge.chat("unblock", wire.Unblock(user_id=conn.uid, user=frame.user))


@ops.handles(wire.BlocksFrame)
async def blocks(conn: Connection, frame: wire.BlocksFrame) -> dict[str, Any]:
    return await conn.edge.chat("blocks", wire.Blocks(user_id=conn.uid))


# ---------------------------------------------------------------- meeting links
# Served by chat (membership, the room's creator, the admin flag and the audit log are
# there); the edge only closes the sockets of the guests a revocation put out.


@ops.handles(wire.ConfLinkCreateFrame)
async def conf_link_create(conn: Connection, frame: wire.ConfLinkCreateFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await conn.edge.chat("conf_link_create", wire.ConfLinkCreate(
        user_id=conn.uid, room=frame.room, ttl=frame.ttl, max_guests=frame.max_guests))


@ops.handles(wire.ConfLinksFrame)
async def conf_links(conn: Connection, frame: wire.ConfLinksFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await conn.edge.chat("conf_links", wire.ConfLinks(user_id=conn.uid, room=frame.room))


@ops.handles(wire.ConfLinkRevokeFrame)
async def conf_link_revoke(conn: Connection, frame: wire.ConfLinkRevokeFrame) -> dict[str, Any]:
    """No membership check here: an admin may revoke a link of any room (chat decides)."""
    result: dict[str, Any] = await conn.edge.chat("conf_link_revoke", wire.ConfLinkRevoke(
        user_id=conn.uid, room=frame.room, link=frame.link))
    return await conn.edge.close_guests(result)
