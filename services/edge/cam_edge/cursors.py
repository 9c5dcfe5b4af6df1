"""Ordered delivery of one room to one connection: the cursor, and gap repair.

Pure logic: nothing here touches the bus or a socket, so every case can be tested by
feeding sequence numbers. The cursor is the last seq delivered. A live event with the
next seq is delivered at once; an older one is a duplicate and dropped; a newer one
means a gap: it is held (up to PENDING_PER_ROOM per room) and ``repair`` fills the gap
from the store, in order, before anything later is delivered.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence

from camcore import protocol, wire
from camcore.errors import CamError

from .wsproto import Frame

log = logging.getLogger(__name__)

#: Messages of the room after a seq, in seq order (a page of the store's history).
History = Callable[[int], Awaitable[Sequence[wire.Message]]]
#: Send one replayed frame to the client, at its pace.
Put = Callable[[Frame], Awaitable[None]]


class Verdict(enum.Enum):
    """What to do with a live event."""

    DELIVER = "deliver"
    """The next seq: send it now."""
    DUPLICATE = "duplicate"
    """Already delivered (or being delivered by a repair): drop it."""
    HELD = "held"
    """After a gap: held until the repair delivers it in order."""


class Cursor:
    """Delivery state of one room on one connection."""

    __slots__ = ("last", "pending", "repairing", "seen_head")

    def __init__(self, last: int) -> None:
        self.last = last
        #: seq -> frame held for it; None marks a seq known to be stored but not held.
        self.pending: dict[int, Frame | None] = {}
        self.repairing = False
        self.seen_head = 0  # the store's head at the previous repair check

    def offer(self, seq: int, frame: Frame) -> Verdict:
        if seq <= self.last:
            return Verdict.DUPLICATE
        if seq == self.last + 1 and not self.repairing:
            self.last = seq
            return Verdict.DELIVER
        if len(self.pending) >= protocol.PENDING_PER_ROOM:
            # Holding more is pointless: the store has them. Remember only how far to go.
            top = max(seq, *self.pending)
            self.pending = {top: None}
        else:
            self.pending[seq] = frame
        return Verdict.HELD

    def expect(self, seq: int) -> bool:
        """``seq`` is stored: deliver everything up to it. False if already delivered."""
        if seq <= self.last:
            return False
        self.pending.setdefault(seq, None)
        return True

    def confirm_head(self, head: int) -> bool:
        """The store's head at this repair check; True when a repair is due.

        A seq still undelivered one whole check later was lost on the bus (or never
        published): fetch it. Newer ones are probably just in flight.
        """
        confirmed, self.seen_head = self.seen_head, head
        return self.expect(confirmed)

    def restart(self, since: int, head: int) -> None:
        """Deliver again everything after ``since`` up to ``head`` (``subscribe``)."""
        self.last = since
        self.pending = {s: f for s, f in self.pending.items() if s > since}
        self.expect(head)

    def begin_repair(self) -> bool:
        """True if a repair must start now (something is pending and none is running)."""
        if self.repairing or not self.pending:
            return False
        self.repairing = True
        return True

    def take_ready(self) -> list[Frame]:
        """The held frames next in line, in order; the cursor moves past them.

        Held seqs the cursor has already passed are forgotten.
        """
        frames = []
        while (frame := self.pending.get(self.last + 1)) is not None:
            del self.pending[self.last + 1]
            frames.append(frame)
            self.last += 1
        for seq in [s for s in self.pending if s <= self.last]:
            del self.pending[seq]
        return frames

    def fill(self, page: Sequence[wire.Message]) -> list[wire.Message] | None:
        """The messages of ``page`` that continue the sequence; the cursor moves past them.

        None when the page does not start right after the cursor: the store does not
        have the next seq (yet), and nothing may be skipped.
        """
        fresh = [m for m in page if m.seq > self.last]
        if not fresh or fresh[0].seq != self.last + 1:
            return None
        run = []
        for m in fresh:
            if m.seq != self.last + 1:
                break
            self.pending.pop(m.seq, None)
            self.last = m.seq
            run.append(m)
        return run


async def repair(room: int, cursor: Cursor, history: History, put: Put,
                 frame: Callable[[wire.Message], Frame], is_open: Callable[[], bool]) -> None:
    """Deliver, in order, everything up to the highest pending seq: held frames where
    the live stream brought them, pages of ``history`` where it did not.

    Start it only after ``cursor.begin_repair()``. A failure leaves the rest pending:
    the next event or repair check of the room starts it again.
    """
    try:
        while cursor.pending and is_open():
            for held in cursor.take_ready():
                await put(held)
            if not cursor.pending:
                break
            run = cursor.fill(await history(cursor.last))
            if run is None:
                # Cannot happen for committed messages; never skip, try again later.
                log.warning("room %s: store has no seq %d yet", room, cursor.last + 1)
                break
            for message in run:
                await put(frame(message))
    except CamError as exc:
        log.warning("gap repair in room %s failed: %s", room, exc.message)
    finally:
        cursor.repairing = False
