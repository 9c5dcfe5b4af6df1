"""The self-probe: a message posted through this edge, timed until every edge of the
cluster delivers it.

Every cam.probeInterval, the probe account (``camcore.probe``: a system account with no
password, in no list) holds one WebSocket on every edge of cam.clusterHosts, this one
first, opened with the project's own client (``camclient``) as any client's is; it
posts a message into its room through this edge. Every edge delivers it to the
account's connection there, and the time from the send to each arrival, on this
process's clock, is the round trip from this node to that one: this edge, a chat
replica, the commit in PostgreSQL, the bus across the NATS routes, the other edge, its
outgoing queue and socket, and back here over that socket. Each pair is in
``cam_probe_*{from, to}`` and, through this edge's heartbeat, in the health service's
cluster view (``probe``).

No new credential: the edge makes the account's session in the database, as it makes
everyone's at login. The room keeps its last :data:`KEEP` messages; older ones are
deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from websockets.exceptions import WebSocketException

from camclient import Client, ClientError
from camclient.client import ws_url
from camcore import accounts, db, errors, probe, wire
from camcore.config import Settings
from camcore.errors import CamError
from camcore.metrics import PROBE_BUCKETS, LoopCounter, LoopHistogram

from .files import server_url

if TYPE_CHECKING:
    from .context import Edge

log = logging.getLogger(__name__)

KEEP = 200
"""Messages the probe room keeps; the probe deletes older ones as it posts."""
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, WebSocketException, ClientError, ValueError)
_STORE_ERRORS: tuple[type[BaseException], ...] = (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError)


def targets(settings: Settings) -> list[tuple[str, str]]:
    """``(base URL, name)`` of every edge to probe, this one first: the entries of
    cam.clusterHosts, else this edge alone. The name is the entry's host until the edge
    says its node name (``hello``)."""
    if settings.cluster_hosts:
        own, *others = settings.cluster_hosts
        return ([(server_url(own), settings.node_name)]
                + [(server_url(entry), entry.host) for entry in others])
    if not settings.http_port:
        return []
    host = _WILDCARDS.get(settings.http_host, settings.http_host)
    host = f"[{host}]" if ":" in host else host
    return [(f"http://{host}:{settings.http_port}", settings.node_name)]


@dataclass(eq=False)
class Target:
    """One edge the probe account holds a connection on."""

    url: str
    name: str
    client: Client | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.close_code is None


class SelfProbe:
    def __init__(self, edge: Edge, interval: float) -> None:
        self.edge = edge
        self.interval = interval
        self.node = edge.settings.node_name
        self.targets = [Target(url, name) for url, name in targets(edge.settings)]
        self.user_id: int | None = None
        """The probe account's id, once read from the store."""
        self.room: int | None = None
        self._token: str | None = None
        self._token_made = 0.0
        self._ttl = timedelta(hours=edge.settings.session_ttl_hours)
        self.roundtrip: dict[str, LoopHistogram] = {}
        self.failures: dict[str, LoopCounter] = {}
        self.last: dict[str, float] = {}
        """Per target edge: the last round trip, in seconds."""
        self.last_ok: dict[str, float] = {}
        """Per target edge: when (wall clock) the last round trip completed."""
        self._rounds = 0
        self._missing_logged = False

    # ------------------------------------------------------------ what it tells

    def load(self) -> dict[str, float]:
        """For this edge's heartbeat (``camcore.probe.load``)."""
        now = time.time()
        ages = {t.name: -1.0 for t in self.targets}
        ages.update({name: now - at for name, at in self.last_ok.items()})
        return probe.load(self.interval, self.last, ages)

    def families(self) -> Iterable[Metric]:
        rtt = HistogramMetricFamily(
            "cam_probe_roundtrip_seconds", "Seconds from the self-probe's send through this "
            "edge (from) to its delivery by edge 'to', on this edge's clock.",
            labels=["from", "to"])
        for to, histogram in sorted(self.roundtrip.items()):
            histogram.add_to(rtt, [self.node, to])
        yield rtt
        last = GaugeMetricFamily("cam_probe_last_roundtrip_seconds", "The last completed "
                                 "self-probe round trip.", labels=["from", "to"])
        at = GaugeMetricFamily("cam_probe_last_success_timestamp_seconds", "When (Unix time) "
                               "the last self-probe round trip completed.",
                               labels=["from", "to"])
        for to in sorted(self.last):
            last.add_metric([self.node, to], self.last[to])
            at.add_metric([self.node, to], self.last_ok[to])
        yield last
        yield at
        failed = CounterMetricFamily("cam_probe_failures", "Self-probe rounds in which edge "
                                     "'to' did not deliver the message within "
                                     f"{probe.TIMEOUT:g} s (or could not be reached).",
                                     labels=["from", "to"])
        for to, counter in sorted(self.failures.items()):
            failed.add_metric([self.node, to], counter.value)
        yield failed

    # ------------------------------------------------------------ rounds

    async def run(self) -> None:
        """Probe every cam.probeInterval until cancelled; then log out."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.round()
        finally:
            await self.close()

    async def round(self) -> None:
        """One probe: connect where needed, send, time each arrival."""
        if self.edge.draining or not self.targets:
            return
        if not await self._ready():
            self._fail(self.targets)
            return
        for target in self.targets:
            await self._connect(target)
        sender = self.targets[0]
        if sender.client is None or not sender.connected or self.room is None:
            self._fail(self.targets)
            return
        self._rounds += 1
        cid = f"probe-{uuid.uuid4().hex}"
        body = json.dumps({"probe": self.node, "round": self._rounds})
        # Waiting before sending: an edge may deliver before this one acknowledges.
        arrivals = {t: asyncio.create_task(self._arrival(t, cid))
                    for t in self.targets if t.connected}
        try:
            started = time.perf_counter()
            try:
                ack = await sender.client.request("send", timeout=probe.TIMEOUT,
                                                  room=self.room, body=body, cid=cid)
            except (ClientError, TimeoutError) as exc:
                log.info("self-probe: the send through this edge failed: %s", exc)
                if isinstance(exc, ClientError) and exc.code == errors.NOT_A_MEMBER:
                    self.room = None  # the room was deleted: find or make one next round
                ack = None
            if ack is not None:
                left = probe.TIMEOUT - (time.perf_counter() - started)
                await asyncio.wait(arrivals.values(), timeout=max(0.0, left))
            now = time.time()
            for target in self.targets:
                task = arrivals.get(target)
                if ack is not None and task is not None and task.done() and not task.cancelled() \
                        and task.exception() is None:
                    self._ok(target.name, task.result() - started, now)
                else:
                    self._fail([target])
        finally:
            for task in arrivals.values():
                task.cancel()
            await asyncio.gather(*arrivals.values(), return_exceptions=True)
        if ack is not None:
            await self._prune(int(ack["seq"]))

    async def _arrival(self, target: Target, cid: str) -> float:
        """When (perf_counter) ``target`` delivers the message ``cid``."""
        assert target.client is not None
        await target.client.next_event(
            "message", timeout=probe.TIMEOUT,
            where=lambda e: e.get("room") == self.room and e.get("cid") == cid)
        return time.perf_counter()

    def _ok(self, name: str, seconds: float, now: float) -> None:
        self.roundtrip.setdefault(name, LoopHistogram(PROBE_BUCKETS)).observe(seconds)
        self.last[name] = seconds
        self.last_ok[name] = now

    def _fail(self, targets: Iterable[Target]) -> None:
        for target in targets:
            self.failures.setdefault(target.name, LoopCounter()).inc()

    # ------------------------------------------------------------ account, connections

    async def _ready(self) -> bool:
        """The account, its room and a session: read and made in the store."""
        try:
            if self.room is None or self.user_id is None:
                found = await probe.account(self.edge.pool) or await self._new_room()
                if found is None:
                    return False
                self.user_id, self.room = found
            user_id = self.user_id
            if self._token is not None and time.monotonic() - self._token_made > (
                    self._ttl.total_seconds() / 2):
                await self._log_out()  # a fresh session long before this one expires
            if self._token is None:
                self._token = await accounts.create_session(self.edge.pool, user_id, self._ttl)
                self._token_made = time.monotonic()
        except _STORE_ERRORS as exc:
            log.info("self-probe: the store did not answer: %s", exc)
            return False
        return True

    async def _new_room(self) -> tuple[int, int] | None:
        """A probe room again, when an administrator deleted it (through chat, which
        tells the account's connections with ``room_added``)."""
        uid = await probe.user_id(self.edge.pool)
        if uid is None:
            if not self._missing_logged:
                log.warning("self-probe: no probe account in the store (migration "
                            "0009_probe.sql): not probing")
                self._missing_logged = True
            return None
        try:
            await self.edge.chat("create_room", wire.CreateRoom(user_id=uid, name=probe.ROOM))
        except CamError as exc:
            log.info("self-probe: its room is gone and cannot be made now: %s", exc.message)
            return None
        log.warning("self-probe: its room was deleted; it made a new one")
        for target in self.targets:  # connect again: the new room is in the auth answer
            if target.client is not None:
                await _close(target.client)
                target.client = None
        return await probe.account(self.edge.pool)

    async def _connect(self, target: Target) -> None:
        if target.connected or self._token is None:
            return
        if target.client is not None:
            await _close(target.client)
            target.client = None
        try:
            client = await asyncio.wait_for(
                Client.connect(ws_url(target.url), self._token, open_timeout=probe.TIMEOUT,
                               compression=None), probe.TIMEOUT)
        except _CONNECT_ERRORS as exc:
            if isinstance(exc, ClientError) and exc.code == errors.UNAUTHENTICATED:
                self._token = None  # expired or revoked: a new one next round
            log.info("self-probe: cannot connect to %s (%s): %s", target.name, target.url, exc)
            return
        name = client.hello.get("node")
        if isinstance(name, str) and name:
            target.name = name
        target.client = client

    async def _prune(self, seq: int) -> None:
        if seq <= KEEP:
            return
        try:
            await self.edge.pool.execute(
                "DELETE FROM messages WHERE room_id = $1 AND seq <= $2", self.room, seq - KEEP)
        except _STORE_ERRORS as exc:
            log.debug("self-probe: old probe messages not deleted: %s", exc)

    async def _log_out(self) -> None:
        for target in self.targets:
            if target.client is not None:
                await _close(target.client)
                target.client = None
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(*_STORE_ERRORS):
                await accounts.revoke_session(self.edge.pool, token)

    async def close(self) -> None:
        """Close every connection and revoke the session."""
        await self._log_out()


async def _close(client: Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 1)
