"""Interest-based bus subscriptions of one edge.

The edge subscribes to a room's subject only while it holds a connection of a member
of that room, and to a user's subject only while that user is connected here. Each
bus message is decoded and re-encoded for clients once, as one WebSocket frame
(``wsproto.Frame``), then offered to every local connection that wants it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from camcore import requestid, subjects, wire

from .wsproto import Frame

log = logging.getLogger(__name__)

_message_decoder = msgspec.json.Decoder(wire.Message)


EVERYONE: Final = frozenset({"*"})
"""``leaving`` of a room's last message: the room was deleted (no user is named ``*``)."""


def leaving(msg: wire.Message) -> frozenset[str] | None:
    """The user names a system message takes out of its room (EVERYONE when the room is
    deleted), or None when it takes nobody out."""
    if msg.kind != "system":
        return None
    try:
        body = wire.decode(msg.body)
    except msgspec.MsgspecError:
        return None
    if not isinstance(body, dict):
        return None
    if body.get("event") == "room_deleted":
        return EVERYONE
    users = body.get("users")
    if body.get("event") in ("member_left", "member_removed") and isinstance(users, list):
        return frozenset(u for u in users if isinstance(u, str))
    return None


class Listener(Protocol):
    def offer(self, room: int, seq: int, frame: Frame,
              leaving: frozenset[str] | None = None) -> None: ...

    def behind(self, room: int, head: int) -> None: ...

    def on_typing(self, room: int, user: int, frame: Frame) -> None: ...

    def on_conf_event(self, room: int, event: dict[str, object]) -> None: ...

    def on_user_event(self, event: dict[str, object]) -> None: ...


def message_frame(msg: wire.Message) -> Frame:
    """The client frame of a stored message (docs/protocol.md, ``message``), with the
    message's commit time: its delivery is counted and timed (``cam_edge.metrics``)."""
    frame = {"op": "message", "room": msg.room, "seq": msg.seq, "cid": msg.cid,
             "sender": msg.sender, "sender_name": msg.sender_name, "kind": msg.kind,
             "body": msg.body, "ts": msg.ts}
    if msg.file is not None:
        frame["file"] = msg.file
    return Frame(wire.encode(frame), msg.ts)


class _Interest:
    """Local listeners of one subject, and the bus subscription that feeds them."""

    __slots__ = ("listeners", "sub")

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()
        self.sub: Subscription | None = None


class Hub:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._rooms: dict[int, _Interest] = {}
        self._users: dict[int, _Interest] = {}
        self._confs: dict[int, _Interest] = {}
        self._lock = asyncio.Lock()
        self.delivered = 0

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def subscribed_rooms(self) -> set[int]:
        return set(self._rooms)

    def room_listeners(self, room: int) -> list[Listener]:
        interest = self._rooms.get(room)
        return list(interest.listeners) if interest else []

    async def _add(
        self, table: dict[int, _Interest], key: int, listener: Listener, subject: str,
        cb: Callable[[Msg], object],
    ) -> None:
        async with self._lock:
            interest = table.get(key)
            if interest is None:
                interest = table[key] = _Interest()
                # nats runs cb in a task made here: not under the id of this request.
                with requestid.bound(None):
                    interest.sub = await self._nc.subscribe(subject, cb=cb)  # type: ignore[arg-type]
            interest.listeners.add(listener)

    async def _remove(self, table: dict[int, _Interest], key: int, listener: Listener) -> None:
        async with self._lock:
            interest = table.get(key)
            if interest is None:
                return
            interest.listeners.discard(listener)
            if not interest.listeners:
                del table[key]
                if interest.sub is not None:
                    try:
                        await interest.sub.unsubscribe()
                    except Exception as exc:  # noqa: BLE001 - a closed connection has no subs
                        log.debug("unsubscribe failed: %s", exc)

    async def join_room(self, room: int, listener: Listener) -> None:
        await self._add(self._rooms, room, listener, subjects.room_all(room), self._on_room)

    async def leave_room(self, room: int, listener: Listener) -> None:
        await self._remove(self._rooms, room, listener)

    async def join_conference(self, room: int, listener: Listener) -> None:
        await self._add(self._confs, room, listener, subjects.conf_all(room), self._on_conf)

    async def leave_conference(self, room: int, listener: Listener) -> None:
        await self._remove(self._confs, room, listener)

    async def _on_conf(self, msg: Msg) -> None:
        try:
            event = wire.decode(msg.data)
            room = int(msg.subject.split(".")[2])
        except (msgspec.MsgspecError, ValueError, IndexError):
            return
        if not isinstance(event, dict) or not _from_its_publisher(msg.subject, event):
            return
        event["room"] = room  # the subject's room: the only one its publisher may send to
        interest = self._confs.get(room)
        if interest is None:
            return
        for listener in list(interest.listeners):
            listener.on_conf_event(room, event)

    async def add_user(self, user: int, listener: Listener) -> None:
        await self._add(self._users, user, listener, subjects.user_all(user), self._on_user)

    async def remove_user(self, user: int, listener: Listener) -> None:
        await self._remove(self._users, user, listener)

    async def _on_room(self, msg: Msg) -> None:
        if msg.subject.endswith(".typing"):
            self._on_typing(msg)
            return
        try:
            event = _message_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            log.warning("dropping undecodable event on %s", msg.subject)
            return
        interest = self._rooms.get(event.room)
        if interest is None:
            return
        frame = message_frame(event)
        gone = leaving(event)
        for listener in list(interest.listeners):
            listener.offer(event.room, event.seq, frame, gone)
        self.delivered += len(interest.listeners)

    def _on_typing(self, msg: Msg) -> None:
        try:
            event = wire.decode(msg.data)
            room, user = int(event["room"]), int(event["user"])
        except (msgspec.MsgspecError, ValueError, KeyError, TypeError):
            return
        interest = self._rooms.get(room)
        if interest is None:
            return
        frame = Frame(wire.encode({"op": "typing", "room": room, "user": user,
                                   "user_name": str(event.get("user_name", ""))}))
        for listener in list(interest.listeners):
            listener.on_typing(room, user, frame)

    async def _on_user(self, msg: Msg) -> None:
        try:
            event = wire.decode(msg.data)
            user = int(msg.subject.split(".")[2])
        except (msgspec.MsgspecError, ValueError, IndexError):
            log.warning("dropping undecodable event on %s", msg.subject)
            return
        interest = self._users.get(user)
        if interest is None or not isinstance(event, dict) or not _from_its_publisher(
                msg.subject, event):
            return
        for listener in list(interest.listeners):
            listener.on_user_event(event)


# Subjects whose last token names who may publish them (camcore/permissions.py): an
# event type arriving on another kind's subject is a forgery by a process that may
# publish only the other one, and is dropped.
_EDGE_TYPES: dict[str, frozenset[str]] = {
    "signal": frozenset({"signal"}),            # cam.conf.<room>.signal, from edges
    "session": frozenset({"session_revoked"}),  # cam.user.<id>.session, from edges
}


def _from_its_publisher(subject: str, event: dict[str, object]) -> bool:
    suffix = subject.rsplit(".", 1)[-1]
    kind = event.get("type")
    if suffix in _EDGE_TYPES:
        return kind in _EDGE_TYPES[suffix]
    # .ev: chat's and the video allocator's events, never what edges publish
    return suffix == "ev" and not any(kind in types for types in _EDGE_TYPES.values())
