"""Request ids: one per REST request and WebSocket op, carried from the edge to the services.

The edge takes the client's id (``X-Request-Id``, or ``rid`` in a WebSocket frame) when
it is short and safe, else makes one, and keeps it in :data:`current` while it handles
the request. ``camcore.bus.call`` puts it in the NATS header :data:`BUS_HEADER`, and the
replica that serves the request sets :data:`current` from it while handling. Log records
carry it through :class:`Filter` (``camcore.logs``), so one grep of the id finds every
line of the request on every process (docs/architecture.md, "Request ids").
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Final

HTTP_HEADER: Final = "X-Request-Id"
"""The HTTP header a client may send with its own id; every answer carries the id used."""

BUS_HEADER: Final = "Cam-Request-Id"
"""The NATS message header of a bus request made on behalf of a client request."""

FRAME_FIELD: Final = "rid"
"""The optional field of a WebSocket frame that carries the client's id for that op."""

MAX_LENGTH: Final = 64
_SAFE: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_LENGTH}}}")

current: contextvars.ContextVar[str | None] = contextvars.ContextVar("cam_request_id", default=None)
"""The id of the request being handled in this task, if any."""


def new() -> str:
    """A fresh id: 16 hex digits (64 random bits)."""
    return secrets.token_hex(8)


def accept(value: object) -> str | None:
    """``value`` when it may be used as an id (at most 64 of ``A-Z a-z 0-9 . _ -``), else None.

    The id ends up in log lines and headers: anything else could forge a log line or
    smuggle a header, so it is replaced, not cleaned.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and _SAFE.fullmatch(value):
        return value
    return None


def accept_or_new(value: object) -> str:
    """The client's id when it is acceptable, else a fresh one."""
    return accept(value) or new()


@contextlib.contextmanager
def bound(request_id: str | None) -> Iterator[str | None]:
    """Make ``request_id`` the current id for the ``with`` block."""
    token = current.set(request_id)
    try:
        yield request_id
    finally:
        current.reset(token)


def bus_headers() -> dict[str, str] | None:
    """The NATS headers that carry the current id to the service (None without one)."""
    request_id = current.get()
    return {BUS_HEADER: request_id} if request_id else None


def from_bus_headers(headers: Mapping[str, str] | None) -> str | None:
    """The id a bus request carries, if it carries an acceptable one."""
    return accept(headers.get(BUS_HEADER)) if headers else None


class Filter(logging.Filter):
    """Sets ``record.request_id`` to the current id (None outside a request).

    A record that already has one (``extra={"request_id": ...}``) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current.get()
        return True
