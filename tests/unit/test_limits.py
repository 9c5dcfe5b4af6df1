"""The edge's limits on their own: login lockout and backoff, verification slots, frames,
requests and connections per client (the outgoing bounds: test_outgoing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cam_edge.limits import (
    BodyLimitMiddleware,
    ConnectionCounts,
    HttpRefusal,
    LoginGuard,
    RateLimited,
    RequestLimiter,
    check_frame,
)

from camcore import errors
from camcore.errors import CamError


def guard(**kw: int) -> LoginGuard:
    options = {"max_failures": 3, "address_max_failures": 10, "window": 60, "concurrency": 2}
    return LoginGuard(**{**options, **kw})


def test_an_account_is_locked_after_its_failures_and_the_refusal_says_when_to_retry():
    g = guard()
    for _ in range(3):
        g.check("alice", "192.0.2.1")
        g.failed("alice", "192.0.2.1")
    with pytest.raises(HttpRefusal) as exc:
        g.check("alice", "192.0.2.2")  # another address: the account itself is locked
    assert exc.value.status == 429 and exc.value.code == "rate_limited"
    assert 1 <= int(exc.value.headers()["retry-after"]) <= 60
    g.check("bob", "192.0.2.1")  # others are not


def test_an_address_is_locked_after_failures_on_many_accounts():
    g = guard(address_max_failures=4)
    for i in range(4):
        g.failed(f"user{i}", "198.51.100.7")
    with pytest.raises(HttpRefusal):
        g.check("someone-else", "198.51.100.7")
    g.check("someone-else", "198.51.100.8")


def test_the_right_password_clears_the_accounts_count_but_not_the_addresss():
    g = guard(address_max_failures=5)
    for _ in range(2):
        g.failed("alice", "192.0.2.1")
    g.succeeded("alice")
    for _ in range(2):
        g.failed("alice", "192.0.2.1")
    g.check("alice", "192.0.2.1")  # 2 since the success: below 3
    g.failed("alice", "192.0.2.1")
    with pytest.raises(HttpRefusal):
        g.check("bob", "192.0.2.1")  # 5 from the address


def test_repeat_offenders_back_off_to_a_longer_window():
    g = guard(max_failures=2, window=10)
    for _ in range(2):
        g.failed("alice", None)
    with pytest.raises(HttpRefusal) as first:
        g.check("alice", None)
    assert first.value.retry_after is not None and first.value.retry_after <= 10
    for _ in range(6):  # 8 = 4 x 2 failures: the 160 s window is full too
        g.failed("alice", None)
    with pytest.raises(HttpRefusal) as second:
        g.check("alice", None)
    assert second.value.retry_after is not None and second.value.retry_after > 10


async def test_verifications_run_at_most_concurrency_at_once_and_a_flood_gets_429():
    g = guard(concurrency=2)  # 2 slots, 16 may wait
    running = peak = 0
    release = asyncio.Event()

    async def login() -> str:
        nonlocal running, peak
        try:
            async with g.slot():
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1
                return "verified"
        except HttpRefusal as exc:
            return exc.code

    tasks = [asyncio.create_task(login()) for _ in range(30)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks)
    assert peak == 2
    assert results.count("verified") == 18 and results.count("rate_limited") == 12


def nested(depth: int) -> object:
    """A value ``depth`` levels deep, alternating arrays and objects."""
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_a_frame_nested_deeper_than_the_limit_is_malformed():
    check_frame({"op": "conf_signal", "data": nested(31)})  # 32 levels with the frame
    for raw in ({"op": "conf_signal", "data": nested(32)}, {"op": "ping", "x": nested(500)}):
        with pytest.raises(CamError) as exc:
            check_frame(raw)
        assert exc.value.code == errors.MALFORMED_FRAME


def test_a_nul_character_in_any_string_or_key_is_a_bad_request():
    for raw in ({"op": "send", "body": "a\x00b"}, {"op": "auth", "resume": {"1\x00": 1}},
                {"op": "conf_signal", "data": {"sdp": ["ok", "n\x00l"]}}):
        with pytest.raises(CamError) as exc:
            check_frame(raw)
        assert exc.value.code == errors.BAD_REQUEST


async def run_asgi(middleware: BodyLimitMiddleware, headers: list[tuple[bytes, bytes]],
                   chunks: list[bytes], *, stall: bool = False) -> tuple[int, bytes, int]:
    """(status, body, chunks the client had to hand over) for one request."""
    sent: list[dict[str, Any]] = []
    handed = 0

    async def receive() -> dict[str, Any]:
        nonlocal handed
        if handed < len(chunks):
            handed += 1
            return {"type": "http.request", "body": chunks[handed - 1],
                    "more_body": handed < len(chunks) or stall}
        await asyncio.Event().wait()  # the client stalls
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/login", "headers": headers}
    await middleware(scope, receive, send)
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:]), handed


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that reads the whole body, as Starlette's request.body() does."""
    total, more = 0, True
    while more:
        message = await receive()
        total += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


