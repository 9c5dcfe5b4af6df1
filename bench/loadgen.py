"""The load generator: thousands of WebSocket clients in one asyncio process.

It is built on ``camclient.Client`` (the same library our users get): a ``Sink`` given
as the client's ``events`` queue records each pushed frame the moment the client's
reader decodes it, so nothing queues up inside the load generator and a latency is
taken when the frame arrives. Send times travel in the message body
(``"<perf_counter> <n>"``), and every client lives in this process, so send and receive
times come from one clock.

``SioClient`` is a thin client of our own for the Socket.IO peer: Socket.IO v5 over
Engine.IO v4, WebSocket transport only, on the same ``websockets`` library as
``camclient``, so both systems are driven by the same code path and the same cost per
frame on the load generator's side.

``python -m bench.loadgen`` runs the self-check: the load generator against a bare
echo server, to show how many frames per second it can drive from one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from camclient import Client

from .common import LOAD_CPUS, SERVER_CPUS, CpuMeter, percentile, pin_tree, versions, write_report

OnEvent = Callable[[dict[str, Any]], None]


def prepare(pin: bool = True) -> None:
    """Raise the open-files limit to the hard limit (as root, the hard limit first, to
    room for 50,000 connections on each side) and pin this process to LOAD_CPUS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < 262_144:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, 262_144))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if pin:
        pin_tree(os.getpid(), LOAD_CPUS)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(main: Awaitable[Any]) -> Any:
    """Run ``main`` on uvloop when it is installed (as our services do), else asyncio.

    SIGTERM is turned into KeyboardInterrupt, so a stopped run still stops its servers.
    """
    prepare()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


# ------------------------------------------------------------------ our protocol


class Sink(asyncio.Queue):
    """An events "queue" that hands each frame to a callback instead of storing it."""

    def __init__(self, on_event: OnEvent | None = None) -> None:
        super().__init__()
        self.on_event = on_event or (lambda frame: None)

    async def put(self, item: dict[str, Any]) -> None:
        self.on_event(item)

    def put_nowait(self, item: dict[str, Any]) -> None:
        self.on_event(item)


def stamp(n: int) -> str:
    """A message body carrying its send time."""
    return f"{time.perf_counter():.6f} {n}"


def sent_at(body: str) -> float:
    return float(body.split(" ", 1)[0])


async def connect_many(urls: Iterable[str], tokens: Iterable[str], *, on_event: OnEvent | None = None,
                       on_events: list[OnEvent] | None = None, concurrency: int = 64,
                       sources: list[str] | None = None) -> list[Client]:
    """Open and authenticate one client per (url, token), ``concurrency`` at a time.

    Pushed frames go to ``on_event``, or to ``on_events[i]`` for the i-th client. With
    ``sources``, client i connects from address ``sources[i % len(sources)]``: one
    address has about 28,000 ephemeral ports towards one server port.
    """
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, url: str, token: str) -> Client:
        handler = on_events[i] if on_events is not None else on_event
        local = (sources[i % len(sources)], 0) if sources else None
        async with sem:
            for attempt in range(5):
                try:
                    return await Client.connect(url, token, events=Sink(handler), open_timeout=30,
                                                local_addr=local)
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

    pairs = list(zip(urls, tokens, strict=True))
    return list(await asyncio.gather(*(one(i, u, t) for i, (u, t) in enumerate(pairs))))


async def close_all(clients: Iterable[Any], concurrency: int = 200) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Any) -> None:
        async with sem:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)

    await asyncio.gather(*(one(c) for c in clients))


async def paced(rate: float, seconds: float, action: Callable[[int], Coroutine[Any, Any, Any]],
                *, settle: float = 5.0) -> tuple[int, int]:
    """Open loop: start ``action(i)`` at ``rate`` per second for ``seconds``, without
    waiting for earlier ones; then wait up to ``settle`` s for them. Returns (ok, failed)."""
    start = time.perf_counter()
    n = max(1, int(rate * seconds))
    tasks: list[asyncio.Task[Any]] = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(action(i)))
    done, pending = await asyncio.wait(tasks, timeout=settle)
    for t in pending:
        t.cancel()
    failed = len(pending) + sum(1 for t in done if t.cancelled() or t.exception() is not None)
    return n - failed, failed


# ------------------------------------------------------------------ Socket.IO peer


