"""The bus lets in only the cluster's own processes, each with its own credential, and
each credential may publish and subscribe only to its own subjects (camcore/permissions.py).

Every forgery is tried with the credential of a process that has no business sending
it, and must be refused by the NATS server itself: the sender gets a permissions
violation, and a watcher with the operator credential, subscribed to everything,
never sees the forged message. Order on one connection is kept by NATS, so a
permitted message sent right after the forged one proves the forged one was dropped
when the permitted one arrives alone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from camcore import permissions, subjects, wire
from camctl import rig
from tests.conftest import Cluster


@pytest.fixture
def bus(cluster_factory: Any) -> Cluster:
    c: Cluster = cluster_factory(2)
    return c


class Conn:
    """A raw NATS connection that records the server's errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def open(self, url: str, **opts: Any) -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **opts)
        return self

    async def refused(self, what: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.errors:
                if "permissions violation" in e.lower() and what.lower() in e.lower():
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {what!r}; errors: {self.errors}")


@pytest.fixture
async def watcher(bus: Cluster) -> AsyncIterator[tuple[NATS, list[tuple[str, bytes]]]]:
    seen: list[tuple[str, bytes]] = []

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    nc = await nats.connect(bus.nats_urls()[0], **bus.nats_options("operator"))
    await nc.subscribe(">", cb=record)
    await nc.flush()
    # Interest crosses the route asynchronously: wait until the other server forwards.
    other = await nats.connect(bus.nats_urls()[1], **bus.nats_options("operator"))
    deadline = time.monotonic() + 15
    while not any(s == "test.probe" for s, _ in seen):
        assert time.monotonic() < deadline, "the watcher's interest never reached server 2"
        await other.publish("test.probe", b"")
        await asyncio.sleep(0.05)
    await other.close()
    yield nc, seen
    await nc.close()


async def as_kind(bus: Cluster, kind: str) -> Conn:
    return await Conn().open(bus.nats_urls()[1], **bus.nats_options(kind))


async def arrives(seen: list[tuple[str, bytes]], subject: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(s == subject for s, _ in seen):
        assert time.monotonic() < deadline, f"{subject} never arrived; seen {seen[-5:]}"
        await asyncio.sleep(0.02)


def hello(url: str, **auth: str) -> str:
    """The server's answer to a client's CONNECT (with ``auth``) and PING."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        s.sendall(b"CONNECT " + json.dumps({"verbose": False, **auth}).encode() + b"\r\nPING\r\n")
        return f.readline().decode().strip()


def test_an_anonymous_connection_is_refused(bus: Cluster):
    assert hello(bus.nats_urls()[0]) == "-ERR 'Authorization Violation'"


def test_a_wrong_password_is_refused_and_the_right_one_accepted(bus: Cluster):
    cred = bus.credentials["edge"]
    assert hello(bus.nats_urls()[0], user=cred.user, **{"pass": "not-it"}) == (
        "-ERR 'Authorization Violation'")
    assert hello(bus.nats_urls()[0], user=cred.user, **{"pass": cred.password}) == "PONG"


@pytest.mark.parametrize(("kind", "subject", "payload", "then"), [
    # An edge forging a message "from alice" into a room.
    ("edge", subjects.room_events(7), {"room": 7, "seq": 99, "cid": "x", "body": "forged"},
     subjects.room_typing(7)),
    # An edge forging room_added to get a room's messages delivered to a non-member.
    ("edge", subjects.user_events(5), {"type": "room_added", "room": {"id": 7}},
     subjects.user_session(5)),
    # An edge forging presence with a huge version.
    ("edge", subjects.presence_user(5), {"user": 5, "status": "online", "version": 10**12},
     subjects.room_typing(7)),
    # An edge forging conference membership or moves.
    ("edge", subjects.conf_events(7), {"room": 7, "type": "room_moved"}, subjects.conf_signal(7)),
    # Presence (or anyone but an edge) sending as a user: a chat RPC with another user's id.
    ("presence", subjects.chat_rpc("send"), {"user_id": 1, "room": 7, "body": "as alice"},
     subjects.presence_user(5)),
    # Chat forging presence; presence forging room events; the allocator forging chat.
    ("chat", subjects.presence_user(5), {"user": 5, "status": "busy", "version": 1},
     subjects.room_events(7)),
    ("presence", subjects.room_events(7), {"room": 7, "seq": 1}, subjects.presence_user(5)),
    ("video", subjects.user_events(5), {"type": "room_added"}, subjects.conf_events(7)),
    # Health may only beat and answer.
    ("health", subjects.room_events(7), {"room": 7, "seq": 1}, "cam.hb.health.h1"),
    # Files too: no room event (a forged file message), no chat request as a user, no
    # room_added.
    ("files", subjects.room_events(7), {"room": 7, "seq": 1, "kind": "file"}, "cam.hb.files.f1"),
    ("files", subjects.chat_rpc("send"), {"user_id": 1, "room": 7, "body": "as alice"},
     "cam.hb.files.f1"),
    ("files", subjects.user_events(5), {"type": "room_added"}, "cam.hb.files.f1"),
    # Only edges (and operators) ask the files service.
    ("chat", subjects.files_rpc("usage"), {"user_id": 1}, subjects.room_events(7)),
    # Backups only beat: no room event, no request to chat or files, no video admin.
    ("backups", subjects.room_events(7), {"room": 7, "seq": 1}, "cam.hb.backups.b1"),
    ("backups", subjects.chat_rpc("send"), {"user_id": 1, "room": 7, "body": "as alice"},
     "cam.hb.backups.b1"),
    ("backups", subjects.files_rpc("lookup"), {"id": "x"}, "cam.hb.backups.b1"),
    ("backups", subjects.video_rpc("admin"), {"action": "drain"}, "cam.hb.backups.b1"),
    # The operator's moderation carries no user to check: no edge may send it.
    ("edge", subjects.chat_operator("delete_room"), {"room": 7}, subjects.chat_rpc("send")),
    ("edge", subjects.chat_operator("remove_member"), {"room": 7, "user": "bob"},
     subjects.chat_rpc("send")),
    ("files", subjects.video_rpc("admin_as"), {"action": "drain", "user_id": 1},
     "cam.hb.files.f1"),
])
async def test_a_forged_publish_is_refused_by_the_server(
        bus: Cluster, watcher: tuple[NATS, list[tuple[str, bytes]]], kind: str, subject: str,
        payload: dict[str, Any], then: str):
    _, seen = watcher
    sender = await as_kind(bus, kind)
    assert sender.nc is not None
    try:
        await sender.nc.publish(subject, wire.encode(payload))
        await sender.nc.publish(then, wire.encode({"permitted": True}))
        await sender.refused(f'Publish to "{subject}"')
        await arrives(seen, then)
        assert not any(s == subject for s, _ in seen), f"{subject} was delivered"
    finally:
        await sender.nc.close()


async def test_an_edge_cannot_drain_a_video_server(
        bus: Cluster, watcher: tuple[NATS, list[tuple[str, bytes]]]):
    _, seen = watcher
    edge = await as_kind(bus, "edge")
    assert edge.nc is not None
    try:
        admin = subjects.video_rpc("admin")
        await edge.nc.publish(admin, wire.encode(wire.VideoAdmin(action="drain", server="v1")))
        await edge.nc.publish(subjects.video_rpc("join"), b"{}")
        await edge.refused(f'Publish to "{admin}"')
        await arrives(seen, subjects.video_rpc("join"))
        assert not any(s == admin for s, _ in seen)
    finally:
        await edge.nc.close()


@pytest.mark.parametrize(("kind", "subject"), [
    ("edge", ">"),                          # everything, conference PINs included
    ("edge", subjects.CHAT_RPC_ALL),        # others' chat requests
    ("chat", subjects.PRESENCE_USER_ALL),
    ("presence", subjects.ROOM_EVENTS_ALL),
    ("files", subjects.ROOM_EVENTS_ALL),
    ("edge", f"{subjects.FILES_RPC}.*"),    # others' files requests
    ("edge", "_INBOX.chat.>"),              # another kind's replies
    ("files", "_INBOX.edge.>"),
    ("backups", subjects.HEARTBEAT_ALL),    # it reads nobody's heartbeats
    ("backups", subjects.ROOM_EVENTS_ALL),
])
async def test_a_subscription_outside_the_credential_is_refused(bus: Cluster, kind: str,
                                                                subject: str):
    conn = await as_kind(bus, kind)
    assert conn.nc is not None
    try:
        await conn.nc.subscribe(subject)
        await conn.nc.flush()
        await conn.refused(f'Subscription to "{subject}"')
    finally:
        await conn.nc.close()


async def test_every_kind_can_do_its_own_job(bus: Cluster,
                                             watcher: tuple[NATS, list[tuple[str, bytes]]]):
    """The permissions are not so tight that the cluster cannot work."""
    _, seen = watcher
    own = [("edge", subjects.room_typing(3)), ("edge", subjects.files_rpc("usage")),
           ("chat", subjects.room_events(3)), ("files", "cam.hb.files.x"),
           ("presence", subjects.presence_user(3)), ("video", subjects.conf_events(3)),
           ("health", "cam.hb.health.x"), ("backups", "cam.hb.backups.x")]
    assert {kind for kind, _ in own} == set(permissions.PERMISSIONS) - {"operator"}
    for kind, subject in own:
        conn = await as_kind(bus, kind)
        assert conn.nc is not None
        try:
            await conn.nc.publish(subject, b"{}")
            await arrives(seen, subject)
            assert conn.errors == []
        finally:
            await conn.nc.close()


def test_routes_are_authenticated_and_every_credential_file_is_private(bus: Cluster):
    for path in bus.creds_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert set(permissions.PERMISSIONS) | {permissions.ROUTE_USER} == {
        p.stem for p in bus.creds_dir.glob("*.json")}
    # A server that tries to join the cluster without the route password is refused.
    assert bus.nats is not None
    intruder = rig.NatsCluster(bus.root / "intruder", 1, name="cam")
    route = f"nats://127.0.0.1:{bus.nats.route_ports[0]}"
    proc = intruder.procs[0]
    assert isinstance(proc, rig.Proc)
    proc.argv += ["--routes", route]
    proc.start()
    try:
        rig.wait_for(lambda: b"authorization" in proc.log_path.read_bytes().lower()
                     or b"authentication" in proc.log_path.read_bytes().lower(), 15,
                     "the route to be refused")
        log = bus.nats.procs[0].log_path.read_text(errors="replace").lower()
        assert "authorization violation" in log or "authentication error" in log, log[-2000:]
    finally:
        proc.stop()
