"""camcore.s3.S3Store against a real S3 server (``rclone serve s3``, camctl.rig.S3Server):
byte-identical round trips (one PUT, and multipart), ranges, missing keys, deletes, and
clear ``unavailable`` errors, in bounded time, for wrong keys, a missing bucket, and a
server that is stopped or frozen."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from camcore import errors
from camcore.s3 import S3Error, S3Store
from camcore.storage import CHUNK, RangeNotSatisfiable, StoredObject
from camctl import rig

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rig.S3Server]:
    # A real S3 server only: a missing rclone is a failure, never a skip.
    s3 = rig.S3Server(tmp_path_factory.mktemp("s3")).start()
    yield s3
    s3.stop()


def make_store(s3: rig.S3Server, *, bucket: str | None = None, access_key: str | None = None,
               secret_key: str | None = None, timeout: float = 5.0) -> S3Store:
    return S3Store(s3.endpoint, bucket or s3.bucket, "us-east-1", access_key or s3.access_key,
                   secret_key or s3.secret_key, timeout=timeout)


@pytest.fixture
async def store(server: rig.S3Server) -> AsyncIterator[S3Store]:
    s = make_store(server)
    yield s
    await s.close()


def new_key(suffix: str = "") -> str:
    return secrets.token_urlsafe(16) + suffix


def temp_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"upload-{secrets.token_hex(4)}"
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


async def read_all(obj: StoredObject) -> bytes:
    parts = [chunk async for chunk in obj.chunks]
    assert all(0 < len(p) <= CHUNK for p in parts)
    return b"".join(parts)


async def stored(store: S3Store, tmp_path: Path, data: bytes, suffix: str = "") -> str:
    key = new_key(suffix)
    await store.put(key, temp_file(tmp_path, data))
    return key


async def test_put_get_byte_identical(store: S3Store, server: rig.S3Server, tmp_path: Path) -> None:
    await store.check()
    data = os.urandom(3 * MiB + 12345)
    src = temp_file(tmp_path, data)
    key = new_key()
    assert not await store.exists(key)
    await store.put(key, src)
    assert not src.exists(), "put consumes its source file"
    assert await store.exists(key)
    # Where rclone keeps it: the object files/<key> of the bucket.
    assert (server.root / server.bucket / "files" / key).read_bytes() == data

    obj = await store.get(key)
    assert (obj.status, obj.length, obj.total, obj.content_range) == (200, len(data), len(data), None)
    assert await read_all(obj) == data

    # A variant of the same id (a thumbnail) is an object of its own.
    thumb = await stored(store, tmp_path, b"thumb bytes", ".webp")
    assert await read_all(await store.get(thumb)) == b"thumb bytes"


async def test_multipart_upload(store: S3Store, tmp_path: Path) -> None:
    data = os.urandom(19 * MiB + 7)  # over the 8 MiB threshold: three parts
    key = await stored(store, tmp_path, data)
    obj = await store.get(key)
    assert (obj.status, obj.length, obj.total) == (200, len(data), len(data))
    assert await read_all(obj) == data


async def test_empty_object(store: S3Store, tmp_path: Path) -> None:
    key = await stored(store, tmp_path, b"")
    obj = await store.get(key)
    assert (obj.status, obj.length, obj.total) == (200, 0, 0)
    assert await read_all(obj) == b""


async def test_ranges(store: S3Store, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    n = len(data)
    key = await stored(store, tmp_path, data)
    cases = {
        "bytes=100-199": (100, 199),
        "bytes=0-0": (0, 0),
        "bytes=-10": (n - 10, n - 1),
        f"bytes={n - 5}-": (n - 5, n - 1),
        "bytes=200000-": (200_000, n - 1),  # more than one chunk
        f"bytes=10-{n * 3}": (10, n - 1),  # past the end: cut to it
        f"bytes=-{n * 2}": (0, n - 1),
        " bytes=1-2 ": (1, 2),
    }
    for header, (first, last) in cases.items():
        obj = await store.get(key, header)
        assert obj.status == 206, header
        assert obj.content_range == f"bytes {first}-{last}/{n}", header
        assert (obj.length, obj.total) == (last - first + 1, n), header
        assert await read_all(obj) == data[first:last + 1], header

    # Several ranges, or one we do not understand: the whole object (RFC 9110 allows it).
    for header in ("bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=", "bytes=-", "garbage", ""):
        obj = await store.get(key, header)
        assert (obj.status, obj.length, obj.total, obj.content_range) == (200, n, n, None), header
        assert await read_all(obj) == data, header


async def test_unsatisfiable_range(store: S3Store, tmp_path: Path) -> None:
    data = os.urandom(1000)
    key = await stored(store, tmp_path, data)
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable) as caught:
            await store.get(key, header)
        assert caught.value.total == 1000, header
    # An unsatisfiable range of a missing object is still a missing object.
    with pytest.raises(KeyError):
        await store.get(new_key(), "bytes=1000-")


async def test_missing_key(store: S3Store) -> None:
    key = new_key()
    with pytest.raises(KeyError):
        await store.get(key)
    with pytest.raises(KeyError):
        await store.get(key, "bytes=0-10")
    assert not await store.exists(key)
    await store.delete(key)  # missing is fine


async def test_delete(store: S3Store, tmp_path: Path) -> None:
    key = await stored(store, tmp_path, b"to be deleted")
    other = await stored(store, tmp_path, b"stays")
    await store.delete(key)
    assert not await store.exists(key)
    with pytest.raises(KeyError):
        await store.get(key)
    await store.delete(key)  # twice is fine
    assert await read_all(await store.get(other)) == b"stays"
    await store.delete(other)
    # The last object gone, the bucket stays (rclone removes only emptied folders).
    await store.check()
    key = await stored(store, tmp_path, b"again")
    assert await read_all(await store.get(key)) == b"again"


async def test_put_replaces(store: S3Store, tmp_path: Path) -> None:
    key = await stored(store, tmp_path, b"first")
    await store.put(key, temp_file(tmp_path, b"second version"))
    assert await read_all(await store.get(key)) == b"second version"


async def test_bad_key_refused(store: S3Store, tmp_path: Path) -> None:
    src = temp_file(tmp_path, b"x")
    for key in ("../../etc/passwd", "a/b/c/d/e/f/g", "short", ""):
        with pytest.raises(ValueError):
            await store.put(key, src)
        with pytest.raises(ValueError):
            await store.get(key)
    assert src.exists()


def connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on loopback (the clients' ends)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rpartition(":")[2], 16) == port and fields[3] == "01":
            count += 1
    return count


async def wait_connections(port: int, at_most: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := connections_to(port)) > at_most:
        assert time.monotonic() < deadline, f"{n} connections to {port} still open"
        await asyncio.sleep(0.05)


async def test_abandoned_readers_release_their_connections(store: S3Store, server: rig.S3Server,
                                                          tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    key = await stored(store, tmp_path, data)
    for _ in range(10):  # a reader stopped after a chunk (a client went away), then dropped
        obj = await store.get(key)
        got = asyncio.Event()

        async def consume(o: StoredObject = obj, ev: asyncio.Event = got) -> None:
            async for _chunk in o.chunks:
                ev.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del obj, task, consume
    unread = [await store.get(key) for _ in range(5)]  # never read at all
    del unread
    gc.collect()
    await wait_connections(server.port, 1)  # at most one, idle in the pool
    assert await read_all(await store.get(key)) == data


async def test_reader_cancelled_in_a_read(tmp_path: Path) -> None:
    """Cancelled while its thread waits for the server: the body is closed once that read
    is over, not under it."""
    s3 = rig.S3Server(tmp_path, name="slow").start()
    s = make_store(s3, timeout=30.0)
    try:
        key = await stored(s, tmp_path, os.urandom(32 * MiB))
        obj = await s.get(key)
        assert s3.proc is not None
        s3.proc.signal(signal.SIGSTOP)
        last = time.monotonic()

        async def consume() -> None:
            nonlocal last
            async for _chunk in obj.chunks:
                last = time.monotonic()

        task = asyncio.create_task(consume())
        while True:  # until the socket's buffers are drained and a read waits
            await asyncio.sleep(0.1)
            if time.monotonic() - last > 0.5:
                break
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        before = connections_to(s3.port)  # the waiting read's, and the pool's idle ones
        await asyncio.sleep(0.3)
        assert connections_to(s3.port) == before, "closed under the read"
        s3.proc.signal(signal.SIGCONT)
        await wait_connections(s3.port, before - 1)
        with pytest.raises(StopAsyncIteration):
            await anext(obj.chunks)
    finally:
        if s3.proc is not None:
            s3.proc.signal(signal.SIGCONT)
        await s.close()
        s3.stop()


async def test_wrong_secret_key_is_a_clear_error(server: rig.S3Server, store: S3Store,
                                                 tmp_path: Path) -> None:
    key = await stored(store, tmp_path, b"secret data")
    bad = make_store(server, secret_key="not-the-secret-key")
    try:
        checks: list[Callable[[], Awaitable[object]]] = [
            bad.check, lambda: bad.get(key), lambda: bad.get(new_key()), lambda: bad.exists(key),
            lambda: bad.delete(key)]
        for call in checks:
            with pytest.raises(S3Error) as caught:
                await call()
            err = caught.value
            assert isinstance(err, errors.CamError) and err.code == errors.UNAVAILABLE
            assert errors.failure(err).http_status == 503
            assert server.access_key in err.message and server.endpoint in err.message
            assert "refused" in err.message
            assert "not-the-secret-key" not in err.message and server.secret_key not in err.message
        src = temp_file(tmp_path, b"upload")
        with pytest.raises(S3Error, match="refused"):
            await bad.put(new_key(), src)
        assert src.exists(), "a failed put leaves its source for the caller"
    finally:
        await bad.close()
    assert await read_all(await store.get(key)) == b"secret data"  # not deleted

    wrong_user = make_store(server, access_key="nobody")
    try:
        with pytest.raises(S3Error, match="nobody"):
            await wrong_user.check()
    finally:
        await wrong_user.close()


async def test_missing_bucket_is_a_clear_error(server: rig.S3Server, tmp_path: Path) -> None:
    missing = make_store(server, bucket="no-such-bucket")
    try:
        with pytest.raises(S3Error) as caught:
            await missing.check()
        assert caught.value.code == errors.UNAVAILABLE
        assert "'no-such-bucket'" in caught.value.message and server.endpoint in caught.value.message
        assert "does not exist" in caught.value.message
        # Not "no such file": a missing bucket is a broken setup, not a missing object.
        with pytest.raises(S3Error, match="no-such-bucket"):
            await missing.get(new_key())
        with pytest.raises(S3Error, match="no-such-bucket"):
            await missing.put(new_key(), temp_file(tmp_path, b"x"))
    finally:
        await missing.close()


async def timed_failures(s: S3Store, key: str, tmp_path: Path, limit: float,
                         only: tuple[str, ...] = ()) -> list[str]:
    """Every operation (or those ``only`` names) fails with S3Error, each within ``limit``
    seconds."""
    messages = []
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "check": s.check, "get": lambda: s.get(key), "range": lambda: s.get(key, "bytes=0-9"),
        "exists": lambda: s.exists(key), "delete": lambda: s.delete(key),
        "put": lambda: s.put(new_key(), temp_file(tmp_path, b"x" * 1000))}
    for what, call in calls.items():
        if only and what not in only:
            continue
        started = time.monotonic()
        with pytest.raises(S3Error) as caught:
            await asyncio.wait_for(call(), limit + 5)  # a hang fails here, not at the timeout
        took = time.monotonic() - started
        assert took < limit, f"{what} took {took:.1f}s"
        assert caught.value.code == errors.UNAVAILABLE
        messages.append(caught.value.message)
    return messages


async def test_stopped_server_is_a_clear_error_in_bounded_time(tmp_path: Path) -> None:
    s3 = rig.S3Server(tmp_path, name="stopped").start()
    s = make_store(s3)
    try:
        key = await stored(s, tmp_path, os.urandom(1000))
        s3.stop()
        for message in await timed_failures(s, key, tmp_path, limit=5.0):
            assert "cannot reach" in message and s3.endpoint in message
    finally:
        await s.close()
        s3.stop()


async def test_frozen_server_times_out(tmp_path: Path) -> None:
    """A server that accepts connections but never answers (SIGSTOP): the read timeout."""
    s3 = rig.S3Server(tmp_path, name="frozen").start()
    s = make_store(s3, timeout=1.0)
    try:
        key = await stored(s, tmp_path, os.urandom(1000))
        assert s3.proc is not None
        s3.proc.signal(signal.SIGSTOP)
        # two attempts of a 1 s timeout, with a backoff between them
        for message in await timed_failures(s, key, tmp_path, limit=6.0,
                                            only=("check", "get", "put")):
            assert "no answer in time" in message and s3.endpoint in message
    finally:
        if s3.proc is not None:
            s3.proc.signal(signal.SIGCONT)
        await s.close()
        s3.stop()


async def test_server_lost_mid_download(tmp_path: Path) -> None:
    s3 = rig.S3Server(tmp_path, name="lost").start()
    s = make_store(s3, timeout=2.0)
    try:
        key = await stored(s, tmp_path, os.urandom(32 * MiB))
        obj = await s.get(key)
        first = await anext(obj.chunks)
        assert len(first) == CHUNK
        s3.kill()
        started = time.monotonic()
        with pytest.raises(S3Error) as caught:
            async for _chunk in obj.chunks:
                pass
        assert time.monotonic() - started < 10
        assert caught.value.code == errors.UNAVAILABLE and s3.endpoint in caught.value.message
    finally:
        await s.close()
        s3.stop()
