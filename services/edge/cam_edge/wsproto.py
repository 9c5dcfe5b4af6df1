"""Encode once, write many: the edge's WebSocket write path below Starlette.

A room event is one ``Frame``: its JSON payload and, built on first use, its WebSocket
text frame. Frames a server sends are unmasked (RFC 6455, 5.1), so those bytes are the
same for every member of the room and are built once, then written to every local
member's socket.

``EdgeWebSocketProtocol`` is uvicorn's sans-I/O WebSocket protocol (websockets'
``ServerProtocol``) with one addition: it offers the application a ``FrameSocket``
through the ASGI scope (``extensions["cam.frames"]["socket"]``). The handshake, the
reading of client frames, the pings and the closing handshake stay uvicorn's and
websockets': nothing here parses the WebSocket protocol. What the socket adds is the
write of frames that are already serialized, several in one transport write, without
the await per frame of ASGI's ``websocket.send``, and a view of the transport's write
buffer, in bytes, which is what the slow-consumer rule bounds (``cam_edge.outgoing``).

A client that negotiated permessage-deflate gets its frames compressed for it alone,
through its own ``ServerProtocol``: its compression context is its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import State

EXTENSION = "cam.frames"
"""The ASGI scope extension through which the edge's protocol offers its FrameSocket."""


class Frame:
    """One text frame for clients: its UTF-8 JSON payload, and its serialized bytes.

    ``ts`` is a stored message's commit time (ms since the epoch) for message frames,
    which are timed and counted as deliveries (``cam_edge.metrics``), else None.
    """

    __slots__ = ("data", "size", "ts", "wire_bytes")

    def __init__(self, data: bytes, ts: int | None = None) -> None:
        self.data = data
        self.ts = ts
        self.wire_bytes = WsFrame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
        """The unmasked WebSocket text frame (header and payload), built once."""
        self.size = len(self.wire_bytes)
        """Bytes the frame takes on the wire, and in a socket's write buffer."""

    def wire(self) -> bytes:
        return self.wire_bytes

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Frame({self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


class FrameSocket(Protocol):
    """What the outgoing path of a connection needs from its socket."""

    @property
    def open(self) -> bool:
        """True until the close frame is sent or the connection is gone."""

    def write(self, frames: list[Frame]) -> int:
        """Write whole frames, in order, without waiting; the bytes written (0 if the
        socket is no longer open). Nothing is ever split or interleaved."""

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel: the client's backlog here."""

    @property
    def paused(self) -> bool:
        """True while the write buffer is above its high-water mark."""

    async def drained(self) -> None:
        """Return once the write buffer is below its low-water mark (or the socket gone)."""

    def limit(self, high: int) -> None:
        """Set the write buffer's high-water mark, in bytes."""

    def abort(self) -> None:
        """Drop the connection now, with whatever is still buffered."""


INBOX_FRAMES: Final = 32
"""Client messages the edge reads ahead of the op it is running, at most ..."""
INBOX_BYTES: Final = 256 * 1024
"""... and in bytes: past either, reading pauses until the connection catches up."""


class _Inbox:
    """What the base protocol's ``asyncio.Queue`` of ASGI events does for it (one reader,
    a few events at a time), in far less memory: an idle connection holds an empty list,
    not four deques. It counts the messages and bytes it holds (``full``)."""

    __slots__ = ("_bytes", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None

    @staticmethod
    def _size(item: Any) -> int:
        return len(item.get("text") or item.get("bytes") or "")

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._bytes += self._size(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= INBOX_FRAMES or self._bytes >= INBOX_BYTES

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.pop(0)
        self._bytes -= self._size(item)
        return item


class _Flag:
    """``asyncio.Event`` for the base protocol's flow control (``writable``), without the
    deque an Event keeps even when nobody waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, and a FrameSocket for the application."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Same interface, a fraction of the memory per connection (docs/benchmarks.md).
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        # uvicorn stops reading at the first message the application has not taken yet.
        # The edge reads on, within INBOX_FRAMES and INBOX_BYTES, so that pings and pongs
        # are still answered while an op waits (on a database or bus outage, say) and the
        # client has sent its next frame already.
        if self.read_paused and not self.queue.full():
            self.read_paused = False
            self.transport.resume_reading()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None when the handshake was refused
            scope["extensions"][EXTENSION] = {"socket": self}

    @property
    def open(self) -> bool:
        return (self.handshake_complete and not self.close_sent and not self.disconnected
                and self.conn.state is State.OPEN and not self.transport.is_closing())

    def write(self, frames: list[Frame]) -> int:
        if not self.open:
            return 0
        if self.conn.extensions:  # permessage-deflate: compressed per connection
            for frame in frames:
                self.conn.send_text(frame.data)
            data = b"".join(self.conn.data_to_send())
        elif len(frames) == 1:
            data = frames[0].wire_bytes
        else:
            data = b"".join([frame.wire_bytes for frame in frames])
        self.transport.write(data)
        return len(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    @property
    def paused(self) -> bool:
        return not self.writable.is_set()  # the base class's flow control (pause_writing)

    async def drained(self) -> None:
        await self.writable.wait()

    def limit(self, high: int) -> None:
        self.transport.set_write_buffer_limits(high=high)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def frame_socket(ws: WebSocket) -> FrameSocket:
    """The FrameSocket under a Starlette WebSocket of the edge."""
    try:
        socket: FrameSocket = ws.scope["extensions"][EXTENSION]["socket"]
    except (KeyError, TypeError):
        raise RuntimeError("the edge serves WebSockets with cam_edge.wsproto."
                           "EdgeWebSocketProtocol (uvicorn's ws= setting)") from None
    return socket
