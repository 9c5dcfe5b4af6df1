"""Python client library of the chat cluster (used by tests, load generators, bots)."""

from __future__ import annotations

from .client import Client, ClientError, login

__all__ = ["Client", "ClientError", "login"]
