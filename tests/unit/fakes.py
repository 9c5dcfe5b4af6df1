"""Stand-ins for the edge's surroundings in unit tests of its connection logic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cam_edge.wsproto import EXTENSION, Frame


class FakeFrameSocket:
    """A client socket below the write path (``wsproto.FrameSocket``).

    It keeps every write; ``backlog`` pretends that many bytes are still in its write
    buffer (with ``stalled``, everything written stays there), and ``pause()`` /
    ``resume()`` play the transport's flow control.
    """

    def __init__(self) -> None:
        self.writes: list[list[Frame]] = []
        """Each write's frames."""
        self.backlog = 0
        self.stalled = False
        self.high: int | None = None
        self.closed = False
        self.aborted = False
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def open(self) -> bool:
        return not self.closed and not self.aborted

    def write(self, frames: list[Frame]) -> int:
        if not self.open:
            return 0
        self.writes.append(list(frames))
        written = sum(map(len, frames))
        if self.stalled:
            self.backlog += written
        return written

    def buffered(self) -> int:
        return self.backlog

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    async def drained(self) -> None:
        await self._writable.wait()

    def limit(self, high: int) -> None:
        self.high = high

    def abort(self) -> None:
        self.aborted = True
        self._writable.set()

    def pause(self) -> None:
        self._writable.clear()

    def resume(self) -> None:
        self._writable.set()

    @property
    def frames(self) -> list[Frame]:
        """Every frame written, in order."""
        return [frame for write in self.writes for frame in write]


class FakeWebSocket:
    """A Starlette WebSocket with a FakeFrameSocket under it; ``sent`` decodes what it
    was written."""

    def __init__(self) -> None:
        self.socket = FakeFrameSocket()
        self.scope: dict[str, Any] = {"extensions": {EXTENSION: {"socket": self.socket}}}
        self.close_codes: list[int] = []

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(frame.data) for frame in self.socket.frames]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_codes.append(code)
        self.socket.closed = True
