"""One client WebSocket: frame decoding, op dispatch, ordered delivery per room.

Every frame the client receives goes through one bounded outgoing queue, so replies
and events keep their order and a slow client cannot grow the edge's memory: when the
queue is full the client is closed with CLOSE_RESUME and resumes from its last seq.

Per room the connection keeps a cursor (the last seq delivered). A live event with
the next seq is delivered at once; an older one is dropped (duplicate); a newer one
means a gap, which is filled from the store before later events are delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from camcore import PROTOCOL_VERSION, accounts, bus, db, errors, protocol, subjects, wire
from camcore.accounts import User
from camcore.errors import CamError, RequestError, Unavailable

from .context import Edge
from .hub import message_frame
from .presence import new_session_id

log = logging.getLogger(__name__)

NOT_A_MEMBER = "not a member of this room (or no such room)"


class _Cursor:
    __slots__ = ("last", "pending", "repairing", "seen_head")

    def __init__(self, last: int) -> None:
        self.last = last
        self.pending: dict[int, str] = {}
        self.repairing = False
        self.seen_head = 0  # the store's head at the previous repair check


class Connection:
    def __init__(self, ws: WebSocket, edge: Edge, session_token: str | None) -> None:
        self.ws = ws
        self.edge = edge
        self.cookie_token = session_token
        self.token: str | None = None
        self.user: User | None = None
        self.cursors: dict[int, _Cursor] = {}
        self.session_id = new_session_id()
        self.watching: set[int] = set()
        self._typing_sent: dict[int, float] = {}
        self.conferences: set[int] = set()
        self.out: asyncio.Queue[str | None] = asyncio.Queue(edge.settings.outgoing_queue_frames)
        self._writer: asyncio.Task[None] | None = None
        self._replay_room = max(1, edge.settings.outgoing_queue_frames // 2)
        self._space = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bad_frames = 0
        self._ops: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "auth": self.op_auth,
            "ping": self.op_ping,
            "rooms": self.op_rooms,
            "create_room": self.op_create_room,
            "open_direct": self.op_open_direct,
            "invite": self.op_invite,
            "send": self.op_send,
            "history": self.op_history,
            "members": self.op_members,
            "subscribe": self.op_subscribe,
            "set_status": self.op_set_status,
            "watch": self.op_watch,
            "unwatch": self.op_unwatch,
            "directory": self.op_directory,
            "typing": self.op_typing,
            "conf_join": self.op_conf_join,
            "conf_leave": self.op_conf_leave,
            "conf_participants": self.op_conf_participants,
            "conf_explain": self.op_conf_explain,
            "conf_signal": self.op_conf_signal,
        }

    # ------------------------------------------------------------ output

    def push(self, frame: str) -> None:
        if self.close_code is not None:
            return
        try:
            self.out.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(protocol.CLOSE_RESUME, "too slow: reconnect and resume")

    def send_json(self, obj: Any) -> None:
        self.push(wire.encode(obj).decode())

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued; the writer sends the close frame."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._space.set()  # release replays waiting for room
            with contextlib.suppress(asyncio.QueueFull):
                self.out.put_nowait(None)
            if self.out.full():
                # The queue is what is too slow; drop it and close now.
                while not self.out.empty():
                    self.out.get_nowait()
                self.out.put_nowait(None)
            if code == protocol.CLOSE_RESUME:
                log.info("closing a client that cannot keep up (user %s)",
                         self.user.username if self.user else "-")
                # A client that does not read at all would block the close frame too.
                asyncio.get_running_loop().call_later(protocol.SLOW_CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    async def writer(self) -> None:
        try:
            while True:
                frame = await self.out.get()
                if frame is None:
                    break
                if self.out.qsize() < self._replay_room:
                    self._space.set()
                await self.ws.send_text(frame)
                # Send what else is already queued without waking up once per frame.
                while not self.out.empty():
                    frame = self.out.get_nowait()
                    if frame is None:
                        break
                    await self.ws.send_text(frame)
                if frame is None:
                    break
                if self.out.qsize() < self._replay_room:
                    self._space.set()
        except Exception as exc:  # noqa: BLE001 - the socket is gone; the reader notices
            log.debug("writer stopped: %s", exc)
            return
        with contextlib.suppress(Exception):
            await self.ws.close(self.close_code or protocol.CLOSE_NORMAL, self.close_reason)

    # ------------------------------------------------------------ input

    async def run(self) -> None:
        writer = self._writer = asyncio.create_task(self.writer())
        auth_timer = asyncio.get_running_loop().call_later(
            protocol.AUTH_TIMEOUT_SECONDS, self._auth_timeout
        )
        self.edge.connections.add(self)
        self.send_json({"op": "hello", "v": PROTOCOL_VERSION, "node": self.edge.settings.node_name,
                        "limits": {"max_frame_bytes": self.edge.settings.max_frame_bytes,
                                   "max_message_chars": self.edge.settings.max_message_chars}})
        reader = asyncio.create_task(self._read(auth_timer))
        try:
            # Whichever ends first ends the connection: the client leaving, or our side
            # closing it (the writer then sent the close frame, or was cut off).
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            auth_timer.cancel()
            reader.cancel()
            self.edge.connections.discard(self)
            self.close(self.close_code or protocol.CLOSE_NORMAL, self.close_reason)
            for task in self._tasks:
                task.cancel()
            await self._release()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer, protocol.SLOW_CLOSE_GRACE + 1)

    async def _read(self, auth_timer: asyncio.TimerHandle) -> None:
        try:
            while self.close_code is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self.close(protocol.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
                    break
                await self._frame(text)
                if self.user is not None:
                    auth_timer.cancel()
        except WebSocketDisconnect:
            pass

    def _auth_timeout(self) -> None:
        if self.user is None:
            self.close(protocol.CLOSE_AUTH_TIMEOUT, "no auth frame in time")

    async def _frame(self, text: str) -> None:
        request_id: Any = None
        try:
            try:
                raw = wire.decode(text)
            except msgspec.DecodeError:
                raise CamError("frame is not valid JSON", errors.MALFORMED_FRAME) from None
            if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
                raise CamError("frame must be a JSON object with a string 'op'",
                               errors.MALFORMED_FRAME)
            rid = raw.get("id")
            request_id = rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
            op = raw["op"]
            frame_type = wire.CLIENT_FRAMES.get(op)
            if frame_type is None:
                raise CamError(f"unknown op {op[:40]!r}", errors.UNKNOWN_OP)
            try:
                frame = msgspec.convert(raw, frame_type)
            except msgspec.ValidationError as exc:
                raise RequestError(f"invalid {op} frame: {exc}") from None
            if op != "auth" and op != "ping" and self.user is None:
                raise CamError("authenticate first (op 'auth')", errors.UNAUTHENTICATED)
            result = await self._ops[op](frame)
            self.send_json({"op": "result", "id": request_id, "result": result})
        except CamError as exc:
            if exc.code in (errors.MALFORMED_FRAME, errors.UNKNOWN_OP, errors.BAD_REQUEST):
                self._bad_frames += 1
            self.send_json({"op": "error", "id": request_id, "code": exc.code,
                            "message": exc.message})
            if self._bad_frames >= protocol.BAD_FRAMES_BEFORE_CLOSE:
                self.close(protocol.CLOSE_POLICY, "too many invalid frames")
        except db.UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable: %s", exc)
            self.send_json({"op": "error", "id": request_id, "code": errors.UNAVAILABLE,
                            "message": "database unavailable; retry later"})
        except Exception:
            log.exception("op failed")
            self.send_json({"op": "error", "id": request_id, "code": errors.INTERNAL,
                            "message": "internal error"})

    # ------------------------------------------------------------ ops

    @property
    def uid(self) -> int:
        assert self.user is not None
        return self.user.id

    async def op_ping(self, frame: wire.Ping) -> dict[str, Any]:
        return {"pong": True}

    async def op_auth(self, frame: wire.Auth) -> dict[str, Any]:
        if frame.v != PROTOCOL_VERSION:
            raise CamError(f"protocol version {frame.v} is not supported; this server speaks "
                           f"{PROTOCOL_VERSION}", errors.UNSUPPORTED_VERSION)
        if self.user is not None:
            raise CamError("already authenticated", errors.ALREADY_AUTHENTICATED)
        token = frame.token or self.cookie_token
        if not token:
            raise CamError("no session token (log in first)", errors.UNAUTHENTICATED)
        try:
            user = await accounts.resolve_session(self.edge.pool, token)
        except db.UNAVAILABLE_ERRORS as exc:
            raise Unavailable("database unavailable") from exc
        if user is None:
            raise CamError("session is invalid, expired or revoked", errors.UNAUTHENTICATED)
        # Subscribe to the user's events before listing rooms, so no room added in
        # between is missed; until the listing succeeds the connection stays anonymous.
        await self.edge.hub.add_user(user.id, self)
        try:
            listing = await self.edge.chat("list_rooms", wire.ListRooms(user_id=user.id))
        except BaseException:
            await self.edge.hub.remove_user(user.id, self)
            raise
        self.user, self.token = user, token
        self.edge.presence.add(self.session_id, user.id)
        rooms = listing["rooms"]
        resume = frame.resume or {}
        resync = []
        for room in rooms:
            head = room["last_seq"]
            since = min(resume.get(str(room["id"]), head), head)
            if head - since > protocol.RESUME_MAX_MESSAGES:
                resync.append(room["id"])
                since = head
            await self._track(room["id"], since, recheck=False)
        await self._recheck(list(self.cursors))
        return {"user": user.public(), "rooms": rooms, "node": self.edge.settings.node_name,
                "resync": resync}

    async def op_rooms(self, frame: wire.ListRoomsFrame) -> dict[str, Any]:
        return await self.edge.chat("list_rooms", wire.ListRooms(user_id=self.uid))

    async def op_create_room(self, frame: wire.CreateRoomFrame) -> dict[str, Any]:
        room = await self.edge.chat(
            "create_room", wire.CreateRoom(user_id=self.uid, name=frame.name, members=frame.members)
        )
        await self._track(room["id"], room["last_seq"])
        return room

    async def op_open_direct(self, frame: wire.OpenDirectFrame) -> dict[str, Any]:
        room = await self.edge.chat("open_direct", wire.OpenDirect(user_id=self.uid, peer=frame.user))
        if room["id"] not in self.cursors:
            await self._track(room["id"], room["last_seq"])
        return room

    async def op_invite(self, frame: wire.InviteFrame) -> dict[str, Any]:
        return await self.edge.chat(
            "invite", wire.Invite(user_id=self.uid, room=frame.room, users=frame.users)
        )

    async def op_send(self, frame: wire.SendFrame) -> dict[str, Any]:
        if len(frame.body) > self.edge.settings.max_message_chars:
            raise CamError(
                f"message is {len(frame.body)} characters; the limit is "
                f"{self.edge.settings.max_message_chars}", errors.MESSAGE_TOO_LARGE)
        return await self.edge.chat(
            "send", wire.SendMessage(user_id=self.uid, room=frame.room, cid=frame.cid,
                                     body=frame.body)
        )

    async def op_history(self, frame: wire.HistoryFrame) -> dict[str, Any]:
        return await self.edge.chat(
            "history", wire.History(user_id=self.uid, room=frame.room, before=frame.before,
                                    after=frame.after, limit=frame.limit)
        )

    async def op_members(self, frame: wire.MembersFrame) -> dict[str, Any]:
        return await self.edge.chat(
            "members", wire.Members(user_id=self.uid, room=frame.room)
        )

    async def op_subscribe(self, frame: wire.SubscribeFrame) -> dict[str, Any]:
        """(Re)subscribe to a room, optionally replaying what came after ``since``."""
        room = await self.edge.chat("room_info", wire.RoomInfo(user_id=self.uid, room=frame.room))
        last = room["last_seq"]
        since = last if frame.since is None else min(frame.since, last)
        resync = last - since > protocol.RESUME_MAX_MESSAGES
        if resync:
            since = last
        cursor = self.cursors.get(frame.room)
        if cursor is None:
            await self._track(frame.room, since)
        else:
            cursor.last = since
            cursor.pending = {s: f for s, f in cursor.pending.items() if s > since}
            if last > since:
                cursor.pending.setdefault(last, "")  # known to exist: fetch up to it
            self._start_repair(frame.room, cursor)
        return {"room": frame.room, "last_seq": last, "since": since, "resync": resync}

    async def op_set_status(self, frame: wire.SetStatusFrame) -> dict[str, Any]:
        return await bus.call(
            self.edge.nc, subjects.presence_rpc("set_status"),
            wire.SetStatus(user_id=self.uid, status=frame.status))

    async def op_watch(self, frame: wire.WatchFrame) -> dict[str, Any]:
        users = list(dict.fromkeys(frame.users))
        if len(self.watching | set(users)) > protocol.MAX_WATCHED_USERS:
            raise RequestError(f"at most {protocol.MAX_WATCHED_USERS} users can be watched")
        states = await self.edge.watch.watch(self, users)
        self.watching.update(users)
        return {"presence": [{"user": u, "status": states.get(u, "offline")} for u in users]}

    async def op_unwatch(self, frame: wire.UnwatchFrame) -> dict[str, Any]:
        users = [u for u in frame.users if u in self.watching]
        self.watching.difference_update(users)
        await self.edge.watch.unwatch(self, users)
        return {"unwatched": users}

    async def op_directory(self, frame: wire.DirectoryFrame) -> dict[str, Any]:
        users = await accounts.directory(self.edge.pool, after=frame.after, limit=frame.limit + 1)
        page = users[: frame.limit]
        return {"users": [u.public() for u in page], "has_more": len(users) > frame.limit}

    async def op_typing(self, frame: wire.TypingFrame) -> dict[str, Any]:
        if frame.room not in self.cursors:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        now = time.monotonic()
        if now - self._typing_sent.get(frame.room, -1e9) >= protocol.TYPING_MIN_INTERVAL:
            # More often than this adds nothing a person can see: drop it quietly.
            self._typing_sent[frame.room] = now
            event = {"room": frame.room, "user": self.uid,
                     "user_name": self.user.username if self.user else ""}
            await self.edge.nc.publish(subjects.room_typing(frame.room), wire.encode(event))
        return {"room": frame.room}

    # ------------------------------------------------------------ conferences

    def _require_member(self, room: int) -> None:
        if room not in self.cursors:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)

    async def _video(self, op: str, request: msgspec.Struct) -> Any:
        return await bus.call(self.edge.nc, subjects.video_rpc(op), request, timeout=10)

    async def op_conf_join(self, frame: wire.ConfJoinFrame) -> dict[str, Any]:
        self._require_member(frame.room)
        await self.edge.hub.join_conference(frame.room, self)  # before: see our own join
        try:
            result = await self._video("join", wire.ConfJoin(
                room=frame.room, user_id=self.uid, session=self.session_id,
                node=self.edge.settings.node_name))
        except BaseException:
            if frame.room not in self.conferences:
                await self.edge.hub.leave_conference(frame.room, self)
            raise
        self.conferences.add(frame.room)
        return result

    async def op_conf_leave(self, frame: wire.ConfLeaveFrame) -> dict[str, Any]:
        if frame.room not in self.conferences:
            raise CamError("not in this conference", errors.NOT_IN_CONFERENCE)
        try:
            result = await self._video("leave", wire.ConfLeave(
                room=frame.room, user_id=self.uid, session=self.session_id))
        except CamError as exc:
            if exc.code != errors.NOT_IN_CONFERENCE:
                raise  # e.g. unavailable: still in it, the client may retry
            result = None
        self.conferences.discard(frame.room)
        await self.edge.hub.leave_conference(frame.room, self)
        if result is None:
            raise CamError("not in this conference", errors.NOT_IN_CONFERENCE)
        return result

    async def op_conf_participants(self, frame: wire.ConfParticipantsFrame) -> dict[str, Any]:
        self._require_member(frame.room)
        return await self._video("participants", wire.ConfParticipants(room=frame.room))

    async def op_conf_explain(self, frame: wire.ConfExplainFrame) -> dict[str, Any]:
        self._require_member(frame.room)
        return await self._video("explain", wire.ConfExplain(room=frame.room))

    async def op_conf_signal(self, frame: wire.ConfSignalFrame) -> dict[str, Any]:
        if frame.room not in self.conferences:
            raise CamError("join the conference first", errors.NOT_IN_CONFERENCE)
        event = {"room": frame.room, "type": "signal", "from": self.uid,
                 "from_session": self.session_id, "to": frame.to, "data": frame.data}
        await self.edge.nc.publish(subjects.conf_events(frame.room), wire.encode(event))
        return {"room": frame.room, "to": frame.to}

    def on_conf_event(self, room: int, event: dict[str, Any]) -> None:
        if room not in self.conferences and event.get("type") != "participant_joined":
            return
        kind = event.get("type")
        if kind == "signal":
            if event.get("to") == self.uid and event.get("from_session") != self.session_id:
                self.send_json({"op": "conf_signal", "room": room, "from": event.get("from"),
                                "from_session": event.get("from_session"),
                                "data": event.get("data")})
        elif kind == "participant_joined":
            self.send_json({"op": "conf_joined", **{k: v for k, v in event.items()
                                                    if k != "type"}})
        elif kind == "participant_left":
            self.send_json({"op": "conf_left", **{k: v for k, v in event.items() if k != "type"}})
        elif kind == "room_moved":
            self.send_json({"op": "conf_moved", **{k: v for k, v in event.items() if k != "type"}})

    def on_presence(self, user: int, status: str) -> None:
        self.send_json({"op": "presence", "user": user, "status": status})

    def on_typing(self, room: int, user: int, frame: str) -> None:
        if user != self.uid:
            self.push(frame)

    # ------------------------------------------------------------ delivery

    async def _track(self, room: int, last: int, *, recheck: bool = True) -> None:
        if room not in self.cursors:
            self.cursors[room] = _Cursor(last)
            await self.edge.hub.join_room(room, self)
        if recheck:
            await self._recheck([room])
        else:
            self._start_repair(room, self.cursors[room])

    async def _recheck(self, rooms: list[int]) -> None:
        """Catch up on what was stored between reading ``last_seq`` and subscribing."""
        if not rooms:
            return
        await self.edge.nc.flush(timeout=5)
        listing = await self.edge.chat("list_rooms", wire.ListRooms(user_id=self.uid))
        for room in listing["rooms"]:
            cursor = self.cursors.get(room["id"])
            if cursor is not None and room["last_seq"] > cursor.last:
                cursor.pending.setdefault(room["last_seq"], "")
                self._start_repair(room["id"], cursor)

    def offer(self, room: int, seq: int, frame: str) -> None:
        """A live event: deliver it now if it is the next one, else queue it for repair."""
        cursor = self.cursors.get(room)
        if cursor is None or seq <= cursor.last:
            return
        if seq == cursor.last + 1 and not cursor.repairing:
            cursor.last = seq
            self.push(frame)  # a full queue here means the client cannot keep up
            if cursor.pending:
                self._start_repair(room, cursor)
            return
        if len(cursor.pending) >= protocol.PENDING_PER_ROOM:
            # Holding more is pointless: the store has them. Remember only how far to go.
            top = max(seq, *cursor.pending)
            cursor.pending = {top: ""}
        else:
            cursor.pending[seq] = frame
        self._start_repair(room, cursor)

    def behind(self, room: int, head: int) -> None:
        """The store had ``head`` for this room at the last check and has it now.

        A seq that is still undelivered one whole check later was lost on the bus (or
        never published): fetch it. Newer ones are probably just in flight.
        """
        cursor = self.cursors.get(room)
        if cursor is None:
            return
        confirmed, cursor.seen_head = cursor.seen_head, head
        if confirmed > cursor.last:
            cursor.pending.setdefault(confirmed, "")
            self._start_repair(room, cursor)  # also restarts a repair that failed

    def _start_repair(self, room: int, cursor: _Cursor) -> None:
        if cursor.repairing or not cursor.pending:
            return
        cursor.repairing = True
        task = asyncio.create_task(self._repair(room, cursor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, frame: str) -> None:
        """Queue a replayed frame at the client's pace.

        Replay fills at most half the queue, so replies and live frames of other rooms
        still fit: a client that reads is never closed as too slow because of a replay.
        """
        while self.close_code is None and self.out.qsize() >= self._replay_room:
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), protocol.REPLAY_STALL_SECONDS)
            except TimeoutError:
                # Nothing left the queue for that long: the client is not reading.
                self.close(protocol.CLOSE_RESUME, "too slow: reconnect and resume")
        if self.close_code is None:
            self.out.put_nowait(frame)

    async def _repair(self, room: int, cursor: _Cursor) -> None:
        """Deliver, in order, everything up to the highest pending seq, from the store
        where the live stream did not bring it."""
        try:
            while cursor.pending and self.close_code is None:
                # Frames we hold that are next in line go first.
                while (frame := cursor.pending.get(cursor.last + 1)):
                    del cursor.pending[cursor.last + 1]
                    await self._put(frame)
                    cursor.last += 1
                for seq in [s for s in cursor.pending if s <= cursor.last]:
                    del cursor.pending[seq]
                if not cursor.pending:
                    break
                page = await self.edge.chat(
                    "history", wire.History(user_id=self.uid, room=room, after=cursor.last,
                                            limit=protocol.REPAIR_PAGE))
                messages = [m for m in page["messages"] if m["seq"] > cursor.last]
                if not messages or messages[0]["seq"] != cursor.last + 1:
                    # Cannot happen for committed messages; never skip, try again later.
                    log.warning("room %s: store has no seq %d yet", room, cursor.last + 1)
                    break
                for m in messages:
                    if m["seq"] != cursor.last + 1:
                        break
                    cursor.pending.pop(m["seq"], None)
                    await self._put(message_frame(wire.Message(**m)))
                    cursor.last = m["seq"]
        except CamError as exc:
            # Retried on the next event or repair check for this room.
            log.warning("gap repair in room %s failed: %s", room, exc.message)
        finally:
            cursor.repairing = False

    def on_user_event(self, event: dict[str, Any]) -> None:
        if self.user is None:
            return  # still authenticating: the room listing will include it
        kind = event.get("type")
        if kind == "room_added" and isinstance(event.get("room"), dict):
            room = event["room"]
            self.send_json({"op": "room_added", "room": room})
            if room["id"] not in self.cursors:
                task = asyncio.create_task(self._track(room["id"], room["last_seq"]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif kind == "session_revoked" and event.get("token_hash") == self._token_hash():
            self.close(protocol.CLOSE_SESSION_REVOKED, "session revoked")

    def _token_hash(self) -> str | None:
        return accounts.token_hash_hex(self.token) if self.token else None

    async def _release(self) -> None:
        if self.user is None:
            return
        self.edge.presence.remove(self.session_id)
        for room in list(self.conferences):
            with contextlib.suppress(CamError):
                await self._video("leave", wire.ConfLeave(
                    room=room, user_id=self.uid, session=self.session_id))
            await self.edge.hub.leave_conference(room, self)
        if self.watching:
            await self.edge.watch.unwatch(self, list(self.watching))
        for room in list(self.cursors):
            await self.edge.hub.leave_room(room, self)
        await self.edge.hub.remove_user(self.user.id, self)
