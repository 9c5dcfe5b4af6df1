"""Entry point of a health replica: ``cam-health --config boot.ini``.

Each replica listens to every heartbeat (``cam.hb.>``) and answers
``cam.health.rpc.cluster`` in the ``health`` queue group. Replicas do not need to
agree: each builds the same view from the same heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from camcore import bus, metrics, probe, subjects, wire
from camcore.config import Settings
from camcore.loops import Loops
from camcore.runtime import service_main, wait_for_stop_signal

log = logging.getLogger("cam_health")

_hb_decoder = msgspec.json.Decoder(bus.Heartbeat)


class ClusterView:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[tuple[str, str], tuple[float, bus.Heartbeat]] = {}

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = _hb_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            return
        self.seen[(hb.kind, hb.instance)] = (time.monotonic(), hb)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        processes = []
        for (kind, instance), (at, hb) in sorted(self.seen.items()):
            age = now - at
            if age > 10 * self.settings.node_timeout:
                continue  # long gone; forget it
            processes.append({
                "kind": kind, "instance": instance, "node": hb.node, "pid": hb.pid,
                "heartbeat_age": round(age, 3),
                "alive": age <= self.settings.node_timeout,
                "load": hb.load, "bus": hb.bus, "address": hb.address,
            })
        return {
            "description": self.settings.cluster_hosts_desc,
            "hosts": [h.address for h in self.settings.cluster_hosts],
            "processes": processes,
            "backups": self.backups(processes),
            "probe": probe.summary(processes),
        }

    def backups(self, processes: list[dict[str, Any]]) -> dict[str, Any]:
        """The backup age and the WAL archive lag, from the leading backups replica,
        with a warning past cam.backupMaxAgeHours or cam.backupMaxWalLagBytes."""
        replicas = [p for p in processes if p["kind"] == "backups" and p["alive"]]
        leader = next((p for p in replicas if p["load"].get("leader")), None)
        if leader is None:
            return {"age": None, "wal_lag_bytes": None, "ok": False,
                    "warnings": ["no backups replica is leading" if replicas
                                 else "no backups replica is running"]}
        age, lag = leader["load"].get("backup_age", -1.0), leader["load"].get("wal_lag_bytes", -1.0)
        warnings = []
        if age < 0:
            warnings.append("no backup yet")
        elif age > self.settings.backup_max_age_hours * 3600:
            warnings.append(f"the last backup is {age / 3600:.1f} h old")
        if lag < 0:
            warnings.append("the WAL archive is not streaming")
        elif lag > self.settings.backup_max_wal_lag_bytes:
            warnings.append(f"the WAL archive is {lag:.0f} bytes behind")
        if not leader["load"].get("backup_ok", 0.0) and not warnings:
            warnings.append("the last backup attempt failed ('camctl backup status')")
        return {"age": age if age >= 0 else None, "wal_lag_bytes": lag if lag >= 0 else None,
                "node": leader["node"], "ok": not warnings, "warnings": warnings}

    async def on_request(self, msg: Msg) -> None:
        await msg.respond(wire.encode(wire.Reply(ok=True, result=self.snapshot())))


class ViewGauges(Collector):
    """What this replica sees of the cluster, as ``cam_health_processes``."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("cam_health_processes", "Processes whose heartbeats this "
                                   "health replica hears, by kind: alive, or silent for "
                                   "more than cam.nodeTimeout.", labels=["kind", "state"])
        counts: dict[tuple[str, str], int] = {}
        for p in self.view.snapshot()["processes"]:
            key = (p["kind"], "alive" if p["alive"] else "silent")
            counts[key] = counts.get(key, 0) + 1
        for (kind, state), n in sorted(counts.items()):
            family.add_metric([kind, state], n)
        yield family


async def serve(settings: Settings) -> None:
    view = ClusterView(settings)
    async with metrics.serving(settings, "health", ViewGauges(view)):
        await _serve(settings, view)


async def _serve(settings: Settings, view: ClusterView) -> None:
    nc = await bus.connect(settings.nats_urls, f"health:{settings.node_name}",
                           credentials=settings.nats_credentials or None)
    await nc.subscribe(subjects.HEARTBEAT_ALL, cb=view.on_heartbeat)
    await nc.subscribe(subjects.HEALTH_CLUSTER, queue=subjects.HEALTH_QUEUE, cb=view.on_request)
    instance = f"{settings.node_name}-{id(view):x}"
    log.info("health service watching %s", subjects.HEARTBEAT_ALL)
    try:
        async with Loops() as loops:
            loops.start("health heartbeat", bus.heartbeat(
                nc, "health", instance, settings.node_name, settings.heartbeat_interval,
                lambda: {"tracked": float(len(view.seen))}))
            await loops.run_until(wait_for_stop_signal())
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


def main() -> None:
    service_main("cam-health", serve, needs_database=False)


if __name__ == "__main__":
    main()
