"""NATS plumbing shared by every service: connecting, request/reply, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec
import nats
from nats.aio.client import DEFAULT_MAX_PAYLOAD_SIZE
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import errors, metrics, permissions, requestid, subjects
from .errors import CamError, Unavailable
from .loops import Body, every
from .wire import Reply, encode

log = logging.getLogger(__name__)

_reply_decoder = msgspec.json.Decoder(Reply)
_BEAT_ERRORS: tuple[type[BaseException], ...] = (*errors.BUS_UNAVAILABLE_ERRORS, OSError)


async def connect(
    urls: Sequence[str],
    name: str,
    *,
    connect_deadline: float = 30.0,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    credentials: str | os.PathLike[str] | None = None,
) -> NATS:
    """Connect, retrying until ``connect_deadline``; afterwards reconnect forever.

    ``credentials`` names this process's credentials file (``cam.natsCredentials``);
    refused credentials fail at once with a clear error rather than being retried.
    """
    auth: dict[str, Any] = {}
    if credentials:
        cred = permissions.read_credential(credentials)
        auth = {"user": cred.user, "password": cred.password, "inbox_prefix": cred.inbox_prefix}

    refused = asyncio.Event()  # the servers refused our credentials before we got in

    async def on_error(exc: Exception) -> None:
        if _refusal(exc) and not nc.is_connected:
            refused.set()
        log.warning("bus: %s", exc)

    async def on_disconnect() -> None:
        # nats calls this on our own close() too; only a lost connection is news.
        if nc.is_closed:
            log.debug("bus: connection closed")
        else:
            log.warning("bus: disconnected")
            metrics.bus_lost()
        if disconnected_cb:
            await disconnected_cb()

    async def on_reconnect() -> None:
        log.info("bus: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")
        metrics.bus_back()
        if reconnected_cb:
            await reconnected_cb()

    deadline = time.monotonic() + connect_deadline
    where = ", ".join(urls)
    while True:
        nc = NATS()
        refused.clear()
        # nats keeps retrying servers that refuse the credentials: watch for the refusal.
        attempt = asyncio.ensure_future(nc.connect(
            servers=list(urls),
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; the stub says int
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **auth,
        ))
        watch = asyncio.ensure_future(refused.wait())
        await asyncio.wait({attempt, watch}, timeout=max(0.5, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        exc = attempt.exception() if attempt.done() and not attempt.cancelled() else None
        if attempt.done() and exc is None:
            metrics.bus_up()
            return nc
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(Exception):
                await nc.close()
        if refused.is_set() or (exc is not None and _refusal(exc)):
            raise permissions.CredentialError(
                f"the bus at {where} refused the credentials of {name!r}"
                + (f" ({credentials})" if credentials else " (none given: set cam.natsCredentials)"))
        if time.monotonic() > deadline:
            raise Unavailable(f"cannot connect to the bus at {where}: {exc or 'timed out'}")
        log.info("bus not reachable yet (%s), retrying", exc)
        await asyncio.sleep(0.5)


def _refusal(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower())


Handler = Callable[[Any], Awaitable[Any]]

TOO_LARGE: Final = errors.TOO_LARGE
"""The reply code of an answer larger than the bus payload limit.

