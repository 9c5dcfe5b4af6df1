"""Group commit (``cam_chat.batch``) on a real PostgreSQL: sends that arrive together
share a transaction, and every guarantee of a single send still holds: gap-free seqs in
arrival order per room, one row per cid, not_a_member answered per send, and a send that
makes the statement fail fails alone."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from cam_chat.batch import GroupCommit, Stored

from camcore import accounts


async def setup(pool: asyncpg.Pool, rooms: int, senders: int) -> tuple[list[int], list[int], int]:
    users = [(await accounts.create_user(pool, f"gc{i}", "group-commit-pw")).id
             for i in range(senders)]
    outsider = (await accounts.create_user(pool, "outsider", "group-commit-pw")).id
    room_ids = []
    for r in range(rooms):
        room = await pool.fetchval(
            "INSERT INTO rooms (kind, name, created_by) VALUES ('group', $1, $2) RETURNING id",
            f"room{r}", users[0])
        await pool.executemany("INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)",
                               [(room, u) for u in users])
        room_ids.append(room)
    return room_ids, users, outsider


async def test_sends_that_arrive_together_share_a_commit_and_keep_every_guarantee(
        pool: asyncpg.Pool) -> None:
    rooms, users, outsider = await setup(pool, rooms=5, senders=4)
    group = GroupCommit(pool)
    plan: list[tuple[int, int, str]] = []
    for n in range(60):
        for room in rooms:
            plan.append((room, users[n % len(users)], f"c{room}-{n}"))
    plan.insert(7, plan[3])  # a retry of a cid, in the same burst
    plan.append((rooms[0], outsider, "not-a-member"))
    answers = await asyncio.gather(*(group.post(room, sender, cid, "text", f"body {cid}")
                                     for room, sender, cid in plan))
    # Committed in far fewer transactions than sends.
    assert group.rows == len(plan) and group.batches < len(plan) / 4, (group.batches,
                                                                        group.rows)
    by_cid: dict[str, Stored] = {}
    for (_room, sender, cid), answer in zip(plan, answers, strict=True):
        if sender == outsider:
            assert answer is None
            continue
        assert answer is not None
        if cid in by_cid:  # the retry: the same row
            assert answer.duplicate and answer.seq == by_cid[cid].seq
        else:
            assert not answer.duplicate
            by_cid[cid] = answer
    for room in rooms:
        rows = await pool.fetch("SELECT seq, cid FROM messages WHERE room_id = $1 ORDER BY seq",
                                room)
        # Gap-free from 1, one row per cid, in the order the sends arrived.
        assert [r["seq"] for r in rows] == list(range(1, 61))
        assert [r["cid"] for r in rows] == [f"c{room}-{n}" for n in range(60)]
        assert await pool.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room) == 60
        assert all(by_cid[r["cid"]].seq == r["seq"] for r in rows)


async def test_a_send_that_breaks_the_statement_fails_alone(pool: asyncpg.Pool) -> None:
    rooms, users, _ = await setup(pool, rooms=2, senders=2)
    group = GroupCommit(pool)
    sends: list[tuple[int, int, str, str]] = [
        (rooms[0], users[0], "good-1", "text"),
        (rooms[1], users[1], "bad", "no-such-kind"),  # the kind check refuses it
        (rooms[0], users[1], "good-2", "text"),
        (rooms[1], users[0], "good-3", "text"),
    ]
    answers: list[Any] = await asyncio.gather(
        *(group.post(room, sender, cid, kind, f"body {cid}") for room, sender, cid, kind in sends),
        return_exceptions=True)
    assert isinstance(answers[1], asyncpg.CheckViolationError), answers[1]
    assert all(isinstance(a, Stored) for i, a in enumerate(answers) if i != 1), answers
    # The failed batch left no seq behind: each room is gap-free.
    for room in rooms:
        seqs = [r["seq"] for r in await pool.fetch(
            "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room)]
        assert seqs == list(range(1, len(seqs) + 1))
    assert await pool.fetchval("SELECT count(*) FROM messages") == 3


async def test_a_batch_is_bounded_in_rows_and_bytes(pool: asyncpg.Pool) -> None:
    rooms, users, _ = await setup(pool, rooms=1, senders=1)
    by_rows = GroupCommit(pool, max_rows=8)
    await asyncio.gather(*(by_rows.post(rooms[0], users[0], f"r{n}", "text", "x")
                           for n in range(40)))
    assert by_rows.batches >= 5
    by_bytes = GroupCommit(pool, max_bytes=10_000)
    await asyncio.gather(*(by_bytes.post(rooms[0], users[0], f"b{n}", "text", "y" * 4000)
                           for n in range(10)))
    assert by_bytes.batches >= 5  # two bodies of 4000 bytes per batch at most


@pytest.mark.parametrize("stop_after", [0, 1])
async def test_a_stopped_replica_leaves_no_send_waiting(pool: asyncpg.Pool,
                                                        stop_after: int) -> None:
    rooms, users, _ = await setup(pool, rooms=1, senders=1)
    group = GroupCommit(pool, max_rows=1)
    posts = [asyncio.create_task(group.post(rooms[0], users[0], f"s{n}", "text", "z"))
             for n in range(5)]
    for _ in range(stop_after):
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    flushers = set(group._flushers)  # noqa: SLF001 - the replica's shutdown cancels them
    assert flushers
    for flusher in flushers:
        flusher.cancel()
    done = await asyncio.wait_for(asyncio.gather(*posts, return_exceptions=True), 10)
    assert all(isinstance(d, (Stored, asyncio.CancelledError)) for d in done), done
    assert any(isinstance(d, asyncio.CancelledError) for d in done)


async def test_two_replicas_sending_the_same_cids_at_once_store_each_once(
        pool: asyncpg.Pool) -> None:
    """Two replicas' batches hold the same cids (a client's retry reached both): each
    is stored once, both answers name the same row, and the rooms stay gap-free."""
    rooms, users, _ = await setup(pool, rooms=3, senders=2)
    replicas = (GroupCommit(pool), GroupCommit(pool))
    plan = [(rooms[n % 3], users[n % 2], f"race-{n}") for n in range(90)]
    answers = await asyncio.gather(*(
        replica.post(room, sender, cid, "text", f"body {cid}")
        for room, sender, cid in plan for replica in replicas))
    for first, second in zip(answers[0::2], answers[1::2], strict=True):
        assert first is not None and second is not None
        assert first.seq == second.seq and first.created_at == second.created_at
        assert sorted((first.duplicate, second.duplicate)) == [False, True]
    for room in rooms:
        seqs = [r["seq"] for r in await pool.fetch(
            "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room)]
        assert seqs == list(range(1, 31))
    assert sum(r.batches for r in replicas) < len(plan)  # they did share commits
