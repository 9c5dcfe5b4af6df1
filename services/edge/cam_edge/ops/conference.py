"""Conference ops and events (``cam.video.rpc.<op>``, ``cam.conf.<room>.ev``).

Each participant is announced to a connection once: in its ``conf_join`` result, or
by one ``conf_joined``. The edge subscribes to the room's conference events before
asking the allocator to join (so nothing after the join is missed), holds the events
that arrive while the join is in flight, and relays them after the result, checked
against the participants the result listed: a join the result already shows is not
announced again, and neither is the joining connection's own.

The ``conf_join`` result and every ``conf_moved`` also carry ``ice_servers``: the STUN
and TURN servers of the configuration, in the browser's RTCIceServer form, with TURN
credentials made here for this user (:func:`turn_credential`). The edge makes them
because it knows the user, and so the TURN secret never travels on the bus.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

import msgspec

from camcore import bus, errors, subjects, wire
from camcore.config import Settings
from camcore.errors import CamError

from .registry import OpGroup

if TYPE_CHECKING:
    from ..connection import Connection

ops = OpGroup("conference")

NOT_IN_CONFERENCE = "not in this conference"
_VIDEO_TIMEOUT = 10.0


def turn_credential(secret: str, user: object, ttl: int, now: float) -> tuple[str, str]:
    """A time-limited TURN credential, as coturn checks it with ``use-auth-secret`` (the
    "REST API for TURN" draft): the username is ``<expiry unix time>:<user>``, the
    password base64(HMAC-SHA1(secret, username)). Valid until the expiry, ``ttl``
    seconds from ``now``."""
    username = f"{int(now) + ttl}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(settings: Settings, user: object, now: float | None = None) -> list[dict[str, Any]]:
    """``cam.stunServers`` and ``cam.turnServers`` as RTCIceServer dicts for ``user``
    (empty when neither is set). The secret itself is never in them."""
    servers: list[dict[str, Any]] = []
    if settings.stun_servers:
        servers.append({"urls": list(settings.stun_servers)})
    if settings.turn_servers:
        username, credential = turn_credential(settings.turn_secret, user,
                                               settings.turn_credential_ttl,
                                               time.time() if now is None else now)
        servers.append({"urls": list(settings.turn_servers), "username": username,
                        "credential": credential})
    return servers


async def _video(op: str, conn: Connection, request: msgspec.Struct) -> Any:
    return await bus.call(conn.edge.nc, subjects.video_rpc(op), request, timeout=_VIDEO_TIMEOUT)


class Conferences:
    """The conferences one connection is in, and what its client was told about them."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.rooms: set[int] = set()
        self._held: dict[int, list[dict[str, Any]]] = {}  # joins in flight
        self._present: dict[int, set[Any]] = {}  # sessions the client knows are in it
        self._conference: dict[int, Any] = {}  # the conference object the client has

    def __contains__(self, room: object) -> bool:
        return room in self.rooms

    def hold(self, room: int) -> None:
        """Keep the room's events until ``replay`` (a join is in flight)."""
        self._held.setdefault(room, [])

    def joined(self, room: int, result: dict[str, Any]) -> None:
        self.rooms.add(room)
        self._present[room] = {p.get("session") for p in result.get("participants", [])}
        self._conference[room] = result.get("conference")

    def replay(self, room: int) -> None:
        """Relay the held events of ``room`` (after the join result, or a failed join)."""
        for event in self._held.pop(room, []):
            if room in self.rooms:
                self._relay(room, event)

    def forget(self, room: int) -> None:
        self.rooms.discard(room)
        self._present.pop(room, None)
        self._conference.pop(room, None)

    def on_event(self, room: int, event: dict[str, Any]) -> None:
        held = self._held.get(room)
        if held is not None:
            held.append(event)
        elif room in self.rooms:
            self._relay(room, event)

    def _relay(self, room: int, event: dict[str, Any]) -> None:
        conn = self._conn
        kind = event.get("type")
        fields = {k: v for k, v in event.items() if k != "type"}
        if kind == "signal":
            if event.get("to") == conn.uid and event.get("from_session") != conn.session_id:
                conn.send_json({"op": "conf_signal", "room": room, "from": event.get("from"),
                                "from_session": event.get("from_session"),
                                "data": event.get("data")})
        elif kind == "participant_joined":
            present = self._present.setdefault(room, set())
            if event.get("session") in present:
                return  # in the join result already (our own join, or one just before)
            present.add(event.get("session"))
            conn.send_json({"op": "conf_joined", **fields})
        elif kind == "participant_left":
            present = self._present.setdefault(room, set())
            if event.get("session") not in present:
                return  # left before our join result: the client never saw it
            present.discard(event.get("session"))
            conn.send_json({"op": "conf_left", **fields})
        elif kind == "room_moved":
            if event.get("conference") == self._conference.get(room):
                return  # moved before our join: the result has the new conference
            self._conference[room] = event.get("conference")
            conn.send_json({"op": "conf_moved", **fields,
                            "ice_servers": ice_servers(conn.edge.settings, conn.uid)})

    async def leave_all(self) -> None:
        """The connection is gone: leave every conference it is in."""
        conn = self._conn
        for room in list(self.rooms):
            try:
                await _video("leave", conn, wire.ConfLeave(
                    room=room, user_id=conn.uid, session=conn.session_id))
            except CamError:
                pass  # the allocator drops the participant once the session is gone
            self.forget(room)
            await conn.edge.hub.leave_conference(room, conn)


