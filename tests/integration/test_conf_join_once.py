"""Each conference participant is announced to a client once: in its join result, or
by one ``conf_joined``, even when many clients on two nodes join at the same time."""

from __future__ import annotations

import asyncio
from typing import Any

from camclient import Client
from camctl import rig
from tests.integration.test_conferences import room_with, sfus, video_cluster

__all__ = ["sfus"]  # the fixture, used by name


async def announced(client: Client, room: int, count: int) -> list[int]:
    """The sessions of the next ``count`` conf_joined of ``room``, then any extra one."""
    sessions = []
    for _ in range(count):
        event = await client.next_event("conf_joined", where=lambda e: e["room"] == room)
        sessions.append(event["session"])
    try:
        extra = await client.next_event("conf_joined", timeout=1.5,
                                        where=lambda e: e["room"] == room)
    except TimeoutError:
        return sessions
    return [*sessions, extra["session"]]


async def test_concurrent_joiners_see_every_participant_exactly_once(
    cluster_factory: Any, sfus: dict[str, rig.Janus], make_user: Any
) -> None:
    cluster = video_cluster(cluster_factory, sfus)
    users = [await make_user() for _ in range(6)]
    clients = [await cluster.connect(("camserver1", "camserver2")[i % 2], u)
               for i, u in enumerate(users)]
    room = await room_with(clients[0], *[(c, u[0]) for c, u in zip(clients[1:], users[1:],
                                                                    strict=True)])

    results = await asyncio.gather(*(c.request("conf_join", room=room) for c in clients))

    listed = await clients[0].request("conf_participants", room=room)
    everyone = sorted(p["session"] for p in listed["participants"])
    assert len(everyone) == len(clients)
    for client, result in zip(clients, results, strict=True):
        in_result = [p["session"] for p in result["participants"]]
        later = await announced(client, room, len(everyone) - len(in_result))
        # Its own participant and everyone before it in the result; the rest announced.
        assert sorted(in_result + later) == everyone, (in_result, later)
    for c in clients:
        await c.close()
