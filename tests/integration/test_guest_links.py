"""Meeting links for guests, on a real cluster: members make, list and revoke links;
``POST /api/guest`` lets a guest in with a name; the guest's connection reaches its
link's conference and nothing else; a revocation puts the guest out at once.

The edges' periodic session check is slowed to 10 minutes here, so a socket that
closes within a test closed because of the revocation event, not the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from camclient import Client, ClientError, guest_login
from camcore import accounts, guests
from camctl import rig
from tests.conftest import Cluster
from tests.integration.test_conferences import ADMIN_KEY, sfus
from tests.waiting import eventually

__all__ = ["sfus"]  # the fixture, used by name

INVALID = "this meeting link is invalid, expired or revoked"
GUEST_ONLY = "a guest may only join the meeting of its link"
SLOW_SESSION_CHECK = {"CAM_SESSION_RECHECK_INTERVAL": "600"}


def start(c: Cluster, **env: str) -> Cluster:
    c.extra_env.update({**SLOW_SESSION_CHECK, **env})
    c.start_chat()
    c.start_presence()
    c.start_edge("camserver1", nats=0)
    c.start_edge("camserver2", nats=1)
    c.wait_edges()
    return c


@pytest.fixture
def links_cluster(cluster_factory: Any) -> Cluster:
    """Two edges on two NATS servers, one chat replica, no video."""
    return start(cluster_factory(2))


@pytest.fixture
def video_links_cluster(cluster_factory: Any, sfus: dict[str, rig.Janus]) -> Iterator[Cluster]:
    c: Cluster = cluster_factory(2)
    c.extra_env.update({
        "CAM_VIDEO_DOMAINS": ";".join(f"{n}=3" for n in sfus),
        "CAM_VIDEO_SERVER_URLS": ";".join(f"{n}={s.url}" for n, s in sfus.items()),
        "CAM_VIDEO_PROBE_INTERVAL": "0.3",
        "CAM_VIDEO_ADMIN_KEY": ADMIN_KEY,
    })
    c.start_video("video1")
    yield start(c)


async def refused(code: str, call: Any) -> ClientError:
    with pytest.raises(ClientError) as exc:
        await call
    assert exc.value.code == code, exc.value
    return exc.value


async def post_guest(cluster: Cluster, node: str, body: Any, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=cluster.http(node), timeout=10) as http:
        return await http.post("/api/guest", json=body, **kw)


async def room_of(owner: Client, name: str, *members: tuple[Client, str]) -> int:
    room = await owner.request("create_room", name=name, members=[n for _, n in members])
    for client, _ in members:
        await client.next_event("room_added", where=lambda e: e["room"]["id"] == room["id"])
    return int(room["id"])


async def audit_rows(pool: asyncpg.Pool, action: str) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT actor_id, room_id, detail FROM audit_log WHERE action = $1 ORDER BY id", action))


async def test_members_make_list_and_revoke_links_as_their_rights_say(
    links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = links_cluster
    alice_u, bob_u, dave_u, carol_u = [await make_user() for _ in range(4)]
    await accounts.create_user(pool, "root", "root password", is_admin=True)
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    dave = await cluster.connect("camserver1", dave_u)
    carol = await cluster.connect("camserver2", carol_u)
    root = await cluster.connect("camserver2", ("root", "root password"))
    room = await room_of(alice, "team", (bob, bob_u[0]), (dave, dave_u[0]))
    other = await room_of(carol, "elsewhere")

    made = await bob.conf_link_create(room)
    assert set(made) == {"id", "room", "token", "expires_at", "max_guests", "guests",
                         "created_by", "created_at"}
    assert made["room"] == room and made["created_by"] == bob.user["id"]
    assert (made["max_guests"], made["guests"]) == (20, 0)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", made["token"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", made["expires_at"])
    # Only the token's SHA-256 is stored; the row has no other trace of it.
    row = await pool.fetchrow("SELECT * FROM meeting_links WHERE id = $1", made["id"])
    assert bytes(row["token_hash"]) == hashlib.sha256(made["token"].encode()).digest()
    assert made["token"].encode() not in repr(dict(row)).encode()
    age = (row["expires_at"] - row["created_at"]).total_seconds()
    assert 86_399 <= age <= 86_401

    second = await dave.conf_link_create(room, ttl=600, max_guests=3)
    listed = await alice.conf_links(room)
    assert [link["id"] for link in listed] == [second["id"], made["id"]]  # newest first
    assert all("token" not in link for link in listed)
    assert listed[1] == {k: v for k, v in made.items() if k != "token"}

    # Not a member: neither make nor list (an admin neither: it is not a member).
    for client in (carol, root):
        await refused("not_a_member", client.conf_link_create(room))
        await refused("not_a_member", client.conf_links(room))
    # Revoking: the link's creator, the room's creator, an admin; nobody else.
    await refused("forbidden", dave.conf_link_revoke(room, made["id"]))
    await refused("forbidden", carol.conf_link_revoke(room, made["id"]))
    await refused("not_found", alice.conf_link_revoke(room, 999_999))
    await refused("not_found", carol.conf_link_revoke(other, made["id"]))  # another room's
    assert await alice.conf_link_revoke(room, made["id"]) == {"link": made["id"], "revoked": True}
    assert await bob.conf_link_revoke(room, made["id"]) == {"link": made["id"], "revoked": True}
    assert await root.conf_link_revoke(room, second["id"]) == {"link": second["id"],
                                                               "revoked": True}
    third = await bob.conf_link_create(room)
    assert await bob.conf_link_revoke(room, third["id"]) == {"link": third["id"], "revoked": True}
    assert await dave.conf_links(room) == []

    created = await audit_rows(pool, "conf_link_create")
    assert [(r["actor_id"], r["room_id"]) for r in created] == [
        (bob.user["id"], room), (dave.user["id"], room), (bob.user["id"], room)]
    revoked = await audit_rows(pool, "conf_link_revoke")  # the repeated revocation is not
    assert [r["actor_id"] for r in revoked] == [alice.user["id"], root.user["id"],
                                                bob.user["id"]]
    for c in (alice, bob, dave, carol, root):
        await c.close()


async def test_link_bounds_and_at_most_twenty_live_links_per_room_even_at_once(
    links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = links_cluster
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_of(alice, "bounds", (bob, bob_u[0]))
    for bad in ({"ttl": 299}, {"ttl": 604_801}, {"ttl": "1h"}, {"max_guests": 0},
                {"max_guests": 101}):
        await refused("bad_request", alice.request("conf_link_create", room=room, **bad))
    lows = await alice.conf_link_create(room, ttl=300, max_guests=1)
    highs = await alice.conf_link_create(room, ttl=604_800, max_guests=100)
    assert (lows["max_guests"], highs["max_guests"]) == (1, 100)

    # 2 live, then 30 at once from two nodes: 18 are made, 12 refused, none past 20.
    results = await asyncio.gather(
        *((alice if i % 2 else bob).conf_link_create(room) for i in range(30)),
        return_exceptions=True)
    made = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if not isinstance(r, dict)]
    assert len(made) == 18 and len(failed) == 12, results
    assert all(isinstance(e, ClientError) and e.code == "limit_reached" for e in failed)
    assert len(await bob.conf_links(room)) == 20
    # A revoked link and an expired one no longer count.
    await alice.conf_link_revoke(room, lows["id"])
    await pool.execute("UPDATE meeting_links SET expires_at = now() - interval '1 second'"
                       " WHERE id = $1", highs["id"])
    await bob.conf_link_create(room)
    await alice.conf_link_create(room)
    await refused("limit_reached", bob.conf_link_create(room))
    await alice.close()
    await bob.close()


async def test_a_guest_gets_a_session_scoped_to_the_meeting_of_its_link(
    links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = links_cluster
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_of(alice, "standup", (bob, bob_u[0]))
    elsewhere = await room_of(bob, "elsewhere")
    link = await alice.conf_link_create(room, ttl=300)

    r = await post_guest(cluster, "camserver2", {"token": link["token"], "name": "  Ana Ōta "})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and "set-cookie" not in r.headers
    body = r.json()
    assert set(body) == {"token", "user", "room", "expires_at"}
    guest_user = body["user"]
    assert re.fullmatch(r"guest-[0-9a-f]{16}", guest_user["username"])
    assert guest_user == {"id": guest_user["id"], "username": guest_user["username"],
                          "display_name": "Ana Ōta", "guest": True}
    assert body["room"] == {"id": room, "name": "standup"}
    # The session ends with the link (300 s), well before cam.sessionTtlHours.
    assert body["expires_at"] == link["expires_at"]
    stored = await pool.fetchrow("SELECT password_hash, guest_link FROM users WHERE id = $1",
                                 guest_user["id"])
    assert stored["password_hash"] is None and stored["guest_link"] == link["id"]
    assert [x["guests"] for x in await bob.conf_links(room)] == [1]

    guest = await Client.connect(cluster.ws("camserver1"), body["token"])
    assert guest.user == guest_user and guest.rooms == []
    assert guest.guest == {"room": room, "room_name": "standup",
                           "expires_at": link["expires_at"]}
    assert await guest.request("ping") == {"pong": True}
    # Every op but the meeting's is refused, before it reaches any service.
    ops: list[tuple[str, dict[str, Any]]] = [
        ("rooms", {}), ("send", {"room": room, "cid": "c1", "body": "hi"}),
        ("history", {"room": room}), ("members", {"room": room}),
        ("subscribe", {"room": room}), ("mark_read", {"room": room, "seq": 1}),
        ("typing", {"room": room}), ("create_room", {"name": "mine"}),
        ("open_direct", {"user": alice_u[0]}), ("invite", {"room": room, "users": ["x"]}),
        ("directory", {}), ("set_status", {"status": "away"}), ("watch", {"users": [1]}),
        ("leave", {"room": room}), ("block", {"user": alice_u[0]}), ("blocks", {}),
        ("conf_explain", {"room": room}), ("conf_links", {"room": room}),
        ("conf_link_create", {"room": room}), ("conf_link_revoke", {"room": room, "link": 1}),
        ("admin_delete_room", {"room": room}), ("admin_revoke_sessions", {"user": "x"})]
    for op, fields in ops:
        error = await refused("forbidden", guest.request(op, **fields))
        assert error.message == GUEST_ONLY, op
    # The meeting ops, for another room than the link's: not a member.
    for op in ("conf_join", "conf_participants"):
        await refused("not_a_member", guest.request(op, room=elsewhere))
    await refused("not_in_conference", guest.request("conf_leave", room=room))
    await refused("already_authenticated", guest.request("auth", token=body["token"]))

    # Nobody finds the guest: not in the directory, not invitable, no direct room.
    for query in (guest_user["username"], "Ana", "guest-"):
        assert (await alice.directory(query=query))["users"] == []
    everyone = (await alice.directory(limit=200))["users"]
    assert guest_user["id"] not in [u["id"] for u in everyone]
    name = guest_user["username"]
    await refused("no_such_user", alice.request("invite", room=room, users=[name]))
    await refused("no_such_user", alice.request("create_room", name="x", members=[name]))
    await refused("no_such_user", alice.request("open_direct", user=name))
    await refused("no_such_user", alice.block(name))
    assert {m["id"] for m in (await alice.request("members", room=room))["members"]} == {
        alice.user["id"], bob.user["id"]}
    # No password to log in with, not even an empty one.
    async with httpx.AsyncClient(base_url=cluster.http("camserver1"), timeout=10) as http:
        for password in ("", "whatever password"):
            r = await http.post("/api/login", json={"username": name, "password": password})
            assert r.status_code == 401 and r.json()["error"]["code"] == "bad_credentials"
        me = await http.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json() == {"user": guest_user, "admin": False}
    # Only a guest may lack a password: the schema says so too.
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("INSERT INTO users (username, display_name) VALUES ('nopass', 'N')")
    for c in (guest, alice, bob):
        await c.close()


async def test_bad_names_and_unusable_links_are_refused_with_one_message(
    links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = links_cluster
    root_u = ("root", "root password")
    await accounts.create_user(pool, *root_u, is_admin=True)
    alice = await cluster.connect("camserver1", await make_user())
    root = await cluster.connect("camserver1", root_u)
    room = await room_of(alice, "refusals")
    link = await alice.conf_link_create(room, max_guests=1)
    token = link["token"]

    for name in ("", "   ", "x" * 65, "é" * 65, "a" + "\u0301" * 200, "Ana\nBob", "Ana\x00",
                 "Ana\u0007Bob", "Ana\u2028Bob"):
        r = await post_guest(cluster, "camserver1", {"token": token, "name": name})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == "bad_request"
        assert r.headers["cache-control"] == "no-store"
    for body in ({"token": token}, {"name": "Ana"}, {"token": token, "name": 5},
                 {"token": token, "name": "Ana", "room": room}):
        r = await post_guest(cluster, "camserver1", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", body
    assert [x["guests"] for x in await alice.conf_links(room)] == [0]  # none of them counted

    unknown = guests.new_token()
    expired = await alice.conf_link_create(room)
    await pool.execute("UPDATE meeting_links SET expires_at = now() - interval '1 second'"
                       " WHERE id = $1", expired["id"])
    revoked = await alice.conf_link_create(room)
    await alice.conf_link_revoke(room, revoked["id"])
    other_room = await room_of(alice, "to be deleted")
    deleted = await alice.conf_link_create(other_room)
    await root.request("admin_delete_room", room=other_room)
    for bad in (unknown, expired["token"], revoked["token"], deleted["token"], "x" * 300, ""):
        r = await post_guest(cluster, "camserver2", {"token": bad, "name": "Ana"})
        assert r.status_code == 404, r.text
        assert r.json() == {"error": {"code": "not_found", "message": INVALID}}

    assert (await post_guest(cluster, "camserver1", {"token": token, "name": "One"})
            ).status_code == 200
    r = await post_guest(cluster, "camserver2", {"token": token, "name": "Two"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "limit_reached"
    assert await pool.fetchval("SELECT guests FROM meeting_links WHERE id = $1", link["id"]) == 1
    # A cross-site page cannot redeem a link for its visitor.
    r = await post_guest(cluster, "camserver1", {"token": token, "name": "Eve"},
                         headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    await alice.close()
    await root.close()


async def test_unusable_links_lock_the_address_out_like_failed_logins(
    cluster_factory: Any, make_user: Any
) -> None:
    cluster = start(cluster_factory(2), CAM_LOGIN_ADDRESS_MAX_FAILURES="3")
    alice = await cluster.connect("camserver1", await make_user())
    room = await room_of(alice, "locked")
    link = await alice.conf_link_create(room)
    for _ in range(3):
        r = await post_guest(cluster, "camserver1", {"token": guests.new_token(), "name": "G"})
        assert r.status_code == 404
    # Even the right token waits now, with Retry-After; the other node counts its own.
    with pytest.raises(ClientError) as exc:
        await guest_login(cluster.http("camserver1"), link["token"], "G")
    assert exc.value.code == "rate_limited" and exc.value.retry_after is not None
    assert exc.value.retry_after >= 1
    made = await guest_login(cluster.http("camserver2"), link["token"], "G")
    assert made["user"]["guest"] is True
    await alice.close()


async def test_deleting_the_room_puts_its_guests_out_at_once(
    links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = links_cluster
    await accounts.create_user(pool, "root", "root password", is_admin=True)
    alice = await cluster.connect("camserver1", await make_user())
    root = await cluster.connect("camserver2", ("root", "root password"))
    room = await room_of(alice, "doomed")
    link = await alice.conf_link_create(room)
    made = await guest_login(cluster.http("camserver2"), link["token"], "Guest")
    guest = await Client.connect(cluster.ws("camserver2"), made["token"])
    result = await root.request("admin_delete_room", room=room)
    assert set(result) == {"room", "seq", "members"}  # the guest sessions stay in the edge
    assert await guest.wait_closed(5) == 4403
    await refused("unauthenticated", Client.connect(cluster.ws("camserver1"), made["token"]))
    await alice.close()
    await root.close()


async def test_a_guest_meets_the_members_until_its_link_is_revoked(
    video_links_cluster: Cluster, make_user: Any, pool: asyncpg.Pool
) -> None:
    cluster = video_links_cluster
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_of(alice, "meeting", (bob, bob_u[0]))
    elsewhere = await room_of(bob, "elsewhere")
    joined_alice = await alice.request("conf_join", room=room)
    link = await bob.conf_link_create(room)

    made = await guest_login(cluster.http("camserver2"), link["token"], "Guest <b>Ōta</b>")
    guest = await Client.connect(cluster.ws("camserver2"), made["token"])
    gid = guest.user["id"]
    joined = await guest.request("conf_join", room=room)
    assert joined["conference"] == joined_alice["conference"]
    by_user = {p["user"]: p for p in joined["participants"]}
    assert set(by_user) == {alice.user["id"], gid}
    assert by_user[alice.user["id"]]["display_name"] == alice.user["display_name"]
    assert by_user[alice.user["id"]]["guest"] is False
    assert by_user[gid] == {"user": gid, "username": made["user"]["username"],
                            "display_name": "Guest <b>Ōta</b>", "guest": True,
                            "session": by_user[gid]["session"], "node": "camserver2"}
    announced = await alice.next_event("conf_joined", where=lambda e: e["user"] == gid)
    assert announced["display_name"] == "Guest <b>Ōta</b>" and announced["guest"] is True
    listed = await bob.request("conf_participants", room=room)
    assert [(p["user"], p["guest"]) for p in listed["participants"]] == [
        (alice.user["id"], False), (gid, True)]
    assert (await guest.request("conf_participants", room=room))["participants"] == \
        listed["participants"]
    # The guest signals like a member, in its meeting only.
    await guest.request("conf_signal", room=room, to=alice.user["id"], data={"type": "offer"})
    signal = await alice.next_event("conf_signal")
    assert signal["from"] == gid and signal["data"] == {"type": "offer"}
    await refused("not_a_member", guest.request("conf_join", room=elsewhere))
    await refused("not_in_conference",
                  guest.request("conf_signal", room=elsewhere, to=bob.user["id"], data={}))

    # Revoked by its creator: the socket closes at once (4403), the guest leaves the
    # conference, and neither the link nor the guest's session works again.
    assert await bob.conf_link_revoke(room, link["id"]) == {"link": link["id"], "revoked": True}
    assert await guest.wait_closed(5) == 4403
    left = await alice.next_event("conf_left", where=lambda e: e["user"] == gid)
    assert left["session"] == by_user[gid]["session"]

    async def only_alice() -> bool:
        got = await alice.request("conf_participants", room=room)
        return [p["user"] for p in got["participants"]] == [alice.user["id"]]

    await eventually(only_alice, 10, "the guest out of the participants")
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", gid) == 0
    with pytest.raises(ClientError) as exc:
        await guest_login(cluster.http("camserver1"), link["token"], "Again")
    assert (exc.value.code, exc.value.message) == ("not_found", INVALID)
    await refused("unauthenticated", Client.connect(cluster.ws("camserver1"), made["token"]))
    for c in (alice, bob):
        await c.close()



async def test_links_dead_for_a_day_are_purged_with_their_guests(
    pool: asyncpg.Pool, make_user: Any
) -> None:
    owner = await accounts.user_by_name(pool, (await make_user())[0])
    assert owner is not None
    room = await pool.fetchval(
        "INSERT INTO rooms (kind, name, created_by) VALUES ('group', 'r', $1) RETURNING id",
        owner.id)
    links = {}
    for name in ("live", "expired", "revoked", "fresh_revoked"):
        token = guests.new_token()
        links[name] = (token, await pool.fetchval(
            "INSERT INTO meeting_links (room_id, token_hash, created_by, expires_at, max_guests)"
            " VALUES ($1, $2, $3, now() + interval '1 hour', 5) RETURNING id",
            room, guests.digest(token), owner.id))
    made = {name: await guests.redeem(pool, token, name, timedelta(hours=1))
            for name, (token, _) in links.items()}
    await pool.execute("UPDATE meeting_links SET expires_at = now() - interval '25 hours'"
                       " WHERE id = $1", links["expired"][1])
    await pool.execute("UPDATE meeting_links SET revoked_at = now() - interval '25 hours'"
                       " WHERE id = $1", links["revoked"][1])
    await pool.execute("UPDATE meeting_links SET revoked_at = now() WHERE id = $1",
                       links["fresh_revoked"][1])
    assert await guests.purge(pool) == 2
    left = {r["display_name"] for r in await pool.fetch(
        "SELECT display_name FROM users WHERE guest_link IS NOT NULL")}
    assert left == {"live", "fresh_revoked"}
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = ANY($1::bigint[])",
                               [made["expired"].user.id, made["revoked"].user.id]) == 0
    assert await accounts.resolve_session(pool, made["live"].token) is not None
