"""Web conferences across nodes, placed by cam.videoDomains on real Janus SFUs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cam_video_allocator.janus import Janus

from camclient import Client, ClientError, login
from camcore import bus, subjects, wire
from camcore.errors import CamError
from camctl import rig
from tests.conftest import Cluster
from tests.waiting import eventually

ADMIN_KEY = "video-admin-key"




@pytest.fixture
def sfus(tmp_path: Path) -> Iterator[dict[str, rig.Janus]]:
    # Conferences are tested on real SFUs only: no Janus is a failure, never a skip.
    if rig.janus_binary() is None:
        pytest.fail("janus not found: the conference tests need a real Janus SFU "
                    "(apt-get install -y janus)")
    servers = {f"v{i + 1}": rig.Janus(tmp_path, f"v{i + 1}", admin_key=ADMIN_KEY,
                                       rtp_range=(20000 + i * 200, 20199 + i * 200))
               for i in range(3)}
    for s in servers.values():
        s.start()
    yield servers
    for s in servers.values():
        s.stop()


def video_cluster(cluster_factory: Any, sfus: dict[str, rig.Janus], capacity: str = "3",
                  allocators: int = 2) -> Cluster:
    c: Cluster = cluster_factory(2)
    caps = capacity.split(",") if "," in capacity else [capacity] * len(sfus)
    c.extra_env = {
        "CAM_VIDEO_DOMAINS": ";".join(f"{n}={cap}" for n, cap in zip(sfus, caps, strict=True)),
        "CAM_VIDEO_SERVER_URLS": ";".join(f"{n}={s.url}" for n, s in sfus.items()),
        "CAM_VIDEO_PROBE_INTERVAL": "0.3",
        "CAM_VIDEO_ADMIN_KEY": ADMIN_KEY,
    }
    c.start_chat()
    c.start_presence()
    for i in range(allocators):
        c.start_video(f"video{i + 1}")
    c.start_edge("camserver1", nats=0)
    c.start_edge("camserver2", nats=1)
    c.wait_edges()
    return c


async def janus_rooms(sfu: rig.Janus) -> dict[int, Any]:
    j = Janus(sfu.url, admin_key=ADMIN_KEY)
    try:
        return await j.rooms()
    finally:
        await j.close()


async def room_with(owner: Client, *others: tuple[Client, str]) -> int:
    room = await owner.request("create_room", name="call", members=[name for _, name in others])
    for client, _ in others:
        await client.next_event("room_added", where=lambda e: e["room"]["id"] == room["id"])
    return int(room["id"])


async def test_users_on_two_nodes_meet_in_one_conference_and_signal_each_other(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = video_cluster(cluster_factory, sfus)
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_with(alice, (bob, bob_u[0]))

    joined = await alice.request("conf_join", room=room)
    conf = joined["conference"]
    assert conf["server"] == "v1" and conf["url"] == sfus["v1"].url and conf["pin"]
    assert [p["user"] for p in joined["participants"]] == [alice.user["id"]]
    # The room really exists on the chosen Janus, and only there.
    assert conf["janus_room"] in await janus_rooms(sfus["v1"])
    assert conf["janus_room"] not in await janus_rooms(sfus["v2"])

    joined_bob = await bob.request("conf_join", room=room)
    assert joined_bob["conference"] == conf
    assert {p["user"] for p in joined_bob["participants"]} == {alice.user["id"], bob.user["id"]}
    event = await alice.next_event("conf_joined", where=lambda e: e["user"] == bob.user["id"])
    assert event["node"] == "camserver2"

    await alice.request("conf_signal", room=room, to=bob.user["id"],
                        data={"type": "offer", "sdp": "v=0 alice"})
    offer = await bob.next_event("conf_signal")
    assert offer["from"] == alice.user["id"] and offer["data"]["sdp"] == "v=0 alice"
    await bob.request("conf_signal", room=room, to=alice.user["id"],
                      data={"type": "answer", "sdp": "v=0 bob"})
    answer = await alice.next_event("conf_signal")
    assert answer["data"] == {"type": "answer", "sdp": "v=0 bob"}

    listed = await bob.request("conf_participants", room=room)
    assert len(listed["participants"]) == 2
    await bob.request("conf_leave", room=room)
    left = await alice.next_event("conf_left")
    assert left["user"] == bob.user["id"]
    # The last one out ends the conference and its room on Janus.
    result = await alice.request("conf_leave", room=room)
    assert result["ended"] is True
    assert conf["janus_room"] not in await janus_rooms(sfus["v1"])
    await alice.close()
    await bob.close()


async def test_a_non_member_cannot_join_or_signal(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = video_cluster(cluster_factory, sfus, allocators=1)
    a_u, x_u = await make_user(), await make_user()
    a = await cluster.connect("camserver1", a_u)
    x = await cluster.connect("camserver2", x_u)
    room = await a.request("create_room", name="private")
    fields: dict[str, Any]
    for op, fields in [("conf_join", {}), ("conf_participants", {}), ("conf_explain", {})]:
        with pytest.raises(ClientError) as exc:
            await x.request(op, room=room["id"], **fields)
        assert exc.value.code == "not_a_member"
    with pytest.raises(ClientError) as exc:
        await x.request("conf_signal", room=room["id"], to=a.user["id"], data={})
    assert exc.value.code == "not_in_conference"
    await a.close()
    await x.close()


async def test_concurrent_joins_get_one_server_per_room_and_never_overshoot(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any, pool: asyncpg.Pool
):
    cluster = video_cluster(cluster_factory, sfus, capacity="10,10,1000", allocators=2)
    users = [await make_user() for _ in range(5)]
    owner = await cluster.connect("camserver1", users[0])
    rooms = []
    for i in range(20):
        r = await owner.request("create_room", name=f"r{i}", members=[u[0] for u in users[1:]])
        rooms.append(r["id"])
    tokens = [await login(cluster.http("camserver1"), *u) for u in users]
    clients = await asyncio.gather(*(
        Client.connect(cluster.ws("camserver1" if (i + j) % 2 else "camserver2"), tokens[i])
        for j in range(20) for i in range(5)))
    # 100 concurrent joins: 5 per room, over 20 rooms none of which has a conference yet.
    results = await asyncio.gather(*(
        c.request("conf_join", room=rooms[k // 5], timeout=60) for k, c in enumerate(clients)))
    per_room: dict[int, set[tuple[str, int]]] = {}
    for k, result in enumerate(results):
        conf = result["conference"]
        per_room.setdefault(rooms[k // 5], set()).add((conf["server"], conf["janus_room"]))
    assert all(len(v) == 1 for v in per_room.values()), per_room
    live = await pool.fetch("SELECT room_id, server, placed_load, overflow FROM conferences"
                            " WHERE state = 'active'")
    assert sorted(r["room_id"] for r in live) == sorted(rooms)
    caps = {"v1": 10, "v2": 10, "v3": 1000}
    for r in live:
        assert not r["overflow"]
        assert r["placed_load"] <= caps[r["server"]], dict(r)  # no new room once over capacity
    used = {r["server"] for r in live}
    assert {"v1", "v2", "v3"} <= used  # it filled v1, then v2, then went on
    assert await pool.fetchval("SELECT count(*) FROM conference_participants") == 100
    for c in [owner, *clients]:
        await c.close()


async def test_killed_sfu_moves_its_conferences_and_tells_participants(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = video_cluster(cluster_factory, sfus, allocators=2)
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_with(alice, (bob, bob_u[0]))
    first = (await alice.request("conf_join", room=room))["conference"]
    await bob.request("conf_join", room=room)
    assert first["server"] == "v1"

    sfus["v1"].kill()
    moved_a = await alice.next_event("conf_moved", timeout=20)
    moved_b = await bob.next_event("conf_moved", timeout=20)
    assert moved_a["from"] == "v1" and moved_a["conference"]["server"] == "v2"
    assert moved_b["conference"] == moved_a["conference"]
    assert moved_a["conference"]["janus_room"] in await janus_rooms(sfus["v2"])
    explained = await alice.request("conf_explain", room=room)
    assert explained["server"] == "v2" and explained["moves"] == 1
    assert any("v1: skipped, not healthy" in step for step in explained["explanation"]["steps"])
    await alice.close()
    await bob.close()


async def test_drained_server_takes_no_new_rooms_but_keeps_its_own(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = video_cluster(cluster_factory, sfus, allocators=1)
    a_u, b_u = await make_user(), await make_user()
    a = await cluster.connect("camserver1", a_u)
    b = await cluster.connect("camserver2", b_u)
    r1 = await room_with(a, (b, b_u[0]))
    r2 = await room_with(a, (b, b_u[0]))
    r3 = await room_with(a, (b, b_u[0]))
    assert (await a.request("conf_join", room=r1))["conference"]["server"] == "v1"

    nc = await bus.connect(cluster.nats.urls, "test-admin",
                           credentials=cluster.credential("operator"))
    status = await bus.call(nc, subjects.video_rpc("admin"),
                            wire.VideoAdmin(action="drain", server="v1"))
    assert next(s for s in status["servers"] if s["name"] == "v1")["state"] == "draining"
    assert (await a.request("conf_join", room=r2))["conference"]["server"] == "v2"
    # The conference already on v1 continues and still takes joins.
    assert (await b.request("conf_join", room=r1))["conference"]["server"] == "v1"
    explained = await a.request("conf_explain", room=r2)
    assert "v1: skipped, draining" in explained["explanation"]["steps"]

    await bus.call(nc, subjects.video_rpc("admin"), wire.VideoAdmin(action="enable", server="v1"))
    assert (await a.request("conf_join", room=r3))["conference"]["server"] == "v1"
    with pytest.raises(CamError) as exc:
        await bus.call(nc, subjects.video_rpc("admin"),
                       wire.VideoAdmin(action="drain", server="nope"))
    assert exc.value.code == "bad_request" and "'nope'" in exc.value.message
    # Nothing was drained by the refused request.
    status = await bus.call(nc, subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))
    assert {s["name"]: s["state"] for s in status["servers"]} == {
        "v1": "active", "v2": "active", "v3": "active"}
    await nc.close()
    await a.close()
    await b.close()


async def test_reconciliation_corrects_drift_against_what_the_sfus_report(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any, pool: asyncpg.Pool
):
    cluster = video_cluster(cluster_factory, sfus, allocators=1)
    a_u = await make_user()
    a = await cluster.connect("camserver1", a_u)
    room = (await a.request("create_room", name="r"))["id"]
    conf = (await a.request("conf_join", room=room))["conference"]
    assert conf["server"] == "v1"
    v1 = Janus(sfus["v1"].url, admin_key=ADMIN_KEY)
    v2 = Janus(sfus["v2"].url, admin_key=ADMIN_KEY)
    # Two participants that joined on the SFU itself, without telling our service.
    media = [Janus(sfus["v1"].url) for _ in range(2)]
    nc = await bus.connect(cluster.nats.urls, "test-admin",
                           credentials=cluster.credential("operator"))

    async def in_rooms(janus: Janus, janus_room: int, present: bool) -> bool:
        return (janus_room in await janus.rooms()) is present

    async def v1_participants(want: int) -> bool:
        status = await bus.call(nc, subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))
        return next(s for s in status["servers"] if s["name"] == "v1")["participants"] == want

    try:
        # A room of ours that the SFU lost is created again...
        await v1.destroy_room(conf["janus_room"])
        assert conf["janus_room"] not in await v1.rooms()
        await eventually(lambda: in_rooms(v1, conf["janus_room"], True), 10,
                         "the lost room to be created again")
        # ...and a conference room no conference owns is destroyed, while a room that is
        # not a conference room (no cam-conference tag) is left alone.
        await v2.create_room(987654321, "pin", "left over")
        await v2.request({"request": "create", "room": 123456789, "admin_key": ADMIN_KEY,
                          "description": "someone else's room"})
        await eventually(lambda: in_rooms(v2, 987654321, False), 10,
                         "the orphan room to be destroyed")
        assert 123456789 in await v2.rooms()
        # Participants the SFU reports are counted: the load an operator sees, and
        # placement uses, is what the SFU carries, not only who joined through us.
        assert await v1_participants(1)  # Alice, who joined through us
        for i, janus in enumerate(media):
            await janus.request({"request": "join", "ptype": "publisher", "room": conf["janus_room"],
                                 "pin": conf["pin"], "display": f"outside {i}"})
        await eventually(lambda: v1_participants(2), 10, "v1 to count the 2 SFU participants")
        assert await pool.fetchval("SELECT sfu_participants FROM conferences WHERE room_id = $1",
                                   room) == 2
    finally:
        await nc.close()
        for janus in (v1, v2, *media):
            await janus.close()
    await a.close()


def test_camctl_video_drains_enables_and_reports(
    cluster_factory: Any, sfus: dict[str, rig.Janus], tmp_path: Path
):
    import subprocess
    import sys

    cluster = video_cluster(cluster_factory, sfus, allocators=1)
    env = {**__import__("os").environ, "CAM_NATS_URL": ",".join(cluster.nats.urls),
           "CAM_SERVER_DATE_PATH": str(tmp_path / "nostate"),
           "CAM_NATS_CREDENTIALS": cluster.credential("operator")}

    def camctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "camctl.cli", "video", *argv],
                              capture_output=True, text=True, env=env, timeout=30)

    drained = camctl("drain", "v2")
    assert drained.returncode == 0, drained.stderr
    servers = {s["name"]: s for s in json.loads(drained.stdout)["servers"]}
    assert servers["v2"]["state"] == "draining" and servers["v1"]["state"] == "active"
    enabled = {s["name"]: s for s in json.loads(camctl("enable", "v2").stdout)["servers"]}
    assert {name: s["state"] for name, s in enabled.items()} == {
        "v1": "active", "v2": "active", "v3": "active"}
    bad = camctl("drain", "nosuch")
    assert bad.returncode == 1 and "nosuch" in bad.stderr
    # Without a credential the bus refuses camctl, and it says so.
    del env["CAM_NATS_CREDENTIALS"]
    refused = camctl("drain", "v2")
    assert refused.returncode == 1 and "refused the credentials" in refused.stderr, refused.stderr
