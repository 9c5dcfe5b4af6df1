"""The edge's limits in one place: login throttling, REST bodies, HTTP reads, frame shape.

- ``LoginGuard``: failed logins per account and per client address in moving windows
  (the ``limits`` library), a longer second window that backs off repeat offenders, and
  a cap on concurrent password verifications (Argon2id is costly by design).
- ``BodyLimitMiddleware``: REST bodies refused by Content-Length and while they stream,
  before anything is buffered, and a deadline for the whole body.
- ``header_guarded_h11``: uvicorn's h11 protocol with a deadline for the request head
  and a bound on connections still waiting for theirs (uvicorn has neither).
- ``check_frame``: nesting depth and NUL characters of a decoded WebSocket frame.
- ``RequestLimiter``: requests per WebSocket in a sliding window counter.
- ``ConnectionCounts``: open WebSockets per user and per client address on this edge.

REST refusals (``HttpRefusal``) use the codes of the one error table, camcore/errors.py,
and its HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Final

import h11
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from uvicorn.protocols.http.h11_impl import H11Protocol

from camcore import errors, wire
from camcore.errors import CamError

Scope = dict[str, Any]

MAX_FRAME_DEPTH: Final = 32
"""Deepest nesting of arrays and objects in a client frame (the frame itself is 1)."""
MAX_HEADER_BYTES: Final = 16 * 1024
"""Largest request head (request line and headers) the edge reads (h11)."""
BACKOFF_FACTOR: Final = 4
"""The second window is this many times the failures over 4x this many times as long."""
WAITING_PER_SLOT: Final = 8
"""Logins that may wait for a verification slot, per slot, before more get 429."""


class HttpRefusal(CamError):
    """A REST request refused before it is served, with its own HTTP status."""

    def __init__(self, message: str, code: str, *, retry_after: float | None = None,
                 close: bool = False) -> None:
        super().__init__(message, code)
        self.status = errors.CODES[code].http_status
        self.retry_after = retry_after
        self.close = close

    def headers(self) -> dict[str, str]:
        headers = {"cache-control": "no-store"}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        if self.close:
            headers["connection"] = "close"
        return headers

    def body(self) -> bytes:
        return wire.encode({"error": {"code": self.code, "message": self.message}})


def rate_limited(retry_after: float, what: str = "login attempts") -> HttpRefusal:
    return HttpRefusal(f"too many {what}; retry in {max(1, math.ceil(retry_after))} s",
                       errors.RATE_LIMITED, retry_after=retry_after)


# ---------------------------------------------------------------- logins


class LoginGuard:
    """Who may try a password now, and how many verifications run at once."""

    def __init__(self, *, max_failures: int, address_max_failures: int, window: int,
                 concurrency: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._account: tuple[RateLimitItem, ...] = (RateLimitItemPerSecond(max_failures, window),
                         RateLimitItemPerSecond(BACKOFF_FACTOR * max_failures,
                                                BACKOFF_FACTOR * BACKOFF_FACTOR * window))
        self._address: tuple[RateLimitItem, ...] = (RateLimitItemPerSecond(address_max_failures, window),
                         RateLimitItemPerSecond(BACKOFF_FACTOR * address_max_failures,
                                                BACKOFF_FACTOR * BACKOFF_FACTOR * window))
        self._slots = asyncio.Semaphore(concurrency)
        self._max_waiting = concurrency * WAITING_PER_SLOT
        self._waiting = 0

    def _address_keys(self, address: str | None) -> list[tuple[RateLimitItem, str, str]]:
        return [(item, "address", address or "?") for item in self._address]

    def _keys(self, username: str, address: str | None
              ) -> list[tuple[RateLimitItem, str, str]]:
        keys = [(item, "account", username[:128]) for item in self._account]
        return keys + self._address_keys(address)

    def _refuse_while_locked(self, keys: list[tuple[RateLimitItem, str, str]],
                             what: str = "login attempts") -> None:
        """Raise a 429 refusal while any of ``keys`` is locked out."""
        wait: float | None = None
        now = time.time()
        for item, kind, key in keys:
            if not self._limiter.test(item, kind, key):
                stats = self._limiter.get_window_stats(item, kind, key)
                wait = max(wait or 0.0, stats.reset_time - now)
        if wait is not None:
            raise rate_limited(wait, what)

    def _hit(self, keys: list[tuple[RateLimitItem, str, str]]) -> None:
        for item, kind, key in keys:
            self._limiter.hit(item, kind, key)

    def check(self, username: str, address: str | None) -> None:
        """Raise a 429 refusal while the account or the address is locked out."""
        self._refuse_while_locked(self._keys(username, address))

    def failed(self, username: str, address: str | None) -> None:
        self._hit(self._keys(username, address))

    def check_address(self, address: str | None) -> None:
        """Raise a 429 refusal while the address is locked out (``POST /api/guest``)."""
        self._refuse_while_locked(self._address_keys(address), "attempts")

    def failed_address(self, address: str | None) -> None:
        """One failure of the address that is not a login's (a meeting link that does
        not work): counted with its failed logins."""
        self._hit(self._address_keys(address))

    def succeeded(self, username: str) -> None:
        """The right password ends the account's count (not the address's)."""
        for item in self._account:
            self._limiter.clear(item, "account", username[:128])

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the verification slots; 429 when too many logins already wait."""
        if self._waiting >= self._max_waiting:
            raise rate_limited(1.0)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


