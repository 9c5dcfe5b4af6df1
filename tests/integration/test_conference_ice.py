"""ICE for conferences on a real cluster: the STUN and TURN servers in conf_join and
conf_moved, with time-limited TURN credentials that a real coturn (started by
camctl.rig.Turn, as ``camctl up --turn`` does) accepts and whose forgeries it refuses;
and the video servers' public URLs (cam.videoPublicUrls) as the only ones clients see."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from cam_edge.ops.conference import turn_credential

from camclient import Client
from camcore import bus
from camctl import rig
from tests.conftest import Cluster

ADMIN_KEY = "video-admin-key"
STUN = "stun:stun.example.com:3478"
TTL = 900
PUBLIC = {"v1": "https://video1.example.com/janus", "v2": "https://video2.example.com:8443/janus"}


@pytest.fixture
def sfus(tmp_path: Path) -> Iterator[dict[str, rig.Janus]]:
    # Real SFUs and a real coturn only: a missing binary is a failure, never a skip.
    if rig.janus_binary() is None:
        pytest.fail("janus not found: apt-get install -y janus")
    servers = {f"v{i + 1}": rig.Janus(tmp_path, f"v{i + 1}", admin_key=ADMIN_KEY,
                                       rtp_range=(20600 + i * 200, 20799 + i * 200))
               for i in range(2)}
    for s in servers.values():
        s.start()
    yield servers
    for s in servers.values():
        s.stop()


def ice_cluster(cluster_factory: Any, sfus: dict[str, rig.Janus], *, turn: bool,
                public: dict[str, str] | None = None) -> Cluster:
    c: Cluster = cluster_factory(2)
    c.extra_env = {
        "CAM_VIDEO_DOMAINS": ";".join(f"{n}=5" for n in sfus),
        "CAM_VIDEO_SERVER_URLS": ";".join(f"{n}={s.url}" for n, s in sfus.items()),
        "CAM_VIDEO_PROBE_INTERVAL": "0.3",
        "CAM_VIDEO_ADMIN_KEY": ADMIN_KEY,
        "CAM_STUN_SERVERS": STUN,
        "CAM_TURN_CREDENTIAL_TTL": str(TTL),
    }
    if public:
        c.extra_env["CAM_VIDEO_PUBLIC_URLS"] = ";".join(f"{n}={u}" for n, u in public.items())
    if turn:
        if rig.turnserver_binary() is None:
            pytest.fail("turnserver not found: apt-get install -y coturn")
        c.start_turn()
    c.start_chat()
    c.start_presence()
    c.start_video("video1")
    # Only the edges get the TURN servers and the secret (LocalCluster.start_all does so).
    turn_env = c.turn_env()
    for i, name in enumerate(("camserver1", "camserver2")):
        c.start_edge(name, nats=i, CAM_TURN_SERVERS=turn_env.get("CAM_TURN_SERVERS", ""),
                     CAM_TURN_SECRET=turn_env.get("CAM_TURN_SECRET", ""))
    c.wait_edges()
    return c


async def room_with(owner: Client, other: Client, other_name: str) -> int:
    room = await owner.request("create_room", name="call", members=[other_name])
    await other.next_event("room_added", where=lambda e: e["room"]["id"] == room["id"])
    return int(room["id"])


def received(client: Client, *results: Any) -> str:
    """Everything ``client`` got: the given results and every pushed frame still queued."""
    frames: list[Any] = list(results)
    while not client.events.empty():
        frames.append(client.events.get_nowait())
    return json.dumps(frames)


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


class Peer(asyncio.DatagramProtocol):
    """The far side of a relay: collects what arrives, and closes when told."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def allocate(turn: rig.Turn, username: str, credential: str, transport: str) -> tuple[str, int]:
    """A TURN Allocate on ``turn``; then data through the relay to a local peer, and
    the allocation deleted. Returns the relayed address."""
    relay, protocol = await create_turn_endpoint(
        Peer, (turn.address, turn.port), username, credential, transport=transport)
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    try:
        relayed = relay.get_extra_info("sockname")
        relay.sendto(b"hello through turn", peer_transport.get_extra_info("sockname"))
        data, source = await asyncio.wait_for(peer.got.get(), 5)
        assert data == b"hello through turn" and tuple(source) == tuple(relayed)
        peer_transport.sendto(b"and back", relayed)
        back, _ = await asyncio.wait_for(protocol.got.get(), 5)
        assert back == b"and back"
    finally:
        peer_transport.close()
        relay.close()
        await asyncio.wait_for(protocol.closed, 10)
    return relayed[0], relayed[1]


