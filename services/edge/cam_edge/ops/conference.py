"""Conference ops and events (``cam.video.rpc.<op>``, ``cam.conf.<room>.ev``).

The edge subscribes to the room's conference events before asking the allocator to
join, so the joining connection sees its own ``conf_joined``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from camcore import bus, errors, subjects, wire
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("conference")

NOT_IN_CONFERENCE = "not in this conference"
_VIDEO_TIMEOUT = 10.0


async def _video(op: str, conn: Connection, request: msgspec.Struct) -> Any:
    return await bus.call(conn.edge.nc, subjects.video_rpc(op), request, timeout=_VIDEO_TIMEOUT)


class Conferences:
    """The conferences one connection is in, and the events it relays from them."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.rooms: set[int] = set()

    def __contains__(self, room: object) -> bool:
        return room in self.rooms

    def on_event(self, room: int, event: dict[str, Any]) -> None:
        conn = self._conn
        kind = event.get("type")
        if room not in self.rooms and kind != "participant_joined":
            return
        fields = {k: v for k, v in event.items() if k != "type"}
        if kind == "signal":
            if event.get("to") == conn.uid and event.get("from_session") != conn.session_id:
                conn.send_json({"op": "conf_signal", "room": room, "from": event.get("from"),
                                "from_session": event.get("from_session"),
                                "data": event.get("data")})
        elif kind == "participant_joined":
            conn.send_json({"op": "conf_joined", **fields})
        elif kind == "participant_left":
            conn.send_json({"op": "conf_left", **fields})
        elif kind == "room_moved":
            conn.send_json({"op": "conf_moved", **fields})

    async def leave_all(self) -> None:
        """The connection is gone: leave every conference it is in."""
        conn = self._conn
        for room in list(self.rooms):
            try:
                await _video("leave", conn, wire.ConfLeave(
                    room=room, user_id=conn.uid, session=conn.session_id))
            except CamError:
                pass  # the allocator drops the participant once the session is gone
            self.rooms.discard(room)
            await conn.edge.hub.leave_conference(room, conn)


@ops.handles(wire.ConfJoinFrame)
async def conf_join(conn: Connection, frame: wire.ConfJoinFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    confs = conn.confs
    await conn.edge.hub.join_conference(frame.room, conn)  # before: see our own join
    try:
        result: dict[str, Any] = await _video("join", conn, wire.ConfJoin(
            room=frame.room, user_id=conn.uid, session=conn.session_id,
            node=conn.edge.settings.node_name))
    except BaseException:
        if frame.room not in confs:
            await conn.edge.hub.leave_conference(frame.room, conn)
        raise
    confs.rooms.add(frame.room)
    return result


@ops.handles(wire.ConfLeaveFrame)
async def conf_leave(conn: Connection, frame: wire.ConfLeaveFrame) -> dict[str, Any]:
    if frame.room not in conn.confs:
        raise CamError(NOT_IN_CONFERENCE, errors.NOT_IN_CONFERENCE)
    result: dict[str, Any] | None
    try:
        result = await _video("leave", conn, wire.ConfLeave(
            room=frame.room, user_id=conn.uid, session=conn.session_id))
    except CamError as exc:
        if exc.code != errors.NOT_IN_CONFERENCE:
            raise  # e.g. unavailable: still in it, the client may retry
        result = None
    conn.confs.rooms.discard(frame.room)
    await conn.edge.hub.leave_conference(frame.room, conn)
    if result is None:
        raise CamError(NOT_IN_CONFERENCE, errors.NOT_IN_CONFERENCE)
    return result


@ops.handles(wire.ConfParticipantsFrame)
async def conf_participants(conn: Connection, frame: wire.ConfParticipantsFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await _video("participants", conn, wire.ConfParticipants(room=frame.room))


@ops.handles(wire.ConfExplainFrame)
async def conf_explain(conn: Connection, frame: wire.ConfExplainFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await _video("explain", conn, wire.ConfExplain(room=frame.room))


@ops.handles(wire.ConfSignalFrame)
async def conf_signal(conn: Connection, frame: wire.ConfSignalFrame) -> dict[str, Any]:
    if frame.room not in conn.confs:
        raise CamError("join the conference first", errors.NOT_IN_CONFERENCE)
    event = {"room": frame.room, "type": "signal", "from": conn.uid,
             "from_session": conn.session_id, "to": frame.to, "data": frame.data}
    await conn.edge.nc.publish(subjects.conf_events(frame.room), wire.encode(event))
    return {"room": frame.room, "to": frame.to}
