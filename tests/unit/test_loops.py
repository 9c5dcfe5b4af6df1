"""Background loops never die silently (``camcore.loops``).

A loop whose body raises is logged with its traceback and restarted after a growing
delay; a fatal one stops its replica (and so the process, with a non-zero exit). The
video allocator's round goes on when a Janus server refuses during reconciliation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cam_video_allocator.janus import JanusError
from cam_video_allocator.service import VideoAllocator

from camcore import loops, service, subjects
from camcore.config import load_settings
from camcore.loops import Backoff, LoopFailed, Loops, every
from camcore.service import Loop, ReplicaBase

FAST = Backoff(first=0.01, maximum=0.05)
HEARTBEATS = subjects.heartbeat("test", "instance").removesuffix("instance")


def crash_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"{name} crashed")]


async def test_a_loop_whose_body_raises_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    recovered = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"crash number {runs}")
        recovered.set()
        await asyncio.Event().wait()  # then it runs for good

    async with Loops() as group:
        group.start("flaky loop", body, backoff=FAST)
        await asyncio.wait_for(recovered.wait(), 5)
        assert group.names == ["flaky loop"]
    crashes = crash_records(caplog, "flaky loop")
    assert len(crashes) == 2
    assert all(r.levelno == logging.ERROR and r.exc_info for r in crashes)
    assert "crash number 1" in str(crashes[0].exc_info[1])  # type: ignore[index]
    assert "restarting it in" in crashes[0].getMessage()


async def test_a_round_that_raises_does_not_end_the_rounds_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = itertools.count(1)
    later = asyncio.Event()

    async def round_() -> None:
        n = next(rounds)
        if n == 2:
            raise KeyError("heads")
        if n == 5:
            later.set()

    async with Loops() as group:
        group.start("repair check", every(0.01, round_), backoff=FAST)
        await asyncio.wait_for(later.wait(), 5)
    assert len(crash_records(caplog, "repair check")) == 1


def test_restart_delays_double_up_to_the_maximum() -> None:
    delays = Backoff(first=0.5, maximum=4.0).delays()
    assert list(itertools.islice(delays, 6)) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_a_loop_that_returns_is_done_and_not_restarted() -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1

    async with Loops() as group:
        task = group.start("one-shot", body, backoff=FAST)
        await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.05)
    assert runs == 1


async def test_a_fatal_loop_that_crashes_ends_run_until_with_loop_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def vital() -> None:
        raise RuntimeError("the store is gone")

    async with Loops() as group:
        group.start("vital loop", vital, fatal=True)
        with pytest.raises(LoopFailed, match="vital loop") as failed:
            await asyncio.wait_for(group.run_until(asyncio.Event().wait()), 5)
    assert isinstance(failed.value.cause, RuntimeError)
    (record,) = crash_records(caplog, "vital loop")
    assert record.levelno == logging.CRITICAL and record.exc_info


# ------------------------------------------------------------ a replica's lifespan


class FakeSub:
    async def unsubscribe(self) -> None:
        pass


class FakeNats:
    is_connected = True
    connected_url = None

    def __init__(self) -> None:
        self.published: list[str] = []

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> FakeSub:
        return FakeSub()

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append(subject)

    async def drain(self) -> None:
        pass


class FakePool:
    closed = False

    async def close(self) -> None:
        self.closed = True


class Replica(ReplicaBase):
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.closed = False

    def handlers(self) -> dict[str, tuple[type[Any], Any]]:
        return {}

    def background(self) -> list[Loop]:
        return [self.loop]

    async def close(self) -> None:
        self.closed = True


@asynccontextmanager
async def fake_backends(monkeypatch: pytest.MonkeyPatch, stop: asyncio.Event
                        ) -> AsyncIterator[tuple[FakePool, FakeNats]]:
    pool, nc = FakePool(), FakeNats()

    async def create_pool(dsn: str, **kw: Any) -> FakePool:
        return pool

    async def connect(urls: Any, name: str, **kw: Any) -> FakeNats:
        return nc

    monkeypatch.setattr(service.db, "create_pool", create_pool)
    monkeypatch.setattr(service.bus, "connect", connect)
    monkeypatch.setattr(service, "wait_for_stop_signal", stop.wait)
    yield pool, nc


SETTINGS = load_settings(None, environ={}, overrides={"cam.databaseUrl": "postgres://db/cam",
                                                      "cam.heartbeatInterval": "0.5",
                                                      "cam.nodeTimeout": "2"})


async def test_a_fatal_loop_that_crashes_stops_its_replica_and_releases_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def vital() -> None:
        raise RuntimeError("cannot go on")

    replica = Replica(Loop("vital", vital, fatal=True))
    async with fake_backends(monkeypatch, asyncio.Event()) as (pool, _nc):
        with pytest.raises(LoopFailed, match="test vital"):
            await asyncio.wait_for(service.serve_replica(
                SETTINGS, "test", "cam.test.rpc", "test", lambda p, n: replica), 5)
    assert replica.closed and pool.closed


async def test_a_replica_loop_that_crashes_is_restarted_while_the_replica_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    stop = asyncio.Event()

    async def sweeper() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first sweep failed")
        stop.set()

    replica = Replica(Loop("sweeper", sweeper))
    monkeypatch.setattr(service, "Loops", _fast_loops())
    async with fake_backends(monkeypatch, stop) as (pool, nc):
        await asyncio.wait_for(service.serve_replica(
            SETTINGS, "test", "cam.test.rpc", "test", lambda p, n: replica), 5)
    assert runs == 2 and replica.closed and pool.closed
    assert len(crash_records(caplog, "test sweeper")) == 1
    assert nc.published and all(s.startswith(HEARTBEATS) for s in nc.published)


def _fast_loops() -> type[Loops]:
    class FastLoops(Loops):
        def start(self, name: str, body: loops.Body, *, fatal: bool = False,
                  backoff: Backoff = FAST) -> asyncio.Task[None]:
            return super().start(name, body, fatal=fatal, backoff=FAST)

    return FastLoops


def test_a_process_whose_fatal_loop_crashes_exits_non_zero_and_says_why() -> None:
    script = textwrap.dedent("""
        import asyncio, logging
        from camcore.loops import Loops

        async def vital():
            raise RuntimeError("the store is gone")

        async def main():
            async with Loops() as group:
                group.start("vital loop", vital, fatal=True)
                await group.run_until(asyncio.Event().wait())

        logging.basicConfig()
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "vital loop crashed; stopping the process" in done.stderr
    assert "RuntimeError: the store is gone" in done.stderr


