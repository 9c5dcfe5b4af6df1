"""Python client library of the chat cluster (used by tests, load generators, bots)."""

from __future__ import annotations

from .client import Client, ClientError, guest_login, login
from .session import Session

__all__ = ["Client", "ClientError", "Session", "guest_login", "login"]
