"""Ordered delivery of a room to one connection: the edge's cursors and gap repair.

No server is involved: the store is a list of messages, the client is the list of
frames queued for it, and live events are offered by hand, sometimes in the middle of
a repair (while it waits for the store or for room in the client's queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cam_edge.cursors import Cursor, Verdict, repair
from cam_edge.wsproto import Frame

from camcore import protocol, wire
from camcore.errors import Unavailable

ROOM = 7


def message(seq: int) -> wire.Message:
    return wire.Message(room=ROOM, seq=seq, cid=f"c{seq}", sender=1, sender_name="alice",
                        kind="text", body=f"body {seq}", ts=seq)


def frame(m: wire.Message) -> Frame:
    return Frame(b"frame %d" % m.seq, m.ts)


def live(seq: int) -> Frame:
    return Frame(b"frame %d" % seq, seq)


class Store:
    """The room's stored messages; ``history`` answers pages like the chat service."""

    def __init__(self, head: int, page: int = protocol.REPAIR_PAGE) -> None:
        self.messages = [message(s) for s in range(1, head + 1)]
        self.page = page
        self.reads: list[int] = []
        self.during_read: Callable[[], object] | None = None

    async def history(self, after: int) -> Sequence[wire.Message]:
        self.reads.append(after)
        await asyncio.sleep(0)
        if self.during_read is not None:
            hook, self.during_read = self.during_read, None
            hook()
        return [m for m in self.messages if m.seq > after][: self.page]