# ------------------------------------------------------------ the video allocator's round


class VideoConn:
    def __init__(self, pool: VideoPool) -> None:
        self.pool = pool

    def transaction(self) -> VideoConn:
        return self

    async def __aenter__(self) -> VideoConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return None  # no conference on an unhealthy server: nothing to move

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.pool.stale_checks += 1
        return []  # no stale participant

    async def execute(self, query: str, *args: Any) -> str:
        return "SELECT 0"


class VideoPool:
    """The allocator's store: one live conference on each of v1 and v2."""

    def __init__(self) -> None:
        self.probes = 0
        self.counted: list[int] = []
        self.stale_checks = 0

    def acquire(self) -> VideoConn:
        return VideoConn(self)

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        if "GROUP BY s.name" in query or "GROUP BY server" in query:
            return []  # the round's gauges (servers' loads, conferences per server)
        assert "FROM conferences c" in query
        return [{"id": 1, "server": "v1", "janus_room": 11, "pin": "p1", "room_id": 5},
                {"id": 2, "server": "v2", "janus_room": 22, "pin": "p2", "room_id": 6}]

    async def execute(self, query: str, *args: Any) -> str:
        if "sfu_participants" in query:
            self.counted.append(args[0])
        elif "healthy = true" in query:
            self.probes += 1
        return "UPDATE 1"

    async def fetchval(self, query: str, *args: Any) -> Any:
        return None


class RestartedJanus:
    """A Janus that lost its rooms and refuses to create them again."""

    def __init__(self) -> None:
        self.creates = 0

    async def rooms(self) -> dict[int, dict[str, Any]]:
        return {}

    async def create_room(self, room: int, pin: str, description: str) -> None:
        self.creates += 1
        raise JanusError("http://v1:8088/janus: videoroom error 436: room creation refused")


class HealthyJanus:
    async def rooms(self) -> dict[int, dict[str, Any]]:
        return {22: {"room": 22, "num_participants": 2, "description": "cam-conference room 6"}}


async def test_the_video_round_goes_on_when_janus_refuses_during_reconciliation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(None, environ={}, overrides={
        "cam.videoDomains": "v1=3;v2=3", "cam.videoProbeInterval": "0.1"})
    pool = VideoPool()
    allocator = VideoAllocator(pool, None, settings)  # type: ignore[arg-type]
    await allocator.close()  # its real Janus clients are replaced by these:
    v1 = RestartedJanus()
    allocator.janus = {"v1": v1, "v2": HealthyJanus()}  # type: ignore[dict-item]
    (loop,) = allocator.background()
    async with Loops() as group:
        group.start(loop.name, loop.body, fatal=loop.fatal)
        for _ in range(100):
            if pool.probes >= 2 * 4 and v1.creates >= 4:
                break
            await asyncio.sleep(0.05)
    # Round after round: both servers probed, v1's room retried, v2 still reconciled,
    # stale participants still checked; nothing crashed.
    assert v1.creates >= 4 and pool.probes >= 8
    assert pool.counted.count(2) >= 4 and pool.stale_checks >= 4
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    refused = [r for r in caplog.records if "reconciling v1 failed" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING for r in refused)