Belongs in ``camcore.errors.CODES`` (HTTP 413); kept here until it is registered there."""


class RpcServer:
    """Serves ``<prefix>.<op>`` requests in a queue group, each in its own task.

    Every reply is a ``Reply``: the handler's result, or an error code and message.
    """

    def __init__(
        self,
        nc: NATS,
        prefix: str,
        queue: str,
        handlers: dict[str, tuple[type[msgspec.Struct], Handler]],
        *,
        concurrency: int = 64,
    ) -> None:
        self._nc = nc
        self._prefix = prefix
        self._queue = queue
        self._decoders = {op: msgspec.json.Decoder(t) for op, (t, _) in handlers.items()}
        self._handlers = {op: h for op, (_, h) in handlers.items()}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self.served = 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", queue=self._queue, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop taking requests, then let the ones in flight finish."""
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _on_msg(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        # A task of its own per request (_on_msg), so the caller's id stays with it.
        requestid.current.set(requestid.from_bus_headers(msg.headers))
        started = time.monotonic()
        op = msg.subject.rsplit(".", 1)[-1]
        try:
            decoder = self._decoders.get(op)
            if decoder is None:
                raise CamError(f"unknown operation {op!r}", errors.UNKNOWN_OP)
            try:
                request = decoder.decode(msg.data)
            except msgspec.ValidationError as exc:
                raise CamError(f"invalid request: {exc}", errors.BAD_REQUEST) from None
            except msgspec.DecodeError:
                raise CamError("request is not valid JSON", errors.MALFORMED_FRAME) from None
            reply = Reply(ok=True, result=await self._handlers[op](request))
        except Exception as exc:
            failed = errors.report(log, f"{self._prefix}.{op[:40]}", exc)
            reply = Reply(ok=False, code=failed.code, message=failed.message)
        self.served += 1
        log.debug("%s.%s %s in %.1f ms", self._prefix, op[:40], "ok" if reply.ok else reply.code,
                  (time.monotonic() - started) * 1000)
        if msg.reply:
            data = encode(reply)
            # The server's limit, from its INFO (nats' default before it sent one).
            limit = int(getattr(self._nc, "max_payload", DEFAULT_MAX_PAYLOAD_SIZE))
            if len(data) > limit:
                # The bus would refuse it and the requester would wait out its timeout.
                log.error("%s: reply of %d bytes exceeds the bus payload limit (%d)",
                          op, len(data), limit)
                data = encode(Reply(ok=False, code=TOO_LARGE, message=(
                    f"the answer ({len(data)} bytes) exceeds the bus payload limit "
                    f"({limit} bytes)")))
            try:
                await msg.respond(data)
            except Exception as exc:  # noqa: BLE001 - the requester retries on timeout
                log.warning("%s: reply lost: %s", op, exc)


async def call(nc: NATS, subject: str, request: msgspec.Struct, *, timeout: float = 5.0) -> Any:
    """Send one request and return its result; raise CamError with the reply's code."""
    if not nc.is_connected:
        raise Unavailable("the message bus is unavailable")
    try:
        msg = await nc.request(subject, encode(request), timeout=timeout,
                               headers=requestid.bus_headers())
    except nats.errors.NoRespondersError:
        raise Unavailable("no service is answering; retry later") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise Unavailable("the service did not answer in time; retry later") from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError, nats.errors.StaleConnectionError, OSError):
        raise Unavailable("the message bus is unavailable") from None
    reply = _reply_decoder.decode(msg.data)
    if not reply.ok:
        raise CamError(reply.message or reply.code or "error", reply.code or errors.INTERNAL)
    return reply.result


class Heartbeat(msgspec.Struct, kw_only=True):
    """Payload of ``cam.hb.<kind>.<instance>``."""

    kind: str
    instance: str
    node: str
    pid: int
    started: float
    interval: float
    load: dict[str, float] = {}
    bus: str = ""
    """The NATS server the process is connected to (``host:port``)."""
    address: str = ""
    """An edge's own entry of cam.clusterHosts (its address), else empty."""


def heartbeat(
    nc: NATS,
    kind: str,
    instance: str,
    node: str,
    interval: float,
    load: Callable[[], dict[str, float]],
    *,
    address: str = "",
) -> Body:
    """The body of a loop that publishes a heartbeat every ``interval`` seconds.

    Run it under ``camcore.loops`` (``Loops.start``), so a crash (say, in ``load``) is
    logged and the beats start again.
    """
    subject = subjects.heartbeat(kind, instance)
    started = time.time()

    async def beat() -> None:
        if not nc.is_connected:
            return
        url = nc.connected_url
        hb = Heartbeat(kind=kind, instance=instance, node=node, pid=os.getpid(),
                       started=started, interval=interval, load=load(),
                       bus=url.netloc.rpartition("@")[2] if url else "", address=address)
        try:
            await nc.publish(subject, encode(hb))
        except _BEAT_ERRORS as exc:  # the next beat tries again
            log.debug("heartbeat not sent: %s", exc)

    return every(interval, beat, at_once=True)
