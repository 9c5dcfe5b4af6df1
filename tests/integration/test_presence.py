"""Presence across the cluster: statuses cross nodes, and no ghost survives a fault."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

from camclient import Client, login
from tests.conftest import Cluster

NODE_TIMEOUT = 2.0  # what the test cluster is configured with (tests/conftest.py)
BOUND = NODE_TIMEOUT + 3.0  # deadline for a functional outcome, not a performance goal
TYPING_EVERY = 1.1  # the edge forwards one typing indicator a second per connection and room


async def status_of(watcher: Client, user_id: int, want: str, timeout: float = BOUND) -> float:
    """Wait until ``watcher`` has been told ``user_id`` is ``want``; returns seconds taken."""
    start = time.monotonic()
    known = watcher.__dict__.setdefault("presence", {})
    while known.get(user_id) != want:
        event = await watcher.next_event("presence", timeout=max(0.01, timeout - (time.monotonic() - start)))
        known[event["user"]] = event["status"]
    return time.monotonic() - start


async def presence_events_during(watcher: Client, seconds: float) -> list[dict[str, Any]]:
    """Every presence event ``watcher`` is told during the next ``seconds``."""
    known = watcher.__dict__.setdefault("presence", {})
    told: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            event = await watcher.next_event("presence", timeout=left)
        except TimeoutError:
            break
        known[event["user"]] = event["status"]
        told.append(event)
    return told


async def watch(watcher: Client, *user_ids: int) -> dict[int, str]:
    result = await watcher.request("watch", users=list(user_ids))
    known = watcher.__dict__.setdefault("presence", {})
    for item in result["presence"]:
        known[item["user"]] = item["status"]
    return {item["user"]: item["status"] for item in result["presence"]}


async def test_status_changes_of_a_user_on_node1_reach_a_watcher_on_node2(
    two_nodes: Cluster, make_user: Any
):
    alice_u, bob_u = await make_user("alice"), await make_user("bob")
    bob = await two_nodes.connect("camserver2", bob_u)
    directory = await bob.request("directory")
    alice_id = next(u["id"] for u in directory["users"] if u["username"] == "alice")
    assert (await watch(bob, alice_id))[alice_id] == "offline"

    alice = await two_nodes.connect("camserver1", alice_u)
    await status_of(bob, alice_id, "online")
    # Alice watches Bob too: the snapshot says online.
    assert (await watch(alice, bob.user["id"]))[bob.user["id"]] == "online"

    for chosen, shown in [("away", "away"), ("busy", "busy"), ("invisible", "offline"),
                          ("online", "online")]:
        result = await alice.request("set_status", status=chosen)
        assert result == {"status": chosen, "shown": shown}
        await status_of(bob, alice_id, shown)

    # A chosen status survives a reconnect, on any node.
    await alice.request("set_status", status="busy")
    await status_of(bob, alice_id, "busy")
    await alice.close()
    await status_of(bob, alice_id, "offline")
    alice = await two_nodes.connect("camserver2", alice_u)
    await status_of(bob, alice_id, "busy")
    await alice.close()
    await status_of(bob, alice_id, "offline")
    await bob.close()


async def test_user_with_sessions_on_both_nodes_stays_online_when_one_closes(
    two_nodes: Cluster, make_user: Any
):
    alice_u, bob_u = await make_user(), await make_user()
    bob = await two_nodes.connect("camserver2", bob_u)
    a1 = await two_nodes.connect("camserver1", alice_u)
    a2 = await two_nodes.connect("camserver2", alice_u)
    alice_id = a1.user["id"]
    await watch(bob, alice_id)
    await status_of(bob, alice_id, "online")
    await a1.close()
    # No offline transition may be published while a2 lives.
    try:
        event = await bob.next_event("presence", timeout=NODE_TIMEOUT)
    except TimeoutError:
        event = None
    assert event is None, event
    fresh = await two_nodes.connect("camserver1", bob_u)
    assert (await watch(fresh, alice_id))[alice_id] == "online"
    await a2.close()
    await status_of(bob, alice_id, "offline")
    await status_of(fresh, alice_id, "offline")
    await bob.close()
    await fresh.close()


async def test_typing_indicator_crosses_nodes(two_nodes: Cluster, make_user: Any):
    a_u, b_u = await make_user(), await make_user()
    a = await two_nodes.connect("camserver1", a_u)
    b = await two_nodes.connect("camserver2", b_u)
    room = await a.request("create_room", name="t", members=[b_u[0]])
    await b.next_event("room_added")
    # Typing is ephemeral: one sent before node 2's subscription to the room has
    # crossed the NATS route is lost. A user keeps typing, so keep sending (the edge
    # forwards at most one a second) until it arrives.
    deadline = time.monotonic() + BOUND
    while True:
        assert (await a.request("typing", room=room["id"])) == {"room": room["id"]}
        try:
            event = await b.next_event("typing", timeout=TYPING_EVERY)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the typing indicator never reached node 2"
    assert event["room"] == room["id"] and event["user"] == a.user["id"]
    assert event["user_name"] == a_u[0]
    await a.close()
    await b.close()


async def test_killed_node_users_go_offline_and_come_back_on_another_node(
    two_nodes: Cluster, make_user: Any
):
    alice_u, bob_u = await make_user(), await make_user()
    bob = await two_nodes.connect("camserver2", bob_u)
    alice = await two_nodes.connect("camserver1", alice_u)
    alice_id = alice.user["id"]
    await watch(bob, alice_id)
    await status_of(bob, alice_id, "online")

    two_nodes.procs["camserver1"].kill()
    took = await status_of(bob, alice_id, "offline")
    print(f"offline seen {took:.2f}s after kill -9 (node timeout {NODE_TIMEOUT}s)")

    alice = await two_nodes.connect("camserver2", alice_u)
    await status_of(bob, alice_id, "online")
    await alice.close()
    await bob.close()


async def test_stopped_node_is_swept_then_reregisters_only_live_sessions(
    two_nodes: Cluster, make_user: Any
):
    alice_u, carol_u, bob_u = await make_user(), await make_user(), await make_user()
    bob = await two_nodes.connect("camserver2", bob_u)
    alice = await two_nodes.connect("camserver1", alice_u)
    carol = await two_nodes.connect("camserver1", carol_u)
    ids = alice.user["id"], carol.user["id"]
    await watch(bob, *ids)
    for uid in ids:
        await status_of(bob, uid, "online")

    edge = two_nodes.procs["camserver1"]
    edge.signal(signal.SIGSTOP)
    try:
        for uid in ids:
            await status_of(bob, uid, "offline")
        carol.ws.transport.abort()  # Carol's client goes away while the node is frozen
    finally:
        edge.signal(signal.SIGCONT)
    # Alice's socket survived the pause: she is registered again. Carol is not: for a
    # whole node timeout after the node came back, no event shows her anything but
    # offline, and the presence service itself says so, to watchers on either node.
    await status_of(bob, ids[0], "online")
    told = await presence_events_during(bob, NODE_TIMEOUT)
    assert [e for e in told if e["user"] == ids[1]] == [], told
    assert bob.__dict__["presence"][ids[1]] == "offline"  # updated by every event read
    assert (await watch(bob, ids[1]))[ids[1]] == "offline"
    fresh = await two_nodes.connect("camserver1", bob_u)
    assert await watch(fresh, *ids) == {ids[0]: "online", ids[1]: "offline"}
    await fresh.close()
    assert (await alice.request("ping"))["pong"] is True
    await alice.close()
    await status_of(bob, ids[0], "offline")
    await bob.close()


async def test_graceful_shutdown_deregisters_at_once(two_nodes: Cluster, make_user: Any):
    alice_u, bob_u = await make_user(), await make_user()
    bob = await two_nodes.connect("camserver2", bob_u)
    alice = await two_nodes.connect("camserver1", alice_u)
    await watch(bob, alice.user["id"])
    await status_of(bob, alice.user["id"], "online")
    await asyncio.to_thread(two_nodes.procs["camserver1"].stop)
    # Well inside the node timeout: deregistration did not wait for the sweeper.
    await status_of(bob, alice.user["id"], "offline", timeout=NODE_TIMEOUT * 0.9)
    await bob.close()


# ---------------------------------------------------------------- churn and convergence


class Churn:
    """Users connecting, disconnecting and changing status on both nodes."""

    def __init__(self, cluster: Cluster, users: list[tuple[str, str]], tokens: dict[str, str]):
        self.cluster = cluster
        self.users = users
        self.tokens = tokens
        self.live: dict[str, list[Client]] = {u[0]: [] for u in users}
        self.chosen: dict[str, str] = {u[0]: "online" for u in users}
        self.rng = random.Random(os.getpid())
        self.steps = 0

    async def step(self) -> None:
        self.steps += 1
        name = self.rng.choice(self.users)[0]
        action = self.rng.random()
        sessions = self.live[name]
        try:
            if action < 0.45 or not sessions:
                node = self.rng.choice(["camserver1", "camserver2"])
                sessions.append(await Client.connect(self.cluster.ws(node), self.tokens[name]))
            elif action < 0.85:
                client = sessions.pop(self.rng.randrange(len(sessions)))
                await client.close()
            else:
                status = self.rng.choice(["online", "away", "busy", "invisible"])
                await sessions[0].request("set_status", status=status)
                self.chosen[name] = status
        except Exception:  # noqa: BLE001 - faults are injected on purpose; truth is re-read below
            pass

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.step()
            await asyncio.sleep(0.01)

    def expected(self, ids: dict[str, int]) -> dict[int, str]:
        out = {}
        for name, sessions in self.live.items():
            alive = [c for c in sessions if c.close_code is None]
            shown = self.chosen[name] if alive else "offline"
            out[ids[name]] = "offline" if shown == "invisible" else shown
        return out

    async def close(self) -> None:
        for sessions in self.live.values():
            for c in sessions:
                await c.close()


async def churn_setup(cluster: Cluster, make_user: Any, n: int = 12) -> tuple[Any, ...]:
    users = [await make_user() for _ in range(n)]
    tokens = {u[0]: await login(cluster.http("camserver1"), *u) for u in users}
    watcher_u = await make_user()
    watchers = [await cluster.connect(node, watcher_u) for node in ("camserver1", "camserver2")]
    directory = await watchers[0].request("directory", limit=200)
    ids = {u["username"]: u["id"] for u in directory["users"]}
    for w in watchers:
        await watch(w, *(ids[u[0]] for u in users))
    return Churn(cluster, users, tokens), watchers, ids


async def assert_converges(churn: Churn, watchers: list[Client], ids: dict[str, int]) -> None:
    """What every watcher shows equals who really holds a live session (and their status)."""
    want = churn.expected(ids)
    deadline = time.monotonic() + BOUND * 2
    for w in watchers:
        known = w.__dict__["presence"]
        while any(known.get(uid) != st for uid, st in want.items()):
            try:
                event = await w.next_event("presence", timeout=deadline - time.monotonic())
            except TimeoutError:
                wrong = {u: (known.get(u), st) for u, st in want.items() if known.get(u) != st}
                raise AssertionError(f"watcher did not converge: (shown, truth) {wrong}") from None
            known[event["user"]] = event["status"]
    # And a fresh snapshot agrees too.
    fresh = await watch(watchers[0], *want)
    assert fresh == want


def presence_cluster(cluster_factory: Any, replicas: int = 2) -> Cluster:
    c: Cluster = cluster_factory(2)
    c.start_chat()
    for i in range(replicas):
        c.start_presence(f"presence{i + 1}")
    c.start_edge("camserver1", nats=0)
    c.start_edge("camserver2", nats=1)
    c.wait_edges()
    return c


async def test_killing_one_of_two_presence_replicas_mid_churn_converges(
    cluster_factory: Any, make_user: Any
):
    cluster = presence_cluster(cluster_factory)
    churn, watchers, ids = await churn_setup(cluster, make_user)
    # The kill comes 1.5 s into 8 s of churn: a request the killed replica had taken is
    # answered only by the edge's 5 s bus timeout, and the churn must go on after it.
    task = asyncio.create_task(churn.run(8.0))
    await asyncio.sleep(1.5)
    assert churn.steps > 0 and not task.done()
    cluster.procs["presence1"].kill()
    at_kill = churn.steps
    await task
    assert churn.steps > at_kill  # the churn went on against the surviving replica
    await assert_converges(churn, watchers, ids)
    await churn.close()
    await assert_converges(churn, watchers, ids)
    for w in watchers:
        await w.close()


async def test_presence_restart_and_nats_server_restart_mid_churn_converge(
    cluster_factory: Any, make_user: Any
):
    cluster = presence_cluster(cluster_factory, replicas=1)
    churn, watchers, ids = await churn_setup(cluster, make_user)
    task = asyncio.create_task(churn.run(6.0))
    await asyncio.sleep(1.0)  # the faults begin 1 s into 6 s of churn
    assert churn.steps > 0
    await asyncio.to_thread(cluster.procs["presence1"].stop)
    await asyncio.sleep(0.5)  # presence stays down for half a second
    cluster.start_presence("presence1")
    await asyncio.to_thread(cluster.wait_services)  # until the new replica answers
    assert not task.done(), "the churn ended before the NATS restart"
    at_restart = churn.steps
    await asyncio.to_thread(cluster.nats.restart, 1)
    await task
    assert churn.steps > at_restart
    await assert_converges(churn, watchers, ids)
    await churn.close()
    await assert_converges(churn, watchers, ids)
    for w in watchers:
        await w.close()
