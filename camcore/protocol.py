"""Client protocol constants: WebSocket close codes and limits (docs/protocol.md)."""

from __future__ import annotations

from typing import Final

# Standard close codes (RFC 6455).
CLOSE_NORMAL: Final = 1000
CLOSE_UNSUPPORTED_DATA: Final = 1003  # a binary frame; the protocol is text JSON
CLOSE_POLICY: Final = 1008  # Origin refused, or too many bad frames
CLOSE_TOO_BIG: Final = 1009  # a frame over cam.maxFrameBytes
CLOSE_INTERNAL: Final = 1011

# Our own close codes (4000-4999 are for applications).
CLOSE_RESUME: Final = 4001
"""The client fell behind (its outgoing queue filled up): reconnect and resume."""
CLOSE_RECONNECT_ELSEWHERE: Final = 4002
"""The node is shutting down: reconnect (to another node) and resume."""
CLOSE_AUTH_TIMEOUT: Final = 4401
"""No successful ``auth`` frame within the time allowed."""

CLOSE_SESSION_REVOKED: Final = 4403
"""The session was revoked (logout elsewhere) or expired: log in again."""
CLOSE_TOO_MANY_CONNECTIONS: Final = 4429
"""The user or the client address has cam.maxConnectionsPer* WebSockets open already."""

AUTH_TIMEOUT_SECONDS: Final = 15.0
REPLAY_STALL_SECONDS: Final = 5.0
"""A replay that cannot queue a frame for this long closes the client as too slow."""
SLOW_CLOSE_GRACE: Final = 3.0
"""Seconds a client closed as too slow has to take its close frame before we cut it off."""
BAD_FRAMES_BEFORE_CLOSE: Final = 20
RESUME_MAX_MESSAGES: Final = 1000
"""A resume missing more than this many messages is told to page through history."""
REPAIR_PAGE: Final = 200
PENDING_PER_ROOM: Final = 256
"""Out-of-order live frames an edge holds per connection and room while it repairs."""
TYPING_MIN_INTERVAL: Final = 1.0
"""Seconds between two typing events of one connection in one room."""

SESSION_COOKIE: Final = "cam_session"
