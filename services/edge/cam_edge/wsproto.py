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

from typing import Any, Protocol

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

    __slots__ = ("_wire", "data", "ts")

    def __init__(self, data: bytes, ts: int | None = None) -> None:
        self.data = data
        self.ts = ts
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """The unmasked WebSocket text frame (header and payload), built once."""
        if self._wire is None:
            self._wire = WsFrame(Opcode.TEXT, self.data).serialize(mask=False, extensions=[])
        return self._wire

    def __len__(self) -> int:
        """Bytes the frame takes on the wire, and in a socket's write buffer."""
        return len(self.wire())

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


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, and a FrameSocket for the application."""

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
        else:
            data = b"".join([frame.wire() for frame in frames])
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
