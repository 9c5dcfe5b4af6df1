"""A bare WebSocket echo server: the baseline of the edge's ping-pong, and the target of
the load generator's self-check.

    python -m bench.echo --port PORT [--impl websockets|picows]

On connect it sends one ``hello`` frame (as our edge does, so ``camclient`` can open a
connection to it), then sends every text frame back unchanged. ``websockets`` is the
library our edge's uvicorn uses for its WebSocket protocol; ``picows`` is a faster one,
used to show the load generator's own ceiling. Both run on uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

HELLO = '{"op":"hello","v":1,"node":"echo"}'


async def serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        await ws.send(HELLO)
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                await ws.send(frame)

    # Library defaults, as the edge's uvicorn: permessage-deflate is offered and accepted.
    async with serve(handler, "127.0.0.1", port, max_size=2**24, ping_interval=20):
        await _until_stopped()


async def serve_picows(port: int) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

    class Echo(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(WSMsgType.TEXT, HELLO.encode())

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            else:
                transport.send(frame.msg_type, frame.get_payload_as_bytes())

    def factory(request: WSUpgradeRequest) -> Echo:
        return Echo()

    server = await ws_create_server(factory, "127.0.0.1", port)
    async with server:
        await _until_stopped()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.echo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--impl", choices=["websockets", "picows"], default="websockets")
    args = parser.parse_args()
    serve = serve_websockets if args.impl == "websockets" else serve_picows
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
