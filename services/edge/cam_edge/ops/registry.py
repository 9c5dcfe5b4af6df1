"""How client ops are registered, and the check that makes them match the protocol.

Each family module has an ``OpGroup`` and registers one handler per client frame
type with ``@group.handles(FrameType)``; the op name is the frame's tag in
``camcore.wire.CLIENT_FRAMES``. ``dispatch_table`` joins the groups and refuses any
mismatch: a frame without a handler, a handler for something that is not a client
frame, or two handlers for one frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from camcore import wire
from camcore.errors import CamError

if TYPE_CHECKING:
    from ..connection import Connection

F = TypeVar("F", bound=wire.Frame)
Handler = Callable[["Connection", Any], Awaitable[Any]]


class OpTableError(CamError):
    """The op handlers and ``wire.CLIENT_FRAMES`` disagree: a programming error."""


@dataclass(frozen=True, slots=True)
class Op:
    """One client op: its frame type, its handler, and who may call it."""

    frame: type[wire.Frame]
    handler: Handler
    anonymous: bool = False
    """True if a connection may use it before ``auth`` succeeds."""
    guest: bool = False
    """True if a guest's connection (a meeting link's session) may use it; a guest may
    use nothing else (``Connection._frame``)."""


def op_name(frame: type[wire.Frame]) -> str:
    tag = frame.__struct_config__.tag
    if not isinstance(tag, str):
        raise OpTableError(f"{frame.__name__} has no string op tag")
    return tag


class OpGroup:
    """The ops of one subject family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.ops: list[Op] = []

    def handles(self, frame: type[F], *, anonymous: bool = False, guest: bool = False
                ) -> Callable[[Callable[[Connection, F], Awaitable[Any]]],
                              Callable[[Connection, F], Awaitable[Any]]]:
        """Register the decorated function as the handler of ``frame``."""

        def register(fn: Callable[[Connection, F], Awaitable[Any]]
                     ) -> Callable[[Connection, F], Awaitable[Any]]:
            self.ops.append(Op(frame, fn, anonymous, guest))
            return fn

        return register


def dispatch_table(groups: Iterable[OpGroup], frames: Mapping[str, type[wire.Frame]]
                   ) -> dict[str, Op]:
    """Op name -> op, for exactly the frames of ``frames``; any mismatch raises OpTableError."""
    table: dict[str, Op] = {}
    for group in groups:
        for op in group.ops:
            name = op_name(op.frame)
            if frames.get(name) is not op.frame:
                raise OpTableError(f"{group.family} op {op.handler.__name__} handles "
                                   f"{op.frame.__name__}, which is not a client frame")
            if name in table:
                raise OpTableError(f"two handlers for op {name!r}: "
                                   f"{table[name].handler.__name__} and {op.handler.__name__}")
            table[name] = op
    missing = sorted(frames.keys() - table.keys())
    if missing:
        raise OpTableError(f"client frames without a handler: {', '.join(missing)}")
    return table
