"""Handlers of the ``cam.chat.rpc.<op>`` commands.

A message is acknowledged only after its transaction commits; the room's sequence
number comes from the same transaction (see ``cam_post_message`` in the migrations).
Events are published after commit; edges drop any sequence they already delivered,
so publishing a retried message again is harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from camcore import audit, bus, db, errors, files, guests, subjects, wire
from camcore.errors import CamError, RequestError
from camcore.loops import every
from camcore.service import Loop, ReplicaBase

from .batch import GroupCommit, Stored

log = logging.getLogger(__name__)

MESSAGES = Counter("cam_chat_messages_total", "Messages stored and published on their "
                   "room's subject, by kind (text, file, system, deleted).", ["kind"])

NOT_A_MEMBER = "not a member of this room (or no such room)"
NO_SUCH_ROOM = "no such room"
NO_SUCH_LINK = "no such meeting link in this room"
OPERATOR = "camctl"
"""The ``by`` of a system message an operator's moderation made (camctl)."""


def _operator(detail: dict[str, Any], os_user: str) -> dict[str, Any]:
    """An audit row's detail, with the OS user who ran camctl when there is one."""
    return {**detail, "os_user": os_user} if os_user else detail


NOT_YOUR_LINK = ("only the link's creator, the room's creator or an admin may revoke "
                 "a meeting link")


def links_over_limit(live: int) -> str | None:
    """Why a room with ``live`` live meeting links cannot get one more
    (``limit_reached``), or None when it can."""
    if live < wire.LINKS_PER_ROOM:
        return None
    return (f"the room has {live} live meeting links, the most it may have; "
            "revoke one first (or let one expire)")


def blocked_message(names: list[str]) -> str:
    """The refusal a blocked user gets (``forbidden``), naming who blocked them."""
    verb = "does" if len(names) == 1 else "do"
    return f"{', '.join(names)} {verb} not accept direct messages or invitations from you"


def rooms_rate_message(limit: int, wait: float) -> str:
    """The refusal of one room too many within the hour (``rate_limited``)."""
    return (f"at most {limit} new rooms per hour (cam.roomsPerHour); "
            f"retry in {max(1, math.ceil(wait))} s")


def members_over_limit(current: int, adding: int, limit: int) -> str | None:
    """Why ``adding`` members cannot join a room of ``current`` (``limit_reached``), or
    None when they fit. All or nothing: a request that does not fit adds nobody."""
    if adding == 0 or current + adding <= limit:
        return None
    room = f"the room has {current} members; " if current else ""
    return (f"{room}{adding} more would exceed the limit of {limit} members per room "
            f"(cam.maxRoomMembers)")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(ts: datetime) -> int:
    """Milliseconds since the epoch, rounded down exactly (as the room summaries' SQL)."""
    return (ts - _EPOCH) // timedelta(milliseconds=1)


PURGE_INTERVAL = 3600.0
"""Seconds between two purges of dead meeting links and their guests."""

UNREAD_CAP = 1000
"""``unread`` counts up to this many messages: 1000 means "1000 or more"."""
UNREAD_SCAN = 2 * UNREAD_CAP
"""``unread`` looks at the room's newest this many messages (those after the marker):
the count costs at most this many rows of the messages primary key per room, however
far behind the marker is (it can only fall short when most of them are the user's own
or system messages)."""
ROOMS_FIRST_CHUNK = 256
"""Rooms read by the first query of a ``list_rooms`` page; the next reads as many as
the average size of those says still fit in ``wire.PAGE_BYTES``."""
LAST_MESSAGE_CHARS = 200
"""``last_message.body`` is cut to this many characters."""

_last_message_decoder = msgspec.json.Decoder(dict[str, Any] | None)


def _room(row: asyncpg.Record) -> dict[str, Any]:
    last = row["last_message"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "name": row["name"],
        "last_seq": row["last_seq"],
        "members": row["members"],
        "read_seq": row["read_seq"],
        "unread": row["unread"],
        "last_message": _last_message_decoder.decode(last) if last is not None else None,
    }


# Scalar subqueries, not joins: with ORDER BY ... LIMIT PostgreSQL evaluates them for
# the rows of the page only. Each is bounded: ``unread`` reads at most UNREAD_SCAN rows,
# a range of the primary key (room_id, seq) below the room's head, whatever the plan;
# ``last_message`` walks the same index back from the head to the newest message that
# is not deleted (an admin's deletion is followed by its system message, so that is the
# first or second row).
_ROOM_SELECT = (
    "SELECT r.id, r.kind, r.last_seq,"
    # The peer of a direct room from its key: it stays named after one of the two left.
    " CASE WHEN r.kind = 'direct' THEN coalesce((SELECT u.display_name FROM users u"
    "   WHERE u.id IN (split_part(r.direct_key, ':', 1)::bigint,"
    "                  split_part(r.direct_key, ':', 2)::bigint) AND u.id <> $1 LIMIT 1),"
    "   r.name) ELSE r.name END AS name,"
    " (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS members,"
    " coalesce(rm.read_seq, 0) AS read_seq,"
    # The room's sequence is gap-free, so this seq range holds at most UNREAD_SCAN rows.
    " (SELECT count(*) FROM (SELECT 1 FROM messages x WHERE x.room_id = r.id"
    f"   AND x.seq > greatest(coalesce(rm.read_seq, 0), r.last_seq - {UNREAD_SCAN})"
    "    AND x.seq <= r.last_seq AND x.kind IN ('text', 'file') AND x.sender_id <> $1"
    f"   LIMIT {UNREAD_CAP}) c) AS unread,"
    " (SELECT json_build_object('seq', x.seq, 'sender', x.sender_id,"
    "    'sender_name', (SELECT u.username FROM users u WHERE u.id = x.sender_id),"
    f"   'kind', x.kind, 'body', left(x.body, {LAST_MESSAGE_CHARS}),"
    "    'ts', floor(extract(epoch FROM x.created_at) * 1000)::bigint)"
    "  FROM messages x WHERE x.room_id = r.id AND x.kind <> 'deleted'"
    "  ORDER BY x.seq DESC LIMIT 1) AS last_message"
    " FROM rooms r JOIN room_members m ON m.room_id = r.id AND m.user_id = $1"
    " LEFT JOIN read_markers rm ON rm.user_id = $1 AND rm.room_id = r.id"
)


