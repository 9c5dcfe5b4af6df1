"""The edge's metrics: connections, deliveries and their latency, the outgoing queues,
the self-probe. ``GET /metrics`` serves them (``camcore.metrics``), with the bus, pool
and process metrics every process has.

A delivery is a message frame written to a client's socket. It is live when it was
pushed as its bus event came, and then timed from the message's commit (the ``ts`` the chat
service stored) to the write: clocks of two hosts may differ by their NTP error. A
replayed one (resume, ``subscribe``, gap repair) is counted, not timed: it may be hours
old on purpose. These are counted on the delivery path, once per frame and client, so
they are plain numbers (``camcore.metrics.LoopCounter``), read only when scraped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from camcore.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

if TYPE_CHECKING:
    from .context import Edge
    from .probe import SelfProbe
    from .wsproto import Frame

DELIVERIES: dict[bool, LoopCounter] = {True: LoopCounter(), False: LoopCounter()}
"""Message frames written to clients' sockets: live (True) or replayed (False)."""
LATENCY = LoopHistogram(LATENCY_BUCKETS)
"""Seconds from a live message's commit to its write on a client's socket."""
OPENED = LoopCounter()
CLOSED: dict[str, LoopCounter] = {}
"""Closed WebSockets by close code; ``client`` when the client went first."""

KINDS = ("member", "guest", "probe", "unauthenticated")


_turn: dict[Frame, int] = {}
"""Live message frames written during one flush of every client (``tallying``), by
frame: a room's frame, written to each member, is timed once with that weight."""
_tallying = [False]


def delivered(frames: list[Frame], live: bool) -> None:
    """These frames were written to a client's socket: count and time the messages."""
    if not live:
        DELIVERIES[False].value += sum(1 for frame in frames if frame.ts is not None)
        return
    for frame in frames:
        if frame.ts is not None:
            _turn[frame] = _turn.get(frame, 0) + 1
    if not _tallying[0]:
        settle()


@contextlib.contextmanager
def tallying() -> Iterator[None]:
    """Count and time the live deliveries of a block at its end, once per frame."""
    _tallying[0] = True
    try:
        yield
    finally:
        _tallying[0] = False
        settle()


def settle() -> None:
    now = time.time()
    counter = DELIVERIES[True]
    for frame, times in _turn.items():
        counter.value += times
        LATENCY.observe(max(0.0, now - frame.ts / 1000), times)  # type: ignore[operator]
    _turn.clear()


def opened() -> None:
    OPENED.inc()


def closed(code: int | None) -> None:
    """A WebSocket ended: with our close ``code``, or None when the client left first.
    Only our own codes are labels (a client's are its choice: any number)."""
    label = "client" if code is None else str(code)
    counter = CLOSED.get(label)
    if counter is None:
        counter = CLOSED[label] = LoopCounter()
    counter.inc()


class EdgeGauges(Collector):
    """Everything above, and what the edge holds now, at each scrape."""

    def __init__(self, edge: Edge, probe: SelfProbe | None = None) -> None:
        self.edge = edge
        self.probe = probe

    def kind_of(self, conn: object) -> str:
        user = getattr(conn, "user", None)
        if user is None:
            return "unauthenticated"
        if user.is_guest:
            return "guest"
        if self.probe is not None and user.id == self.probe.user_id:
            return "probe"
        return "member"

    def collect(self) -> Iterable[Metric]:
        edge = self.edge
        kinds = dict.fromkeys(KINDS, 0)
        frames = queued_bytes = deepest = 0
        for conn in list(edge.connections):
            kinds[self.kind_of(conn)] += 1
            depth = conn.out.queued_frames
            frames += depth
            queued_bytes += conn.out.queued_bytes
            deepest = max(deepest, depth)
        connections = GaugeMetricFamily(
            "cam_edge_connections", "Open client WebSockets, by kind: member, guest, the "
            "self-probe's, or not authenticated yet.", labels=["kind"])
        for kind, n in kinds.items():
            connections.add_metric([kind], n)
        yield connections
        yield CounterMetricFamily("cam_edge_connections_opened", "Client WebSockets accepted.",
                                  OPENED.value)
        closes = CounterMetricFamily("cam_edge_connections_closed", "Client WebSockets ended, "
                                     "by close code (4001: too slow; 4002: node draining) or "
                                     "'client' when the client closed first.", labels=["code"])
        for code, counter in sorted(CLOSED.items()):
            closes.add_metric([code], counter.value)
        yield closes
        yield GaugeMetricFamily("cam_edge_outgoing_queued_frames", "Frames for all clients "
                                "not yet taken by them (in their sockets' write buffers, or "
                                "still to be written this loop turn).", frames)
        yield GaugeMetricFamily("cam_edge_outgoing_queued_bytes", "Bytes of those frames "
                                "(bounded per client by cam.outgoingQueueBytes).",
                                queued_bytes)
        yield GaugeMetricFamily("cam_edge_outgoing_queue_max_frames", "Frames queued for the "
                                "client furthest behind (cam.outgoingQueueFrames closes it).",
                                deepest)
        deliveries = CounterMetricFamily(
            "cam_edge_deliveries", "Message frames written to clients' sockets: live as they "
            "came, or replayed (resume, subscribe, gap repair).", labels=["path"])
        deliveries.add_metric(["live"], DELIVERIES[True].value)
        deliveries.add_metric(["replay"], DELIVERIES[False].value)
        yield deliveries
        latency = HistogramMetricFamily(
            "cam_edge_delivery_latency_seconds", "Seconds from a live message's commit in "
            "the store to its write on a client's socket.")
        LATENCY.add_to(latency, [])
        yield latency
        yield GaugeMetricFamily("cam_edge_rooms", "Rooms whose bus subject this edge is "
                                "subscribed to (a local member is connected).",
                                edge.hub.room_count)
        yield GaugeMetricFamily("cam_edge_watched_users", "Users whose presence this edge "
                                "watches for its clients.", edge.watch.watched_count)
        yield GaugeMetricFamily("cam_edge_draining", "1 while the edge drains (SIGTERM): its "
                                "health check answers 503.", float(edge.draining))
        if self.probe is not None:
            yield from self.probe.families()
