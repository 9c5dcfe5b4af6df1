"""Handlers of ``cam.presence.rpc.<op>`` and the sweeper of silent nodes.

Postgres holds the state (sessions per node, chosen and shown status per user), so
replicas share it and a restarted replica loses nothing. Every change of a user's
shown status happens under that user's row lock and bumps its version, so exactly one
replica publishes each transition, and watchers can order what they receive.

Status rules: a user with no live session is ``offline``; otherwise they are shown with
the status they chose, except that ``invisible`` is shown as ``offline``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

from camcore import db, errors, subjects, wire
from camcore.loops import every
from camcore.service import Loop, ReplicaBase

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 5.0
"""Seconds between two readings of the presence gauges from the store."""
ONLINE = Gauge("cam_presence_online_users", "Users of the whole cluster shown with a status "
               "other than offline, by status (read from the store every 5 s; every replica "
               "reports the same numbers).", ["status"])
SESSIONS = Gauge("cam_presence_sessions", "Live sessions (WebSockets) each node holds, as "
                 "the store has them.", ["node"])
NODES = Gauge("cam_presence_nodes", "Edges known to presence: alive, or swept (down).",
              ["state"])
TRANSITIONS = Counter("cam_presence_transitions_total", "Changes of a user's shown status "
                      "this replica published.")
SWEPT = Counter("cam_presence_nodes_swept_total", "Silent nodes this replica swept (their "
                "sessions removed).")

_DEADLOCK_RETRIES = 5
#: What a sweep can meet that the next one retries; anything else is a bug (camcore.loops).
_SWEEP_ERRORS: tuple[type[BaseException], ...] = (
    *errors.BUS_UNAVAILABLE_ERRORS, *db.UNAVAILABLE_ERRORS, asyncpg.DeadlockDetectedError)


class PresenceService(ReplicaBase):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, node_timeout: float,
                 sweep_interval: float = 1.0) -> None:
        self.pool = pool
        self.nc = nc
        self.node_timeout = node_timeout
        self.sweep_interval = sweep_interval
        self.published = 0
        self.swept_nodes = 0

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {
            "update": (wire.PresenceUpdate, self.update),
            "beat": (wire.PresenceBeat, self.beat),
            "sync": (wire.PresenceSync, self.sync),
            "node_down": (wire.NodeDown, self.node_down),
            "set_status": (wire.SetStatus, self.set_status),
            "query": (wire.PresenceQuery, self.query),
        }

    def background(self) -> list[Loop]:
        # Every replica sweeps; row locks make each silent node handled once.
        return [Loop("sweeper", every(self.sweep_interval, self._sweep_round)),
                Loop("gauges", every(GAUGE_INTERVAL, self._gauges_round, at_once=True))]

    def load(self) -> dict[str, float]:
        return {"published": float(self.published), "swept_nodes": float(self.swept_nodes)}

    async def _sweep_round(self) -> None:
        try:
            await self.sweep()
        except _SWEEP_ERRORS as exc:
            log.warning("sweep failed: %s (the next round tries again)", exc)

    async def _gauges_round(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                shown = await conn.fetch("SELECT shown, count(*) AS n FROM user_status"
                                         " WHERE shown <> 'offline' GROUP BY shown")
                nodes = await conn.fetch(
                    "SELECT n.node, n.alive, count(s.session_id) AS sessions"
                    " FROM presence_nodes n LEFT JOIN presence_sessions s ON s.node = n.node"
                    " GROUP BY n.node, n.alive")
        except _SWEEP_ERRORS as exc:
            log.debug("presence gauges not read: %s", exc)
            return
        # No await from here on: a scrape sees the old numbers or the new ones.
        ONLINE.clear()
        for row in shown:
            ONLINE.labels(status=row["shown"]).set(row["n"])
        SESSIONS.clear()
        for row in nodes:
            if row["alive"]:
                SESSIONS.labels(node=row["node"]).set(row["sessions"])
        alive = sum(1 for row in nodes if row["alive"])
        NODES.labels(state="alive").set(alive)
        NODES.labels(state="down").set(len(nodes) - alive)

    # ------------------------------------------------------------ core

    async def _transact(self, work: Any) -> Any:
        """Run ``work(conn)`` in a transaction, retrying on deadlock; publish after commit."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    result, changes = await work(conn)
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.info("presence: deadlock, retrying")
        await self._publish(changes)
        return result

    async def _publish(self, changes: list[wire.PresenceState]) -> None:
        for state in changes:
            await self.nc.publish(subjects.presence_user(state.user), wire.encode(state))
            self.published += 1
            TRANSITIONS.inc()

    @staticmethod
    async def _recompute(conn: asyncpg.Connection, users: Iterable[int]) -> list[wire.PresenceState]:
        """Recompute the shown status of ``users`` under their row locks."""
        ids = sorted(set(users))
        if not ids:
            return []
        await conn.execute(
            "INSERT INTO user_status (user_id) SELECT u FROM unnest($1::bigint[]) AS u"
            " WHERE EXISTS (SELECT 1 FROM users WHERE id = u) ORDER BY u ON CONFLICT DO NOTHING",
            ids,
        )
        # Lock first, then read sessions in a new statement: its snapshot then includes
        # every change committed by whoever held these locks before us.
        await conn.execute(
            "SELECT 1 FROM user_status WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE", ids
        )
        rows = await conn.fetch(
            "UPDATE user_status u SET shown = c.new_shown, version = u.version + 1,"
            " changed_at = now()"
            " FROM (SELECT s.user_id, CASE"
            "        WHEN NOT EXISTS (SELECT 1 FROM presence_sessions p WHERE p.user_id = s.user_id)"
            "          THEN 'offline'"
            "        WHEN s.chosen = 'invisible' THEN 'offline'"
            "        ELSE s.chosen END AS new_shown"
            "       FROM user_status s WHERE s.user_id = ANY($1)) c"
            " WHERE u.user_id = c.user_id AND u.shown <> c.new_shown"
            " RETURNING u.user_id, u.shown, u.version",
            ids,
        )
        return [wire.PresenceState(user=r["user_id"], status=r["shown"], version=r["version"])
                for r in rows]

    @staticmethod
    async def _touch(conn: asyncpg.Connection, node: str, boot_id: str) -> bool:
        """Record a sign of life; False when the store does not hold this incarnation."""
        ok = await conn.fetchval(
            "UPDATE presence_nodes SET last_seen = now()"
            " WHERE node = $1 AND boot_id = $2 AND alive RETURNING true",
            node, boot_id,
        )
        return bool(ok)

    @staticmethod
    async def _digest(conn: asyncpg.Connection, node: str) -> tuple[int, int]:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(session_id), 0) % $2 AS d"
            " FROM presence_sessions WHERE node = $1",
            node, wire.DIGEST_MOD,
        )
        assert row is not None
        return int(row["n"]), int(row["d"])

    # ------------------------------------------------------------ edge requests

    async def update(self, req: wire.PresenceUpdate) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[wire.PresenceState]]:
            if not await self._touch(conn, req.node, req.boot_id):
                return {"sync": True}, []
            users: set[int] = set()
            if req.removed:
                rows = await conn.fetch(
                    "DELETE FROM presence_sessions WHERE node = $1 AND session_id = ANY($2)"
                    " RETURNING user_id",
                    req.node, req.removed,
                )
                users.update(r["user_id"] for r in rows)
            if req.added:
                await conn.execute(
                    "INSERT INTO presence_sessions (session_id, node, user_id)"
                    " SELECT s, $1, u FROM unnest($2::bigint[], $3::bigint[]) AS t(s, u)"
                    " WHERE EXISTS (SELECT 1 FROM users WHERE id = u)"
                    " ON CONFLICT (session_id) DO NOTHING",
                    req.node, [a.session for a in req.added], [a.user for a in req.added],
                )
                users.update(a.user for a in req.added)
            changes = await self._recompute(conn, users)
            return {"sync": await self._digest(conn, req.node) != (req.count, req.digest)}, changes

        return await self._transact(work)

    async def beat(self, req: wire.PresenceBeat) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[wire.PresenceState]]:
            if not await self._touch(conn, req.node, req.boot_id):
                return {"sync": True}, []
            return {"sync": await self._digest(conn, req.node) != (req.count, req.digest)}, []

        return await self._transact(work)

    async def sync(self, req: wire.PresenceSync) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[wire.PresenceState]]:
            await conn.execute(
                "INSERT INTO presence_nodes (node, boot_id, last_seen, alive)"
                " VALUES ($1, $2, now(), true) ON CONFLICT (node) DO UPDATE"
                " SET boot_id = excluded.boot_id, last_seen = now(), alive = true",
                req.node, req.boot_id,
            )
            old = await conn.fetch(
                "DELETE FROM presence_sessions WHERE node = $1 RETURNING user_id", req.node
            )
            await conn.execute(
                "INSERT INTO presence_sessions (session_id, node, user_id)"
                " SELECT s, $1, u FROM unnest($2::bigint[], $3::bigint[]) AS t(s, u)"
                " WHERE EXISTS (SELECT 1 FROM users WHERE id = u)"
                " ON CONFLICT (session_id) DO UPDATE SET node = excluded.node",
                req.node, [s.session for s in req.sessions], [s.user for s in req.sessions],
            )
            users = {r["user_id"] for r in old} | {s.user for s in req.sessions}
            return {"sync": False, "sessions": len(req.sessions)}, await self._recompute(conn, users)

        log.info("sync from %s: %d sessions", req.node, len(req.sessions))
        return await self._transact(work)

    async def node_down(self, req: wire.NodeDown) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[wire.PresenceState]]:
            return await self._drop_node(conn, req.node, req.boot_id)

        log.info("node %s shut down", req.node)
        return await self._transact(work)

    async def _drop_node(
        self, conn: asyncpg.Connection, node: str, boot_id: str | None
    ) -> tuple[dict[str, Any], list[wire.PresenceState]]:
        marked = await conn.fetchval(
            "UPDATE presence_nodes SET alive = false"
            " WHERE node = $1 AND ($2::text IS NULL OR boot_id = $2) RETURNING true",
            node, boot_id,
        )
        if not marked:
            return {"removed": 0}, []
        rows = await conn.fetch(
            "DELETE FROM presence_sessions WHERE node = $1 RETURNING user_id", node
        )
        changes = await self._recompute(conn, (r["user_id"] for r in rows))
        return {"removed": len(rows)}, changes

    # ------------------------------------------------------------ client requests

    async def set_status(self, req: wire.SetStatus) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[wire.PresenceState]]:
            await conn.execute(
                "INSERT INTO user_status (user_id, chosen) VALUES ($1, $2)"
                " ON CONFLICT (user_id) DO UPDATE SET chosen = excluded.chosen",
                req.user_id, req.status,
            )
            changes = await self._recompute(conn, [req.user_id])
            shown = await conn.fetchval(
                "SELECT shown FROM user_status WHERE user_id = $1", req.user_id
            )
            return {"status": req.status, "shown": shown}, changes

        return await self._transact(work)

    async def query(self, req: wire.PresenceQuery) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "SELECT user_id, shown, version FROM user_status WHERE user_id = ANY($1)", req.users
        )
        known = {r["user_id"]: (r["shown"], r["version"]) for r in rows}
        return {"presence": [
            {"user": u, "status": known.get(u, ("offline", 0))[0],
             "version": known.get(u, ("offline", 0))[1]}
            for u in req.users
        ]}

    # ------------------------------------------------------------ liveness

    async def sweep(self) -> int:
        """Drop the sessions of nodes silent for longer than ``node_timeout``."""

        async def work(conn: asyncpg.Connection) -> tuple[int, list[wire.PresenceState]]:
            nodes = await conn.fetch(
                "SELECT node FROM presence_nodes WHERE alive"
                " AND last_seen < now() - make_interval(secs => $1)"
                " FOR UPDATE SKIP LOCKED",
                self.node_timeout,
            )
            changes: list[wire.PresenceState] = []
            for row in nodes:
                result, node_changes = await self._drop_node(conn, row["node"], None)
                log.warning("node %s silent for %.1fs: removed %d sessions", row["node"],
                            self.node_timeout, result["removed"])
                changes += node_changes
            return len(nodes), changes

        swept: int = await self._transact(work)
        self.swept_nodes += swept
        SWEPT.inc(swept)
        return swept
