"""The edge's side of presence: registering local sessions, and watching users.

``PresenceAgent`` tells the presence service which sessions this node holds. One task
sends, in order, either a batch of changes, a heartbeat, or (when the service says
its view differs, or after any failure) the full list of live sessions. Each request
carries the count and digest of the edge's whole set, so any drift is detected at the
next heartbeat and repaired by a full sync. A node that stops heartbeating is swept by
the presence service; when it comes back, its first heartbeat is answered with "sync"
and it re-registers the sessions it really still holds.

``PresenceWatch`` keeps, for the users watched by local clients, one bus subscription
each and the latest (status, version); versions make late or repeated events harmless,
and a periodic query repairs anything the bus lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from camcore import bus, errors, requestid, subjects, wire
from camcore.errors import CamError

from .wsproto import Frame

log = logging.getLogger(__name__)

_state_decoder = msgspec.json.Decoder(wire.PresenceState)
_MAX_BATCH = 2000


def new_session_id() -> int:
    """Random, and below 2**53 so JavaScript clients hold it exactly."""
    return secrets.randbelow(2**53 - 1) + 1


class PresenceAgent:
    """Registers this node's sessions with the presence service (see the module docstring).

    A request is given up after ``node_timeout / 2`` (at most 5 s), and at once when the
    bus reconnects: a request sent before a disconnect may be lost, and waiting for it
    longer than the node timeout would let the sweeper take every local user offline
    while they are still here.
    """

    def __init__(self, nc: NATS, node: str, interval: float, node_timeout: float) -> None:
        self.nc = nc
        self.node = node
        self.boot_id = uuid.uuid4().hex
        self.interval = interval
        self.timeout = min(5.0, node_timeout / 2)
        self.sessions: dict[int, int] = {}
        self._digest = 0
        self._added: dict[int, int] = {}
        self._removed: set[int] = set()
        self._needs_sync = True
        self._wake = asyncio.Event()
        self._stopped = False
        self._loop_task: asyncio.Task[None] | None = None
        self._step_task: asyncio.Task[None] | None = None

    def add(self, session: int, user: int) -> None:
        self.sessions[session] = user
        self._digest = (self._digest + session) % wire.DIGEST_MOD
        self._added[session] = user
        self._wake.set()

    def remove(self, session: int) -> None:
        if self.sessions.pop(session, None) is None:
            return
        self._digest = (self._digest - session) % wire.DIGEST_MOD
        if self._added.pop(session, None) is None:
            self._removed.add(session)
        self._wake.set()

    def request_sync(self, *, abandon: bool = False) -> None:
        """Send the full list next; ``abandon`` also drops a request in flight (the bus
        reconnected, so its reply may never come)."""
        self._needs_sync = True
        self._wake.set()
        if abandon and self._step_task is not None and not self._step_task.done():
            self._step_task.cancel()

    async def _call(self, op: str, request: msgspec.Struct) -> dict[str, Any]:
        return await bus.call(self.nc, subjects.presence_rpc(op), request,
                              timeout=self.timeout)

    async def _step(self) -> None:
        ident = {"node": self.node, "boot_id": self.boot_id}
        if self._needs_sync:
            self._added.clear()
            self._removed.clear()
            self._needs_sync = False
            sessions = [wire.SessionRef(s, u) for s, u in self.sessions.items()]
            try:
                await self._call("sync", wire.PresenceSync(**ident, sessions=sessions))
            except BaseException:
                self._needs_sync = True
                raise
            return
        if self._added or self._removed:
            added = [wire.SessionRef(s, u) for s, u in list(self._added.items())[:_MAX_BATCH]]
            removed = list(self._removed)[:_MAX_BATCH]
            for ref in added:
                del self._added[ref.session]
            self._removed.difference_update(removed)
            partial = bool(self._added or self._removed)
            count, digest = len(self.sessions), self._digest
            if partial:
                # Later changes are still queued: the whole-set check would not match yet.
                count, digest = -1, -1
            try:
                reply = await self._call("update", wire.PresenceUpdate(
                    **ident, added=added, removed=removed, count=count, digest=digest))
            except BaseException:
                self._needs_sync = True  # was it applied? a full sync settles it
                raise
            if reply.get("sync") and not partial:
                self._needs_sync = True
            return
        reply = await self._call("beat", wire.PresenceBeat(
            **ident, count=len(self.sessions), digest=self._digest))
        if reply.get("sync"):
            log.info("presence service asks for a full sync")
            self._needs_sync = True

    async def run(self) -> None:
        self._loop_task = asyncio.current_task()
        while not self._stopped:
            if not (self._needs_sync or self._added or self._removed):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self._stopped:
                break
            self._step_task = asyncio.ensure_future(self._step())
            try:
                await self._step_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    self._step_task.cancel()
                    raise
                # Abandoned after a reconnect: ``_step`` has asked for a full sync.
                continue
            except CamError as exc:
                log.debug("presence: %s", exc.message)
                await asyncio.sleep(min(self.interval, 0.5))
            except Exception:
                log.exception("presence agent step failed")
                await asyncio.sleep(self.interval)
            if self._needs_sync or self._added or self._removed:
                # Let a burst of changes gather into one batch.
                await asyncio.sleep(0.005)

    async def shutdown(self) -> None:
        """Deregister every session of this node at once (graceful stop)."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        if self._loop_task is not None:
            # Let a request in flight finish, so nothing re-registers after node_down.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._loop_task), 6)
        try:
            await self._call("node_down", wire.NodeDown(node=self.node, boot_id=self.boot_id))
        except CamError as exc:
            log.warning("could not deregister sessions: %s", exc.message)


