"""Handlers of the ``cam.chat.rpc.<op>`` commands.

A message is acknowledged only after its transaction commits; the room's sequence
number comes from the same transaction (see ``cam_post_message`` in the migrations).
Events are published after commit; edges drop any sequence they already delivered,
so publishing a retried message again is harmless.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from camcore import errors, subjects, wire
from camcore.errors import CamError, RequestError
from camcore.service import ReplicaBase

NOT_A_MEMBER = "not a member of this room (or no such room)"


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _room(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "name": row["name"],
        "last_seq": row["last_seq"],
        "members": row["members"],
    }


_ROOM_SELECT = (
    "SELECT r.id, r.kind, r.last_seq,"
    " CASE WHEN r.kind = 'direct' THEN coalesce((SELECT u.display_name FROM room_members o"
    "   JOIN users u ON u.id = o.user_id WHERE o.room_id = r.id AND o.user_id <> $1 LIMIT 1),"
    "   r.name) ELSE r.name END AS name,"
    " (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS members"
    " FROM rooms r JOIN room_members m ON m.room_id = r.id AND m.user_id = $1"
)


class ChatService(ReplicaBase):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, max_message_chars: int) -> None:
        self.pool = pool
        self.nc = nc
        self.max_message_chars = max_message_chars
        self._names: dict[int, str] = {}

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {
            "create_room": (wire.CreateRoom, self.create_room),
            "open_direct": (wire.OpenDirect, self.open_direct),
            "invite": (wire.Invite, self.invite),
            "list_rooms": (wire.ListRooms, self.list_rooms),
            "send": (wire.SendMessage, self.send),
            "history": (wire.History, self.history),
            "members": (wire.Members, self.members),
            "room_info": (wire.RoomInfo, self.room_info),
            "room_heads": (wire.RoomHeads, self.room_heads),
        }

    # ------------------------------------------------------------ helpers

    async def _user_name(self, conn: asyncpg.Connection, user_id: int) -> str:
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
        rows = await conn.fetch("SELECT id, username FROM users WHERE username = ANY($1)", names)
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
        if row is None:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        if row["duplicate"] and kind == "text":
            stored = await conn.fetchval(
                "SELECT body FROM messages WHERE room_id = $1 AND seq = $2", room, row["seq"]
            )
            if stored != body:
                raise CamError(
                    f"client message id {cid!r} was already used for another message",
                    errors.CONFLICT,
                )
        return wire.Message(
            room=room, seq=row["seq"], cid=cid, sender=sender,
            sender_name=await self._user_name(conn, sender), kind=kind, body=body,
            ts=_ms(row["created_at"]),
        )

    async def _publish_message(self, msg: wire.Message) -> None:
        await self.nc.publish(subjects.room_events(msg.room), wire.encode(msg))

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
                room = await conn.fetchval(
                    "INSERT INTO rooms (kind, name, direct_key, created_by)"
                    " VALUES ('direct', $1, $2, $3) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
                    "direct", key, req.user_id,
                )
                if room is not None:
                    await conn.executemany(
                        "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)",
                        [(room, req.user_id), (room, peer)],
                    )
            if room is None:
                room = await conn.fetchval("SELECT id FROM rooms WHERE direct_key = $1", key)
            else:
                await self._publish_room_added([req.user_id, peer], room)
        return await self.room_info(wire.RoomInfo(user_id=req.user_id, room=room))

    async def invite(self, req: wire.Invite) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_member(conn, req.room, req.user_id)
            kind = await conn.fetchval("SELECT kind FROM rooms WHERE id = $1", req.room)
            if kind == "direct":
                raise RequestError("members cannot be added to a direct room")
            ids = await self._user_ids(conn, req.users)
            rows = await conn.fetch(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])"
                " ON CONFLICT DO NOTHING RETURNING user_id",
                req.room, list(ids.values()),
            )
            added = sorted(r["user_id"] for r in rows)
            names = sorted(n for n, i in ids.items() if i in added)
            event = None
            if added:
                event = await self._post(
                    conn, req.room, req.user_id, f"sys:{uuid.uuid4()}", "system",
                    json.dumps({"event": "members_added", "users": names}),
                )
        if event is not None:
            await self._publish_room_added(added, req.room)
            await self._publish_message(event)
        return {"room": req.room, "added": names}

    async def list_rooms(self, req: wire.ListRooms) -> dict[str, Any]:
        limit = req.limit or wire.ROOMS_PAGE_MAX
        rows = await self.pool.fetch(
            _ROOM_SELECT + " WHERE r.id > $2 ORDER BY r.id LIMIT $3",
            req.user_id, req.after, limit + 1,
        )
        rooms, cut = wire.bounded_page([_room(r) for r in rows[:limit]])
        more = cut or len(rows) > limit
        # ``next`` is the cursor of the following page: the last id of this one.
        return {"rooms": rooms, "next": rooms[-1]["id"] if more else None}

    async def room_info(self, req: wire.RoomInfo) -> dict[str, Any]:
        row = await self.pool.fetchrow(_ROOM_SELECT + " WHERE r.id = $2", req.user_id, req.room)
        if row is None:
            raise CamError(NOT_A_MEMBER, errors.NOT_A_MEMBER)
        return _room(row)

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
        async with self.pool.acquire() as conn:
            msg = await self._post(conn, req.room, req.user_id, req.cid, "text", req.body)
        await self._publish_message(msg)
        return {"room": msg.room, "seq": msg.seq, "cid": msg.cid, "ts": msg.ts}

    async def history(self, req: wire.History) -> dict[str, Any]:
        if req.before is not None and req.after is not None:
            raise RequestError("give 'before' or 'after', not both")
        async with self.pool.acquire() as conn:
            await self._require_member(conn, req.room, req.user_id)
            base = (
                "SELECT m.seq, m.cid, m.sender_id, u.username, m.kind, m.body, m.created_at"
                " FROM messages m JOIN users u ON u.id = m.sender_id WHERE m.room_id = $1"
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
                         ts=_ms(r["created_at"]))
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