async def test_conf_join_hands_out_stun_and_turn_credentials_that_coturn_accepts(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = ice_cluster(cluster_factory, sfus, turn=True)
    turn = cluster.turn
    assert turn is not None
    secret_file = cluster.creds_dir / "turn-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text().strip() == turn.secret and len(turn.secret) >= 32
    secret = turn.secret

    # Whatever crosses the bus meanwhile: the secret must never be in it.
    bus_data: list[bytes] = []

    async def watch(msg: Any) -> None:
        bus_data.append(msg.data)

    nc = await bus.connect(cluster.nats_urls(), "test-watch",
                           credentials=cluster.credential("operator"))
    await nc.subscribe("cam.>", cb=watch)

    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_with(alice, bob, bob_u[0])

    before = int(time.time())
    joined = await alice.request("conf_join", room=room)
    after = int(time.time())
    stun_entry, turn_entry = joined["ice_servers"]
    assert stun_entry == {"urls": [STUN]}
    assert turn_entry["urls"] == turn.urls == [
        f"turn:127.0.0.1:{turn.port}?transport=udp", f"turn:127.0.0.1:{turn.port}?transport=tcp"]
    expiry, _, user = turn_entry["username"].partition(":")
    assert user == str(alice.user["id"])
    assert before + TTL <= int(expiry) <= after + TTL  # in the future, within the ttl
    digest = hmac.new(secret.encode(), turn_entry["username"].encode(), hashlib.sha1).digest()
    assert turn_entry["credential"] == base64.b64encode(digest).decode()
    # The rest of the answer is the allocator's, as before.
    assert joined["conference"]["server"] == "v1"
    assert [p["user"] for p in joined["participants"]] == [alice.user["id"]]

    joined_bob = await bob.request("conf_join", room=room)
    bob_turn = joined_bob["ice_servers"][1]
    assert bob_turn["username"].endswith(f":{bob.user['id']}")
    assert bob_turn["credential"] != turn_entry["credential"]
    listed = await alice.request("conf_participants", room=room)
    assert "ice_servers" not in listed

    # A real coturn takes the issued credentials, over UDP and over TCP, and relays.
    for transport in ("udp", "tcp"):
        address, port = await allocate(turn, turn_entry["username"], turn_entry["credential"],
                                       transport)
        assert address == "127.0.0.1"
        assert turn.relay_range[0] <= port <= turn.relay_range[1]
    await allocate(turn, bob_turn["username"], bob_turn["credential"], "udp")

    # ... and refuses a wrong credential, another user's name with it, and an expired one.
    expired = turn_credential(secret, alice.user["id"], -60, time.time())
    for username, credential in [
        (turn_entry["username"], base64.b64encode(b"x" * 20).decode()),
        (turn_entry["username"], bob_turn["credential"]),
        (f"{expiry}:{bob.user['id']}", turn_entry["credential"]),
        expired,
    ]:
        with pytest.raises(stun.TransactionFailed) as refused:
            await create_turn_endpoint(asyncio.DatagramProtocol, (turn.address, turn.port),
                                       username, credential)
        assert refused.value.response.attributes["ERROR-CODE"][0] == 401

    # The secret appears nowhere a client sees, nor on the bus, nor in the allocator.
    for client, results in ((alice, (joined, listed)), (bob, (joined_bob,))):
        assert secret not in received(client, *results)
    await nc.flush()
    await nc.close()
    assert bus_data and not [d for d in bus_data if secret.encode() in d]
    allocator_env = environ_of(cluster.procs["video1"].pid)
    assert secret.encode() not in allocator_env and b"CAM_TURN_SECRET" not in allocator_env
    await alice.close()
    await bob.close()


async def test_clients_get_the_public_video_urls_and_never_the_api_urls(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
):
    cluster = ice_cluster(cluster_factory, sfus, turn=False, public=PUBLIC)
    internal = [s.url for s in sfus.values()] + [f"127.0.0.1:{s.port}" for s in sfus.values()]
    alice_u, bob_u = await make_user(), await make_user()
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await room_with(alice, bob, bob_u[0])

    joined = await alice.request("conf_join", room=room)
    conf = joined["conference"]
    assert conf["server"] == "v1" and conf["url"] == PUBLIC["v1"]
    assert joined["ice_servers"] == [{"urls": [STUN]}]  # no TURN configured: STUN only
    joined_bob = await bob.request("conf_join", room=room)
    assert joined_bob["conference"] == conf
    listed = await bob.request("conf_participants", room=room)
    assert listed["conference"] == conf and len(listed["participants"]) == 2

    # The web app may call the public Janus origins (and the edge still its own).
    async with httpx.AsyncClient(base_url=cluster.http("camserver1")) as http:
        csp = (await http.get("/CAMServer/healthCheck")).headers["content-security-policy"]
    connect = next(d.split()[1:] for d in csp.split(";") if d.split()[:1] == ["connect-src"])
    assert {"https://video1.example.com", "https://video2.example.com:8443"} <= set(connect)
    assert not [src for src in connect if "127.0.0.1" in src]  # no cluster hosts set here

    # A failover moves the conference to v2: conf_moved has v2's public URL, and ICE.
    sfus["v1"].kill()
    moved = await alice.next_event("conf_moved", timeout=20)
    moved_bob = await bob.next_event("conf_moved", timeout=20)
    assert moved["conference"]["server"] == "v2" and moved["conference"]["url"] == PUBLIC["v2"]
    assert moved["ice_servers"] == [{"urls": [STUN]}]
    assert moved_bob["conference"] == moved["conference"]
    after_move = await alice.request("conf_participants", room=room)
    assert after_move["conference"]["url"] == PUBLIC["v2"]

    for client, results in ((alice, (joined, moved, after_move)), (bob, (joined_bob, listed, moved_bob))):
        seen = received(client, *results)
        assert not [url for url in internal if url in seen], seen
    await alice.close()
    await bob.close()


def test_the_turn_rig_writes_a_private_loopback_config(tmp_path: Path) -> None:
    """What camctl up --turn runs, without starting it: loopback only, time-limited
    credentials with the secret, no TLS and no CLI, pidfile and log in its directory."""
    if rig.turnserver_binary() is None:
        pytest.fail("turnserver not found: apt-get install -y coturn")
    turn = rig.Turn(tmp_path, "the-secret", port=rig.free_port())
    argv, log_path = turn.command()
    conf = tmp_path / "turn" / "turnserver.conf"
    assert argv[1:] == ["-c", str(conf)] and log_path.parent == conf.parent
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    lines = conf.read_text().splitlines()
    for line in ("listening-ip=127.0.0.1", f"listening-port={turn.port}", "relay-ip=127.0.0.1",
                 "use-auth-secret", "static-auth-secret=the-secret", "realm=camcluster",
                 "no-cli", "no-tls", f"pidfile={conf.parent / 'turnserver.pid'}",
                 f"min-port={rig.TURN_RELAY_RANGE[0]}", f"max-port={rig.TURN_RELAY_RANGE[1]}"):
        assert line in lines, line
    assert not [line for line in lines if line.startswith(("listening-ip=0", "cli-password"))]
    # The secret file camctl keeps: made once, mode 0600, the same on every start.
    first = rig.turn_secret(tmp_path / "creds" / "turn-secret")
    assert rig.turn_secret(tmp_path / "creds" / "turn-secret") == first
    assert stat.S_IMODE((tmp_path / "creds" / "turn-secret").stat().st_mode) == 0o600
    assert os.stat(tmp_path / "creds").st_mode & 0o077 == 0
    with socket.socket() as s:  # nothing was started
        assert s.connect_ex(("127.0.0.1", turn.port)) != 0