class Watcher(Protocol):
    def on_presence(self, frame: Frame) -> None: ...


class _Watched:
    __slots__ = ("pending", "status", "sub", "version", "watchers")

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.pending = 0  # watch calls in progress (keeps the entry alive)
        self.sub: Subscription | None = None
        self.status = "offline"
        self.version = -1


class PresenceWatch:
    def __init__(self, nc: NATS, refresh_interval: float, *, max_users: int = 1_000_000) -> None:
        self.nc = nc
        self.refresh_interval = refresh_interval
        self.max_users = max_users
        """Distinct users watched at once (one bus subscription each): cam.watchPerEdge."""
        self._users: dict[int, _Watched] = {}
        self._lock = asyncio.Lock()

    def _apply(self, user: int, status: str, version: int) -> None:
        watched = self._users.get(user)
        if watched is None or version <= watched.version:
            return
        changed = status != watched.status
        watched.status, watched.version = status, version
        if changed and watched.watchers:
            # One frame for every watcher (wsproto: encode once, write many).
            frame = Frame(wire.encode({"op": "presence", "user": user, "status": status}))
            for w in list(watched.watchers):
                w.on_presence(frame)

    async def _on_event(self, msg: Msg) -> None:
        try:
            state = _state_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            return
        self._apply(state.user, state.status, state.version)

    async def _query(self, users: list[int]) -> None:
        for i in range(0, len(users), 5000):
            result = await bus.call(self.nc, subjects.presence_rpc("query"),
                                    wire.PresenceQuery(users=users[i:i + 5000]), timeout=5)
            for item in result["presence"]:
                self._apply(item["user"], item["status"], item["version"])

    async def watch(self, watcher: Watcher, users: list[int]) -> dict[int, str]:
        """Subscribe, read a snapshot, then add the watcher.

        Events newer than the snapshot win by version. The watcher joins (and the
        answer is read from the cache) in one step with no await in between, so it
        gets each state once: in the answer or as a later event, never both.
        """
        async with self._lock:
            new = sum(1 for user in users if user not in self._users)
            if new and len(self._users) + new > self.max_users:
                raise CamError(f"this node watches {len(self._users)} users already; "
                               f"the limit is {self.max_users}", errors.LIMIT_REACHED)
            for user in users:
                if user not in self._users:
                    watched = self._users[user] = _Watched()
                    # nats runs the callback in a task made here: not under this request's id.
                    with requestid.bound(None):
                        watched.sub = await self.nc.subscribe(subjects.presence_user(user),
                                                              cb=self._on_event)
                self._users[user].pending += 1
        try:
            unknown = [u for u in users if self._users[u].version < 0]
            if unknown:
                await self.nc.flush(timeout=5)
                await self._query(unknown)
        except BaseException:
            for user in users:
                self._users[user].pending -= 1
            await self.unwatch(watcher, users)  # drops subscriptions nobody needs
            raise
        for user in users:
            self._users[user].pending -= 1
            self._users[user].watchers.add(watcher)
        return {u: self._users[u].status for u in users}

    async def unwatch(self, watcher: Watcher, users: list[int]) -> None:
        async with self._lock:
            for user in users:
                watched = self._users.get(user)
                if watched is None:
                    continue
                watched.watchers.discard(watcher)
                if not watched.watchers and watched.pending <= 0:
                    del self._users[user]
                    if watched.sub is not None:
                        with contextlib.suppress(Exception):
                            await watched.sub.unsubscribe()

    @property
    def watched_count(self) -> int:
        return len(self._users)

    async def refresh(self) -> None:
        users = list(self._users)
        if users:
            await self._query(users)

    async def run(self) -> None:
        """Anti-entropy: re-read every watched user's status now and then."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except CamError as exc:
                log.debug("presence refresh failed: %s", exc.message)
