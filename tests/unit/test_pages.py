"""Pages bounded in bytes: the builder every paged bus reply uses, and the edge's replay
over pages cut short by it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cam_edge.cursors import Cursor, repair
from cam_edge.wsproto import Frame

from camcore import wire


def big(seq: int, chars: int = 4000) -> wire.Message:
    return wire.Message(room=1, seq=seq, cid=f"c{seq}", sender=1, sender_name="alice",
                        kind="text", body="\U0001d11e" * chars, ts=seq)


def encoded(items: Sequence[object]) -> int:
    return len(wire.encode(list(items)))


def test_a_page_of_small_items_is_not_cut() -> None:
    items = [{"id": i} for i in range(10)]
    assert wire.bounded_page(items, 1000) == (items, False)
    assert wire.bounded_page([], 1000) == ([], False)


def test_a_page_keeps_the_longest_run_from_the_start_that_fits_the_budget() -> None:
    items = [big(s) for s in range(1, 201)]
    page, cut = wire.bounded_page(items)
    assert cut and 1 < len(page) < len(items)
    assert page == items[: len(page)]
    assert encoded(page) <= wire.PAGE_BYTES < encoded(items[: len(page) + 1])


def test_a_backward_page_keeps_the_newest_items() -> None:
    items = [big(s) for s in range(1, 201)]
    page, cut = wire.bounded_page(items, from_end=True)
    assert cut and page == items[-len(page):]
    assert encoded(page) <= wire.PAGE_BYTES < encoded(items[-len(page) - 1:])


def test_the_budget_is_exact_to_the_byte() -> None:
    items = ["x" * 8, "y" * 8, "z" * 8]  # each "..." is 10 bytes, the list 2 + 10*n + commas
    assert wire.bounded_page(items, 2 + 10 + 1 + 10) == (items[:2], True)
    assert wire.bounded_page(items, 2 + 10 + 1 + 10 - 1) == (items[:1], True)
    assert wire.bounded_page(items, 2 + 30 + 2) == (items, False)


def test_an_item_larger_than_the_budget_still_makes_a_page_of_one() -> None:
    items = [big(1), big(2)]
    assert wire.bounded_page(items, 100) == ([items[0]], True)
    assert wire.bounded_page(items, 100, from_end=True) == ([items[1]], True)


def test_a_page_of_maximum_size_messages_fits_the_bus_with_room_to_spare() -> None:
    page, _ = wire.bounded_page([big(s) for s in range(1, 201)])
    reply = wire.Reply(ok=True, result={"room": 1, "messages": page, "has_more": True,
                                        "last_seq": 200})
    assert len(wire.encode(reply)) < 1024 * 1024 // 2 + 1024


async def test_replay_continues_over_pages_cut_short_by_bytes_until_the_head() -> None:
    store = [big(s, chars=10) for s in range(1, 101)]
    reads: list[int] = []

    async def history(after: int) -> Sequence[wire.Message]:
        reads.append(after)
        await asyncio.sleep(0)
        page, _ = wire.bounded_page([m for m in store if m.seq > after][:200], 400)
        return page

    frames: list[bytes] = []

    async def put(frame: Frame) -> None:
        frames.append(frame.data)

    cursor = Cursor(0)
    assert cursor.expect(100) and cursor.begin_repair()
    await repair(1, cursor, history, put, lambda m: Frame(b"%d" % m.seq), lambda: True)
    assert frames == [b"%d" % s for s in range(1, 101)]
    assert len(reads) > 10 and reads == sorted(set(reads))
    assert cursor.last == 100 and not cursor.pending and not cursor.repairing
