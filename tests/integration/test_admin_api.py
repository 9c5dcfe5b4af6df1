"""The admin console's REST API (``/api/admin``) and its ``camctl`` twins, on two nodes
with real NATS, PostgreSQL, chat, presence, health and video allocator processes.

Every admin route and op is listed from the code (the route table, the protocol's
frames) and tried as a member who is not an admin, as an admin who was demoted after
logging in, and without a session; none changes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import asyncpg
import httpx
import pytest
from cam_edge.admin_api import AdminApi
from cam_edge.context import Edge

from camclient import Client, ClientError, login
from camcore import accounts, protocol, wire
from camcore.config import load_settings
from tests.conftest import Cluster
from tests.waiting import eventually

MIN_LENGTH = 12
VIDEO = {"CAM_VIDEO_DOMAINS": "v1=10;v2=10",
         "CAM_VIDEO_SERVER_URLS": "v1=http://127.0.0.1:9/janus;v2=http://127.0.0.1:9/janus",
         "CAM_VIDEO_PROBE_INTERVAL": "0.5"}
ENV: dict[str, Any] = {"CAM_USER_PASSWORD_MIN_LENGTH": str(MIN_LENGTH),
       "CAM_CLUSTER_HOSTS_DESC": "camserver1=the main server;camserver2=the standby",
       **VIDEO}


@pytest.fixture
def cluster(cluster_factory: Any) -> Cluster:
    c: Cluster = cluster_factory(2)
    c.start_chat("chat1", **ENV)
    c.start_presence("presence1")
    c.start_service("health", "health1", 0, **ENV)
    c.start_service("video", "video1", 0, **ENV)
    c.start_edge("camserver1", nats=0, **ENV)
    c.start_edge("camserver2", nats=1, **ENV)
    c.wait_edges()
    return c


async def make(pool: asyncpg.Pool, name: str, *, is_admin: bool = False) -> tuple[str, str]:
    password = f"{name}-password-long"
    await accounts.create_user(pool, name, password, is_admin=is_admin)
    return name, password


class Admin:
    """An HTTP client with a session on one edge."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        headers = {"origin": base}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(base_url=base, headers=headers, timeout=20)

    @classmethod
    async def login(cls, cluster: Cluster, node: str, user: tuple[str, str]) -> Admin:
        return cls(cluster.http(node), await login(cluster.http(node), *user))

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.request(method, f"/api/admin{path}",
                                       json=body if body is not None else None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = await self.call(method, path, body)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r.json()

    async def close(self) -> None:
        await self.http.aclose()


async def audit_actions(pool: asyncpg.Pool) -> list[str]:
    return [r["action"] for r in await pool.fetch("SELECT action FROM audit_log ORDER BY id")]


def no_edge() -> Edge:
    raise AssertionError("listing the routes needs no edge")


def admin_routes() -> list[tuple[str, str]]:
    """(method, path) of every admin route, from the edge's own table."""
    out = []
    for route in AdminApi(load_settings(None), no_edge).routes():
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append((method, route.path))
    return out


BODIES: dict[str, Any] = {
    "/api/admin/users": {"username": "intruder1", "password": "x" * MIN_LENGTH},
    "/api/admin/users/import": {"csv": "username,password\nintruder2,intruder-password"},
    "/api/admin/users/{user:int}/password": {"password": "stolen-password-x"},
    "/api/admin/users/{user:int}/role": {"admin": True},
}
"""A valid body for each route that takes one: the refusal must be about rights."""

OP_ARGS: dict[str, dict[str, Any]] = {
    "admin_remove_member": {"room": "ROOM", "user": "VICTIM"},
    "admin_delete_room": {"room": "ROOM"},
    "admin_delete_message": {"room": "ROOM", "seq": 1},
    "admin_revoke_sessions": {"user": "VICTIM"},
}


async def test_every_admin_route_and_op_is_refused_to_anyone_but_an_admin(
        cluster: Cluster, pool: asyncpg.Pool) -> None:
    member = await make(pool, "member1")
    victim = await make(pool, "victim1")
    demoted = await make(pool, "demoted1", is_admin=True)
    await make(pool, "root1", is_admin=True)
    victim_id = await pool.fetchval("SELECT id FROM users WHERE username = 'victim1'")
    alice = await cluster.connect("camserver1", member)
    room = (await alice.request("create_room", name="kept", members=[victim[0]]))["id"]
    await alice.send(room, "keep me")
    callers = {
        "member": await Admin.login(cluster, "camserver1", member),
        "demoted": await Admin.login(cluster, "camserver2", demoted),
        "nobody": Admin(cluster.http("camserver1"), None),
    }
    await pool.execute("UPDATE users SET is_admin = false WHERE username = 'demoted1'")
    routes = admin_routes()
    assert len(routes) >= 18, routes  # the list is the code's, not this test's
    for method, template in routes:
        path = (template.replace("{user:int}", str(victim_id)).replace("{room:int}", str(room))
                .replace("{name:str}", "v1").removeprefix("/api/admin"))
        if path.endswith("/explain"):
            path += f"?room={room}"
        for who, caller in callers.items():
            r = await caller.call(method, path, BODIES.get(template))
            expected = 401 if who == "nobody" else 403
            assert r.status_code == expected, (who, method, template, r.status_code, r.text)
            code = r.json()["error"]["code"]
            assert code == ("unauthenticated" if who == "nobody" else "forbidden"), code
    # The protocol's admin ops, over WebSocket, as the member and as the demoted admin.
    ops = sorted(name for name in wire.CLIENT_FRAMES if name.startswith("admin_"))
    assert ops == sorted(OP_ARGS), "a new admin op needs its refusal tried here"
    demoted_ws = await cluster.connect("camserver2", demoted)
    for client in (alice, demoted_ws):
        for op, raw in OP_ARGS.items():
            args: dict[str, Any] = {
                k: room if v == "ROOM" else victim[0] if v == "VICTIM" else v
                for k, v in raw.items()}
            with pytest.raises(ClientError) as refused:
                await client.request(op, **args)
            assert refused.value.code == "forbidden", (op, refused.value)
    # Nothing changed: no user, no import, no role, no drain, the room and its member.
    assert await audit_actions(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM users WHERE username LIKE 'intruder%'") == 0
    assert await pool.fetchval("SELECT deactivated_at FROM users WHERE id = $1", victim_id) is None
    assert not await pool.fetchval("SELECT is_admin FROM users WHERE id = $1", victim_id)
    assert await pool.fetchval("SELECT count(*) FROM room_members WHERE room_id = $1", room) == 2
    assert set(await pool.fetchval("SELECT array_agg(admin_state) FROM video_servers")) == {
        "active"}
    assert await login(cluster.http("camserver1"), *victim)
    for c in callers.values():
        await c.close()
    await alice.close()
    await demoted_ws.close()


async def test_an_admin_manages_users_and_each_change_is_audited(
        cluster: Cluster, pool: asyncpg.Pool) -> None:
    root_user = await make(pool, "root2", is_admin=True)
    root = await Admin.login(cluster, "camserver1", root_user)
    policy = await root.ok("GET", "/policy")
    assert policy["password_min_length"] == MIN_LENGTH
    # Create, with the password policy of cam.userPasswordMinLength.
    short = await root.call("POST", "/users", {"username": "carol", "password": "short-pw"})
    assert short.status_code == 400 and f"{MIN_LENGTH} to 1024" in short.json()["error"]["message"]
    carol = (await root.ok("POST", "/users", {"username": "carol", "password": "carol-password-1",
                                               "display_name": "<b>Carol</b>"}))["user"]
    assert carol["display_name"] == "<b>Carol</b>" and carol["active"] and not carol["is_admin"]
    again = await root.call("POST", "/users", {"username": "carol", "password": "x" * 20})
    assert again.status_code == 409
    # The same policy for a user's own change (POST /api/password).
    carol_token = await login(cluster.http("camserver2"), "carol", "carol-password-1")
    async with httpx.AsyncClient(base_url=cluster.http("camserver2"), timeout=10) as http:
        own = await http.post("/api/password", headers={"Authorization": f"Bearer {carol_token}"},
                              json={"current": "carol-password-1", "new": "eleven-char"})
    assert own.status_code == 400 and f"{MIN_LENGTH} to 1024" in own.json()["error"]["message"]
    # Import: all or nothing, each bad row named.
    bad = await root.call("POST", "/users/import", {"csv": (
        "username,password,display_name,admin\n"
        "dave,dave-password-1,Dave,no\n"
        "../etc,whatever-password,x,no\n"
        "erin,short,Erin,yes\n"
        "carol,carol-password-2,,\n")})
    assert bad.status_code == 400
    rows = bad.json()["error"]["rows"]
    assert [r["line"] for r in rows] == [3, 4], rows
    assert await pool.fetchval("SELECT count(*) FROM users WHERE username = 'dave'") == 0
    taken = await root.call("POST", "/users/import", {"csv": "username,password\ncarol,"
                                                              "carol-password-9\n"})
    assert taken.status_code == 400 and "already exists" in taken.json()["error"]["message"]
    made = (await root.ok("POST", "/users/import", {"csv": (
        "username,password,display_name,admin\n"
        "dave,dave-password-1,Dave,no\n"
        "erin,erin-password-1,Erin,yes\n"
        "frank,frank-password-1,,\n")}))["created"]
    assert [(u["username"], u["is_admin"], u["display_name"]) for u in made] == [
        ("dave", False, "Dave"), ("erin", True, "Erin"), ("frank", False, "frank")]
    # Listing, searching and paging.
    page = await root.ok("GET", "/users?limit=2")
    assert len(page["users"]) == 2 and page["next"] is not None
    rest_ = await root.ok("GET", f"/users?after={page['next']}&limit=200")
    names = [u["username"] for u in page["users"] + rest_["users"]]
    assert {"root2", "carol", "dave", "erin", "frank"} <= set(names) and rest_["next"] is None
    assert [u["username"] for u in (await root.ok("GET", "/users?q=ERI"))["users"]] == ["erin"]
    # Deactivate: dave's socket on the other node is closed, and he cannot log in.
    dave = await cluster.connect("camserver2", ("dave", "dave-password-1"))
    off = await root.ok("POST", f"/users/{made[0]['id']}/deactivate")
    assert off["user"]["active"] is False and off["revoked_sessions"] == 1
    assert await dave.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    with pytest.raises(ClientError) as refused:
        await login(cluster.http("camserver2"), "dave", "dave-password-1")
    assert refused.value.code == "account_deactivated"
    with pytest.raises(ClientError) as wrong:  # a wrong password learns nothing more
        await login(cluster.http("camserver2"), "dave", "not-his-password")
    assert wrong.value.code == "bad_credentials"
    await root.ok("POST", f"/users/{made[0]['id']}/reactivate")
    assert await login(cluster.http("camserver2"), "dave", "dave-password-1")
    # Reset a password: the old one is gone, the user's sessions with it.
    frank = await cluster.connect("camserver2", ("frank", "frank-password-1"))
    reset = await root.ok("POST", f"/users/{made[2]['id']}/password",
                          {"password": "frank-new-password"})
    assert reset["revoked_sessions"] == 1
    assert await frank.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    assert await login(cluster.http("camserver1"), "frank", "frank-new-password")
    # Roles: a granted admin can use the console, a removed one cannot, at once.
    await root.ok("POST", f"/users/{carol['id']}/role", {"admin": True})
    carol_admin = await Admin.login(cluster, "camserver2", ("carol", "carol-password-1"))
    await carol_admin.ok("GET", "/users")
    await root.ok("POST", f"/users/{carol['id']}/role", {"admin": False})
    assert (await carol_admin.call("GET", "/users")).status_code == 403
    # Nobody locks the cluster out: not oneself, not the last admin.
    root_id = await pool.fetchval("SELECT id FROM users WHERE username = 'root2'")
    self_off = await root.call("POST", f"/users/{root_id}/deactivate")
    assert self_off.status_code == 409
    await root.ok("POST", f"/users/{made[1]['id']}/role", {"admin": False})  # erin
    last = await root.call("POST", f"/users/{root_id}/role", {"admin": False})
    assert last.status_code == 409 and "last active admin" in last.json()["error"]["message"]
    missing = await root.call("POST", "/users/999999/deactivate")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_such_user"
    # The audit log holds every change, in order, pages and filters.
    assert await audit_actions(pool) == [
        "create_user", "import_users", "deactivate_user", "reactivate_user", "reset_password",
        "grant_admin", "revoke_admin", "revoke_admin"]
    log = await root.ok("GET", "/audit?limit=3")
    assert [e["action"] for e in log["entries"]] == ["revoke_admin", "revoke_admin", "grant_admin"]
    assert all(e["actor"]["username"] == "root2" for e in log["entries"])
    older = await root.ok("GET", f"/audit?before={log['next']}&limit=50")
    assert [e["action"] for e in older["entries"]][-1] == "create_user" and older["next"] is None
    only = await root.ok("GET", "/audit?action=deactivate_user")
    assert [(e["user_name"], e["detail"]["sessions"]) for e in only["entries"]] == [("dave", 1)]
    assert (await root.ok("GET", "/audit?actor=carol"))["entries"] == []
    unknown = await root.call("GET", "/audit?actor=nobody-at-all")
    assert unknown.status_code == 400
    await root.close()
    await carol_admin.close()


async def test_an_admin_sees_the_cluster_drains_video_and_moderates_rooms(
        cluster: Cluster, pool: asyncpg.Pool) -> None:
    root = await Admin.login(cluster, "camserver2", await make(pool, "root3", is_admin=True))
    a = await make(pool, "alice3")
    b = await make(pool, "bob3")
    # The cluster page: both nodes with their description, connections, processes, the
    # NATS servers with their clients, and the database primary.
    alice = await cluster.connect("camserver1", a)
    bob = await cluster.connect("camserver2", b)

    async def page_with_connections() -> dict[str, Any] | None:
        page: dict[str, Any] = await root.ok("GET", "/cluster")
        nodes = {n["name"]: n for n in page["nodes"]}
        if all((nodes.get(n) or {}).get("connections") for n in ("camserver1", "camserver2")):
            return page
        return None

    page = await eventually(page_with_connections, 15, "both edges report their connections")
    nodes = {n["name"]: n for n in page["nodes"]}
    assert nodes["camserver1"]["alive"] and nodes["camserver2"]["alive"]
    assert nodes["camserver1"]["description"] == "the main server"
    assert nodes["camserver2"]["description"] == "the standby"
    kinds = {p["kind"] for p in page["processes"]}
    assert {"edge", "chat", "presence", "health", "video"} <= kinds
    assert sum(b_["clients"] for b_ in page["nats"]) >= 6 and any(b_["up"] for b_ in page["nats"])
    assert [d["role"] for d in page["database"]] == ["primary"]
    # Video servers: drain one, see it draining, enable it, all audited.
    status = await root.ok("GET", "/video")
    assert [s["name"] for s in status["servers"]] == ["v1", "v2"]
    drained = await root.ok("POST", "/video/v1/drain")
    assert {s["name"]: s["state"] for s in drained["servers"]} == {"v1": "draining", "v2": "active"}
    nothing = await root.call("POST", "/video/nope/drain")
    assert nothing.status_code == 400 and "nope" in nothing.json()["error"]["message"]
    await root.ok("POST", "/video/v1/enable")
    explain = await root.call("GET", "/video/explain?room=1")
    assert explain.status_code == 400  # no conference yet: said plainly
    # Rooms: list, search, members, remove a member, delete.
    room = (await alice.request("create_room", name="Project <x>", members=[b[0]]))["id"]
    other = (await alice.request("create_room", name="lunch", members=[b[0]]))["id"]
    found = await root.ok("GET", "/rooms?q=project")
    assert [(r["id"], r["name"], r["members"]) for r in found["rooms"]] == [(room, "Project <x>", 2)]
    members = await root.ok("GET", f"/rooms/{room}/members")
    assert sorted(m["username"] for m in members["members"]) == ["alice3", "bob3"]
    bob_id = await pool.fetchval("SELECT id FROM users WHERE username = 'bob3'")
    await root.ok("DELETE", f"/rooms/{room}/members/{bob_id}")

    async def removed(client: Client, room_id: int) -> bool:
        while not client.events.empty():
            event = client.events.get_nowait()
            if event.get("op") == "room_removed" and event["room"] == room_id:
                return True
        return False

    await eventually(lambda: removed(bob, room), 10, "bob's edge hears he was removed")
    await root.ok("DELETE", f"/rooms/{other}")
    await eventually(lambda: removed(alice, other), 10, "alice's edge hears the room is gone")
    assert (await root.call("GET", f"/rooms/{other}/members")).status_code == 404
    listed = [r["id"] for r in (await root.ok("GET", "/rooms?limit=200"))["rooms"]]
    assert room in listed and other not in listed
    assert await audit_actions(pool) == ["drain_video", "enable_video", "remove_member",
                                         "delete_room"]
    await root.close()
    await alice.close()
    await bob.close()


def camctl(cluster: Cluster, *argv: str, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAM_DATABASE_URL": cluster.database,
           "CAM_NATS_URL": cluster.nats_url(0),
           "CAM_NATS_CREDENTIALS": cluster.credential("operator"),
           "CAM_SERVER_DATE_PATH": str(cluster.data_path), **ENV}
    return subprocess.run([sys.executable, "-m", "camctl.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=60, input=stdin)


async def test_camctl_does_what_the_console_does(cluster: Cluster, pool: asyncpg.Pool) -> None:
    def ok(*argv: str, stdin: str | None = None) -> str:
        r = camctl(cluster, *argv, stdin=stdin)
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
        return r.stdout

    weak = camctl(cluster, "user", "add", "gina", "--password", "too-short")
    assert weak.returncode == 1 and f"{MIN_LENGTH} to 1024" in weak.stderr
    ok("user", "add", "gina", "--password", "gina-password-1")
    bad = camctl(cluster, "user", "import", "-", stdin="username,password\nhal,short\n")
    assert bad.returncode == 1 and "line 2" in bad.stderr
    assert "created 2 users: hal, ivy" in ok(
        "user", "import", "-", stdin="username,password,admin\nhal,hal-password-01,no\n"
                                     "ivy,ivy-password-01,yes\n")
    hal = await cluster.connect("camserver2", ("hal", "hal-password-01"))
    assert "1 sessions revoked; their sockets are closed" in ok("user", "deactivate", "hal")
    assert await hal.wait_closed(10) == protocol.CLOSE_SESSION_REVOKED
    listed = json.loads(ok("user", "list", "--json"))
    assert {u["username"]: u["active"] for u in listed}["hal"] is False
    ok("user", "reactivate", "hal")
    assert await login(cluster.http("camserver1"), "hal", "hal-password-01")
    last = camctl(cluster, "user", "role", "ivy", "user")
    assert last.returncode == 1 and "last active admin" in last.stderr
    assert "gina is an admin" in ok("user", "role", "gina", "admin")
    assert "ivy is a user" in ok("user", "role", "ivy", "user")
    # Rooms, over the bus with the operator credential: the member's edge is told.
    gina = await cluster.connect("camserver1", ("gina", "gina-password-1"))
    hal = await cluster.connect("camserver2", ("hal", "hal-password-01"))
    room = (await gina.request("create_room", name="ops", members=["hal"]))["id"]
    assert f"{room}\tgroup\t2 members" in ok("room", "list", "--search", "op")
    assert "hal" in ok("room", "members", str(room))
    assert f"removed hal from room {room}" in ok("room", "remove-member", str(room), "hal")

    async def hal_removed() -> bool:
        while not hal.events.empty():
            event = hal.events.get_nowait()
            if event.get("op") == "room_removed" and event["room"] == room:
                return True
        return False

    await eventually(hal_removed, 10, "hal's edge hears he was removed")
    history = await gina.history(room)
    last = json.loads(history["messages"][-1]["body"])
    assert last == {"event": "member_removed", "users": ["hal"], "by": "camctl"}
    assert f"deleted room {room}" in ok("room", "delete", str(room))
    gone = camctl(cluster, "room", "delete", str(room))
    assert gone.returncode == 1
    # Video, cluster and the audit log.
    ok("video", "drain", "v2")
    ok("video", "enable", "v2")
    view = json.loads(ok("cluster", "--json"))
    assert {"camserver1", "camserver2"} <= {n["name"] for n in view["nodes"]}
    entries = json.loads(ok("audit", "--json", "--limit", "200"))["entries"]
    assert [e["action"] for e in reversed(entries)] == [
        "create_user", "import_users", "deactivate_user", "reactivate_user", "grant_admin",
        "revoke_admin", "remove_member", "delete_room", "drain_video", "enable_video"]
    assert all(e["actor"] is None and e["detail"]["via"] == "camctl" for e in entries)
    text = ok("audit", "--action", "deactivate_user")
    assert "deactivate_user" in text and "user=hal" in text
    for c in (gina, hal):
        await c.close()