# ---------------------------------------------------------------- WebSockets


class RateLimited(CamError):
    """An op refused by a rate limit; the error frame carries ``retry_after``."""

    code = errors.RATE_LIMITED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Window:
    """One connection's counts: requests in the current fixed window, and in the one
    before it."""

    __slots__ = ("count", "index", "previous")

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.previous = 0


class RequestLimiter:
    """Requests per WebSocket: ``limit`` in any ``window`` seconds.

    A sliding window counter, the algorithm of the ``limits`` library's
    ``SlidingWindowCounterRateLimiter``: the count of the current fixed window plus the
    previous window's, weighted by the share of it the sliding window still covers. Two
    numbers per connection, kept here rather than in ``limits``' in-memory storage: that
    storage expires its keys from a thread that wakes every 10 ms while keys change and
    scans every key under the GIL, which with thousands of connections takes an edge's
    CPU and delays its deliveries (docs/benchmarks.md). A closed connection's counts go
    with ``forget``.
    """

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}

    def hit(self, key: str) -> None:
        """Count one request of connection ``key``; RateLimited when it is one too many."""
        now = time.monotonic()
        index = int(now // self.window)
        counts = self._windows.get(key)
        if counts is None:
            counts = self._windows[key] = _Window(index)
        elif counts.index != index:
            counts.previous = counts.count if index == counts.index + 1 else 0
            counts.count, counts.index = 0, index
        elapsed = now - index * self.window
        weight = 1 - elapsed / self.window
        if counts.previous * weight + counts.count + 1 <= self.limit:
            counts.count += 1
            return
        wait = max(0.1, self._wait(counts, elapsed))
        raise RateLimited(f"more than {self.limit} requests in {self.window} s; "
                          f"retry in {wait:.1f} s", round(wait, 1))

    def _wait(self, counts: _Window, elapsed: float) -> float:
        """Seconds until one more request fits."""
        room = self.limit - 1 - counts.count
        if room >= 0 and counts.previous:  # later in this window, as the previous decays
            return self.window * (1 - room / counts.previous) - elapsed
        # In the next window, once enough of this one has slid out.
        decay = self.window * (1 - (self.limit - 1) / counts.count) if counts.count else 0.0
        return self.window - elapsed + max(0.0, decay)

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)


