"""The self-probe's shared parts: its system account, what an edge's heartbeat says of
it, and the summary the health service's cluster view shows.

Every edge probes the cluster (``cam_edge.probe``): as the probe account, it posts a
message into the probe room through itself and times its arrival at every edge of
cam.clusterHosts. The account and the room are made by a migration
(``0009_probe.sql``); the account has no password (nobody can log in as it), is in no
user list or directory, and is a member of the probe room only. A probe room that was
deleted is made again by the next edge that probes.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

ROLE: Final = "probe"
"""``users.system_role`` of the probe account."""
ROOM: Final = "cam-probe"
"""The name of the probe room."""

RTT: Final = "probe_rtt."
"""Heartbeat load key prefix: ``probe_rtt.<to>`` is the last round trip to edge ``<to>``,
in seconds."""
AGE: Final = "probe_age."
"""``probe_age.<to>``: seconds since the last round trip to ``<to>`` completed, -1 if
none has."""
INTERVAL: Final = "probe_interval"
"""The probing edge's cam.probeInterval."""

TIMEOUT: Final = 5.0
"""Seconds a probe message may take to reach an edge before that round counts as a
failure for it."""

STALE_ROUNDS: Final = 3
"""A pair whose last round trip is older than this many probe intervals (plus the
probe's own time-out) is reported failing."""


async def account(pool: asyncpg.Pool) -> tuple[int, int] | None:
    """``(user id, room id)`` of the probe account and its room; None when the
    migration has not made them, or the room was deleted."""
    row = await pool.fetchrow(
        "SELECT u.id AS user_id, r.id AS room_id FROM users u"
        " JOIN room_members m ON m.user_id = u.id"
        " JOIN rooms r ON r.id = m.room_id AND r.deleted_at IS NULL"
        " WHERE u.system_role = $1 ORDER BY r.id LIMIT 1", ROLE)
    return (int(row["user_id"]), int(row["room_id"])) if row else None


async def user_id(pool: asyncpg.Pool) -> int | None:
    """The probe account's id, with or without a room (None before the migration)."""
    found = await pool.fetchval("SELECT id FROM users WHERE system_role = $1", ROLE)
    return int(found) if found is not None else None


def load(interval: float, last: dict[str, float], ages: dict[str, float]) -> dict[str, float]:
    """An edge's heartbeat load for its probe: per target edge, the last round trip and
    how long ago one completed (-1: never)."""
    out = {INTERVAL: interval}
    for to in sorted(set(last) | set(ages)):
        if to in last:
            out[RTT + to] = last[to]
        out[AGE + to] = ages.get(to, -1.0)
    return out


def summary(processes: list[dict[str, Any]], timeout: float = TIMEOUT) -> dict[str, Any]:
    """The cluster view's ``probe``: every (from, to) pair of edges with its last round
    trip and its age, and warnings for pairs without a recent one."""
    pairs: list[dict[str, Any]] = []
    warnings: list[str] = []
    probing = [p for p in processes if p["kind"] == "edge" and p["alive"]
               and p["load"].get(INTERVAL, 0.0) > 0]
    for p in sorted(probing, key=lambda p: str(p["node"])):
        load, interval = p["load"], p["load"][INTERVAL]
        limit = STALE_ROUNDS * interval + timeout
        for key in sorted(k for k in load if k.startswith(AGE)):
            to = key[len(AGE):]
            age = load[key]
            rtt = load.get(RTT + to)
            if age >= 0:
                age += p["heartbeat_age"]  # as of now, not of the heartbeat
            ok = 0 <= age <= limit
            pairs.append({"from": p["node"], "to": to, "roundtrip": rtt,
                          "age": round(age, 3) if age >= 0 else None, "ok": ok})
            if not ok:
                warnings.append(f"{p['node']} -> {to}: " + (
                    "no round trip has completed" if age < 0
                    else f"no round trip for {age:.0f} s"))
    if not probing and any(p["kind"] == "edge" and p["alive"] for p in processes):
        warnings.append("no edge runs the self-probe (cam.probeInterval=0)")
    return {"ok": not warnings and bool(pairs), "pairs": pairs, "warnings": warnings}
