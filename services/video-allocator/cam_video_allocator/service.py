"""Handlers of ``cam.video.rpc.<op>`` and the loops that watch the video servers.

Postgres holds the state. Placing a new conference locks every video server row, so
placements are serialised cluster-wide: two first joins of one room meet on the same
conference row, and a burst of new rooms sees each other's load (no overshoot). Joins
of an existing conference lock only that conference.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

from camcore import audit, db, errors, subjects, wire
from camcore.config import Settings
from camcore.errors import CamError, RequestError
from camcore.loops import every
from camcore.service import Loop, ReplicaBase

from .janus import Janus, JanusError
from .placement import ServerLoad, place

log = logging.getLogger(__name__)

# Read from the store every round; every replica reports the same numbers.
PARTICIPANTS = Gauge("cam_video_participants", "Participants of the active conferences on "
                     "each video server (the larger of our count and the SFU's).", ["server"])
ROOMS = Gauge("cam_video_rooms", "Active conferences (one per room) on each video server.",
              ["server"])
CAPACITY = Gauge("cam_video_capacity", "Target participants of each video server "
                 "(cam.videoDomains).", ["server"])
SERVER_UP = Gauge("cam_video_server_healthy", "1 while the video server answers its probe.",
                  ["server"])
DRAINING = Gauge("cam_video_server_draining", "1 while the video server is drained "
                 "(camctl video drain): it takes no new conference.", ["server"])
PLACEMENTS = Counter("cam_video_placements_total", "Conferences this replica placed on a "
                     "video server (new ones and moves).")
MOVES = Counter("cam_video_moves_total", "Conferences this replica moved off a video server "
                "that stopped answering.")

_LOADS = """
SELECT s.name, s.capacity, s.admin_state, s.healthy,
       coalesce(sum(greatest(p.n, c.sfu_participants)), 0)::int AS participants,
       count(c.id) FILTER (WHERE greatest(p.n, c.sfu_participants) = 0)::int AS empty
  FROM video_servers s
  LEFT JOIN conferences c ON c.server = s.name AND c.state = 'active'
  LEFT JOIN LATERAL (SELECT count(*)::int AS n FROM conference_participants cp
                     WHERE cp.conference_id = c.id) p ON true
 WHERE s.admin_state <> 'removed'
 GROUP BY s.name, s.capacity, s.admin_state, s.healthy, s.position
 ORDER BY s.position
