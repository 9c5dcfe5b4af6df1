"""Group commit: sends that arrive together are stored in one transaction.

All the sends waiting when a commit starts go to PostgreSQL as one call of
``cam_post_messages`` (migration 0010): one statement, one transaction, one WAL flush,
which is the cost that bounds acknowledged sends per second. It locks the batch's rooms,
then finds the cids already stored, checks membership, bumps each room's seq once and
inserts every row, set-based, with no subtransaction per row. While a batch commits,
the next ones gather (up to :data:`FLUSHERS` in flight at once). Nothing waits
on purpose: a lone send is committed at once, by ``cam_post_message``, the single-row
form (cheaper for PostgreSQL for one row).

- **Gap-free and ordered.** Within a room, seqs follow the order the sends arrived in;
  every batch (of every replica) locks its rooms in ascending order, so two batches
  cannot deadlock on each other. A rollback undoes every seq bump of the batch with it.
- **Idempotent.** A cid sent twice in one batch is sent to the database once, and the
  later send gets the earlier one's row as a duplicate; a cid stored before, by any
  replica, is found after the room lock, so it is never inserted twice.
- **One bad send fails alone.** If the statement fails for any other reason than an
  unavailable database, each send of the batch is tried again on its own, so only the
  send that caused it gets the error. An unavailable database fails the whole batch:
  nothing of it was committed, and every sender gets ``unavailable`` (a retry with the
  same cid is stored once).
- **Bounded.** A batch holds at most :data:`MAX_ROWS` sends and :data:`MAX_BYTES` bytes
  of bodies; the replica's request concurrency bounds what can wait at all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import asyncpg
from prometheus_client import Histogram

from camcore import db

log = logging.getLogger(__name__)

MAX_ROWS: Final = 256
FLUSHERS: Final = 4
"""Batches of one replica in flight at once: while one waits for its commit, the others
run their statements (PostgreSQL flushes the WAL of concurrent commits together)."""
MAX_BYTES: Final = 4 * 1024 * 1024

BATCH_ROWS: Final = Histogram(
    "cam_chat_commit_batch_rows", "Sends committed together in one transaction (group "
    "commit).", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

_POST_ONE: Final = ("SELECT 1::bigint AS i, seq, created_at, duplicate"
                    " FROM cam_post_message($1, $2, $3, $4, $5)")
_POST_MANY: Final = ("SELECT i, seq, created_at, duplicate"
                     " FROM cam_post_messages($1, $2, $3, $4, $5) ORDER BY i")


@dataclass(frozen=True, slots=True)
class Stored:
    """What ``cam_post_message`` answered for one send."""

    seq: int
    created_at: datetime
    duplicate: bool


@dataclass(slots=True)
class _Send:
    room: int
    sender: int
    cid: str
    kind: str
    body: str
    done: asyncio.Future[Stored | None] = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.body.encode("utf-8", "surrogatepass")) + len(self.cid) + 64


class GroupCommit:
    """Stores sends through ``cam_post_message``, many per transaction (see the module)."""

    def __init__(self, pool: asyncpg.Pool, *, max_rows: int = MAX_ROWS,
                 max_bytes: int = MAX_BYTES, flushers: int = FLUSHERS) -> None:
        self._pool = pool
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._most_flushers = flushers
        self._pending: list[_Send] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.rows = 0

    async def post(self, room: int, sender: int, cid: str, kind: str, body: str
                   ) -> Stored | None:
        """Store one send; None when the sender is not a member of the room."""
        send = _Send(room, sender, cid, kind, body,
                     asyncio.get_running_loop().create_future())
        self._pending.append(send)
        if len(self._flushers) < self._most_flushers:
            flusher = asyncio.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushed)
        return await send.done

    def _flushed(self, task: asyncio.Task[None]) -> None:
        """A flusher cancelled before it ran, or ended by an error: fail what waits."""
        self._flushers.discard(task)
        if task.cancelled() or task.exception() is not None:
            _fail(self._pending, None if task.cancelled() else task.exception())
            self._pending.clear()

    def _take(self) -> list[_Send]:
        batch: list[_Send] = []
        size = 0
        while self._pending and len(batch) < self._max_rows:
            nxt = self._pending[0]
            if batch and size + nxt.size > self._max_bytes:
                break
            batch.append(self._pending.pop(0))
            size += nxt.size
        return batch

    async def _flush(self) -> None:
        while self._pending:
            batch = self._take()
            try:
                await self._commit(batch)
            except BaseException as exc:
                # A bug, or the replica stopping (cancelled): nobody may wait for ever.
                _fail(batch + self._pending, exc if isinstance(exc, Exception) else None)
                self._pending.clear()
                raise

    async def _commit(self, batch: list[_Send]) -> None:
        # One row per (room, sender, cid): a repeat within the batch is answered below.
        first: dict[tuple[int, int, str], int] = {}
        rows: list[_Send] = []
        for send in batch:
            if first.setdefault((send.room, send.sender, send.cid), len(rows)) == len(rows):
                rows.append(send)
        try:
            # One statement on its own is its own transaction: a single round trip. A lone
            # send takes the single-row function, which costs PostgreSQL less for one row.
            if len(rows) == 1:
                one = rows[0]
                found = await self._pool.fetch(_POST_ONE, one.room, one.sender, one.cid,
                                               one.kind, one.body)
            else:
                found = await self._pool.fetch(
                    _POST_MANY, [s.room for s in rows], [s.sender for s in rows],
                    [s.cid for s in rows], [s.kind for s in rows], [s.body for s in rows])
        except db.UNAVAILABLE_ERRORS as exc:
            _fail(batch, exc)
            return
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.info("a batch of %d sends failed (%s); each is tried on its own",
                     len(batch), exc)
            for send in batch:
                await self._commit([send])
            return
        self.batches += 1
        self.rows += len(batch)
        BATCH_ROWS.observe(len(batch))
        stored: list[Stored | None] = [None] * len(rows)
        for r in found:
            if r["seq"] is not None:
                stored[r["i"] - 1] = Stored(r["seq"], r["created_at"], r["duplicate"])
        for send in batch:
            i = first[(send.room, send.sender, send.cid)]
            answer = stored[i]
            if answer is not None and send is not rows[i]:
                answer = Stored(answer.seq, answer.created_at, duplicate=True)
            if not send.done.done():
                send.done.set_result(answer)


def _fail(rows: list[_Send], exc: BaseException | None) -> None:
    """Every send of ``rows`` still waited for ends with ``exc`` (None: cancelled)."""
    for send in rows:
        if send.done.done():
            continue
        if exc is None:
            send.done.cancel()
        else:
            send.done.set_exception(exc)
