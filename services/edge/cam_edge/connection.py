"""One client WebSocket: its life, frame decoding and dispatch, and what it is delivered.

The jobs around it live next door: the outgoing queue (``outgoing``), delivery cursors
and gap repair (``cursors``), and the ops, one module per subject family (``ops``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from camcore import PROTOCOL_VERSION, accounts, errors, protocol, requestid, wire
from camcore.accounts import User
from camcore.errors import CamError, RequestError

from . import limits, metrics
from .context import Edge
from .cursors import Cursor, Verdict, repair
from .hub import EVERYONE, message_frame
from .ops import OPS, Op
from .ops.conference import Conferences
from .outgoing import Outgoing
from .presence import new_session_id
from .wsproto import Frame

log = logging.getLogger(__name__)

NOT_A_MEMBER = "not a member of this room (or no such room)"
GUEST_ONLY = "a guest may only join the meeting of its link"
HEADS_PER_REQUEST = 5000
"""Rooms per ``room_heads`` request (about 25 bytes of reply each)."""
_BAD_FRAME_CODES = frozenset({errors.MALFORMED_FRAME, errors.UNKNOWN_OP, errors.BAD_REQUEST})


def parse_frame(text: str) -> dict[str, Any]:
    """A client frame's JSON as a dict with a string 'op', within the limits of shape."""
    try:
        raw = wire.decode(text)
    except msgspec.DecodeError:
        raise CamError("frame is not valid JSON", errors.MALFORMED_FRAME) from None
    except RecursionError:  # the decoder's own bound, far beyond ours
        raise CamError(f"frame nested deeper than {limits.MAX_FRAME_DEPTH} levels",
                       errors.MALFORMED_FRAME) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
        raise CamError("frame must be a JSON object with a string 'op'", errors.MALFORMED_FRAME)
    limits.check_frame(raw)
    return raw


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def request_id_of(raw: dict[str, Any]) -> wire.RequestId:
    rid = raw.get("id")
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


def frame_of(raw: dict[str, Any]) -> tuple[Op, wire.Frame]:
    """The op a parsed frame asks for and its validated struct."""
    name = raw["op"][:40]
    op = OPS.get(raw["op"])
    if op is None:
        raise CamError(f"unknown op {name!r}", errors.UNKNOWN_OP)
    try:
        return op, msgspec.convert(raw, op.frame)
    except msgspec.ValidationError as exc:
        raise RequestError(f"invalid {name} frame: {exc}") from None