"""


#: Errors a step of the round can meet that the next round retries: the database or the
#: bus down, a Postgres error (e.g. a conflict with another replica), Janus refusing.
_ROUND_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, *db.UNAVAILABLE_ERRORS, *errors.BUS_UNAVAILABLE_ERRORS, CamError)


class VideoAllocator(ReplicaBase):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, settings: Settings) -> None:
        self.pool = pool
        self.nc = nc
        self.settings = settings
        self.janus = {d.name: Janus(settings.video_url(d.name), admin_key=settings.video_admin_key)
                      for d in settings.video_domains}
        self._orphans: dict[tuple[str, int], int] = {}
        self.decisions = 0

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {
            "join": (wire.ConfJoin, self.join),
            "leave": (wire.ConfLeave, self.leave),
            "participants": (wire.ConfParticipants, self.participants),
            "explain": (wire.ConfExplain, self.explain),
            "admin": (wire.VideoAdmin, self.admin),
            "admin_as": (wire.VideoAdminAs, self.admin_as),
        }

    async def start(self) -> None:
        await self.sync_servers()
        await self.probe()

    def background(self) -> list[Loop]:
        return [Loop("round", every(self.settings.video_probe_interval, self.tick, at_once=True))]

    def load(self) -> dict[str, float]:
        return {"decisions": float(self.decisions)}

    async def close(self) -> None:
        for j in self.janus.values():
            await j.close()

    async def sync_servers(self) -> None:
        """Make the table match cam.videoDomains (order, capacity, URL); keep drains."""
        names = [d.name for d in self.settings.video_domains]
        async with self.pool.acquire() as conn, conn.transaction():
            for position, d in enumerate(self.settings.video_domains):
                await conn.execute(
                    "INSERT INTO video_servers (name, position, capacity, url) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (name) DO UPDATE SET position = $2, capacity = $3, url = $4,"
                    " admin_state = CASE WHEN video_servers.admin_state = 'removed' THEN 'active'"
                    "                    ELSE video_servers.admin_state END",
                    d.name, position, d.capacity, self.settings.video_url(d.name))
            await conn.execute(
                "UPDATE video_servers SET admin_state = 'removed' WHERE NOT (name = ANY($1))", names)

    # ------------------------------------------------------------ events

    async def _publish(self, room: int, event: dict[str, Any]) -> None:
        await self.nc.publish(subjects.conf_events(room), wire.encode({"room": room, **event}))

    @staticmethod
    def _conference(row: asyncpg.Record, url: str) -> dict[str, Any]:
        # ``url`` is the public one (cam.videoPublicUrls): clients never get the API URL
        # the allocator itself calls (cam.videoServerUrls).
        return {"room": row["room_id"], "server": row["server"], "url": url,
                "janus_room": row["janus_room"], "pin": row["pin"], "moves": row["moves"]}

    @staticmethod
    async def _participants(conn: asyncpg.Connection, conference: int) -> list[dict[str, Any]]:
        """Participant objects in join order; the ``participant_joined`` event carries
        the joining one's. ``display_name`` labels a video tile (for a guest it is the
        only name: its ``username`` is a random ``guest-<hex>``)."""
        rows = await conn.fetch(
            "SELECT p.user_id, u.username, u.display_name, u.guest_link IS NOT NULL AS guest,"
            " p.session_id, p.node FROM conference_participants p"
            " JOIN users u ON u.id = p.user_id WHERE p.conference_id = $1 ORDER BY p.joined_at",
            conference)
        return [{"user": r["user_id"], "username": r["username"],
                 "display_name": r["display_name"], "guest": r["guest"],
                 "session": r["session_id"], "node": r["node"]} for r in rows]

    # ------------------------------------------------------------ placement

    async def _place(self, conn: asyncpg.Connection, room: int,
                     exclude: set[str]) -> tuple[str, dict[str, Any], int, bool]:
        """Choose a server and create the room on it; the caller holds the server locks."""
        janus_room = secrets.randbelow(2**52) + 1
        pin = secrets.token_hex(8)
        while True:
            rows = await conn.fetch(_LOADS)
            loads = [ServerLoad(r["name"], r["capacity"], r["participants"], r["empty"],
                                draining=r["admin_state"] == "draining",
                                healthy=r["healthy"] and r["name"] not in exclude)
                     for r in rows]
            decision = place(loads, self.settings.video_overflow)
            if decision.server is None:
                raise CamError("no video server can take a new conference: "
                               + decision.explanation, errors.VIDEO_FULL)
            try:
                await self.janus[decision.server].create_room(janus_room, pin, f"room {room}")
            except (JanusError, KeyError) as exc:
                # Skip it for this placement only; the health probe decides whether it is
                # down (and whether its conferences move).
                log.warning("creating a room on %s failed (%s): trying the next", decision.server, exc)
                exclude.add(decision.server)
                continue
            self.decisions += 1
            PLACEMENTS.inc()
            explanation = {"steps": list(decision.steps), "server": decision.server,
                           "load": decision.load, "overflow": decision.overflow,
                           "policy": self.settings.video_overflow}
            return decision.server, {"janus_room": janus_room, "pin": pin,
                                     "explanation": explanation}, decision.load, decision.overflow

    async def join(self, req: wire.ConfJoin) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                select = "SELECT * FROM conferences WHERE room_id = $1 AND state = 'active' FOR UPDATE"
                conf = await conn.fetchrow(select, req.room)
                if conf is None:
                    # Lock every server: placements are serialised, so loads are exact.
                    await conn.execute("SELECT 1 FROM video_servers ORDER BY position FOR UPDATE")
                    conf = await conn.fetchrow(select, req.room)
                    if conf is None:
                        server, made, load, overflow = await self._place(conn, req.room, set())
                        conf = await conn.fetchrow(
                            "INSERT INTO conferences (room_id, server, janus_room, pin, placed_load,"
                            " overflow, explanation) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                            " RETURNING *",
                            req.room, server, made["janus_room"], made["pin"], load, overflow,
                            json.dumps(made["explanation"]))
                        log.info("conference for room %s placed on %s", req.room, server)
                added = await conn.fetchval(
                    "INSERT INTO conference_participants (conference_id, user_id, session_id, node)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                    conf["id"], req.user_id, req.session, req.node)
                participants = await self._participants(conn, conf["id"])
            assert conf is not None
        if added:
            me = next(p for p in participants if p["session"] == req.session)
            await self._publish(req.room, {"type": "participant_joined", **me})
        return {"conference": self._conference(conf, self.settings.video_public_url(conf["server"])),
                "participants": participants}

    async def _end_if_empty(self, conn: asyncpg.Connection, conference: int) -> tuple[str, int] | None:
        row = await conn.fetchrow(
            "UPDATE conferences SET state = 'ended', ended_at = now() WHERE id = $1"
            " AND state = 'active' AND NOT EXISTS (SELECT 1 FROM conference_participants"
            " WHERE conference_id = $1) RETURNING server, janus_room", conference)
        return (row["server"], row["janus_room"]) if row else None

    async def _destroy(self, ended: tuple[str, int] | None) -> None:
        if ended and ended[0] in self.janus:
            try:
                await self.janus[ended[0]].destroy_room(ended[1])
            except JanusError as exc:
                log.warning("destroying room on %s failed: %s (reconciliation retries)", ended[0], exc)

    async def leave(self, req: wire.ConfLeave) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            conf = await conn.fetchrow(
                "SELECT id FROM conferences WHERE room_id = $1 AND state = 'active' FOR UPDATE",
                req.room)
            if conf is None:
                raise CamError("not in this conference", errors.NOT_IN_CONFERENCE)
            gone = await conn.fetchval(
                "DELETE FROM conference_participants WHERE conference_id = $1 AND session_id = $2"
                " AND user_id = $3 RETURNING true", conf["id"], req.session, req.user_id)
            if not gone:
                raise CamError("not in this conference", errors.NOT_IN_CONFERENCE)
            ended = await self._end_if_empty(conn, conf["id"])
        await self._publish(req.room, {"type": "participant_left", "user": req.user_id,
                                       "session": req.session})
        await self._destroy(ended)
        return {"room": req.room, "ended": ended is not None}

    async def participants(self, req: wire.ConfParticipants) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            conf = await conn.fetchrow(
                "SELECT * FROM conferences WHERE room_id = $1 AND state = 'active'", req.room)
            if conf is None:
                return {"room": req.room, "conference": None, "participants": []}
            return {"room": req.room,
                    "conference": self._conference(conf, self.settings.video_public_url(conf["server"])),
                    "participants": await self._participants(conn, conf["id"])}

    async def explain(self, req: wire.ConfExplain) -> dict[str, Any]:
        conf = await self.pool.fetchrow(
            "SELECT server, placed_load, overflow, explanation, moves, created_at FROM conferences"
            " WHERE room_id = $1 ORDER BY (state = 'active') DESC, id DESC LIMIT 1", req.room)
        if conf is None:
            raise RequestError("this room has had no conference")
        return {"room": req.room, "server": conf["server"], "placed_load": conf["placed_load"],
                "overflow": conf["overflow"], "moves": conf["moves"],
                "explanation": json.loads(conf["explanation"])}

    async def admin(self, req: wire.VideoAdmin) -> dict[str, Any]:
        """An operator's drain, enable or status (``cam.video.rpc.admin``)."""
        return await self._admin(None, req)

    async def admin_as(self, req: wire.VideoAdminAs) -> dict[str, Any]:
        """The same for an admin of the web app, whose flag is read here."""
        await audit.require_admin(self.pool, req.user_id)
        return await self._admin(req.user_id, req)

    async def _admin(self, actor: int | None, req: wire.VideoAdmin) -> dict[str, Any]:
        if req.action in ("drain", "enable"):
            state = "draining" if req.action == "drain" else "active"
            async with self.pool.acquire() as conn, conn.transaction():
                before = await conn.fetchval(
                    "SELECT admin_state FROM video_servers WHERE name = $1"
                    " AND admin_state <> 'removed' FOR UPDATE", req.server)
                if before is None:
                    raise RequestError(f"no video server named {req.server!r}")
                await conn.execute("UPDATE video_servers SET admin_state = $2 WHERE name = $1",
                                   req.server, state)
                detail: dict[str, Any] = {"server": req.server, "before": before}
                if req.os_user:
                    detail["os_user"] = req.os_user
                await audit.record(conn, actor, f"{req.action}_video", detail=detail)
        rows = await self.pool.fetch(_LOADS)
        confs: dict[str, list[dict[str, int]]] = {}
        for c in await self.pool.fetch(
                "SELECT c.server, c.room_id, count(p.*)::int AS participants"
                " FROM conferences c LEFT JOIN conference_participants p"
                " ON p.conference_id = c.id WHERE c.state = 'active'"
                " GROUP BY c.server, c.room_id ORDER BY c.server, c.room_id"):
            confs.setdefault(c["server"], []).append(
                {"room": c["room_id"], "participants": c["participants"]})
        return {"servers": [
            {"name": r["name"], "capacity": r["capacity"], "state": r["admin_state"],
             "healthy": r["healthy"], "participants": r["participants"],
             "load": r["participants"] + r["empty"],
             "conferences": len(confs.get(r["name"], [])),
             "rooms": confs.get(r["name"], [])}
            for r in rows]}

    # ------------------------------------------------------------ watching the servers

    async def probe(self) -> None:
        """Health of every server; a server unanswered for 3 probe intervals is down."""
        grace = 3 * self.settings.video_probe_interval
        for name, janus in self.janus.items():
            try:
                await janus.rooms()  # a real API call; also keeps our Janus session alive
                await self.pool.execute(
                    "UPDATE video_servers SET healthy = true, last_ok = now() WHERE name = $1", name)
            except JanusError:
                await self.pool.execute(
                    "UPDATE video_servers SET healthy = (last_ok IS NOT NULL AND"
                    " last_ok > now() - make_interval(secs => $2)) WHERE name = $1", name, grace)

    async def fail_over(self) -> int:
        """Move the conferences of unhealthy servers; tell their participants."""
        moved = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                conf = await conn.fetchrow(
                    "SELECT c.* FROM conferences c JOIN video_servers s ON s.name = c.server"
                    " WHERE c.state = 'active' AND NOT s.healthy"
                    " ORDER BY c.id LIMIT 1 FOR UPDATE OF c SKIP LOCKED")
                if conf is None:
                    return moved
                await conn.execute("SELECT 1 FROM video_servers ORDER BY position FOR UPDATE")
                try:
                    server, made, load, overflow = await self._place(conn, conf["room_id"],
                                                                     {conf["server"]})
                except CamError as exc:
                    log.warning("conference of room %s cannot move yet: %s", conf["room_id"],
                                exc.message)
                    return moved
                new = await conn.fetchrow(
                    "UPDATE conferences SET server = $2, janus_room = $3, pin = $4, moves = moves + 1,"
                    " placed_load = $5, overflow = $6, explanation = $7 WHERE id = $1 RETURNING *",
                    conf["id"], server, made["janus_room"], made["pin"], load, overflow,
                    json.dumps({**made["explanation"], "moved_from": conf["server"]}))
            log.warning("conference of room %s moved from %s to %s", conf["room_id"], conf["server"],
                        server)
            await self._publish(conf["room_id"], {
                "type": "room_moved", "from": conf["server"],
                "conference": self._conference(new, self.settings.video_public_url(server))})
            moved += 1
            MOVES.inc()

    async def reconcile(self) -> None:
        """Compare with what each healthy SFU reports; correct drift both ways."""
        known = await self.pool.fetch(
            "SELECT c.id, c.server, c.janus_room, c.pin, c.room_id FROM conferences c"
            " JOIN video_servers s ON s.name = c.server WHERE c.state = 'active' AND s.healthy")
        by_server: dict[str, dict[int, asyncpg.Record]] = {}
        for row in known:
            by_server.setdefault(row["server"], {})[row["janus_room"]] = row
        for name, janus in self.janus.items():
            try:
                await self._reconcile_server(name, janus, by_server.get(name, {}))
            except JanusError as exc:
                # One server refusing must not keep the others (or the next round) waiting.
                log.warning("reconciling %s failed: %s (the next round retries)", name, exc)

    async def _reconcile_server(self, name: str, janus: Janus, ours: dict[int, asyncpg.Record]) -> None:
        try:
            rooms = await janus.rooms()
        except JanusError:
            return  # the probe decides what that means
        for janus_room, row in ours.items():
            if janus_room not in rooms:
                log.warning("room of conference %s missing on %s: recreating", row["id"], name)
                await janus.create_room(janus_room, row["pin"], f"room {row['room_id']}")
            else:
                await self.pool.execute(
                    "UPDATE conferences SET sfu_participants = $2 WHERE id = $1"
                    " AND sfu_participants <> $2", row["id"],
                    int(rooms[janus_room].get("num_participants", 0)))
        for janus_room, info in rooms.items():
            tagged = str(info.get("description", "")).startswith("cam-conference")
            key = (name, janus_room)
            if not tagged or janus_room in ours:
                self._orphans.pop(key, None)
                continue
            # Seen twice in a row (a probe interval apart): not a placement in flight.
            self._orphans[key] = self._orphans.get(key, 0) + 1
            if self._orphans[key] >= 2 and not await self.pool.fetchval(
                    "SELECT true FROM conferences WHERE server = $1 AND janus_room = $2"
                    " AND state = 'active'", name, janus_room):
                log.warning("orphan room %s on %s: destroying", janus_room, name)
                await janus.destroy_room(janus_room)
                self._orphans.pop(key, None)

    async def drop_stale_participants(self) -> None:
        """Participants whose connection is gone (their node died) leave."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM conference_participants p USING conferences c"
                " WHERE c.id = p.conference_id AND p.joined_at < now() - make_interval(secs => $1)"
                " AND NOT EXISTS (SELECT 1 FROM presence_sessions s WHERE s.session_id = p.session_id)"
                " RETURNING c.id, c.room_id, p.user_id, p.session_id",
                self.settings.node_timeout * 2)
            ended = [await self._end_if_empty(conn, cid) for cid in {r["id"] for r in rows}]
        for r in rows:
            await self._publish(r["room_id"], {"type": "participant_left", "user": r["user_id"],
                                               "session": r["session_id"]})
        for e in ended:
            await self._destroy(e)

    async def gauges(self) -> None:
        """The video servers' load as ``cam_video_*`` (what ``camctl video status`` shows)."""
        rows = await self.pool.fetch(_LOADS)
        rooms = {r["server"]: r["n"] for r in await self.pool.fetch(
            "SELECT server, count(*)::int AS n FROM conferences WHERE state = 'active'"
            " GROUP BY server")}
        for gauge in (PARTICIPANTS, ROOMS, CAPACITY, SERVER_UP, DRAINING):
            gauge.clear()  # a server taken out of cam.videoDomains disappears
        for r in rows:
            name = r["name"]
            PARTICIPANTS.labels(server=name).set(r["participants"])
            ROOMS.labels(server=name).set(rooms.get(name, 0))
            CAPACITY.labels(server=name).set(r["capacity"])
            SERVER_UP.labels(server=name).set(1 if r["healthy"] else 0)
            DRAINING.labels(server=name).set(1 if r["admin_state"] == "draining" else 0)

    async def tick(self) -> None:
        """One round: probe, failover, reconciliation, stale participants.

        A step that hits a backend outage or a refusing Janus is logged and skipped; the
        other steps still run, and the next round tries it again. Anything else is a bug:
        it escapes to ``camcore.loops``, which logs its traceback and restarts the round.
        """
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("probe", self.probe), ("failover", self.fail_over), ("reconciliation", self.reconcile),
            ("stale participants", self.drop_stale_participants), ("gauges", self.gauges)]
        for name, step in steps:
            try:
                await step()
            except _ROUND_ERRORS as exc:
                log.warning("video round: %s failed: %s", name, exc)
