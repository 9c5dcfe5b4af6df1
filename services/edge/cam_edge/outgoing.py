"""The outgoing queue of one client: every frame it receives, in order, bounded.

Replies and events share one queue, bounded in frames (``cam.outgoingQueueFrames``)
and in bytes (``cam.outgoingQueueBytes``), so they keep their order and a slow client
cannot grow the edge's memory by more than the byte bound, whatever the size of its
frames. Live frames and replies are queued without waiting: one that finds the queue
full closes the client with CLOSE_RESUME (it reconnects and resumes from its last
seq). Replayed frames (resume, ``subscribe``, gap repair) wait for room instead and
fill at most half the queue, so a replay goes at the client's pace and never crowds
out replies.

A frame counts against the byte bound, by the memory it takes, from when it is queued
until the socket has taken it: below the queue, the WebSocket protocol holds at most
its write buffer (64 KiB) and the frame being written.

Each message frame the socket takes is a delivery (``cam_edge.metrics``): live when it
was queued as it came, replayed when it waited for room; a live one is timed from its
commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from starlette.websockets import WebSocket

from camcore import protocol

from . import metrics
from .hub import MessageFrame

log = logging.getLogger(__name__)

TOO_SLOW = "too slow: reconnect and resume"


def frame_bytes(frame: str) -> int:
    """The memory a queued text frame takes. A str holds 1, 2 or 4 bytes per character,
    by its widest one, so this is never less than its UTF-8 size over 4, nor more than
    four times it: the bound is on memory, which is what a slow client costs."""
    return sys.getsizeof(frame)


class Outgoing:
    def __init__(self, ws: WebSocket, size: int, max_bytes: int) -> None:
        self._ws = ws
        # (frame, live): live frames were pushed, replayed ones put.
        self._queue: asyncio.Queue[tuple[str, bool] | None] = asyncio.Queue(size)
        self._replay_room = max(1, size // 2)
        self._max_bytes = max_bytes
        self._replay_bytes = max_bytes // 2
        self.queued_bytes = 0
        """Bytes of the frames queued and not yet taken by the socket."""
        self._space = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.client = "-"
        """Who the client is, for the log line of a slow-consumer close."""

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def push(self, frame: str) -> None:
        """Queue a live frame or a reply now; a full queue closes the client."""
        if self.close_code is not None:
            return
        size = frame_bytes(frame)
        if self.queued_bytes + size > self._max_bytes:
            self.close(protocol.CLOSE_RESUME, TOO_SLOW)
            return
        try:
            self._queue.put_nowait((frame, True))
        except asyncio.QueueFull:
            self.close(protocol.CLOSE_RESUME, TOO_SLOW)
            return
        self.queued_bytes += size

    async def put(self, frame: str) -> None:
        """Queue a replayed frame at the client's pace.

        Replay fills at most half the queue, so replies and live frames of other rooms
        still fit: a client that reads is never closed as too slow because of a replay.
        """
        size = frame_bytes(frame)
        while self.close_code is None and not self._replay_fits(size):
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), protocol.REPLAY_STALL_SECONDS)
            except TimeoutError:
                # Nothing left the queue for that long: the client is not reading.
                self.close(protocol.CLOSE_RESUME, TOO_SLOW)
        if self.close_code is None:
            self._queue.put_nowait((frame, False))
            self.queued_bytes += size

    def _replay_fits(self, size: int) -> bool:
        # An empty queue takes any frame, so a replay of one huge message progresses.
        return self._queue.qsize() < self._replay_room and (
            self.queued_bytes == 0 or self.queued_bytes + size <= self._replay_bytes)

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued; the writer sends the close frame."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self._space.set()  # release replays waiting for room
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        if self._queue.full() or code == protocol.CLOSE_RESUME:
            # The queue is what is too slow; drop it and close now.
            while not self._queue.empty():
                self._queue.get_nowait()
            self.queued_bytes = 0
            self._queue.put_nowait(None)
        if code == protocol.CLOSE_RESUME:
            log.info("closing a client that cannot keep up (user %s)", self.client)
            # A client that does not read at all would block the close frame too.
            asyncio.get_running_loop().call_later(protocol.SLOW_CLOSE_GRACE, self._abort)

    def start(self) -> asyncio.Task[None]:
        """Start the writer; the task ends once the close frame is sent or the socket is gone."""
        self._writer = asyncio.create_task(self._write())
        return self._writer

    def _abort(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    def _made_room(self) -> None:
        if self._queue.qsize() < self._replay_room and self.queued_bytes < self._replay_bytes:
            self._space.set()

    @property
    def queued_frames(self) -> int:
        return self._queue.qsize()

    async def _send(self, item: tuple[str, bool]) -> None:
        frame, live = item
        await self._ws.send_text(frame)
        if self.queued_bytes:  # zero after a close dropped the queue
            self.queued_bytes = max(0, self.queued_bytes - frame_bytes(frame))
        if isinstance(frame, MessageFrame):
            metrics.delivered(frame.ts, live)

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                self._made_room()
                await self._send(item)
                # Send what else is already queued without waking up once per frame.
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        break
                    await self._send(item)
                    self._made_room()
                if item is None:
                    break
                self._made_room()
        except Exception as exc:  # noqa: BLE001 - the socket is gone; the reader notices
            log.debug("writer stopped: %s", exc)
            return
        with contextlib.suppress(Exception):
            await self._ws.close(self.close_code or protocol.CLOSE_NORMAL, self.close_reason)
