"""The write path of one client (cam_edge.outgoing) against a stand-in socket: frames
written in order and together per loop turn, the byte and frame bounds of a client
that does not read, replays at the client's pace, and the close."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from cam_edge import metrics
from cam_edge.outgoing import Outgoing
from cam_edge.wsproto import Frame

from camcore import protocol
from tests.unit.fakes import FakeWebSocket


def outgoing(max_frames: int = 100, max_bytes: int = 1 << 20) -> tuple[Outgoing, FakeWebSocket]:
    ws = FakeWebSocket()
    return Outgoing(ws, max_frames, max_bytes), ws  # type: ignore[arg-type]


def texts(ws: FakeWebSocket) -> list[bytes]:
    return [frame.data for frame in ws.socket.frames]


async def turn() -> None:
    """Let the event loop run what this turn scheduled (the flush)."""
    await asyncio.sleep(0)


async def test_frames_pushed_in_one_turn_are_written_together_and_in_order() -> None:
    out, ws = outgoing()
    for i in range(5):
        out.push(Frame(b"%d" % i))
    assert ws.socket.writes == []  # nothing written until the end of the turn
    assert out.queued_frames == 5
    await turn()
    out.push(Frame(b"5"))
    await turn()
    assert [len(write) for write in ws.socket.writes] == [5, 1]
    assert texts(ws) == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert out.queued_bytes == 0 and out.queued_frames == 0


async def test_one_event_is_serialized_once_for_every_socket() -> None:
    event = Frame(b'{"op":"message"}', ts=1)
    sockets = [outgoing() for _ in range(3)]
    for out, _ in sockets:
        out.push(event)
    await turn()
    written = [ws.socket.frames[0].wire() for _, ws in sockets]
    assert written[0] is written[1] is written[2]  # the same bytes object
    assert written[0] == b"\x81\x10" + b'{"op":"message"}'  # FIN, text, unmasked


async def test_a_client_past_the_byte_bound_is_closed_4001_and_its_unwritten_frames_dropped(
        ) -> None:
    out, ws = outgoing(max_frames=10_000, max_bytes=1 << 20)
    ws.socket.stalled = True  # the client takes nothing
    big = Frame(b"x" * 100_000)
    pushed = 0
    while out.close_code is None:
        out.push(big)
        pushed += 1
        assert out.queued_bytes <= 1 << 20
        await turn()
    assert out.close_code == protocol.CLOSE_RESUME
    assert pushed == 11  # ten fit in 1 MiB; the eleventh would not
    assert len(ws.socket.frames) == 10
    await asyncio.wait_for(out.closed(), 2)
    assert ws.close_codes == [protocol.CLOSE_RESUME]


async def test_a_frame_pushed_past_the_bound_in_the_same_turn_drops_the_turns_frames() -> None:
    out, ws = outgoing(max_frames=10_000, max_bytes=1 << 20)
    for _ in range(11):
        out.push(Frame(b"y" * 100_000))
    assert out.close_code == protocol.CLOSE_RESUME
    await turn()
    assert ws.socket.writes == []  # the client resumes from what it has
    await out.closed()


async def test_a_client_past_the_frame_bound_is_closed_4001() -> None:
    out, ws = outgoing(max_frames=20)
    ws.socket.stalled = True
    for i in range(20):
        out.push(Frame(b"%d" % i))
        await turn()
    assert out.queued_frames == 20 and out.close_code is None  # the bound: 20 frames
    out.push(Frame(b"20"))
    assert out.close_code == protocol.CLOSE_RESUME
    await out.closed()


async def test_frames_leave_the_count_as_the_client_takes_their_bytes() -> None:
    out, ws = outgoing(max_frames=20)
    ws.socket.stalled = True
    for i in range(10):
        out.push(Frame(b"%d" % i))  # 3 bytes each on the wire
        await turn()
    assert out.queued_frames == 10
    ws.socket.backlog = 9  # the kernel took all but the last three frames
    assert out.queued_frames == 3
    ws.socket.backlog = 0
    assert out.queued_frames == 0
    for i in range(19):  # the whole frame bound is free again
        out.push(Frame(b"%d" % i))
    assert out.close_code is None


async def test_a_replay_waits_while_the_buffer_is_at_its_mark_and_a_reply_goes_first() -> None:
    out, ws = outgoing(max_bytes=1 << 20)
    assert ws.socket.high == (1 << 20) // 2  # the write buffer's mark: half the bound
    ws.socket.backlog = 600_000
    ws.socket.pause()
    replayed = [Frame(b"old%d" % i, ts=1) for i in range(3)]

    async def replay() -> None:
        for frame in replayed:
            await out.put(frame)

    task = asyncio.create_task(replay())
    await asyncio.sleep(0.05)
    assert not task.done() and ws.socket.writes == []
    out.push(Frame(b"reply"))  # a reply still fits the bound
    ws.socket.backlog = 0
    ws.socket.resume()
    await asyncio.wait_for(task, 2)
    await turn()
    assert texts(ws) == [b"reply", b"old0", b"old1", b"old2"]
    assert out.close_code is None


async def test_a_replay_that_cannot_go_on_closes_the_client_as_too_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "REPLAY_STALL_SECONDS", 0.05)
    out, ws = outgoing()
    ws.socket.backlog = 700_000
    ws.socket.pause()
    await asyncio.wait_for(out.put(Frame(b"old")), 2)
    assert out.close_code == protocol.CLOSE_RESUME and ws.socket.writes == []
    await out.closed()


async def test_a_replay_of_many_small_frames_waits_for_half_the_frame_bound() -> None:
    out, ws = outgoing(max_frames=20)
    ws.socket.stalled = True
    for i in range(10):
        out.push(Frame(b"%d" % i))
        await turn()
    ws.socket.stalled = False
    task = asyncio.create_task(out.put(Frame(b"old")))
    await asyncio.sleep(0.05)
    assert not task.done()  # ten frames in flight: half the bound
    ws.socket.backlog = 0
    await asyncio.wait_for(task, 2)
    assert texts(ws)[-1] == b"old"


async def test_a_close_writes_what_was_pushed_first() -> None:
    out, ws = outgoing()
    out.push(Frame(b"last words"))
    out.close(protocol.CLOSE_RECONNECT_ELSEWHERE, "draining")
    out.push(Frame(b"too late"))
    await asyncio.wait_for(out.closed(), 2)
    assert texts(ws) == [b"last words"]
    assert ws.close_codes == [protocol.CLOSE_RECONNECT_ELSEWHERE]


async def test_a_client_that_never_takes_the_close_frame_is_cut_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "SLOW_CLOSE_GRACE", 0.05)
    ws = FakeWebSocket()
    never = asyncio.Event()

    async def close(code: int = 1000, reason: str = "") -> None:
        await never.wait()  # the close frame waits for a buffer that never drains

    ws.close = close  # type: ignore[method-assign]
    out = Outgoing(ws, 100, 1 << 20)  # type: ignore[arg-type]
    out.close(protocol.CLOSE_RESUME, "too slow")
    await asyncio.sleep(0.2)
    assert ws.socket.aborted
    never.set()
    await out.closed()


async def test_only_message_frames_are_deliveries_live_or_replayed() -> None:
    before = {live: metrics.DELIVERIES[live].value for live in (True, False)}
    out, _ = outgoing()
    out.push(Frame(b"m1", ts=1))
    out.push(Frame(b"reply"))
    await turn()
    await out.put(Frame(b"m0", ts=1))
    got: dict[bool, Any] = {live: metrics.DELIVERIES[live].value - before[live]
                            for live in (True, False)}
    assert got == {True: 1, False: 1}


async def test_a_frame_written_to_many_clients_in_one_turn_counts_and_times_each() -> None:
    count = metrics.DELIVERIES[True].value
    timed = metrics.LATENCY.count
    frame = Frame(b"fan-out", ts=int(time.time() * 1000) - 50)  # committed 50 ms ago
    outs = [outgoing()[0] for _ in range(3)]
    for out in outs:
        out.push(frame)
    outs[0].push(Frame(b"another", ts=int(time.time() * 1000)))
    await turn()
    assert metrics.DELIVERIES[True].value - count == 4
    assert metrics.LATENCY.count - timed == 4