class Connection:
    def __init__(self, ws: WebSocket, edge: Edge, session_token: str | None) -> None:
        self.ws = ws
        self.edge = edge
        self.cookie_token = session_token
        self.token: str | None = None
        self.token_digest: bytes | None = None
        """SHA-256 of the session token, as stored: what the session check looks up."""
        self.user: User | None = None
        self.session_id = new_session_id()
        self.out = Outgoing(ws, edge.settings.outgoing_queue_frames,
                            edge.settings.outgoing_queue_bytes)
        self.cursors: dict[int, Cursor] = {}
        self.watching: set[int] = set()
        self.typing_sent: dict[int, float] = {}
        self.read_sent: dict[int, int] = {}
        """Per room, the highest read marker this connection was told (``read``)."""
        self.confs = Conferences(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._after_reply: list[Callable[[], None]] = []
        self._bad_frames = 0

    # ------------------------------------------------------------ output

    @property
    def close_code(self) -> int | None:
        return self.out.close_code

    def push(self, frame: Frame) -> None:
        self.out.push(frame)

    def send_json(self, obj: Any) -> None:
        self.out.push(Frame(wire.encode(obj)))

    def close(self, code: int, reason: str) -> None:
        """Close after what was already sent (``Outgoing.close``)."""
        self.out.close(code, reason)

    def after_reply(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` right after the reply to the current op is queued."""
        self._after_reply.append(callback)

    # ------------------------------------------------------------ life

    async def run(self) -> None:
        auth_timer = asyncio.get_running_loop().call_later(
            protocol.AUTH_TIMEOUT_SECONDS, self._auth_timeout
        )
        self.edge.connections.add(self)
        metrics.opened()
        self.send_json({"op": "hello", "v": PROTOCOL_VERSION, "node": self.edge.settings.node_name,
                        "limits": {"max_frame_bytes": self.edge.settings.max_frame_bytes,
                                   "max_message_chars": self.edge.settings.max_message_chars}})
        try:
            # Until the client leaves, or our side closes (the close frame then ends the
            # reading, as does cutting the connection off).
            await self._read(auth_timer)
        finally:
            auth_timer.cancel()
            self.edge.connections.discard(self)
            metrics.closed(self.close_code)  # None: the client went first
            self.close(self.close_code or protocol.CLOSE_NORMAL, self.out.close_reason)
            for task in self._tasks:
                task.cancel()
            await self._release()
            await self.out.closed()

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
        request_id: wire.RequestId = None
        name = "?"
        # Each op has an id of its own, for its log lines and bus requests: the frame's
        # rid when acceptable, else a fresh one. Afterwards the connection's is current.
        op_id = requestid.current.set(requestid.new())
        echo: dict[str, str] = {}
        outcome = "ok"
        try:
            raw = parse_frame(text)
            request_id = request_id_of(raw)
            name = raw["op"][:40]
            if requestid.FRAME_FIELD in raw:
                echo[requestid.FRAME_FIELD] = requestid.accept_or_new(raw.pop(requestid.FRAME_FIELD))
                requestid.current.set(echo[requestid.FRAME_FIELD])
            self.edge.requests.hit(self._key)
            op, frame = frame_of(raw)
            if self.user is None and not op.anonymous:
                raise CamError("authenticate first (op 'auth')", errors.UNAUTHENTICATED)
            if self.user is not None and self.user.is_guest and not op.guest:
                raise CamError(GUEST_ONLY, errors.FORBIDDEN)
            result = await op.handler(self, frame)
            self.send_json({"op": "result", "id": request_id, **echo, "result": result})
        except Exception as exc:
            failed = errors.report(log, f"op {name}", exc)
            outcome = failed.code
            if failed.code in _BAD_FRAME_CODES:
                self._bad_frames += 1
            reply: dict[str, Any] = {"op": "error", "id": request_id, **echo, "code": failed.code,
                                     "message": failed.message}
            if isinstance(exc, limits.RateLimited):
                reply["retry_after"] = exc.retry_after
            self.send_json(reply)
            if self._bad_frames >= protocol.BAD_FRAMES_BEFORE_CLOSE:
                self.close(protocol.CLOSE_POLICY, "too many invalid frames")
        finally:
            callbacks, self._after_reply = self._after_reply, []
            for callback in callbacks:
                callback()
            log.debug("op %r %s", name, outcome)
            requestid.current.reset(op_id)

    @property
    def _key(self) -> str:
        return str(self.session_id)

    def authenticated(self, user: User, token: str) -> None:
        self.user, self.token = user, token
        self.token_digest = accounts.token_digest(token)
        self.out.client = user.username
        self.edge.presence.add(self.session_id, user.id)

    async def _release(self) -> None:
        self.edge.requests.forget(self._key)
        if self.user is None:
            return
        self.edge.counts.close_user(self.user.id)
        self.edge.presence.remove(self.session_id)
        await self.confs.leave_all()
        if self.watching:
            await self.edge.watch.unwatch(self, list(self.watching))
        for room in list(self.cursors):
            await self.edge.hub.leave_room(room, self)
        await self.edge.hub.remove_user(self.user.id, self)

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` for as long as the connection lives; its failure is logged."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, what))

    def _task_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, CamError):
            log.warning("%s failed: %s", what, exc.message)
        else:
            errors.report(log, what, exc)

    # ------------------------------------------------------------ who may do what

    @property
    def uid(self) -> int:
        assert self.user is not None
        return self.user.id

    def require_member(self, room: int) -> None:
        """The ops on a room need it delivered here, which only a member's room is. A
        guest is delivered no room: it may reach only the room of its link."""
        if self.user is not None and self.user.guest_room is not None:
            if room != self.user.guest_room:
                raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
            return
        if room not in self.cursors:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)

    # ------------------------------------------------------------ delivery

    async def track(self, room: int, last: int, *, recheck: bool = True) -> None:
        """Deliver ``room`` from after ``last`` on."""
        if room not in self.cursors:
            self.cursors[room] = Cursor(last)
            await self.edge.hub.join_room(room, self)
        if recheck:
            await self.recheck([room])
        else:
            self.start_repair(room)

    async def recheck(self, rooms: list[int]) -> None:
        """Catch up on what was stored between reading ``last_seq`` and subscribing."""
        if not rooms:
            return
        await self.edge.nc.flush(timeout=5)
        # The heads only: a user's room list can be far larger than one bus reply.
        for i in range(0, len(rooms), HEADS_PER_REQUEST):
            heads = await self.edge.chat(
                "room_heads", wire.RoomHeads(rooms=rooms[i:i + HEADS_PER_REQUEST]))
            for room, head in heads["heads"]:
                cursor = self.cursors.get(room)
                if cursor is not None and cursor.expect(head):
                    self.start_repair(room)

    def offer(self, room: int, seq: int, frame: Frame,
              leaving: frozenset[str] | None = None) -> None:
        """A live event: deliver it now if it is the next one, else hold it for repair.

        ``leaving`` names the users the event takes out of the room (``hub.leaving``):
        if this user is one, the room is no longer delivered here, whether or not its
        ``room_removed`` event comes. A re-added user's cursor starts after the event,
        which then is a duplicate and changes nothing.
        """
        cursor = self.cursors.get(room)
        if cursor is None:
            return
        verdict = cursor.offer(seq, frame)
        if verdict is Verdict.DELIVER:
            self.out.push(frame)  # a full queue here means the client cannot keep up
        elif verdict is Verdict.DUPLICATE:
            return
        if leaving is not None and self.user is not None and (
                leaving is EVERYONE or self.user.username in leaving):
            self.forget_room(room)
            return
        if cursor.pending:  # held frames: fetch what comes before them
            self.start_repair(room)

    def behind(self, room: int, head: int) -> None:
        """The store had ``head`` for this room at the last check and has it now."""
        cursor = self.cursors.get(room)
        if cursor is not None and cursor.confirm_head(head):
            self.start_repair(room)  # also restarts a repair that failed

    def start_repair(self, room: int) -> None:
        cursor = self.cursors.get(room)
        if cursor is None or not cursor.begin_repair():
            return
        self.spawn(repair(room, cursor, functools.partial(self._history, room), self.out.put,
                          message_frame, lambda: not self.out.closing),
                   f"gap repair in room {room}")

    async def _history(self, room: int, after: int) -> list[wire.Message]:
        try:
            page = await self.edge.chat("history", wire.History(
                user_id=self.uid, room=room, after=after, limit=protocol.REPAIR_PAGE))
        except CamError as exc:
            if exc.code == errors.NOT_A_MEMBER:
                # The user left or was removed and its room_removed event was lost: stop
                # delivering the room rather than retry this repair forever.
                log.info("user %s is no longer in room %s: not delivering it", self.uid, room)
                self.forget_room(room)
            raise
        return msgspec.convert(page["messages"], list[wire.Message])

    # ------------------------------------------------------------ membership changes

    #: Unsubscriptions under way; not the connection's tasks, so its close cannot cancel
    #: one before it ran (which would leave the hub subscribed for a closed connection).
    _leaving: set[asyncio.Task[None]] = set()

    def forget_room(self, room: int) -> bool:
        """Stop delivering ``room``: the user is no longer a member. The client is told
        with ``room_removed``; False (and nothing sent) if the room was not tracked."""
        if self.cursors.pop(room, None) is None:
            return False
        self.typing_sent.pop(room, None)
        self.read_sent.pop(room, None)
        task = asyncio.get_running_loop().create_task(self._unsubscribe_room(room))
        Connection._leaving.add(task)
        task.add_done_callback(self._unsubscribed)
        self.send_json({"op": "room_removed", "room": room})
        return True

    async def _unsubscribe_room(self, room: int) -> None:
        await self.edge.hub.leave_room(room, self)
        if room in self.cursors:  # added again meanwhile (room_added): keep delivering it
            await self.edge.hub.join_room(room, self)

    @staticmethod
    def _unsubscribed(task: asyncio.Task[None]) -> None:
        Connection._leaving.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            errors.report(log, "leaving a room's subject", exc)

    # ------------------------------------------------------------ events (hub.Listener)

    def on_conf_event(self, room: int, event: dict[str, Any]) -> None:
        self.confs.on_event(room, event)

    def on_presence(self, frame: Frame) -> None:
        self.push(frame)

    def on_typing(self, room: int, user: int, frame: Frame) -> None:
        if user != self.uid:
            self.push(frame)

    def on_user_event(self, event: dict[str, Any]) -> None:
        if self.user is None:
            return  # still authenticating: the room listing will include it
        kind = event.get("type")
        if self.user.is_guest and kind != "session_revoked":
            return  # a guest hears of nothing but the end of its session
        if kind == "room_added" and isinstance(event.get("room"), dict):
            room = event["room"]
            self.send_json({"op": "room_added", "room": room})
            if room["id"] not in self.cursors:
                self.spawn(self.track(room["id"], room["last_seq"]), f"tracking room {room['id']}")
        elif kind == "room_removed" and isinstance(event.get("room"), int):
            self.forget_room(event["room"])
        elif kind == "read" and _is_int(event.get("room")) and _is_int(event.get("read_seq")):
            self._read_marker(event["room"], event["read_seq"])
        elif kind == "session_revoked" and event.get("token_hash") == self._token_hash():
            self.close(protocol.CLOSE_SESSION_REVOKED, "session revoked")

    def _read_marker(self, room: int, read_seq: int) -> None:
        """Forward a read marker unless this connection was told a higher one already:
        two replicas may publish their markers in the other order than they stored them."""
        if read_seq < self.read_sent.get(room, 0):
            return
        if room in self.cursors:  # forget_room drops it again
            self.read_sent[room] = read_seq
        self.send_json({"op": "read", "room": room, "read_seq": read_seq})

    def _token_hash(self) -> str | None:
        return accounts.token_hash_hex(self.token) if self.token else None
