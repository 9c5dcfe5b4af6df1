"""What one client is sent: every frame, in order, bounded, written without a task.

Replies and events go one way: frames pushed during a turn of the event loop are kept
in order and written together, in one write to the socket, at the end of that turn
(``push``). Nothing waits for a client: the socket's write buffer
(``cam_edge.wsproto``) holds what the client has not taken yet, and that backlog is
bounded in bytes (``cam.outgoingQueueBytes``: the bytes of the frames buffered and of
those still to be written this turn) and in frames (``cam.outgoingQueueFrames``). A
live frame or a reply that would go past either bound closes the client with
CLOSE_RESUME (it reconnects and resumes from its last seq) and drops what was not
written yet.

Replayed frames (resume, ``subscribe``, gap repair) go at the client's pace instead
(``put``): each waits while the backlog is at half of either bound (the write buffer's
high-water mark is half the byte bound), so a replay never crowds out replies and
live frames of other rooms. A replay that cannot go on for REPLAY_STALL_SECONDS closes
the client as too slow.

Each message frame written is a delivery (``cam_edge.metrics``): live when pushed,
replayed when put; a live one is timed from its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from starlette.websockets import WebSocket

from camcore import protocol

from . import metrics
from .wsproto import Frame, FrameSocket, frame_socket

log = logging.getLogger(__name__)

TOO_SLOW = "too slow: reconnect and resume"
CLOSE_TIMEOUT = 10.0
"""Seconds a close other than CLOSE_RESUME waits for the backlog to drain before the
connection is cut (CLOSE_RESUME waits protocol.SLOW_CLOSE_GRACE)."""
_POLL = 0.01
"""Seconds between looks at a backlog that is short in bytes but long in frames."""


_dirty: list[Outgoing] = []
"""Clients pushed to during this turn of the loop: one callback writes to them all."""
_dirty_loop: list[asyncio.AbstractEventLoop | None] = [None]
"""The loop that runs that callback (None: none scheduled)."""


def _to_flush(out: Outgoing) -> None:
    loop = asyncio.get_running_loop()
    if _dirty_loop[0] is not loop:  # the first push of this turn
        _dirty.clear()  # only ever left over by a loop that was closed meanwhile
        _dirty_loop[0] = loop
        loop.call_soon(_flush_all)
    _dirty.append(out)


def _flush_all() -> None:
    dirty = _dirty[:]
    _dirty.clear()
    _dirty_loop[0] = None
    with metrics.tallying():
        for out in dirty:
            try:
                out._flush()
            except Exception:  # one broken socket must not hold back the others
                log.exception("writing to a client failed")


class Outgoing:
    __slots__ = ("_abort_timer", "_closer", "_ends", "_frames", "_max_bytes", "_max_frames",
                 "_pending", "_pending_bytes", "_scheduled", "_socket", "_written", "_ws",
                 "client", "close_code", "close_reason")

    def __init__(self, ws: WebSocket, max_frames: int, max_bytes: int,
                 socket: FrameSocket | None = None) -> None:
        self._ws = ws
        self._socket = socket if socket is not None else frame_socket(ws)
        self._socket.limit(max_bytes // 2)  # replays pause there (``put``)
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._pending: list[Frame] = []
        """Pushed this turn of the loop, written at its end (``_flush``)."""
        self._pending_bytes = 0
        self._scheduled = False
        # Frames in the write buffer: per write still (partly) buffered, the offset of
        # its end in the bytes written since the buffer was last seen empty, and its
        # number of frames. The buffer's size tells how far the kernel took them.
        self._written = 0
        self._ends: deque[tuple[int, int]] | None = None
        self._frames = 0
        self._abort_timer: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.client = "-"
        """Who the client is, for the log line of a slow-consumer close."""

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes the client has not taken: buffered, and still to be written this turn."""
        return self._socket.buffered() + self._pending_bytes

    @property
    def queued_frames(self) -> int:
        return self._in_buffer() + len(self._pending)

    def _in_buffer(self, buffered: int | None = None) -> int:
        """Frames (partly) in the socket's write buffer (of ``buffered`` bytes, if known)."""
        if self._ends is None:
            return 0
        if buffered is None:
            buffered = self._socket.buffered()
        if buffered == 0:
            self._ends, self._written, self._frames = None, 0, 0
            return 0
        taken = self._written - buffered  # pings and pongs in the buffer count as frames' bytes
        while self._ends and self._ends[0][0] <= taken:
            self._frames -= self._ends.popleft()[1]
        return self._frames

    # ------------------------------------------------------------ live frames and replies

    def push(self, frame: Frame) -> None:
        """Send a live frame or a reply at the end of this turn; past a bound, close the
        client as too slow."""
        if self.close_code is not None:
            return
        size = frame.size
        buffered = self._socket.buffered()
        if (buffered + self._pending_bytes + size > self._max_bytes
                or self._in_buffer(buffered) + len(self._pending) >= self._max_frames):
            self.close(protocol.CLOSE_RESUME, TOO_SLOW)
            return
        self._pending.append(frame)
        self._pending_bytes += size
        if not self._scheduled:
            self._scheduled = True
            _to_flush(self)

    def _flush(self) -> None:
        self._scheduled = False
        if self._pending:
            frames, self._pending, self._pending_bytes = self._pending, [], 0
            self._write(frames, live=True)

    def _write(self, frames: list[Frame], *, live: bool) -> None:
        written = self._socket.write(frames)
        if not written:
            return  # closed: the client resumes from what it has
        if self._socket.buffered():
            self._written += written
            if self._ends is None:
                self._ends = deque()
            self._ends.append((self._written, len(frames)))
            self._frames += len(frames)
        else:
            self._ends, self._written, self._frames = None, 0, 0
        metrics.delivered(frames, live)

    # ------------------------------------------------------------ replays

    async def put(self, frame: Frame) -> None:
        """Send a replayed frame at the client's pace.

        It waits while the backlog is at half a bound, so replies and live frames of
        other rooms still fit: a client that reads is never closed as too slow because
        of a replay. An empty backlog takes any frame, so a replay of a huge message
        progresses.
        """
        stalled_since, low = asyncio.get_running_loop().time(), self.queued_bytes
        while self.close_code is None and self._must_wait():
            if self._socket.paused:
                try:
                    await asyncio.wait_for(self._socket.drained(), protocol.REPLAY_STALL_SECONDS)
                except TimeoutError:  # nothing left the buffer for that long
                    self.close(protocol.CLOSE_RESUME, TOO_SLOW)
                continue
            # Few bytes but many frames in flight: look again shortly.
            await asyncio.sleep(_POLL)
            now, backlog = asyncio.get_running_loop().time(), self.queued_bytes
            if backlog < low:
                stalled_since, low = now, backlog
            elif now - stalled_since > protocol.REPLAY_STALL_SECONDS:
                self.close(protocol.CLOSE_RESUME, TOO_SLOW)
        if self.close_code is None:
            self._flush()  # what was pushed before goes first
            self._write([frame], live=False)

    def _must_wait(self) -> bool:
        frames = self._in_buffer() + len(self._pending)
        if frames == 0 and self._socket.buffered() == 0:
            return False
        return self._socket.paused or frames >= max(1, self._max_frames // 2)

    # ------------------------------------------------------------ closing

    def close(self, code: int, reason: str) -> None:
        """Close after what was pushed (CLOSE_RESUME: drop what was not written yet)."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        loop = asyncio.get_running_loop()
        if code == protocol.CLOSE_RESUME:
            self._pending, self._pending_bytes = [], 0
            log.info("closing a client that cannot keep up (user %s)", self.client)
            grace = protocol.SLOW_CLOSE_GRACE
        else:
            self._flush()
            grace = CLOSE_TIMEOUT
        # The close frame waits for the write buffer to drain: a client that does not
        # read at all is cut off instead.
        self._abort_timer = loop.call_later(grace, self._socket.abort)
        self._closer = loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._ws.close(code, reason)
        except Exception as exc:  # noqa: BLE001 - the socket is gone already
            log.debug("close frame not sent: %s", exc)
        finally:
            if self._abort_timer is not None:
                self._abort_timer.cancel()

    async def closed(self) -> None:
        """Return once the close frame is written, or the connection was cut."""
        if self._closer is not None:
            await asyncio.shield(self._closer)
