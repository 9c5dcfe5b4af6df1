"""The outgoing queue of one client: every frame it receives, in order, bounded.

Replies and events share one queue (``cam.outgoingQueueFrames``), so they keep their
order and a slow client cannot grow the edge's memory. Live frames and replies are
queued without waiting: one that finds the queue full closes the client with
CLOSE_RESUME (it reconnects and resumes from its last seq). Replayed frames (resume,
``subscribe``, gap repair) wait for room instead and fill at most half the queue, so
a replay goes at the client's pace and never crowds out replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket

from camcore import protocol

log = logging.getLogger(__name__)

TOO_SLOW = "too slow: reconnect and resume"


class Outgoing:
    def __init__(self, ws: WebSocket, size: int) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self._replay_room = max(1, size // 2)
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
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(protocol.CLOSE_RESUME, TOO_SLOW)

    async def put(self, frame: str) -> None:
        """Queue a replayed frame at the client's pace.

        Replay fills at most half the queue, so replies and live frames of other rooms
        still fit: a client that reads is never closed as too slow because of a replay.
        """
        while self.close_code is None and self._queue.qsize() >= self._replay_room:
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), protocol.REPLAY_STALL_SECONDS)
            except TimeoutError:
                # Nothing left the queue for that long: the client is not reading.
                self.close(protocol.CLOSE_RESUME, TOO_SLOW)
        if self.close_code is None:
            self._queue.put_nowait(frame)

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued; the writer sends the close frame."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self._space.set()  # release replays waiting for room
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        if self._queue.full():
            # The queue is what is too slow; drop it and close now.
            while not self._queue.empty():
                self._queue.get_nowait()
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
        if self._queue.qsize() < self._replay_room:
            self._space.set()

    async def _write(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    break
                self._made_room()
                await self._ws.send_text(frame)
                # Send what else is already queued without waking up once per frame.
                while not self._queue.empty():
                    frame = self._queue.get_nowait()
                    if frame is None:
                        break
                    await self._ws.send_text(frame)
                if frame is None:
                    break
                self._made_room()
        except Exception as exc:  # noqa: BLE001 - the socket is gone; the reader notices
            log.debug("writer stopped: %s", exc)
            return
        with contextlib.suppress(Exception):
            await self._ws.close(self.close_code or protocol.CLOSE_NORMAL, self.close_reason)