@ops.handles(wire.ConfJoinFrame, guest=True)
async def conf_join(conn: Connection, frame: wire.ConfJoinFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    confs = conn.confs
    confs.hold(frame.room)
    await conn.edge.hub.join_conference(frame.room, conn)  # before: miss nothing after the join
    try:
        result: dict[str, Any] = await _video("join", conn, wire.ConfJoin(
            room=frame.room, user_id=conn.uid, session=conn.session_id,
            node=conn.edge.settings.node_name))
    except BaseException:
        confs.replay(frame.room)  # still in it if it was before (a repeated join)
        if frame.room not in confs:
            await conn.edge.hub.leave_conference(frame.room, conn)
        raise
    confs.joined(frame.room, result)
    conn.after_reply(lambda: confs.replay(frame.room))
    return {**result, "ice_servers": ice_servers(conn.edge.settings, conn.uid)}


@ops.handles(wire.ConfLeaveFrame, guest=True)
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
    conn.confs.forget(frame.room)
    await conn.edge.hub.leave_conference(frame.room, conn)
    if result is None:
        raise CamError(NOT_IN_CONFERENCE, errors.NOT_IN_CONFERENCE)
    return result


@ops.handles(wire.ConfParticipantsFrame, guest=True)
async def conf_participants(conn: Connection, frame: wire.ConfParticipantsFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await _video("participants", conn, wire.ConfParticipants(room=frame.room))


@ops.handles(wire.ConfExplainFrame)
async def conf_explain(conn: Connection, frame: wire.ConfExplainFrame) -> dict[str, Any]:
    conn.require_member(frame.room)
    return await _video("explain", conn, wire.ConfExplain(room=frame.room))


@ops.handles(wire.ConfSignalFrame, guest=True)
async def conf_signal(conn: Connection, frame: wire.ConfSignalFrame) -> dict[str, Any]:
    if frame.room not in conn.confs:
        raise CamError("join the conference first", errors.NOT_IN_CONFERENCE)
    event = {"room": frame.room, "type": "signal", "from": conn.uid,
             "from_session": conn.session_id, "to": frame.to, "data": frame.data}
    await conn.edge.nc.publish(subjects.conf_signal(frame.room), wire.encode(event))
    return {"room": frame.room, "to": frame.to}