class Client:
    """What the connection queued for the client, in order."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.during_put: Callable[[Frame], object] | None = None

    async def put(self, f: Frame) -> None:
        self.frames.append(f)
        await asyncio.sleep(0)  # a replay waits for room in the queue
        if self.during_put is not None:
            self.during_put(f)

    def offer(self, cursor: Cursor, seq: int) -> Verdict:
        """A live event, as the connection handles it."""
        verdict = cursor.offer(seq, live(seq))
        if verdict is Verdict.DELIVER:
            self.frames.append(live(seq))
        return verdict

    @property
    def seqs(self) -> list[int]:
        return [int(f.data.split()[1]) for f in self.frames]


async def run_repair(cursor: Cursor, store: Store, client: Client) -> None:
    if cursor.begin_repair():
        await repair(ROOM, cursor, store.history, client.put, frame, lambda: True)


def test_events_in_order_are_delivered_at_once() -> None:
    cursor, client = Cursor(0), Client()
    assert [client.offer(cursor, s) for s in (1, 2, 3)] == [Verdict.DELIVER] * 3
    assert client.seqs == [1, 2, 3] and cursor.last == 3
    assert not cursor.pending and not cursor.begin_repair()


def test_an_event_already_delivered_is_dropped_as_a_duplicate() -> None:
    cursor, client = Cursor(0), Client()
    client.offer(cursor, 1)
    client.offer(cursor, 2)
    assert client.offer(cursor, 2) is Verdict.DUPLICATE
    assert client.offer(cursor, 1) is Verdict.DUPLICATE
    assert client.seqs == [1, 2] and not cursor.pending


def test_a_jump_in_the_sequence_is_held_as_a_gap_and_starts_a_repair() -> None:
    cursor, client = Cursor(3), Client()
    assert client.offer(cursor, 6) is Verdict.HELD
    assert client.seqs == [] and cursor.last == 3
    assert cursor.begin_repair()
    # While the repair runs, even the next seq waits its turn behind the gap.
    assert client.offer(cursor, 4) is Verdict.HELD
    assert not cursor.begin_repair()


async def test_a_gap_is_filled_from_the_store_in_order_before_later_events() -> None:
    store, cursor, client = Store(head=7), Cursor(3), Client()
    client.offer(cursor, 6)  # 4 and 5 were lost on the bus
    # Events keep arriving while the store is read: 7 is held, 5 comes late.
    store.during_read = lambda: (client.offer(cursor, 7), client.offer(cursor, 5))
    await run_repair(cursor, store, client)
    assert client.seqs == [4, 5, 6, 7]
    assert cursor.last == 7 and not cursor.pending and not cursor.repairing
    # Once the gap is closed, the next live event is delivered at once again.
    assert client.offer(cursor, 8) is Verdict.DELIVER
    assert client.seqs == [4, 5, 6, 7, 8]


async def test_a_late_event_that_closes_the_gap_is_delivered_from_what_was_held() -> None:
    store, cursor, client = Store(head=5), Cursor(3), Client()
    client.offer(cursor, 5)
    assert cursor.begin_repair()
    client.offer(cursor, 4)  # merely late, before the repair task ran
    await repair(ROOM, cursor, store.history, client.put, frame, lambda: True)
    assert client.seqs == [4, 5] and store.reads == []


async def test_a_long_gap_is_read_page_by_page() -> None:
    store, cursor, client = Store(head=25, page=10), Cursor(0), Client()
    client.offer(cursor, 25)
    await run_repair(cursor, store, client)
    assert client.seqs == list(range(1, 26))
    assert store.reads == [0, 10, 20]


async def test_beyond_the_pending_limit_only_the_target_is_kept_and_the_store_fills_the_rest() -> None:
    head = protocol.PENDING_PER_ROOM + 50
    store, cursor, client = Store(head=head), Cursor(0), Client()
    for seq in range(2, head + 1):
        assert client.offer(cursor, seq) is Verdict.HELD
    assert len(cursor.pending) <= protocol.PENDING_PER_ROOM
    await run_repair(cursor, store, client)
    assert client.seqs == list(range(1, head + 1))


async def test_resume_replays_up_to_the_head_and_the_live_seam_has_no_duplicate() -> None:
    # The client resumes at 10; the store has 12. As on auth, the cursor starts at the
    # resume point and the head is expected; live 12 and 13 arrive during the replay.
    store, cursor, client = Store(head=13), Cursor(10), Client()
    assert cursor.expect(12)
    store.during_read = lambda: (client.offer(cursor, 12), client.offer(cursor, 13))
    client.during_put = lambda f: client.offer(cursor, 12) if f == "frame 11" else None
    await run_repair(cursor, store, client)
    assert client.seqs == [11, 12, 13]
    assert client.offer(cursor, 13) is Verdict.DUPLICATE
    assert client.offer(cursor, 14) is Verdict.DELIVER
    assert client.seqs == [11, 12, 13, 14]


async def test_subscribe_restarts_from_an_older_seq_without_repeating_the_seam() -> None:
    store, cursor, client = Store(head=5), Cursor(0), Client()
    for seq in range(1, 6):
        client.offer(cursor, seq)
    cursor.restart(since=3, head=5)  # the client asks again for what came after 3
    await run_repair(cursor, store, client)
    assert client.seqs == [1, 2, 3, 4, 5, 4, 5]
    assert client.offer(cursor, 5) is Verdict.DUPLICATE


async def test_a_message_the_store_does_not_have_yet_is_never_skipped() -> None:
    store, cursor, client = Store(head=3), Cursor(0), Client()
    client.offer(cursor, 5)  # 4 and 5 are not committed yet (or not visible)
    await run_repair(cursor, store, client)
    assert client.seqs == [1, 2, 3] and cursor.last == 3
    assert 5 in cursor.pending and not cursor.repairing
    store.messages += [message(4), message(5)]
    await run_repair(cursor, store, client)  # the next event or check starts it again
    assert client.seqs == [1, 2, 3, 4, 5]


async def test_a_failed_store_read_leaves_the_gap_pending_for_the_next_try() -> None:
    cursor, client = Cursor(0), Client()
    client.offer(cursor, 2)

    async def unavailable(after: int) -> Sequence[wire.Message]:
        raise Unavailable("the service did not answer in time")

    assert cursor.begin_repair()
    await repair(ROOM, cursor, unavailable, client.put, frame, lambda: True)
    assert client.seqs == [] and cursor.pending and not cursor.repairing
    await run_repair(cursor, Store(head=2), client)
    assert client.seqs == [1, 2]


def test_a_head_counts_only_when_the_previous_check_saw_it_too() -> None:
    cursor = Cursor(4)
    assert not cursor.confirm_head(6)  # 5 and 6 may be in flight
    assert cursor.confirm_head(6)  # still missing a whole interval later: fetch
    assert cursor.pending == {6: None}
    cursor.last = 6
    assert not cursor.confirm_head(6)