class ChatService(ReplicaBase):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, max_message_chars: int,
                 rooms_per_hour: int = 60, max_room_members: int = 10_000) -> None:
        self.pool = pool
        self.nc = nc
        self.max_message_chars = max_message_chars
        self.rooms_per_hour = rooms_per_hour
        self.max_room_members = max_room_members
        self._names: dict[int, str] = {}
        self._kinds: dict[int, str] = {}  # a room's kind never changes
        self._operator_rpc: bus.RpcServer | None = None
        self.group = GroupCommit(pool)

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {
            "create_room": (wire.CreateRoom, self.create_room),
            "open_direct": (wire.OpenDirect, self.open_direct),
            "invite": (wire.Invite, self.invite),
            "list_rooms": (wire.ListRooms, self.list_rooms),
            "send": (wire.SendMessage, self.send),
            "send_file": (wire.SendFile, self.send_file),
            "history": (wire.History, self.history),
            "members": (wire.Members, self.members),
            "room_info": (wire.RoomInfo, self.room_info),
            "mark_read": (wire.MarkRead, self.mark_read),
            "room_heads": (wire.RoomHeads, self.room_heads),
            "leave": (wire.Leave, self.leave),
            "block": (wire.Block, self.block),
            "unblock": (wire.Unblock, self.unblock),
            "blocks": (wire.Blocks, self.blocks),
            "admin_remove_member": (wire.AdminRemoveMember, self.admin_remove_member),
            "admin_delete_room": (wire.AdminDeleteRoom, self.admin_delete_room),
            "admin_delete_message": (wire.AdminDeleteMessage, self.admin_delete_message),
            "conf_link_create": (wire.ConfLinkCreate, self.conf_link_create),
            "conf_links": (wire.ConfLinks, self.conf_links),
            "conf_link_revoke": (wire.ConfLinkRevoke, self.conf_link_revoke),
        }

    def operator_handlers(self) -> dict[str, tuple[type[Any], Any]]:
        """``cam.chat.rpc.operator.<op>``: camctl's moderation, with no user to check."""
        return {
            "remove_member": (wire.OperatorRemoveMember, self.operator_remove_member),
            "delete_room": (wire.OperatorDeleteRoom, self.operator_delete_room),
        }

    async def start(self) -> None:
        self._operator_rpc = bus.RpcServer(self.nc, subjects.CHAT_OPERATOR, subjects.CHAT_QUEUE,
                                           self.operator_handlers())
        await self._operator_rpc.start()

    async def close(self) -> None:
        # After the bus was drained (serve_replica), which ended the subscription too:
        # this only waits for the operator requests still in flight.
        if self._operator_rpc is not None:
            with contextlib.suppress(*errors.BUS_UNAVAILABLE_ERRORS):
                await self._operator_rpc.stop()

    def background(self) -> list[Loop]:
        # Every replica purges; a DELETE of rows another replica deletes is harmless.
        return [Loop("meeting link purge", every(PURGE_INTERVAL, self._purge_round))]

    async def _purge_round(self) -> None:
        try:
            gone = await guests.purge(self.pool)
        except (asyncpg.PostgresError, *db.UNAVAILABLE_ERRORS) as exc:
            log.warning("purging dead meeting links failed: %s (the next round retries)", exc)
            return
        if gone:
            log.info("purged %d dead meeting links and their guests", gone)

    # ------------------------------------------------------------ helpers

    async def _user_name(self, conn: asyncpg.Pool | asyncpg.Connection, user_id: int) -> str:
        name = self._names.get(user_id)
        if name is None:
            name = await conn.fetchval("SELECT username FROM users WHERE id = $1", user_id)
            if name is None:
                raise CamError("unknown user", errors.UNAUTHENTICATED)
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[user_id] = name
        return name

    @staticmethod
    async def _user_ids(conn: asyncpg.Connection, names: list[str]) -> dict[str, int]:
        """The ids of named users; ``no_such_user`` for any name that is not a member
        account. Guests are never found here, so nobody can invite them, open a direct
        room with them, put them in a new room or block them."""
        rows = await conn.fetch("SELECT id, username FROM users WHERE username = ANY($1)"
                                " AND guest_link IS NULL AND system_role IS NULL", names)
        found = {r["username"]: r["id"] for r in rows}
        missing = sorted(set(names) - found.keys())
        if missing:
            raise CamError(f"no such user: {', '.join(missing)}", errors.NO_SUCH_USER)
        return found

    @staticmethod
    async def _require_member(conn: asyncpg.Connection, room: int, user_id: int) -> None:
        ok = await conn.fetchval(
            "SELECT true FROM room_members WHERE room_id = $1 AND user_id = $2", room, user_id
        )
        if not ok:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)

    async def _post(
        self, conn: asyncpg.Connection, room: int, sender: int, cid: str, kind: str, body: str
    ) -> wire.Message:
        row = await conn.fetchrow(
            "SELECT seq, created_at, duplicate FROM cam_post_message($1, $2, $3, $4, $5)",
            room, sender, cid, kind, body,
        )
        stored = None if row is None else Stored(row["seq"], row["created_at"],
                                                 row["duplicate"])
        return await self._stored(conn, stored, room, sender, cid, kind, body)

    async def _stored(self, conn: asyncpg.Pool | asyncpg.Connection, row: Stored | None,
                      room: int, sender: int, cid: str, kind: str, body: str) -> wire.Message:
        """The message ``cam_post_message`` stored (``row``), or the one a reused cid
        names; not_a_member for no row, conflict for a cid reused for another body."""
        if row is None:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        if row.duplicate and kind in ("text", "file"):
            stored = await conn.fetchrow(
                "SELECT kind, body FROM messages WHERE room_id = $1 AND seq = $2", room, row.seq
            )
            if stored["kind"] == "deleted":
                # Stored, then deleted by an admin: acknowledge it, never publish it again.
                kind, body = "deleted", ""
            elif stored["kind"] != kind or (kind == "text" and stored["body"] != body):
                raise CamError(
                    f"client message id {cid!r} was already used for another message",
                    errors.CONFLICT,
                )
        return wire.Message(
            room=room, seq=row.seq, cid=cid, sender=sender,
            sender_name=await self._user_name(conn, sender), kind=kind, body=body,
            ts=_ms(row.created_at),
        )

    async def _post_system(self, conn: asyncpg.Connection, room: int, actor: int,
                           event: dict[str, Any]) -> wire.Message:
        """Store a system message by ``actor``, who need not be a member (an admin).

        Call it in the transaction that made the change, with the room row locked: the
        seq bump and the insert commit or roll back with it, so the sequence stays
        gap-free.
        """
        cid, body = f"sys:{uuid.uuid4()}", json.dumps(event)
        row = await conn.fetchrow(
            "WITH r AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1"
            " RETURNING last_seq)"
            " INSERT INTO messages (room_id, seq, cid, sender_id, kind, body)"
            " SELECT $1, r.last_seq, $2, $3, 'system', $4 FROM r RETURNING seq, created_at",
            room, cid, actor, body,
        )
        if row is None:
            raise CamError(NO_SUCH_ROOM, errors.NOT_A_MEMBER)
        return wire.Message(
            room=room, seq=row["seq"], cid=cid, sender=actor,
            sender_name=await self._user_name(conn, actor), kind="system", body=body,
            ts=_ms(row["created_at"]),
        )

    @staticmethod
    async def _lock_room(conn: asyncpg.Connection, room: int) -> str | None:
        """Lock a live room's row for the rest of the transaction; its kind, or None.

        The lock orders every membership change of the room (and its senders), so the
        member count one change checks is not changed under it by another.
        """
        kind: str | None = await conn.fetchval(
            "SELECT kind FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", room)
        return kind

    @staticmethod
    async def _refuse_blocked(conn: asyncpg.Connection, caller: int, users: list[int]) -> None:
        """``forbidden`` if any of ``users`` blocked ``caller``."""
        if not users:
            return
        rows = await conn.fetch(
            "SELECT u.username FROM user_blocks b JOIN users u ON u.id = b.blocker_id"
            " WHERE b.blocked_id = $1 AND b.blocker_id = ANY($2::bigint[]) ORDER BY u.username",
            caller, users,
        )
        if rows:
            raise CamError(blocked_message([r["username"] for r in rows]), errors.FORBIDDEN)

    async def _refuse_blocked_send(self, conn: asyncpg.Pool | asyncpg.Connection,
                                   req: wire.SendMessage) -> None:
        """``forbidden`` for a new message into a direct room whose other member blocked
        the sender (a retry of a message stored before the block is still answered)."""
        kind = self._kinds.get(req.room)
        if kind is None:
            kind = await conn.fetchval("SELECT kind FROM rooms WHERE id = $1", req.room)
            if kind is None:
                return  # cam_post_message answers not_a_member
            if len(self._kinds) > 100_000:
                self._kinds.clear()
            self._kinds[req.room] = kind
        if kind != "direct":
            return
        blocker = await conn.fetchval(
            "SELECT u.username FROM room_members m"
            " JOIN room_members o ON o.room_id = m.room_id AND o.user_id <> m.user_id"
            " JOIN user_blocks b ON b.blocker_id = o.user_id AND b.blocked_id = m.user_id"
            " JOIN users u ON u.id = o.user_id"
            " WHERE m.room_id = $1 AND m.user_id = $2 AND NOT EXISTS (SELECT 1 FROM messages s"
            "   WHERE s.room_id = $1 AND s.sender_id = $2 AND s.cid = $3)",
            req.room, req.user_id, req.cid,
        )
        if blocker is not None:
            raise CamError(blocked_message([blocker]), errors.FORBIDDEN)

    async def _check_room_rate(self, conn: asyncpg.Connection, user_id: int) -> None:
        """``rate_limited`` if the user created ``rooms_per_hour`` rooms within the hour.

        Counted from the store, so every replica agrees; the user's row lock orders
        the user's concurrent creations, so none slips past the count.
        """
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id)
        # The rooms_per_hour-th newest room of the hour: once it is an hour old, the
        # user is under the limit again.
        wait = await conn.fetchval(
            "SELECT extract(epoch FROM created_at + interval '1 hour' - now())::float8"
            " FROM rooms WHERE created_by = $1 AND created_at > now() - interval '1 hour'"
            " ORDER BY created_at DESC OFFSET $2 LIMIT 1",
            user_id, self.rooms_per_hour - 1,
        )
        if wait is not None:
            raise CamError(rooms_rate_message(self.rooms_per_hour, wait), errors.RATE_LIMITED)

    def _check_members(self, current: int, adding: int) -> None:
        refusal = members_over_limit(current, adding, self.max_room_members)
        if refusal is not None:
            raise CamError(refusal, errors.LIMIT_REACHED)

    async def _publish_room_removed(self, user_ids: list[int], room: int) -> None:
        """Tell the users' edges to stop delivering ``room`` to them (``room_removed``)."""
        event = wire.encode({"type": "room_removed", "room": room})
        for uid in user_ids:
            await self.nc.publish(subjects.user_events(uid), event)

    async def _publish_message(self, msg: wire.Message) -> None:
        await self.nc.publish(subjects.room_events(msg.room), wire.encode(msg))
        MESSAGES.labels(kind=msg.kind).inc()

    async def _publish_room_added(self, user_ids: list[int], room: int) -> None:
        async with self.pool.acquire() as conn:
            for uid in user_ids:
                row = await conn.fetchrow(_ROOM_SELECT + " WHERE r.id = $2", uid, room)
                if row is not None:
                    event = {"type": "room_added", "room": _room(row)}
                    await self.nc.publish(subjects.user_events(uid), wire.encode(event))

    # ------------------------------------------------------------ handlers

    async def create_room(self, req: wire.CreateRoom) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await self._user_ids(conn, req.members) if req.members else {}
            others = sorted(set(ids.values()) - {req.user_id})
            self._check_members(0, len(others) + 1)
            await self._refuse_blocked(conn, req.user_id, others)
            await self._check_room_rate(conn, req.user_id)
            room = await conn.fetchval(
                "INSERT INTO rooms (kind, name, created_by) VALUES ('group', $1, $2) RETURNING id",
                req.name, req.user_id,
            )
            members = sorted({req.user_id, *ids.values()})
            await conn.executemany(
                "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)",
                [(room, uid) for uid in members],
            )
            created = await self._post(
                conn, room, req.user_id, f"sys:{uuid.uuid4()}", "system",
                json.dumps({"event": "room_created", "name": req.name,
                            "members": sorted([*ids.keys()])}),
            )
        await self._publish_room_added(members, room)
        await self._publish_message(created)
        return await self.room_info(wire.RoomInfo(user_id=req.user_id, room=room))

    async def open_direct(self, req: wire.OpenDirect) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            peer = (await self._user_ids(conn, [req.peer]))[req.peer]
            if peer == req.user_id:
                raise RequestError("a direct room needs another user")
            key = f"{min(peer, req.user_id)}:{max(peer, req.user_id)}"
            async with conn.transaction():
                await self._refuse_blocked(conn, req.user_id, [peer])
                room = await conn.fetchval("SELECT id FROM rooms WHERE direct_key = $1", key)
                if room is None:
                    await self._check_room_rate(conn, req.user_id)
                    room = await conn.fetchval(
                        "INSERT INTO rooms (kind, name, direct_key, created_by)"
                        " VALUES ('direct', $1, $2, $3) ON CONFLICT (direct_key) DO NOTHING"
                        " RETURNING id",
                        "direct", key, req.user_id,
                    )
                if room is None:  # a concurrent open_direct of the pair made it
                    room = await conn.fetchval("SELECT id FROM rooms WHERE direct_key = $1", key)
                # Both users are members of their direct room: one who left comes back.
                rows = await conn.fetch(
                    "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])"
                    " ON CONFLICT DO NOTHING RETURNING user_id",
                    room, [req.user_id, peer],
                )
            added = sorted(r["user_id"] for r in rows)
            if added:
                await self._publish_room_added(added, room)
        return await self.room_info(wire.RoomInfo(user_id=req.user_id, room=room))

    async def invite(self, req: wire.Invite) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_member(conn, req.room, req.user_id)
            kind = await self._lock_room(conn, req.room)
            if kind is None:
                raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
            if kind == "direct":
                raise RequestError("members cannot be added to a direct room")
            ids = await self._user_ids(conn, req.users)
            present = {r["user_id"] for r in await conn.fetch(
                "SELECT user_id FROM room_members WHERE room_id = $1 AND user_id = ANY($2::bigint[])",
                req.room, list(ids.values()))}
            new = sorted(set(ids.values()) - present)
            await self._refuse_blocked(conn, req.user_id, new)
            count = await conn.fetchval(
                "SELECT count(*) FROM room_members WHERE room_id = $1", req.room)
            self._check_members(count, len(new))
            rows = await conn.fetch(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])"
                " ON CONFLICT DO NOTHING RETURNING user_id",
                req.room, new,
            )
            added = sorted(r["user_id"] for r in rows)
            names = sorted(n for n, i in ids.items() if i in added)
            event = None
            if added:
                event = await self._post(
                    conn, req.room, req.user_id, f"sys:{uuid.uuid4()}", "system",
                    json.dumps({"event": "members_added", "users": names}),
                )
                # What was said before they came is history to read, not unread news.
                await conn.execute(
                    "INSERT INTO read_markers (user_id, room_id, read_seq)"
                    " SELECT unnest($2::bigint[]), $1, $3 ON CONFLICT (user_id, room_id)"
                    " DO UPDATE SET read_seq = greatest(read_markers.read_seq, excluded.read_seq)",
                    req.room, added, event.seq)
        if event is not None:
            await self._publish_room_added(added, req.room)
            await self._publish_message(event)
        return {"room": req.room, "added": names}

    async def list_rooms(self, req: wire.ListRooms) -> dict[str, Any]:
        limit = req.limit or wire.ROOMS_PAGE_MAX
        # Read in chunks until the page is full in count or in bytes: a page of large
        # room objects holds far fewer than ``limit``, and each row read costs its
        # summary subqueries (unread, last message).
        found: list[dict[str, Any]] = []
        size, after, want = 2, req.after, min(limit + 1, ROOMS_FIRST_CHUNK)
        while True:
            rows = await self.pool.fetch(
                _ROOM_SELECT + " WHERE r.id > $2 ORDER BY r.id LIMIT $3",
                req.user_id, after, want,
            )
            chunk = [_room(r) for r in rows]
            found += chunk
            size += sum(len(wire.encode(room)) + 1 for room in chunk)
            if len(rows) < want or len(found) > limit or size > wire.PAGE_BYTES:
                break
            after = found[-1]["id"]
            # As many more as the average room says still fit, and one to spare.
            fit = (wire.PAGE_BYTES - size) * len(found) // (size - 2) + 1
            want = max(1, min(limit + 1 - len(found), fit + 1))
        rooms, cut = wire.bounded_page(found[:limit])
        more = cut or len(found) > limit
        # ``next`` is the cursor of the following page: the last id of this one.
        return {"rooms": rooms, "next": rooms[-1]["id"] if more else None}

    async def room_info(self, req: wire.RoomInfo) -> dict[str, Any]:
        row = await self.pool.fetchrow(_ROOM_SELECT + " WHERE r.id = $2", req.user_id, req.room)
        if row is None:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        return _room(row)

    async def mark_read(self, req: wire.MarkRead) -> dict[str, Any]:
        """Move the caller's read marker of a room forward to ``seq`` (at most the
        room's head); it never goes back. Every connection of the user, on every node,
        is told with a ``read`` event."""
        read_seq = await self.pool.fetchval(
            "INSERT INTO read_markers (user_id, room_id, read_seq)"
            " SELECT $1, r.id, least($3::bigint, r.last_seq) FROM rooms r"
            " JOIN room_members m ON m.room_id = r.id AND m.user_id = $1 WHERE r.id = $2"
            " ON CONFLICT (user_id, room_id) DO UPDATE"
            " SET read_seq = greatest(read_markers.read_seq, excluded.read_seq),"
            "     updated_at = CASE WHEN excluded.read_seq > read_markers.read_seq"
            "                  THEN now() ELSE read_markers.updated_at END"
            " RETURNING read_seq",
            req.user_id, req.room, req.seq,
        )
        if read_seq is None:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        event = {"type": "read", "room": req.room, "read_seq": read_seq}
        await self.nc.publish(subjects.user_events(req.user_id), wire.encode(event))
        return {"room": req.room, "read_seq": read_seq}

    async def room_heads(self, req: wire.RoomHeads) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "SELECT id, last_seq FROM rooms WHERE id = ANY($1::bigint[])", req.rooms
        )
        return {"heads": [[r["id"], r["last_seq"]] for r in rows]}

    async def send(self, req: wire.SendMessage) -> dict[str, Any]:
        if len(req.body) > self.max_message_chars:
            raise CamError(
                f"message is {len(req.body)} characters; the limit is {self.max_message_chars}",
                errors.MESSAGE_TOO_LARGE,
            )
        if not req.body.strip():
            raise RequestError("message body is empty")
        await self._refuse_blocked_send(self.pool, req)
        # Committed with the sends that arrive with it (group commit, cam_chat.batch).
        stored = await self.group.post(req.room, req.user_id, req.cid, "text", req.body)
        msg = await self._stored(self.pool, stored, req.room, req.user_id, req.cid, "text",
                                 req.body)
        await self._publish_message(msg)
        return {"room": msg.room, "seq": msg.seq, "cid": msg.cid, "ts": msg.ts}

    async def send_file(self, req: wire.SendFile) -> dict[str, Any]:
        """The message of kind ``file`` for an upload the caller committed into this room
        (the edge's upload route; clients cannot send this op). Idempotent by cid like
        ``send``; one message per file."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM files WHERE id = $1 AND room_id = $2 AND uploader_id = $3"
                " AND state = 'ready' FOR UPDATE", req.file_id, req.room, req.user_id)
            if row is None:
                raise CamError("no such upload", errors.NOT_FOUND)
            await self._refuse_blocked_send(conn, wire.SendMessage(
                user_id=req.user_id, room=req.room, cid=req.cid, body=row["name"]))
            msg = await self._post(conn, req.room, req.user_id, req.cid, "file", row["name"])
            attached = await conn.fetchval(
                "SELECT file_id FROM messages WHERE room_id = $1 AND seq = $2", req.room, msg.seq)
            fresh = attached is None and msg.kind == "file"
            if fresh:
                other = await conn.fetchval(
                    "SELECT seq FROM messages WHERE file_id = $1", req.file_id)
                if other is not None:
                    raise CamError(f"file {req.file_id} was already sent (seq {other})",
                                   errors.CONFLICT)
                await conn.execute("UPDATE messages SET file_id = $3 WHERE room_id = $1"
                                   " AND seq = $2", req.room, msg.seq, req.file_id)
            elif attached != req.file_id and msg.kind != "deleted":
                # A retried upload whose first try was stored (its answer was lost): the
                # stored message stands; the new copy is never sent, and swept.
                return {"room": msg.room, "seq": msg.seq, "cid": msg.cid, "ts": msg.ts,
                        "file_id": attached}
        if msg.kind == "file":
            msg.file = wire.FileInfo(**files.info(row))
        if fresh:  # a retry of a stored send is acknowledged, not published again
            await self._publish_message(msg)
        return {"room": msg.room, "seq": msg.seq, "cid": msg.cid, "ts": msg.ts}

    async def history(self, req: wire.History) -> dict[str, Any]:
        if req.before is not None and req.after is not None:
            raise RequestError("give 'before' or 'after', not both")
        async with self.pool.acquire() as conn:
            await self._require_member(conn, req.room, req.user_id)
            base = (
                "SELECT m.seq, m.cid, m.sender_id, u.username, m.kind, m.body, m.created_at,"
                " f.id, f.name, f.size, f.content_type, f.width, f.height"
                " FROM messages m JOIN users u ON u.id = m.sender_id"
                " LEFT JOIN files f ON f.id = m.file_id AND m.kind = 'file'"
                " WHERE m.room_id = $1"
            )
            if req.after is not None:
                rows = await conn.fetch(
                    base + " AND m.seq > $2 ORDER BY m.seq LIMIT $3",
                    req.room, req.after, req.limit + 1,
                )
                has_more = len(rows) > req.limit
                rows = rows[: req.limit]
            else:
                before = req.before if req.before is not None else 2**62
                rows = await conn.fetch(
                    base + " AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3",
                    req.room, before, req.limit + 1,
                )
                has_more = len(rows) > req.limit
                rows = list(reversed(rows[: req.limit]))
            last_seq = await conn.fetchval("SELECT last_seq FROM rooms WHERE id = $1", req.room)
        messages = [
            wire.Message(room=req.room, seq=r["seq"], cid=r["cid"], sender=r["sender_id"],
                         sender_name=r["username"], kind=r["kind"], body=r["body"],
                         ts=_ms(r["created_at"]),
                         file=wire.FileInfo(**files.info(r)) if r["id"] is not None else None)
            for r in rows
        ]
        # Large messages fill the byte budget before ``limit``: the page ends early, on
        # the side away from the cursor, and has_more sends the client for the rest.
        messages, cut = wire.bounded_page(messages, from_end=req.after is None)
        return {"room": req.room, "messages": messages, "has_more": has_more or cut,
                "last_seq": last_seq}

    async def members(self, req: wire.Members) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            await self._require_member(conn, req.room, req.user_id)
            rows = await conn.fetch(
                "SELECT u.id, u.username, u.display_name FROM room_members m"
                " JOIN users u ON u.id = m.user_id WHERE m.room_id = $1 ORDER BY u.username",
                req.room,
            )
        return {"room": req.room, "members": [dict(r) for r in rows]}

    # ------------------------------------------------------------ membership

    async def leave(self, req: wire.Leave) -> dict[str, Any]:
        """The caller leaves a room (a direct one too: the peer keeps it)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_member(conn, req.room, req.user_id)
            await self._lock_room(conn, req.room)
            left = await conn.fetchval(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2 RETURNING true",
                req.room, req.user_id)
            if not left:  # a concurrent leave, or the room was deleted meanwhile
                raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
            name = await self._user_name(conn, req.user_id)
            event = await self._post_system(conn, req.room, req.user_id,
                                            {"event": "member_left", "users": [name]})
        await self._publish_message(event)
        await self._publish_room_removed([req.user_id], req.room)
        return {"room": req.room, "seq": event.seq}

    async def block(self, req: wire.Block) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            target = (await self._user_ids(conn, [req.user]))[req.user]
            if target == req.user_id:
                raise RequestError("you cannot block yourself")
            # The caller's row lock orders their concurrent blocks for the count.
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", req.user_id)
            known = await conn.fetchval(
                "SELECT true FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2",
                req.user_id, target)
            if not known:
                count = await conn.fetchval(
                    "SELECT count(*) FROM user_blocks WHERE blocker_id = $1", req.user_id)
                if count >= wire.MAX_BLOCKS:
                    raise CamError(f"you have blocked {count} users, the most there can be; "
                                   "unblock some first", errors.LIMIT_REACHED)
                await conn.execute(
                    "INSERT INTO user_blocks (blocker_id, blocked_id) VALUES ($1, $2)",
                    req.user_id, target)
        return {"user": req.user, "blocked": True}

    async def unblock(self, req: wire.Unblock) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            target = (await self._user_ids(conn, [req.user]))[req.user]
            await conn.execute(
                "DELETE FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2",
                req.user_id, target)
        return {"user": req.user, "blocked": False}

    async def blocks(self, req: wire.Blocks) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "SELECT u.username FROM user_blocks b JOIN users u ON u.id = b.blocked_id"
            " WHERE b.blocker_id = $1 ORDER BY u.username", req.user_id)
        return {"users": [r["username"] for r in rows]}

    # ------------------------------------------------------------ moderation (admins)

    async def admin_remove_member(self, req: wire.AdminRemoveMember) -> dict[str, Any]:
        return await self._remove_member(req.user_id, req.room, req.user)

    async def operator_remove_member(self, req: wire.OperatorRemoveMember) -> dict[str, Any]:
        return await self._remove_member(None, req.room, req.user, os_user=req.os_user)

    async def _remove_member(self, actor: int | None, room: int, user: str, *,
                             os_user: str = "") -> dict[str, Any]:
        """Remove a member, by an admin (``actor``) or an operator (None)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if actor is not None:
                await audit.require_admin(conn, actor)
            if await self._lock_room(conn, room) is None:
                raise CamError(NO_SUCH_ROOM, errors.NOT_A_MEMBER)
            target = (await self._user_ids(conn, [user]))[user]
            removed = await conn.fetchval(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2 RETURNING true",
                room, target)
            if not removed:
                raise CamError(f"{user} is not a member of room {room}", errors.NOT_A_MEMBER)
            # An operator is no user: the removal is stored under the removed member.
            by = await self._user_name(conn, actor) if actor is not None else OPERATOR
            event = await self._post_system(
                conn, room, actor if actor is not None else target,
                {"event": "member_removed", "users": [user], "by": by})
            await audit.record(conn, actor, "remove_member", room=room, user=target,
                               seq=event.seq, detail=_operator({"username": user}, os_user))
        await self._publish_message(event)
        await self._publish_room_removed([target], room)
        return {"room": room, "user": user, "seq": event.seq}

    async def admin_delete_message(self, req: wire.AdminDeleteMessage) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            await audit.require_admin(conn, req.user_id)
            if await self._lock_room(conn, req.room) is None:
                raise CamError(NO_SUCH_ROOM, errors.NOT_A_MEMBER)
            stored = await conn.fetchrow(
                "SELECT kind, sender_id FROM messages WHERE room_id = $1 AND seq = $2",
                req.room, req.seq)
            if stored is None:
                raise RequestError(f"room {req.room} has no message {req.seq}")
            if stored["kind"] == "deleted":
                raise RequestError(f"message {req.seq} is already deleted")
            if stored["kind"] == "system":
                raise RequestError("system messages cannot be deleted")
            # The row stays, so the sequence stays gap-free: only its content goes.
            await conn.execute(
                "UPDATE messages SET kind = 'deleted', body = '' WHERE room_id = $1 AND seq = $2",
                req.room, req.seq)
            event = await self._post_system(conn, req.room, req.user_id,
                                            {"event": "message_deleted", "seq": req.seq})
            await audit.record(conn, req.user_id, "delete_message", room=req.room,
                              user=stored["sender_id"], seq=req.seq,
                              detail={"kind": stored["kind"], "event_seq": event.seq})
        await self._publish_message(event)
        return {"room": req.room, "seq": req.seq, "event_seq": event.seq}

    async def admin_delete_room(self, req: wire.AdminDeleteRoom) -> dict[str, Any]:
        return await self._delete_room(req.user_id, req.room)

    async def operator_delete_room(self, req: wire.OperatorDeleteRoom) -> dict[str, Any]:
        return await self._delete_room(None, req.room, os_user=req.os_user)

    async def _delete_room(self, actor: int | None, room: int, *, os_user: str = ""
                           ) -> dict[str, Any]:
        """Delete a room, by an admin (``actor``) or an operator (None)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if actor is not None:
                await audit.require_admin(conn, actor)
            kind = await self._lock_room(conn, room)
            if kind is None:
                raise CamError(NO_SUCH_ROOM, errors.NOT_A_MEMBER)
            # An operator is no user: the deletion is stored under the room's creator.
            sender = actor if actor is not None else await conn.fetchval(
                "SELECT created_by FROM rooms WHERE id = $1", room)
            event = await self._post_system(conn, room, sender, {"event": "room_deleted"}
                                            if actor is not None else
                                            {"event": "room_deleted", "by": OPERATOR})
            await conn.execute(
                "UPDATE messages SET kind = 'deleted', body = ''"
                " WHERE room_id = $1 AND seq < $2 AND kind <> 'deleted'", room, event.seq)
            members = [r["user_id"] for r in await conn.fetch(
                "DELETE FROM room_members WHERE room_id = $1 RETURNING user_id", room)]
            # The pair of a deleted direct room can open a new one.
            name = await conn.fetchval(
                "UPDATE rooms SET deleted_at = now(), direct_key = NULL WHERE id = $1"
                " RETURNING name", room)
            # Its meeting links die with it, and their guests are put out.
            links = [r["id"] for r in await conn.fetch(
                "UPDATE meeting_links SET revoked_at = coalesce(revoked_at, now())"
                " WHERE room_id = $1 RETURNING id", room)]
            ended = await guests.end_sessions(conn, links)
            detail: dict[str, Any] = {"name": name, "kind": kind, "members": len(members)}
            if ended:
                detail["guest_sessions"] = len(ended)
            await audit.record(conn, actor, "delete_room", room=room, seq=event.seq,
                               detail=_operator(detail, os_user))
        await self._publish_message(event)
        await self._publish_room_removed(sorted(members), room)
        return {"room": room, "seq": event.seq, "members": len(members),
                wire.GUEST_SESSIONS: ended}

    # ------------------------------------------------------------ meeting links

    async def conf_link_create(self, req: wire.ConfLinkCreate) -> dict[str, Any]:
        """A meeting link to the room's conference; its token is in this answer only."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_member(conn, req.room, req.user_id)
            # The room's row lock orders concurrent creations, so the count below
            # cannot be passed by two at once. NO KEY UPDATE: inserts that reference
            # the room (messages, links) are not held up by it.
            live_room = await conn.fetchval(
                "SELECT true FROM rooms WHERE id = $1 AND deleted_at IS NULL"
                " FOR NO KEY UPDATE", req.room)
            if not live_room:
                raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
            live = await conn.fetchval(
                "SELECT count(*) FROM meeting_links WHERE room_id = $1"
                " AND revoked_at IS NULL AND expires_at > now()", req.room)
            refusal = links_over_limit(live)
            if refusal is not None:
                raise CamError(refusal, errors.LIMIT_REACHED)
            token = guests.new_token()
            row = await conn.fetchrow(
                "INSERT INTO meeting_links (room_id, token_hash, created_by, expires_at,"
                " max_guests) VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)"
                " RETURNING *",
                req.room, guests.digest(token), req.user_id, req.ttl, req.max_guests)
            await audit.record(conn, req.user_id, "conf_link_create", room=req.room,
                              detail={"link": row["id"], "ttl": req.ttl,
                                      "max_guests": req.max_guests})
        return {"link": guests.link_object(row, token)}

    async def conf_links(self, req: wire.ConfLinks) -> dict[str, Any]:
        """The room's live links, newest first (at most ``wire.LINKS_PER_ROOM``)."""
        async with self.pool.acquire() as conn:
            await self._require_member(conn, req.room, req.user_id)
            rows = await conn.fetch(
                "SELECT * FROM meeting_links WHERE room_id = $1 AND revoked_at IS NULL"
                " AND expires_at > now() ORDER BY id DESC", req.room)
        return {"links": [guests.link_object(r) for r in rows]}

    async def conf_link_revoke(self, req: wire.ConfLinkRevoke) -> dict[str, Any]:
        """Revoke a link and delete its guests' sessions (the edge closes their sockets
        with the fingerprints of ``wire.GUEST_SESSIONS``). Idempotent."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The link's row lock: a redemption in flight commits before (its session
            # is deleted here) or sees the revocation.
            link = await conn.fetchrow(
                "SELECT l.id, l.created_by, l.revoked_at, r.created_by AS room_creator"
                " FROM meeting_links l JOIN rooms r ON r.id = l.room_id"
                " WHERE l.id = $1 AND l.room_id = $2 FOR UPDATE OF l", req.link, req.room)
            if link is None:
                raise CamError(NO_SUCH_LINK, errors.NOT_FOUND)
            if req.user_id not in (link["created_by"], link["room_creator"]):
                # Read from the store at each request, never the edge's copy.
                is_admin = await conn.fetchval("SELECT is_admin FROM users WHERE id = $1",
                                               req.user_id)
                if not is_admin:
                    raise CamError(NOT_YOUR_LINK, errors.FORBIDDEN)
            if link["revoked_at"] is None:
                await conn.execute("UPDATE meeting_links SET revoked_at = now() WHERE id = $1",
                                   req.link)
            ended = await guests.end_sessions(conn, [req.link])
            if link["revoked_at"] is None or ended:
                await audit.record(conn, req.user_id, "conf_link_revoke", room=req.room,
                                  detail={"link": req.link, "guest_sessions": len(ended)})
        return {"link": req.link, "revoked": True, wire.GUEST_SESSIONS: ended}
