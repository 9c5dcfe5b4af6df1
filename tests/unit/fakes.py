"""Stand-ins for the edge's surroundings in unit tests of its connection logic."""

from __future__ import annotations

import json
from typing import Any


class FakeWebSocket:
    """A client socket that takes every frame at once and keeps it, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass
