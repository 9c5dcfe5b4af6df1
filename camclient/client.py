"""An asyncio client for the edge's REST login and WebSocket protocol (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL_VERSION = 1


class ClientError(Exception):
    """An error frame or REST error: ``code`` is the protocol's stable error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        """Seconds to wait before retrying, with ``rate_limited``."""


async def login(base_url: str, username: str, password: str, *, verify: Any = True) -> str:
    """Log in over REST and return the session token."""
    async with httpx.AsyncClient(base_url=base_url, verify=verify, timeout=10) as http:
        r = await http.post("/api/login", json={"username": username, "password": password})
    body = r.json()
    if r.status_code != 200:
        err = body.get("error", {})
        raise ClientError(err.get("code", "http_error"), err.get("message", r.reason_phrase))
    return str(body["token"])


async def change_password(base_url: str, token: str, current: str, new: str, *,
                          verify: Any = True) -> int:
    """Change the password of the session's user; returns how many of the user's other
    sessions were revoked (their sockets are closed on every node)."""
    async with httpx.AsyncClient(base_url=base_url, verify=verify, timeout=10) as http:
        r = await http.post("/api/password", json={"current": current, "new": new},
                            headers={"Authorization": f"Bearer {token}"})
    body = r.json()
    if r.status_code != 200:
        err = body.get("error", {})
        raise ClientError(err.get("code", "http_error"), err.get("message", r.reason_phrase))
    return int(body["revoked_sessions"])


async def guest_login(base_url: str, link_token: str, name: str, *,
                      verify: Any = True) -> dict[str, Any]:
    """Redeem a meeting link (``POST /api/guest``) as a guest called ``name``.

    Returns the answer: ``{"token", "user", "room": {"id", "name"}, "expires_at"}``;
    ``Client.connect(ws_url, answer["token"])`` then opens the guest's connection.
    An unusable link raises ``ClientError("not_found")``, a full one ``limit_reached``.
    """
    async with httpx.AsyncClient(base_url=base_url, verify=verify, timeout=10) as http:
        r = await http.post("/api/guest", json={"token": link_token, "name": name})
    body = r.json()
    if r.status_code != 200:
        err = body.get("error", {})
        retry = r.headers.get("retry-after")
        raise ClientError(err.get("code", "http_error"), err.get("message", r.reason_phrase),
                          float(retry) if retry else None)
    return dict(body)


def ws_url(base_url: str) -> str:
    """``http://host:port`` -> ``ws://host:port/ws`` (and https -> wss)."""
    if base_url.startswith("http"):
        base_url = "ws" + base_url[4:]
    return base_url.rstrip("/") + "/ws"


class Client:
    """One authenticated WebSocket connection.

    Replies are matched to requests by id; every other frame (``message``,
    ``room_added``...) goes to ``events``. ``last_seq`` holds, per room, the highest
    sequence number delivered, which is what a resume needs.
    """

    def __init__(self, ws: ClientConnection, *,
                 events: asyncio.Queue[dict[str, Any]] | None = None,
                 last_seq: dict[int, int] | None = None) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = events if events is not None else asyncio.Queue()
        self.last_seq: dict[int, int] = last_seq if last_seq is not None else {}
        self.resync: list[int] = []
        self.resync_from: dict[int, int] = {}
        self.hello: dict[str, Any] = {}
        self.user: dict[str, Any] = {}
        self.rooms: list[dict[str, Any]] = []
        self.guest: dict[str, Any] | None = None
        """For a guest's connection, the ``guest`` object of ``auth``: its room,
        ``room_name`` and ``expires_at``; None for a member."""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, *, origin: str | None = None, max_size: int = 2**24,
                   events: asyncio.Queue[dict[str, Any]] | None = None,
                   last_seq: dict[int, int] | None = None, open_timeout: float = 10,
                   compression: str | None = "deflate",
                   local_addr: tuple[str, int] | None = None) -> Client:
        """Connect without authenticating (``hello`` is read); ``local_addr`` binds the
        socket's own end first (a load generator spreading clients over addresses)."""
        headers = {"Origin": origin} if origin else None
        extra: dict[str, Any] = {"local_addr": local_addr} if local_addr else {}
        ws = await connect(url, additional_headers=headers, max_size=max_size,
                           open_timeout=open_timeout, compression=compression, **extra)
        self = cls(ws, events=events, last_seq=last_seq)
        self.hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        self._reader = asyncio.create_task(self._read())
        return self

    @classmethod
    async def connect(cls, url: str, token: str, *, resume: dict[int, int] | None = None,
                      **kwargs: Any) -> Client:
        """Connect and authenticate with a session token.

        ``resume`` maps room ids to the last seq already seen: the server then sends
        exactly the messages after it, before the live ones (docs/protocol.md).
        """
        self = await cls.open(url, **kwargs)
        fields: dict[str, Any] = {"token": token, "v": PROTOCOL_VERSION}
        if resume:
            fields["resume"] = {str(room): seq for room, seq in resume.items()}
        try:
            result = await self.request("auth", **fields)
        except BaseException:
            await self.close()
            raise
        self.user, self.rooms = result["user"], list(result["rooms"])
        self.guest = result.get("guest")
        if result.get("next") is not None:
            # auth carries the first page of a long room list; the rest is paged.
            try:
                self.rooms += await self.list_rooms(after=result["next"])
            except BaseException:
                await self.close()
                raise
        self.resync = result.get("resync", [])
        # Where each resync room's gap starts: page with history from there.
        self.resync_from = {r: (resume or {}).get(r, 0) for r in self.resync}
        for room in self.rooms:
            if room["id"] in self.resync or room["id"] not in (resume or {}):
                self.last_seq[room["id"]] = max(self.last_seq.get(room["id"], 0), room["last_seq"])
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                op = frame.get("op")
                if op in ("result", "error") and frame.get("id") in self._pending:
                    fut = self._pending.pop(frame["id"])
                    if not fut.done():
                        fut.set_result(frame)
                    continue
                if op == "message":
                    room, seq = frame["room"], frame["seq"]
                    if seq > self.last_seq.get(room, 0):
                        self.last_seq[room] = seq
                elif op == "room_added":
                    self.last_seq.setdefault(frame["room"]["id"], frame["room"]["last_seq"])
                elif op == "room_removed":
                    self.last_seq.pop(frame["room"], None)  # nothing to resume there
                await self.events.put(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ClientError("closed", f"connection closed ({self.close_code})"))
            self._pending.clear()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def request(self, op: str, *, timeout: float = 15.0, **fields: Any) -> Any:
        """Send one op and return its result; raise ClientError on an error frame."""
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.ws.send(json.dumps({"op": op, "id": rid, **fields}))
        except ConnectionClosed as exc:
            self._pending.pop(rid, None)
            raise ClientError("closed", f"connection closed ({exc.rcvd})") from None
        frame = await asyncio.wait_for(fut, timeout)
        if frame["op"] == "error":
            raise ClientError(frame["code"], frame["message"], frame.get("retry_after"))
        return frame["result"]

    async def send(self, room: int, body: str, cid: str | None = None) -> dict[str, Any]:
        """Send a message; returns the acknowledgement (room, seq, cid, ts)."""
        return await self.request("send", room=room, body=body,
                                  cid=cid or uuid.uuid4().hex)

    async def history(self, room: int, **page: Any) -> dict[str, Any]:
        return await self.request("history", room=room, **page)

    async def list_rooms(self, *, after: int = 0, limit: int | None = None
                         ) -> list[dict[str, Any]]:
        """Every room of the user after room id ``after``, ordered by id, fetched page
        by page (``rooms`` with its ``next`` cursor)."""
        rooms: list[dict[str, Any]] = []
        cursor: int | None = after
        while cursor is not None:
            fields: dict[str, Any] = {"after": cursor} if cursor else {}
            if limit is not None:
                fields["limit"] = limit
            page = await self.request("rooms", **fields)
            rooms += page["rooms"]
            cursor = page.get("next")
        return rooms

    async def mark_read(self, room: int, seq: int) -> dict[str, Any]:
        """Move the user's read marker of ``room`` to ``seq`` (never back); returns
        ``{"room", "read_seq"}``. Every connection of the user, this one too, also gets
        a ``read`` event (in ``events``, like every pushed frame)."""
        return await self.request("mark_read", room=room, seq=seq)

    async def directory(self, *, query: str | None = None, after: int = 0,
                        limit: int | None = None) -> dict[str, Any]:
        """One page of the user directory (``{"users", "has_more"}``), in id order after
        user id ``after``; with ``query``, only users whose user name or display name
        contains it, case-insensitively."""
        fields: dict[str, Any] = {"after": after}
        if query is not None:
            fields["query"] = query
        if limit is not None:
            fields["limit"] = limit
        return await self.request("directory", **fields)

    # ---------------------------------------------------------- membership

    async def leave(self, room: int) -> dict[str, Any]:
        """Leave a room (a direct one too); this connection then gets ``room_removed``."""
        return await self.request("leave", room=room)

    async def block(self, user: str) -> dict[str, Any]:
        """Refuse direct messages and invitations from ``user`` (a user name)."""
        return await self.request("block", user=user)

    async def unblock(self, user: str) -> dict[str, Any]:
        return await self.request("unblock", user=user)

    async def blocks(self) -> list[str]:
        """The names of the users this user blocked, sorted."""
        return list((await self.request("blocks"))["users"])

    # ---------------------------------------------------------- moderation (admins only)

    async def admin_remove_member(self, room: int, user: str) -> dict[str, Any]:
        return await self.request("admin_remove_member", room=room, user=user)

    async def admin_delete_room(self, room: int) -> dict[str, Any]:
        return await self.request("admin_delete_room", room=room)

    async def admin_delete_message(self, room: int, seq: int) -> dict[str, Any]:
        return await self.request("admin_delete_message", room=room, seq=seq)

    async def admin_revoke_sessions(self, user: str) -> dict[str, Any]:
        """Log ``user`` out everywhere: every session revoked, every socket closed."""
        return await self.request("admin_revoke_sessions", user=user)

    # ---------------------------------------------------------- meeting links

    async def conf_link_create(self, room: int, *, ttl: int | None = None,
                               max_guests: int | None = None) -> dict[str, Any]:
        """A meeting link to the room's conference (the link object, with its ``token``:
        the only time the token is shown). Defaults: a day, 20 guests."""
        fields: dict[str, Any] = {"room": room}
        if ttl is not None:
            fields["ttl"] = ttl
        if max_guests is not None:
            fields["max_guests"] = max_guests
        return dict((await self.request("conf_link_create", **fields))["link"])

    async def conf_links(self, room: int) -> list[dict[str, Any]]:
        """The room's live meeting links, newest first (without tokens)."""
        return list((await self.request("conf_links", room=room))["links"])

    async def conf_link_revoke(self, room: int, link: int) -> dict[str, Any]:
        """Revoke a link: its guests' sessions end and their sockets close (4403)."""
        return await self.request("conf_link_revoke", room=room, link=link)

    async def next_event(self, op: str | None = None, *, timeout: float = 10.0,
                         where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next event matching ``op`` and ``where``; others before it are dropped."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if (op is None or event.get("op") == op) and (where is None or where(event)):
                    return event

    async def messages(self, room: int, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` message events of ``room``."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            got.append(await self.next_event("message", timeout=timeout,
                                             where=lambda e: e["room"] == room))
        return got

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake (as a dead network)."""
        self.ws.transport.abort()

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
