"""The cluster as an administrator sees it: the health service's view of every process,
arranged per node with the cam.clusterHostsDesc column, the NATS servers, and the role of
each database server. The admin console (``/api/admin/cluster``) and ``camctl cluster``
both show this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from typing import Any

import asyncpg

from .config import Settings

log = logging.getLogger(__name__)

DB_PROBE_TIMEOUT = 2.0
"""Seconds to wait for each database server when asking for its role."""


async def database(url: str, pool: asyncpg.Pool | None) -> list[dict[str, Any]]:
    """Each database server of ``url`` with its role, and the replication slots of the
    primary (the standby's and the WAL archive's) with their lag in bytes."""
    servers = database_servers(url)
    roles = await asyncio.gather(*(_server_role(url, host, port) for host, port in servers))
    out: list[dict[str, Any]] = [{"host": host, "port": port, "role": role}
                                 for (host, port), role in zip(servers, roles, strict=True)]
    slots: list[asyncpg.Record] = []
    if pool is not None:
        try:
            slots = await pool.fetch(
                "SELECT slot_name, active,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS lag"
                " FROM pg_replication_slots ORDER BY slot_name")
        except (TimeoutError, asyncpg.PostgresError, OSError):
            slots = []
    for row in out:
        row["slots"] = ([{"name": s["slot_name"], "active": s["active"], "lag_bytes": s["lag"]}
                         for s in slots] if row["role"] == "primary" else [])
    return out


def node_description(text: str, node: str, address: str | None) -> str:
    """A node's cell of the description column.

    cam.clusterHostsDesc is free text. Written as ``name=text`` parts separated by ';'
    (``camserver1=the main server;camserver2=the standby``), each node gets the part
    named after it, by node name or by host; a node no part names gets an empty cell.
    Any other text is the cluster's description, shown on every row.
    """
    parts = [p.partition("=") for p in text.split(";") if p.strip()]
    if not parts or not all(sep and key.strip() for key, sep, _ in parts):
        return text.strip()
    named = {key.strip().lower(): value.strip() for key, _, value in parts}
    host = (address or "").rpartition(":")[0].strip("[]").lower() if address else ""
    return named.get(node.lower()) or named.get(host) or ""


def cluster_page(settings: Settings, view: dict[str, Any],
                 database: list[dict[str, Any]]) -> dict[str, Any]:
    """The health service's view, arranged as the cluster page shows it."""
    processes: list[dict[str, Any]] = view.get("processes", [])
    edges = {p["node"]: p for p in processes if p["kind"] == "edge"}
    nodes = []
    for node in sorted({p["node"] for p in processes}):
        edge = edges.get(node)
        address = (edge or {}).get("address") or ""
        load = (edge or {}).get("load", {})
        nodes.append({
            "name": node, "address": address or None,
            "description": node_description(settings.cluster_hosts_desc, node, address),
            "alive": bool(edge and edge["alive"]),
            "heartbeat_age": edge["heartbeat_age"] if edge else None,
            "connections": int(load["connections"]) if "connections" in load else None,
            "rooms": int(load["rooms"]) if "rooms" in load else None,
            "processes": sum(1 for p in processes if p["node"] == node),
        })
    buses: dict[str, dict[str, Any]] = {}
    for url in settings.nats_urls:
        netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
        buses[netloc] = {"url": netloc, "clients": 0, "up": False}
    for p in processes:
        if p.get("bus"):
            entry = buses.setdefault(p["bus"], {"url": p["bus"], "clients": 0, "up": False})
            if p["alive"]:
                entry["clients"] += 1
                entry["up"] = True
    return {"description": settings.cluster_hosts_desc, "nodes": nodes,
            "processes": processes, "nats": list(buses.values()), "database": database,
            "backups": view.get("backups", {}), "probe": view.get("probe"),
            "at": time.time()}


def database_servers(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every server a libpq URL lists (``h1:p1,h2:p2``)."""
    netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    out = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":") if part.rpartition(":")[2].isdigit() else (
            part, "", "5432")
        out.append((host.strip("[]") or "localhost", int(port or 5432)))
    return out


async def _server_role(url: str, host: str, port: int) -> str:
    """``primary``, ``standby`` or ``unreachable``: one short connection to that server."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.pop("target_session_attrs", None)
    one = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                   urllib.parse.urlencode(query), ""))
    try:
        conn = await asyncpg.connect(one, timeout=DB_PROBE_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        log.debug("database server %s:%s unreachable: %s", host, port, exc)
        return "unreachable"
    try:
        standby = await conn.fetchval("SELECT pg_is_in_recovery()", timeout=DB_PROBE_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return "unreachable"
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)
    return "standby" if standby else "primary"
