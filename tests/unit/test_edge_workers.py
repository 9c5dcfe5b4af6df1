"""The pieces of edge workers that need no cluster: shares of the caps, the port they
share, and one exposition made of several workers' metrics."""

from __future__ import annotations

import os
import socket

import pytest
from cam_edge.workers import Worker, merge, reuseport_socket
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from camcore.config import ConfigError, load_settings


def test_caps_are_shared_out_and_never_exceed_the_node_total() -> None:
    two, three = Worker(0, 2), Worker(2, 3)
    assert (two.share(1024), two.share(5), three.share(20), three.share(2)) == (512, 2, 6, 1)
    for cap in range(3, 200):
        assert three.share(cap) * 3 <= cap
    assert Worker(1, 2).instance("camserver1") == "camserver1-w1"


def test_cam_edge_workers_takes_a_count_or_auto() -> None:
    def workers(value: str) -> int:
        return load_settings(None, environ={}, overrides={"cam.edgeWorkers": value}).edge_workers

    assert workers("3") == 3
    assert workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "65", "two", "-1"):
        with pytest.raises(ConfigError, match="cam.edgeWorkers"):
            workers(bad)


def test_workers_bind_the_same_port_and_each_listens() -> None:
    holder = reuseport_socket("127.0.0.1", 0)
    port = holder.getsockname()[1]
    socks = [reuseport_socket("127.0.0.1", port) for _ in range(2)]
    try:
        for s in socks:
            s.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        # A socket without SO_REUSEPORT cannot take the port from them.
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        for s in (holder, *socks):
            s.close()


def _exposition(deliveries: float, connections: float, latency: float) -> bytes:
    registry = CollectorRegistry()
    Counter("cam_edge_deliveries", "Frames written.", ["path"], registry=registry
            ).labels(path="live").inc(deliveries)
    Gauge("cam_edge_rooms", "Rooms.", registry=registry).set(connections)
    Histogram("cam_edge_delivery_latency_seconds", "Latency.", buckets=(0.1, 1.0),
              registry=registry).observe(latency)
    return generate_latest(registry)


def test_one_exposition_holds_every_worker_with_its_label_and_type() -> None:
    text = merge({0: _exposition(5, 2, 0.05), 1: _exposition(7, 3, 0.5)}, count=3).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["cam_edge_deliveries"].type == "counter"
    assert families["cam_edge_delivery_latency_seconds"].type == "histogram"
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}
    assert values[("cam_edge_deliveries_total", (("path", "live"), ("worker", "0")))] == 5
    assert values[("cam_edge_deliveries_total", (("path", "live"), ("worker", "1")))] == 7
    assert values[("cam_edge_rooms", (("worker", "1"),))] == 3
    assert values[("cam_edge_delivery_latency_seconds_bucket",
                   (("le", "0.1"), ("worker", "0")))] == 1
    assert values[("cam_edge_delivery_latency_seconds_bucket",
                   (("le", "0.1"), ("worker", "1")))] == 0
    # Two of three answered: the scrape says so.
    assert values[("cam_edge_workers", (("state", "configured"),))] == 3
    assert values[("cam_edge_workers", (("state", "answering"),))] == 2
    # One HELP and TYPE line per family, whatever the number of workers.
    assert text.count("# TYPE cam_edge_deliveries_total counter") == 1
