"""The client ops of the WebSocket protocol (docs/protocol.md), one module per family.

- ``session``: ``ping`` and ``auth`` (the only ops allowed before ``auth``);
- ``chat``: rooms, messages, typing (``cam.chat.rpc.<op>``, ``cam.room.<id>.*``);
- ``presence``: statuses, watches, the user directory (``cam.presence.*``);
- ``conference``: web conferences (``cam.video.rpc.<op>``, ``cam.conf.<room>.ev``);
- ``admin``: moderation (``cam.chat.rpc.admin_*``; the chat service checks the rights).

The dispatch table is derived from ``camcore.wire.CLIENT_FRAMES`` and checked when
this package is imported: every client frame has exactly one handler, and every
handler is for a client frame.
"""

from __future__ import annotations

from typing import Final

from camcore import wire

from . import admin, chat, conference, presence, session
from .registry import Op, OpGroup, OpTableError, dispatch_table

GROUPS: Final = (session.ops, chat.ops, presence.ops, conference.ops, admin.ops)

#: Op name -> op, for exactly the frames of ``wire.CLIENT_FRAMES``.
OPS: Final[dict[str, Op]] = dispatch_table(GROUPS, wire.CLIENT_FRAMES)

__all__ = ["GROUPS", "OPS", "Op", "OpGroup", "OpTableError", "dispatch_table"]
