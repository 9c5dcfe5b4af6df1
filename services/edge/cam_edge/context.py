"""State one edge process owns for its lifetime (created by the app's lifespan)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from camcore import bus, errors, subjects, wire
from camcore.config import Settings

from .hub import Hub
from .limits import ConnectionCounts, RequestLimiter
from .presence import PresenceAgent, PresenceWatch

if TYPE_CHECKING:
    from .connection import Connection


@dataclass(eq=False)
class Edge:
    settings: Settings
    nc: NATS
    pool: asyncpg.Pool
    hub: Hub
    presence: PresenceAgent
    watch: PresenceWatch
    requests: RequestLimiter
    counts: ConnectionCounts
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False

    async def chat(self, op: str, request: msgspec.Struct, *, timeout: float = 5.0) -> Any:
        """One chat command, served by whichever chat replica takes it."""
        return await bus.call(self.nc, subjects.chat_rpc(op), request, timeout=timeout)

    async def close_guests(self, result: dict[str, Any]) -> dict[str, Any]:
        """Close the sockets of the guest sessions a chat reply deleted
        (``wire.GUEST_SESSIONS``), and the reply without them, for the client.

        After the commit; if this is lost, the session check closes them within
        cam.sessionRecheckInterval (the sessions are gone from the store).
        """
        ended = result.pop(wire.GUEST_SESSIONS, None) or []
        by_user: dict[int, list[str]] = {}
        for user_id, fingerprint in ended:
            by_user.setdefault(int(user_id), []).append(str(fingerprint))
        with contextlib.suppress(*errors.BUS_UNAVAILABLE_ERRORS):
            for user_id, fingerprints in by_user.items():
                await self.revoked(user_id, fingerprints)
        return result

    async def revoked(self, user_id: int, fingerprints: list[str]) -> None:
        """Close the live sockets of these revoked sessions of a user, on every node."""
        subject = subjects.user_session(user_id)
        for fingerprint in fingerprints:
            event = {"type": "session_revoked", "token_hash": fingerprint}
            await self.nc.publish(subject, wire.encode(event))
