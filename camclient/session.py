"""A client session that survives node failures.

It keeps one connection to one of several edges. When that connection fails (the node
dies, is frozen, closes with 4001 "resume" or 4002 "reconnect elsewhere"), it moves
to the next edge after a jittered backoff, resumes every room from the last sequence
number it saw, and re-sends each unacknowledged message with the same client message
id, so the server stores it once.

:meth:`Session.for_cluster` builds the list from the cluster information an edge
serves (:mod:`camclient.cluster`): the cluster's hosts in order, or only the load
balancer when one is in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .client import Client, ClientError
from .cluster import ClusterInfo, first_cluster_info

log = logging.getLogger(__name__)

#: Close codes after which reconnecting cannot help.
FATAL_CLOSE = {1008, 4401, 4403}
#: Error codes worth retrying (with the same cid).
RETRYABLE = {"unavailable", "closed", "internal"}


class Session:
    def __init__(self, urls: Sequence[str], token: str, *, ping_interval: float = 1.0,
                 ping_timeout: float = 3.0, backoff_base: float = 0.2, backoff_cap: float = 3.0,
                 rng: random.Random | None = None, compression: str | None = "deflate") -> None:
        self.urls = list(urls)
        self.token = token
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.compression = compression
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_seq: dict[int, int] = {}
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.resync: set[int] = set()
        self.user: dict[str, Any] = {}
        self.rooms: list[dict[str, Any]] = []
        self._index = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.fatal: str | None = None
        self.cluster: ClusterInfo | None = None

    @classmethod
    def from_cluster_info(cls, info: ClusterInfo, token: str, **kwargs: Any) -> Session:
        """A session over ``info.ws_urls()``: the hosts in order, or the load balancer."""
        session = cls(info.ws_urls(), token, **kwargs)
        session.cluster = info
        return session

    @classmethod
    async def for_cluster(cls, base_urls: str | Sequence[str], token: str, *,
                          verify: Any = True, **kwargs: Any) -> Session:
        """Ask the first server of ``base_urls`` that answers for its cluster information
        (``GET /api/cluster``), then make a session over its URLs (not started)."""
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        return cls.from_cluster_info(await first_cluster_info(urls, verify=verify), token, **kwargs)

    async def start(self, timeout: float = 30.0) -> Session:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), timeout)
        return self

    def _delay(self, attempt: int) -> float:
        # Full jitter: clients of a dead node do not all come back at the same instant.
        return self.rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            url = self.urls[self._index % len(self.urls)]
            try:
                client = await Client.connect(url, self.token, resume=dict(self.last_seq),
                                              events=self.events, last_seq=self.last_seq,
                                              open_timeout=5, compression=self.compression)
            except (OSError, TimeoutError, ClientError, Exception) as exc:  # noqa: BLE001
                if isinstance(exc, ClientError) and exc.code == "unauthenticated":
                    self.fatal = exc.message
                    return
                log.debug("connect to %s failed: %s", url, exc)
                self._index += 1
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                continue
            attempt = 0
            self.client, self.user, self.connections = client, client.user, self.connections + 1
            if not self.rooms:
                self.rooms = client.rooms
            self.resync.update(client.resync)
            self.connected.set()
            code = await self._watch(client)
            self.connected.clear()
            self.client = None
            self.close_codes.append(code)
            if code in FATAL_CLOSE:
                self.fatal = f"closed with {code}"
                return
            self._index += 1
            await asyncio.sleep(self._delay(0))

    async def _watch(self, client: Client) -> int | None:
        """Ping until the connection dies; a missing pong means a dead or frozen node."""
        reader = client._reader
        assert reader is not None
        while not reader.done() and not self._closing:
            try:
                await client.request("ping", timeout=self.ping_timeout)
            except (ClientError, TimeoutError):
                if not reader.done():
                    client.abort()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), self.ping_interval)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(reader), 2)
        return client.close_code

    async def request(self, op: str, *, deadline: float = 60.0, **fields: Any) -> Any:
        """An op, retried on any node until it succeeds, fails for good, or ``deadline``."""
        end = time.monotonic() + deadline
        attempt = 0
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or self.fatal:
                raise ClientError("unavailable", self.fatal or f"{op} did not succeed in time")
            try:
                await asyncio.wait_for(self.connected.wait(), remaining)
                client = self.client
                if client is None:
                    continue
                return await client.request(op, timeout=min(remaining, 10.0), **fields)
            except ClientError as exc:
                if exc.code not in RETRYABLE:
                    raise
            except TimeoutError:
                pass
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    async def list_rooms(self, *, deadline: float = 60.0) -> list[dict[str, Any]]:
        """Every room of the user, paged with ``rooms`` (each page retried on any node)."""
        rooms: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await self.request("rooms", deadline=deadline, **({"after": after} if after else {}))
            rooms += page["rooms"]
            if page.get("next") is None:
                return rooms
            after = page["next"]

    async def send(self, room: int, body: str, cid: str | None = None, *,
                   deadline: float = 60.0) -> dict[str, Any]:
        """Send until acknowledged; every attempt uses the same client message id."""
        return await self.request("send", deadline=deadline, room=room, body=body,
                                  cid=cid or uuid.uuid4().hex)

    async def close(self) -> None:
        self._closing = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
