"""camcore.metrics and camcore.probe without a cluster: the loop-only histogram as
Prometheus reads it, the bearer check, the in-loop listener, the op timing, the pool
gauges, the config keys, and the cluster view's summary of the self-probe."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from camcore import errors, metrics, probe
from camcore.config import ConfigError, load_settings
from camcore.errors import CamError

TOKEN = "a-monitoring-token-of-some-length"


def parsed(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


class One(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


# ------------------------------------------------------------------ loop-only metrics


def test_a_loop_histogram_reads_as_a_prometheus_histogram_with_le_buckets() -> None:
    h = metrics.LoopHistogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):  # a value on a bound belongs to that bucket (le)
        h.observe(v)
    assert h.count == 5
    assert h.buckets() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    family = HistogramMetricFamily("t_seconds", "t", labels=["to"])
    h.add_to(family, ["x"])
    registry = CollectorRegistry()
    registry.register(One([family]))
    samples = {(s.name, s.labels.get("le")): s.value for s in parsed(registry)["t_seconds"].samples}
    assert samples[("t_seconds_bucket", "0.1")] == 2
    assert samples[("t_seconds_bucket", "+Inf")] == 5
    assert samples[("t_seconds_count", None)] == 5
    assert samples[("t_seconds_sum", None)] == pytest.approx(8.65)


def test_an_empty_loop_histogram_has_every_bucket_at_zero() -> None:
    h = metrics.LoopHistogram()
    assert [n for _, n in h.buckets()] == [0.0] * (len(metrics.LATENCY_BUCKETS) + 1)
    assert h.sum == 0 and h.count == 0


# ------------------------------------------------------------------ the bearer token


@pytest.mark.parametrize(("header", "token", "ok"), [
    (f"Bearer {TOKEN}", TOKEN, True),
    (f"bearer {TOKEN}", TOKEN, True),
    (f"Bearer {TOKEN}x", TOKEN, False),
    (f"Bearer {TOKEN[:-1]}", TOKEN, False),
    (f"Basic {TOKEN}", TOKEN, False),
    (TOKEN, TOKEN, False),
    (None, TOKEN, False),
    ("Bearer ", "", False),  # no token configured: nobody
    ("Bearer \udcff", TOKEN, False),
])
def test_only_the_configured_bearer_token_is_authorized(header: str | None, token: str,
                                                        ok: bool) -> None:
    assert metrics.authorized(header, token) is ok


async def test_the_listener_serves_metrics_to_the_token_only_and_leaves_signals_alone() -> None:
    registry = CollectorRegistry()
    family = HistogramMetricFamily("cam_test_seconds", "t")
    metrics.LoopHistogram().add_to(family, [])
    registry.register(One([family]))
    before = signal.getsignal(signal.SIGTERM)
    async with metrics.listener("127.0.0.1", 0, TOKEN, registry) as port:
        assert port > 0
        url = f"http://127.0.0.1:{port}/metrics"
        async with httpx.AsyncClient(timeout=5) as http:
            ok = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and "cam_test_seconds_count 0.0" in ok.text
            assert ok.headers["cache-control"] == "no-store"
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = await http.get(url, headers=headers)
                assert refused.status_code == 401 and "cam_test" not in refused.text
                assert refused.headers["www-authenticate"].startswith("Bearer")
            assert (await http.get(f"http://127.0.0.1:{port}/",
                                   headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 404
            assert (await http.post(url, headers={"Authorization": f"Bearer {TOKEN}"})
                    ).status_code == 405
        assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(httpx.ConnectError):  # closed with the block
        async with httpx.AsyncClient(timeout=2) as http:
            await http.get(url)


async def test_a_taken_port_is_reported_and_the_process_keeps_going(
        caplog: pytest.LogCaptureFixture) -> None:
    async with metrics.listener("127.0.0.1", 0, TOKEN, CollectorRegistry()) as port:
        settings = load_settings(environ={"CAM_METRICS_PORT": str(port),
                                          "CAM_HTTP_HOST": "127.0.0.1",
                                          "CAM_MONITORING_TOKEN": TOKEN})
        async with metrics.serving(settings, "chat") as second:
            assert second == 0
    assert f"no metrics: cannot listen on 127.0.0.1:{port}" in caplog.text


# ------------------------------------------------------------------ ops and pools


async def test_timed_handlers_count_each_op_by_outcome() -> None:
    async def fine(request: object) -> dict[str, int]:
        return {"n": 1}

    async def refused(request: object) -> None:
        raise CamError("no", errors.NOT_A_MEMBER)

    async def broken(request: object) -> None:
        raise RuntimeError("bug")

    handlers = metrics.timed_handlers("unit", {"fine": (dict, fine), "refused": (dict, refused),
                                               "broken": (dict, broken)})

    def count(op: str, outcome: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "cam_rpc_requests_total", {"service": "unit", "op": op, "outcome": outcome}) or 0.0

    assert await handlers["fine"][1]({}) == {"n": 1}
    with pytest.raises(CamError):
        await handlers["refused"][1]({})
    with pytest.raises(RuntimeError):
        await handlers["broken"][1]({})
    assert (count("fine", "ok"), count("refused", "not_a_member"),
            count("broken", "internal")) == (1, 1, 1)
    assert metrics.REGISTRY.get_sample_value(
        "cam_rpc_duration_seconds_count", {"service": "unit", "op": "refused"}) == 1


def test_a_watched_pool_reports_busy_idle_and_max_until_it_closes() -> None:
    class FakePool:
        closing = False

        def get_size(self) -> int:
            return 5

        def get_idle_size(self) -> int:
            return 2

        def get_max_size(self) -> int:
            return 10

        def is_closing(self) -> bool:
            return self.closing

    pool = FakePool()
    metrics.watch_pool(pool, "unit")

    def sample(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"pool": "unit", **labels})

    assert sample("cam_db_pool_connections", state="busy") == 3
    assert sample("cam_db_pool_connections", state="idle") == 2
    assert sample("cam_db_pool_max_connections") == 10
    pool.closing = True
    assert sample("cam_db_pool_max_connections") is None


def test_the_metrics_keys_are_checked() -> None:
    settings = load_settings(environ={})
    assert (settings.metrics_port, settings.probe_interval) == (0, 10.0)
    for key, bad in (("CAM_METRICS_PORT", "65536"), ("CAM_METRICS_PORT", "http"),
                     ("CAM_PROBE_INTERVAL", "-1"), ("CAM_PROBE_INTERVAL", "soon")):
        with pytest.raises(ConfigError) as refused:
            load_settings(environ={key: bad})
        assert bad in str(refused.value)


# ------------------------------------------------------------------ the probe's summary


def edge(node: str, load: dict[str, float], *, alive: bool = True,
         heartbeat_age: float = 0.5) -> dict[str, Any]:
    return {"kind": "edge", "node": node, "alive": alive, "heartbeat_age": heartbeat_age,
            "load": load}


def test_the_probe_summary_has_every_pair_and_warns_of_stale_and_missing_ones() -> None:
    fresh = probe.load(1.0, {"b": 0.012, "a": 0.004}, {"a": 0.5, "b": 0.5, "c": -1.0})
    stale = probe.load(1.0, {"a": 0.02}, {"a": 60.0})
    view = probe.summary([edge("a", fresh), edge("b", stale),
                          {"kind": "chat", "node": "a", "alive": True, "heartbeat_age": 0,
                           "load": {}}])
    pairs = {(p["from"], p["to"]): p for p in view["pairs"]}
    assert set(pairs) == {("a", "a"), ("a", "b"), ("a", "c"), ("b", "a")}
    assert pairs[("a", "b")] == {"from": "a", "to": "b", "roundtrip": 0.012, "age": 1.0,
                                 "ok": True}
    assert pairs[("a", "c")]["ok"] is False and pairs[("a", "c")]["age"] is None
    assert pairs[("b", "a")]["ok"] is False
    assert not view["ok"]
    assert view["warnings"] == ["a -> c: no round trip has completed",
                                "b -> a: no round trip for 60 s"]


def test_the_probe_summary_says_when_no_edge_probes() -> None:
    view = probe.summary([edge("a", {"connections": 3.0})])
    assert view == {"ok": False, "pairs": [],
                    "warnings": ["no edge runs the self-probe (cam.probeInterval=0)"]}
    assert probe.summary([edge("a", probe.load(1.0, {"a": 0.01}, {"a": 0.1}))])["ok"]
    silent = edge("a", probe.load(1.0, {"a": 0.01}, {"a": 0.1}), alive=False)
    assert probe.summary([silent])["pairs"] == []


def test_the_edge_counts_connections_by_kind_and_sums_the_queues() -> None:
    from cam_edge.metrics import EdgeGauges

    def conn(user: object, frames: int, size: int) -> SimpleNamespace:
        return SimpleNamespace(user=user, out=SimpleNamespace(queued_frames=frames,
                                                              queued_bytes=size))

    member = SimpleNamespace(id=7, is_guest=False)
    guest = SimpleNamespace(id=8, is_guest=True)
    prober = SimpleNamespace(id=1, is_guest=False)
    fake = SimpleNamespace(connections=[conn(member, 3, 300), conn(member, 10, 1000),
                                        conn(guest, 0, 0), conn(prober, 1, 10), conn(None, 0, 0)],
                           hub=SimpleNamespace(room_count=4), watch=SimpleNamespace(watched_count=2),
                           draining=False)
    registry = CollectorRegistry()
    registry.register(EdgeGauges(fake, SimpleNamespace(  # type: ignore[arg-type]
        user_id=1, families=lambda: [])))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in parsed(registry).values() for s in f.samples}
    assert got[("cam_edge_connections", (("kind", "member"),))] == 2
    assert got[("cam_edge_connections", (("kind", "guest"),))] == 1
    assert got[("cam_edge_connections", (("kind", "probe"),))] == 1
    assert got[("cam_edge_connections", (("kind", "unauthenticated"),))] == 1
    assert got[("cam_edge_outgoing_queued_frames", ())] == 14
    assert got[("cam_edge_outgoing_queued_bytes", ())] == 1310
    assert got[("cam_edge_outgoing_queue_max_frames", ())] == 10
    assert got[("cam_edge_rooms", ())] == 4


def test_garbage_collection_pauses_are_timed_per_generation_and_long_ones_logged(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    def full_count() -> float:
        samples = metrics.GC_PAUSES.collect()[0].samples  # type: ignore[index]
        return next(s.value for s in samples if s.name == "cam_gc_pause_seconds_count"
                    and s.labels["generation"] == "2")

    watching = metrics.GC_PAUSES._callback in gc.callbacks
    metrics.identify("chat", "camserver1")  # a server process: its collections are timed
    try:
        before = full_count()
        gc.collect()
        assert full_count() == before + 1
        monkeypatch.setattr(metrics, "GC_SLOW", -1.0)  # every pause counts as long now
        with caplog.at_level("WARNING", logger="camcore.metrics"):
            gc.collect()
        assert "garbage collection of generation 2 stopped the process" in caplog.text
    finally:
        if not watching:  # the test run is no server: leave its collections alone
            gc.callbacks.remove(metrics.GC_PAUSES._callback)