async def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_read():
    limited = BodyLimitMiddleware(echo_length, max_bytes=1024, timeout=5)
    status, body, handed = await run_asgi(limited, [(b"content-length", b"268435456")],
                                          [b"x" * 1024] * 10)
    assert status == 413 and b"request_too_large" in body and handed == 0


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit():
    limited = BodyLimitMiddleware(echo_length, max_bytes=1024, timeout=5)
    status, body, handed = await run_asgi(limited, [], [b"x" * 512] * 100)
    assert status == 413 and handed == 3
    status, body, _ = await run_asgi(limited, [], [b"x" * 512] * 2)
    assert (status, body) == (200, b"1024")


async def test_a_body_that_stops_arriving_gets_408_after_the_timeout():
    limited = BodyLimitMiddleware(echo_length, max_bytes=1024, timeout=0.2)
    status, body, _ = await run_asgi(limited, [(b"content-length", b"100")], [b"x" * 10],
                                     stall=True)
    assert status == 408 and b"request_timeout" in body


# ---------------------------------------------------------------- WebSockets


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The limiter's clock, at the start of a 10 s window; set ``clock[0]`` to move it."""
    now = [1000.0]
    monkeypatch.setattr("cam_edge.limits.time.monotonic", lambda: now[0])
    return now


def full_limiter(limit: int) -> RequestLimiter:
    """A limiter of ``limit`` per 10 s whose connection "a" has used all of them."""
    limiter = RequestLimiter(limit, 10)
    for _ in range(limit):
        limiter.hit("a")
    return limiter


def test_requests_per_connection_are_limited_each_on_its_own_with_a_retry_hint(
        clock: list[float]) -> None:
    limiter = full_limiter(5)
    with pytest.raises(RateLimited) as exc:
        limiter.hit("a")
    # The counter is conservative: five at a window's start still weigh 4 of 5 two
    # seconds into the next window, so the hint is 12 s, not 10 (and it is exact).
    assert exc.value.code == "rate_limited" and exc.value.retry_after == pytest.approx(12.0)
    clock[0] = 1011.9
    with pytest.raises(RateLimited):
        limiter.hit("a")
    clock[0] = 1012.0
    limiter.hit("a")
    limiter.hit("b")  # another connection has its own budget
    for _ in range(4):
        limiter.hit("b")
    limiter.forget("b")  # a closed connection's count goes
    limiter.hit("b")


def test_the_request_window_slides_the_previous_windows_requests_out_gradually(
        clock: list[float]) -> None:
    limiter = full_limiter(10)
    clock[0] = 1009.0
    with pytest.raises(RateLimited) as full:
        limiter.hit("a")
    assert full.value.retry_after == pytest.approx(2.0)  # at 1011, a tenth has slid out
    clock[0] = 1012.5  # 25 % into the next window: 7.5 of the 10 still count
    for _ in range(2):
        limiter.hit("a")
    with pytest.raises(RateLimited) as decaying:
        limiter.hit("a")  # 7.5 + 2 + 1 > 10
    assert decaying.value.retry_after == pytest.approx(0.5)  # at 30 %, 7 + 2 + 1 fit
    clock[0] = 1013.0
    limiter.hit("a")
    clock[0] = 1035.0  # two windows later: nothing counts any more
    for _ in range(10):
        limiter.hit("a")


def test_connection_counts_are_capped_per_address_and_per_user_and_given_back():
    counts = ConnectionCounts(per_address=2, per_user=1)
    assert counts.open_address("192.0.2.1") and counts.open_address("192.0.2.1")
    assert not counts.open_address("192.0.2.1")
    assert counts.open_address("192.0.2.2")
    counts.close_address("192.0.2.1")
    assert counts.open_address("192.0.2.1")
    assert counts.open_user(7) and not counts.open_user(7) and counts.open_user(8)
    counts.close_user(7)
    assert counts.open_user(7)
    counts.close_user(9)  # never opened: nothing to give back, and no negative count
    assert counts.open_user(9) and not counts.open_user(9)