class SioClient:
    """A Socket.IO v5 client over Engine.IO v4, WebSocket transport only (our own code).

    Packets: ``0`` open, ``2``/``3`` ping/pong, ``4`` message; inside a message,
    ``0`` connect, ``2`` event, ``3`` ack. An event is ``42[name, data]``, with an ack
    id ``42<id>[...]``; its answer is ``43<id>[data]``.
    """

    def __init__(self, ws: ClientConnection, on_event: Callable[[str, Any], None] | None) -> None:
        self.ws = ws
        self.on_event = on_event or (lambda name, data: None)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, base: str, *, on_event: Callable[[str, Any], None] | None = None) -> SioClient:
        ws = await connect(f"{base}/socket.io/?EIO=4&transport=websocket", open_timeout=30,
                           max_size=2**24)
        opened = await asyncio.wait_for(ws.recv(), 10)
        if not str(opened).startswith("0"):
            raise ConnectionError(f"unexpected Engine.IO open packet {opened!r}")
        await ws.send("40")
        connected = await asyncio.wait_for(ws.recv(), 10)
        if not str(connected).startswith("40"):
            raise ConnectionError(f"unexpected Socket.IO connect packet {connected!r}")
        self = cls(ws, on_event)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                text = str(raw)
                if text == "2":
                    await self.ws.send("3")
                elif text.startswith("42"):
                    name, data = json.loads(text[2:])
                    self.on_event(name, data)
                elif text.startswith("43"):
                    cut = text.index("[")
                    fut = self._pending.pop(int(text[2:cut]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(json.loads(text[cut:])[0])
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    async def emit(self, name: str, data: Any, *, timeout: float = 15.0) -> Any:
        """Send an event and return the server's acknowledgement."""
        ack = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ack] = fut
        await self.ws.send(f"42{ack}" + json.dumps([name, data]))
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


async def sio_connect_many(bases: Iterable[str], *, on_event: Callable[[str, Any], None] | None = None,
                           concurrency: int = 64) -> list[SioClient]:
    sem = asyncio.Semaphore(concurrency)

    async def one(base: str) -> SioClient:
        async with sem:
            return await SioClient.connect(base, on_event=on_event)

    return list(await asyncio.gather(*(one(b) for b in bases)))


# ------------------------------------------------------------------ self-check


class EchoServer:
    """``python -m bench.echo`` in its own process, pinned to SERVER_CPUS."""

    def __init__(self, impl: str = "websockets") -> None:
        from camctl import rig

        self.impl = impl
        self.port = rig.free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> EchoServer:
        from camctl import rig

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.echo", "--port", str(self.port), "--impl", self.impl,
            stdin=asyncio.subprocess.DEVNULL)
        await asyncio.to_thread(rig.wait_for, lambda: rig.port_open(self.port), 15, "echo server")
        pin_tree(self.proc.pid, SERVER_CPUS)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)


async def echo_round_trips(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """Closed loop on ``connections`` clients through ``camclient.Client.request``.

    The frame sent is a ``result`` frame, which the echo server sends back verbatim and
    the client library takes as the answer to that request id.
    """
    clients = [await Client.open(url) for _ in range(connections)]
    count = 0
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop(c: Client) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await c.request("result", result={"pong": True})
            lat.append(time.perf_counter() - t)
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients))
    wall = time.perf_counter() - t0
    await close_all(clients)
    return {"round_trips_per_s": count / wall, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000}


async def self_check(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for impl in ("websockets", "picows"):
        async with EchoServer(impl) as echo:
            for n in args.connections:
                meter = CpuMeter({"load_generator": os.getpid(), "echo_server": echo.pid}).start()
                r = await echo_round_trips(echo.url, n, args.seconds)
                cpu = meter.stop()
                rows.append({"server": impl, "connections": n, **r,
                             "frames_per_s": 2 * r["round_trips_per_s"], "cpu": cpu})
    best = max(rows, key=lambda r: r["frames_per_s"])
    result = {"machine": versions(), "params": {"seconds": args.seconds, "connections": args.connections},
              "rows": rows, "capacity_frames_per_s": best["frames_per_s"]}
    lines = [
        "# Load generator self-check",
        "",
        "The load generator (one process, pinned to CPU "
        f"{sorted(LOAD_CPUS)}) drives a bare echo server (pinned to CPU {sorted(SERVER_CPUS)}) "
        "in a closed loop through `camclient.Client.request`. CPU is the share of one core.",
        "",
        "| echo server | connections | round trips/s | frames/s (in+out) | p50 ms | p99 ms | load generator CPU | echo server CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['server']} | {r['connections']} | {r['round_trips_per_s']:.0f} | "
                     f"{r['frames_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['cpu']['load_generator']:.2f} | {r['cpu']['echo_server']:.2f} |")
    lines += ["", f"Load generator capacity: about {best['frames_per_s']:.0f} frames/s from one core.", ""]
    md = "\n".join(lines)
    write_report("loadgen", result, md)
    print(md)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 50, 500])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections = 1.5, [1, 100]
    run(self_check(args))


if __name__ == "__main__":
    main()