class ConnectionCounts:
    """Open WebSockets of this edge per client address and per user, with their caps."""

    def __init__(self, *, per_address: int, per_user: int) -> None:
        self.per_address, self.per_user = per_address, per_user
        self._addresses: dict[str, int] = {}
        self._users: dict[int, int] = {}

    @staticmethod
    def _take(table: dict[Any, int], key: Any, cap: int) -> bool:
        count = table.get(key, 0)
        if count >= cap:
            return False
        table[key] = count + 1
        return True

    @staticmethod
    def _give(table: dict[Any, int], key: Any) -> None:
        count = table.get(key, 0) - 1
        if count > 0:
            table[key] = count
        else:
            table.pop(key, None)

    def open_address(self, address: str) -> bool:
        """Count a new WebSocket from ``address``; False (not counted) past the cap."""
        return self._take(self._addresses, address, self.per_address)

    def close_address(self, address: str) -> None:
        self._give(self._addresses, address)

    def open_user(self, user: int) -> bool:
        """Count an authenticated WebSocket of ``user``; False (not counted) past the cap."""
        return self._take(self._users, user, self.per_user)

    def close_user(self, user: int) -> None:
        self._give(self._users, user)


# ---------------------------------------------------------------- REST bodies


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def send_refusal(send: Any, refusal: HttpRefusal) -> None:
    body = refusal.body()
    headers = [(k.encode(), v.encode()) for k, v in refusal.headers().items()]
    headers += [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI: a request body over ``max_bytes`` gets 413 and the connection is closed;
    one that does not arrive within ``timeout`` seconds gets 408."""

    def __init__(self, app: Any, max_bytes: int, timeout: float,
                 exempt: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.exempt = exempt
        """Paths that bound their own bodies (uploads: cam.maxUploadBytes)."""

    def too_large(self) -> HttpRefusal:
        return HttpRefusal(f"request body over {self.max_bytes} bytes", errors.REQUEST_TOO_LARGE,
                           close=True)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await send_refusal(send, self.too_large())
            return
        received = 0
        done = False
        deadline = asyncio.get_running_loop().time() + self.timeout
        started = False

        async def limited_receive() -> Any:
            nonlocal received, done
            if done:
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise HttpRefusal(f"request body not received within {self.timeout:g} s",
                                  errors.REQUEST_TIMEOUT, close=True) from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()
            done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HttpRefusal as refusal:
            if started:
                raise
            await send_refusal(send, refusal)


# ---------------------------------------------------------------- request heads


class HeaderGuardedH11(H11Protocol):
    """h11 with a deadline for each request head: a connection that has not sent a
    complete request line and headers within ``header_timeout`` seconds of opening (or of
    its first byte of a next request) is closed. At most ``max_pending`` connections
    may wait for their head at once; more are closed at once."""

    header_timeout: ClassVar[float] = 10.0
    max_pending: ClassVar[int] = 1000
    pending: ClassVar[set[HeaderGuardedH11]] = set()

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.pending) >= self.max_pending:
            self.logger.warning("closed a connection: %d already wait for their request head",
                                len(self.pending))
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            self._disarm()  # closed, or upgraded to a WebSocket
        elif self.conn.their_state is h11.IDLE:
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A next request begun while this one was served waits in h11's buffer.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0] \
                and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self.pending.add(self)
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.pending.discard(self)

    def _head_timeout(self) -> None:
        self._head_timer = None
        self.pending.discard(self)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_guarded_h11(header_timeout: float, max_pending: int) -> type[HeaderGuardedH11]:
    """The protocol class to give uvicorn (``http=``), with these bounds."""
    timeout, bound = header_timeout, max_pending

    class Guarded(HeaderGuardedH11):
        header_timeout = timeout
        max_pending = bound
        pending: ClassVar[set[HeaderGuardedH11]] = set()

    return Guarded


# ---------------------------------------------------------------- WebSocket frames


def check_frame(raw: Any, max_depth: int = MAX_FRAME_DEPTH) -> None:
    """Refuse a decoded frame nested deeper than ``max_depth`` (``malformed_frame``) or
    holding a NUL character in any string or key (``bad_request``)."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    nul = False
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise CamError(f"frame nested deeper than {max_depth} levels",
                               errors.MALFORMED_FRAME)
            for key, item in value.items():
                nul = nul or "\x00" in key
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > max_depth:
                raise CamError(f"frame nested deeper than {max_depth} levels",
                               errors.MALFORMED_FRAME)
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            nul = nul or "\x00" in value
    if nul:
        raise CamError("strings must not hold NUL characters", errors.BAD_REQUEST)
