"""Shared package of the cluster: config, bus subjects, wire schemas, storage."""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the client WebSocket protocol (docs/protocol.md).
PROTOCOL_VERSION = 1
