"""The edge's write path on a real socket: uvicorn with EdgeWebSocketProtocol, a
websockets client, with and without permessage-deflate. Frames from several producers
and a replay arrive whole and in the order each was sent; a client that stops reading
is closed with 4001 while the backlog stays under the byte bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn
from cam_edge.outgoing import Outgoing
from cam_edge.wsproto import EdgeWebSocketProtocol, Frame
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from camcore import protocol
from tests.waiting import eventually

Handler = Callable[[WebSocket, Outgoing], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler, *, deflate: bool, max_bytes: int = 1 << 20
                 ) -> AsyncIterator[tuple[str, list[Outgoing]]]:
    """An in-process uvicorn serving ``handler`` on /ws, and the Outgoing of each socket."""
    outs: list[Outgoing] = []

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        out = Outgoing(ws, 100_000, max_bytes)
        outs.append(out)
        await handler(ws, out)
        await out.closed()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=EdgeWebSocketProtocol,
                            ws_per_message_deflate=deflate, ws_max_size=1 << 24,
                            ws_ping_interval=None, lifespan="off", log_config=None)
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    await eventually(lambda: srv.started, 10, "uvicorn to listen")
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/ws", outs
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


def event(producer: str, i: int, size: int = 0) -> Frame:
    return Frame(json.dumps({"p": producer, "i": i, "pad": "x" * size}).encode())


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_frames_of_many_producers_and_a_replay_arrive_whole_and_in_order(
        deflate: bool) -> None:
    n = 300

    async def handler(ws: WebSocket, out: Outgoing) -> None:
        async def replay() -> None:
            for i in range(n):
                await out.put(event("replay", i, 20_000 if i % 7 == 0 else 10))

        task = asyncio.create_task(replay())
        for i in range(n):
            # Two rooms' live events and a reply in each turn, big and small frames.
            out.push(event("a", i, 50_000 if i % 11 == 0 else 5))
            out.push(event("b", i))
            out.push(event("reply", i, 3))
            await asyncio.sleep(0)
        await task
        out.push(Frame(b'{"p": "end"}'))
        await asyncio.sleep(0)
        await ws.receive()  # until the client closes

    async with server(handler, deflate=deflate) as (url, _):
        async with connect(url, compression="deflate" if deflate else None,
                           max_size=1 << 24) as client:
            got: dict[str, list[int]] = {}
            while True:
                message = json.loads(await client.recv())  # a torn frame would not parse
                if message["p"] == "end":
                    break
                got.setdefault(message["p"], []).append(message["i"])
            assert client.protocol.extensions if deflate else not client.protocol.extensions
    assert {p: seqs == list(range(n)) for p, seqs in got.items()} == dict.fromkeys(
        ["a", "b", "reply", "replay"], True)


async def test_a_client_that_stops_reading_is_closed_4001_within_the_byte_bound() -> None:
    bound = 1 << 20
    peak = 0

    async def handler(ws: WebSocket, out: Outgoing) -> None:
        nonlocal peak
        frame = event("a", 0, 60_000)
        while not out.closing:
            out.push(frame)
            peak = max(peak, out.queued_bytes)
            await asyncio.sleep(0.001)
        with contextlib.suppress(Exception):
            await ws.receive()

    async with server(handler, deflate=False, max_bytes=bound) as (url, outs):
        async with connect(url, compression=None, max_size=1 << 24, max_queue=1) as client:
            client.transport.pause_reading()  # takes nothing: the kernel buffers fill
            await eventually(lambda: outs and outs[0].closing, 30, "the close as too slow")
            assert outs[0].close_code == protocol.CLOSE_RESUME
            assert peak <= bound
            client.transport.resume_reading()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == protocol.CLOSE_RESUME


async def test_pings_are_answered_while_an_op_waits_and_the_next_frame_is_in() -> None:
    busy = asyncio.Event()

    async def handler(ws: WebSocket, out: Outgoing) -> None:
        await ws.receive()  # the first op, which then waits (a database outage, say)
        busy.set()
        await asyncio.sleep(3)
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    async with server(handler, deflate=False) as (url, _):
        async with connect(url, compression=None, ping_interval=None) as client:
            await client.send("op 1")
            await asyncio.wait_for(busy.wait(), 5)
            await client.send("op 2")  # read ahead, not yet taken by the application
            await asyncio.sleep(0.1)
            latency = await asyncio.wait_for(await client.ping(), 2)  # answered meanwhile
            assert latency >= 0
