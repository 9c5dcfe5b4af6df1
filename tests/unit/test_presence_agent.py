"""The edge's presence agent gives up a request the bus may have lost, before the sweeper acts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cam_edge.presence import PresenceAgent

from tests.waiting import eventually


class _Reply:
    def __init__(self, result: dict[str, Any]) -> None:
        self.data = json.dumps({"ok": True, "result": result}).encode()


class LosingBus:
    """A bus whose first request is never answered (lost in a disconnect)."""

    is_connected = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def request(self, subject: str, data: bytes, *, timeout: float, **_: Any) -> _Reply:
        self.requests.append((subject.rsplit(".", 1)[-1], json.loads(data)))
        if len(self.requests) == 1:
            await asyncio.wait_for(asyncio.Event().wait(), timeout)  # never answered
        return _Reply({"sync": False})


async def _run(agent: PresenceAgent) -> asyncio.Task[None]:
    return asyncio.create_task(agent.run())


async def _stop(agent: PresenceAgent, task: asyncio.Task[None]) -> None:
    agent._stopped = True
    agent._wake.set()
    await asyncio.wait_for(task, 2.0)


async def test_a_reconnect_abandons_the_request_in_flight_and_syncs_at_once() -> None:
    nc = LosingBus()
    agent = PresenceAgent(nc, "n1", interval=60.0, node_timeout=600.0)  # type: ignore[arg-type]
    agent.add(7, 42)
    task = await _run(agent)
    await eventually(lambda: len(nc.requests) == 1, 2.0, "the agent's requests")
    assert nc.requests[0][0] == "sync"
    agent.request_sync(abandon=True)
    # Without abandoning, the next request would wait for the 5 s bus timeout.
    await eventually(lambda: len(nc.requests) == 2, 2.0, "the agent's requests")
    op, body = nc.requests[1]
    assert op == "sync" and body["sessions"] == [[7, 42]]
    await _stop(agent, task)


async def test_a_lost_request_is_given_up_within_half_the_node_timeout() -> None:
    nc = LosingBus()
    agent = PresenceAgent(nc, "n1", interval=0.2, node_timeout=0.6)  # type: ignore[arg-type]
    assert agent.timeout == 0.3
    task = await _run(agent)
    await eventually(lambda: len(nc.requests) >= 2, 3.0, "the agent's requests")
    assert [op for op, _ in nc.requests[:2]] == ["sync", "sync"]  # the lost one is re-sent whole
    await _stop(agent, task)


async def test_cancelling_the_agent_still_cancels_it() -> None:
    nc = LosingBus()
    agent = PresenceAgent(nc, "n1", interval=60.0, node_timeout=600.0)  # type: ignore[arg-type]
    task = await _run(agent)
    await eventually(lambda: len(nc.requests) == 1, 2.0, "the agent's requests")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert done and task.cancelled()
