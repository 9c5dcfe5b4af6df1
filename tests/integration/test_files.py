"""Attachments on a real two-node cluster, in each storage mode: upload on one node,
download on the other, byte for byte; what non-members, hostile names, oversized
bodies, decompression bombs, disguised images and a killed edge get.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import secrets
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image, ImageDraw

from camclient import Client
from camclient.client import login
from camctl import rig
from tests.conftest import Cluster
from tests.integration.lb_fixtures import start_lb_cluster
from tests.waiting import eventually

SECRET = "s" * 40


def png(width: int = 400, height: int = 300) -> bytes:
    im = Image.new("RGB", (width, height), (20, 120, 200))
    ImageDraw.Draw(im).ellipse((20, 20, width - 20, height - 20), fill=(250, 200, 0))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's
    shape: a few KiB that would decode to gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # 64 rows of zeros, then cut off
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(name: bytes, data: bytes, ctype: bytes = b"application/octet-stream") -> tuple[
        bytes, str]:
    boundary = secrets.token_hex(12)
    head = (f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
            + b"Content-Type: " + ctype + b"\r\n\r\n")
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Node:
    """One user's REST view of one node."""

    def __init__(self, cluster: Cluster, node: str, token: str) -> None:
        self.base = cluster.http(node)
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", **extra}

    async def upload(self, room: int, name: str | bytes, data: bytes,
                     ctype: bytes = b"application/octet-stream", **params: str) -> httpx.Response:
        raw = name.encode() if isinstance(name, str) else name
        body, content_type = multipart(raw, data, ctype)
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as http:
            return await http.post(f"/api/rooms/{room}/files", content=body, params=params,
                                   headers=self.headers(**{"content-type": content_type}))

    async def get(self, path: str, **headers: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as http:
            return await http.get(path, headers=self.headers(**headers))


async def people(cluster: Cluster, make_user: Any) -> tuple[Client, Node, Client, Node, Node, int]:
    """alice on camserver1 and bob on camserver2 in one room; carol outside it."""
    alice_u, bob_u, carol_u = [await make_user() for _ in range(3)]
    alice = await cluster.connect("camserver1", alice_u)
    bob = await cluster.connect("camserver2", bob_u)
    room = await alice.request("create_room", name="files", members=[bob_u[0]])
    await bob.next_event("room_added", where=lambda e: e["room"]["id"] == room["id"])
    nodes = [Node(cluster, n, await login(cluster.http(n), *u))
             for n, u in (("camserver1", alice_u), ("camserver2", bob_u), ("camserver2", carol_u))]
    return alice, nodes[0], bob, nodes[1], nodes[2], int(room["id"])


def start(cluster: Cluster, mode: str, tmp: Path, s3: rig.S3Server | None = None,
          **env: str) -> Cluster:
    common = {"CAM_STORAGE": mode, **env}
    if s3 is not None:
        common.update({"CAM_S3_ENDPOINT": s3.endpoint, "CAM_S3_BUCKET": s3.bucket,
                       "CAM_S3_ACCESS_KEY": s3.access_key, "CAM_S3_SECRET_KEY": s3.secret_key})
    cluster.extra_env.update(common)
    cluster.start_chat()
    cluster.start_presence()
    cluster.start_files()
    if mode == "local":
        ports = {"camserver1": free_port(), "camserver2": free_port()}
        for i, (name, port) in enumerate(ports.items()):
            others = [f"127.0.0.1:{p}" for n, p in ports.items() if n != name]
            cluster.start_edge(name, nats=i, port=port,
                               CAM_SERVER_DATE_PATH=str(tmp / f"disk-{name}"),
                               CAM_CLUSTER_HOSTS=";".join([f"127.0.0.1:{port}", *others]),
                               CAM_CLUSTER_SECRET=SECRET)
    else:
        cluster.start_edge("camserver1", nats=0)
        cluster.start_edge("camserver2", nats=1)
    cluster.wait_edges()
    return cluster


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[rig.S3Server]:
    server = rig.S3Server(tmp_path / "s3").start()
    yield server
    server.stop()


def visible_files(root: Path) -> list[Path]:
    """Files a download could ever be served from (everything but unfinished uploads)."""
    files_root = root / "files"
    if not files_root.exists():
        return []
    return [p for p in files_root.rglob("*") if p.is_file() and ".tmp" not in p.parts]


def named(root: Path, name: str) -> list[Path]:
    """Every file called ``name`` under ``root``."""
    return list(root.rglob(name))


def unfinished(root: Path) -> list[Path]:
    tmp = root / "files" / ".tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


@pytest.mark.parametrize("mode", ["shared", "local", "s3"])
async def test_upload_on_one_node_download_on_the_other(
    mode: str, cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool,
    request: pytest.FixtureRequest,
) -> None:
    s3 = request.getfixturevalue("s3_server") if mode == "s3" else None
    cluster = start(cluster_factory(2), mode, tmp_path, s3)
    alice, up, bob, down, _, room = await people(cluster, make_user)
    image = png()
    blob = os.urandom(3 * 1024 * 1024 + 17)

    sent = await up.upload(room, "holiday.png", image, b"image/png", cid="pic-1")
    assert sent.status_code == 201, sent.text
    info = sent.json()["file"]
    assert (info["name"], info["size"], info["type"]) == ("holiday.png", len(image), "image/png")
    assert (info["width"], info["height"]) == (400, 300)
    assert sent.json()["message"]["cid"] == "pic-1"
    # Delivered on the other node like any message, with its seq.
    event = await bob.next_event("message", where=lambda e: e.get("kind") == "file")
    assert event["seq"] == sent.json()["message"]["seq"] and event["file"] == info
    # A retry with the same cid (its answer lost) is the same message, sent once.
    again = await up.upload(room, "holiday.png", image, b"image/png", cid="pic-1")
    assert again.status_code == 201 and again.json()["message"] == sent.json()["message"]
    assert again.json()["file"] == info
    other = (await up.upload(room, "data.bin", blob)).json()["file"]
    assert other["type"] == "application/octet-stream" and other.get("width") is None

    got = await down.get(f"/api/files/{info['id']}")
    assert got.status_code == 200 and got.content == image
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"].startswith("inline;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]
    thumb = await down.get(f"/api/files/{info['id']}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumb.content)).size == (320, 240)
    preview = await down.get(f"/api/files/{info['id']}/preview")
    assert Image.open(io.BytesIO(preview.content)).size == (400, 300)
    whole = await down.get(f"/api/files/{other['id']}")
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(blob).digest()
    assert whole.headers["content-disposition"].startswith("attachment;")
    part = await down.get(f"/api/files/{other['id']}", range="bytes=1000-1999")
    assert part.status_code == 206 and part.content == blob[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(blob)}"
    tail = await down.get(f"/api/files/{other['id']}", range="bytes=-10")
    assert tail.status_code == 206 and tail.content == blob[-10:]
    past = await down.get(f"/api/files/{other['id']}", range=f"bytes={len(blob)}-")
    assert past.status_code == 416
    # History carries the attachment too (resume and history are the same messages).
    page = await bob.request("history", room=room)
    assert [m["file"]["id"] for m in page["messages"] if m["kind"] == "file"] == [
        info["id"], other["id"]]
    nxt = await bob.next_event("message", where=lambda e: e.get("kind") == "file")
    assert nxt["file"]["id"] == other["id"]  # the retry was not delivered again

    if s3 is not None:
        stored = sorted(p.name for p in (s3.root / s3.bucket).rglob("*") if p.is_file())
        assert info["id"] in stored and f"{info['id']}.thumb" in stored
        assert visible_files(tmp_path / "data") == []
    if mode == "local":
        # Each node holds what it took; camserver2 fetched and verified its copies.
        assert (tmp_path / "disk-camserver2" / "files" / other["id"][:2] / other["id"]).exists()
        late = (await up.upload(room, "late.bin", os.urandom(50_000))).json()["file"]
        cluster.procs["camserver1"].kill()  # the holder of "late.bin" is gone
        started = asyncio.get_running_loop().time()
        gone = await down.get(f"/api/files/{late['id']}")
        assert gone.status_code == 503, gone.text
        assert "cannot be reached" in gone.json()["error"]["message"]
        assert asyncio.get_running_loop().time() - started < 20  # an answer, not a hang
        assert not (tmp_path / "disk-camserver2" / "files" / late["id"][:2] / late["id"]).exists()
        again = await down.get(f"/api/files/{other['id']}")  # already copied: still served
        assert again.status_code == 200 and again.content == blob
    await alice.close()
    await bob.close()


async def test_a_non_member_gets_nothing_and_learns_nothing(
    cluster_factory: Any, make_user: Any, tmp_path: Path
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path)
    alice, up, bob, _, carol, room = await people(cluster, make_user)
    info = (await up.upload(room, "secret.txt", b"the plan")).json()["file"]
    unknown = "A" * 22
    answers = []
    for path in (f"/api/files/{info['id']}", f"/api/files/{unknown}",
                 f"/api/files/{info['id']}/thumb"):
        r = await carol.get(path)
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 404 and answers[0][1]["error"]["code"] == "not_found"
    refused = await carol.upload(room, "x.txt", b"hello")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_a_member"
    anonymous = await Node(cluster, "camserver2", "nope").get(f"/api/files/{info['id']}")
    assert anonymous.status_code == 401
    await alice.close()
    await bob.close()


async def test_hostile_names_are_metadata_only(
    cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path)
    alice, up, bob, down, _, room = await people(cluster, make_user)
    names = {b"../../../etc/passwd": "passwd", b"/etc/shadow": "shadow",
             b"..\\..\\boot.ini": "boot.ini", b"a\x00b.txt": "ab.txt",
             b"\r\nx-evil: 1.txt": None, ("n" * 10_000 + ".txt").encode(): "n" * 251 + ".txt",
             b"..": "file"}
    for raw, expected in names.items():
        r = await up.upload(room, raw, b"content of " + raw[:20])
        if expected is None:  # a line break inside the part's headers: refused or cleaned
            assert r.status_code in (400, 201), r.text
            if r.status_code == 201:
                assert not any(ch in r.json()["file"]["name"] for ch in "\r\n\x00")
            continue
        assert r.status_code == 201, (raw[:40], r.text)
        info = r.json()["file"]
        assert info["name"] == expected
        got = await down.get(f"/api/files/{info['id']}")
        assert got.status_code == 200
        disposition = got.headers["content-disposition"]
        assert "\r" not in disposition and "\n" not in disposition and "/" not in disposition
    data = tmp_path / "data"
    stored = visible_files(data)
    assert stored and all(p.parent.parent == data / "files" and len(p.name.split(".")[0]) == 22
                          for p in stored)
    assert not named(tmp_path, "passwd") and not named(tmp_path, "shadow")
    await alice.close()
    await bob.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """An HTTP answer read until its body is complete or the connection ends (a reset
    may cut it anywhere)."""
    answer = b""
    try:
        while True:
            piece = await reader.read(65536)
            if not piece:
                return answer
            answer += piece
            head, found, body = answer.partition(b"\r\n\r\n")
            if found:
                lengths = [line.split(b":", 1)[1] for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0]):
                    return answer
    except ConnectionError:
        return answer


async def send_slowly(base: str, token: str, room: int, head: bytes, body: Any,
                      content_type: str, *, ssl: Any = None,
                      length: int | None = None) -> tuple[int, bytes]:
    """An upload written piece by piece from ``body`` (chunked, or with a declared
    ``length``) while the answer is read; the status and what came, or (0, b"") when
    the server closed without answering."""
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ssl)
    framing = (f"Content-Length: {length}" if length is not None
               else "Transfer-Encoding: chunked")
    writer.write((f"POST /api/rooms/{room}/files HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
                  f"{framing}\r\n\r\n").encode())
    answering = asyncio.ensure_future(read_answer(reader))  # read while still sending
    try:
        for piece in itertools.chain((head,), body):
            if answering.done():
                break
            writer.write(piece if length is not None
                         else f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.001)
        else:
            if length is None:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    answer = await asyncio.wait_for(answering, 20)
    writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1") else 0
    return status, answer


async def test_an_oversized_upload_is_refused_while_streaming(
    cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path, CAM_MAX_UPLOAD_BYTES="1048576")
    alice, up, bob, _, _, room = await people(cluster, make_user)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            "filename=\"big.bin\"\r\n\r\n").encode()
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(320):  # 20 MiB if it were all read
            sent += 1
            yield os.urandom(64 * 1024)

    status, answer = await send_slowly(up.base, up.token, room, head, pieces(),
                                       f"multipart/form-data; boundary={boundary}")
    # The edge answers 413 and closes without reading the rest. The answer usually
    # arrives whole; a client still sending may instead see the close reset the
    # connection and lose all or part of it (TCP discards what is unread when unread
    # data meets the close).
    whole = b"file_too_large" in answer
    assert (status == 413 and (whole or b"\r\n\r\n" in answer)) or status == 0, answer[:300]
    assert whole or status == 0 or b"application/json" in answer
    assert sent < 320  # refused while streaming, long before the end
    # A declared length over the limit is refused before a byte of the body is read.
    declared = await up.upload(room, "big.bin", os.urandom(2 * 1024 * 1024))
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "file_too_large"
    assert visible_files(tmp_path / "data") == [] and unfinished(tmp_path / "data") == []
    assert await pool.fetchval("SELECT count(*) FROM files") == 0
    fits = await up.upload(room, "fits.bin", os.urandom(1024 * 1024))
    assert fits.status_code == 201
    await alice.close()
    await bob.close()


async def test_bombs_and_disguised_images_are_refused(
    cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path)
    alice, up, bob, _, _, room = await people(cluster, make_user)
    cases = {
        "bomb.png": png_claiming(60_000, 60_000),  # 3.6 gigapixels in a few KiB
        "wide.png": png_claiming(100_000, 300),    # 30 MP: over cam.imageMaxPixels
        "cat.png": b"<html><script>alert(1)</script></html>",  # not an image at all
        "broken.png": b"\x89PNG\r\n\x1a\n" + os.urandom(4096),  # PNG magic, then garbage
    }
    for name, data in cases.items():
        r = await up.upload(room, name, data, b"image/png")
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["code"] == "bad_image"
    # The same bytes under a neutral name and type are not images either: refused as
    # an image only if they look like one.
    plain = await up.upload(room, "page.html", cases["cat.png"], b"text/html")
    assert plain.status_code == 201 and plain.json()["file"]["type"] == "text/html"
    served = await up.get(f"/api/files/{plain.json()['file']['id']}")
    assert served.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in served.headers["content-security-policy"]
    assert served.headers["x-content-type-options"] == "nosniff"
    assert len(visible_files(tmp_path / "data")) == 1
    assert await pool.fetchval("SELECT count(*) FROM files") == 1
    # The edge is still well and still makes thumbnails.
    ok = await up.upload(room, "fine.png", png(64, 64), b"image/png")
    assert ok.status_code == 201 and ok.json()["file"]["width"] == 64
    await alice.close()
    await bob.close()


async def test_kill_9_mid_upload_leaves_no_half_file_and_the_upload_can_be_retried(
    cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path)
    alice, up, bob, down, _, room = await people(cluster, make_user)
    data = os.urandom(4 * 1024 * 1024)
    boundary = "k1ll"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            "filename=\"report.pdf\"\r\n\r\n").encode()
    root = tmp_path / "data"
    host, port = up.base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /api/rooms/{room}/files HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {up.token}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n").encode())
    half = head + data[: len(data) // 2]
    writer.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
    await writer.drain()
    await eventually(lambda: any(p.stat().st_size > 1024 * 1024 for p in unfinished(root)),
                     20, "half the upload on disk")
    assert await pool.fetchval("SELECT state FROM files") == "pending"
    cluster.procs["camserver1"].kill()  # kill -9 mid-upload
    writer.close()
    assert visible_files(root) == []
    assert await pool.fetchval("SELECT count(*) FROM files WHERE state = 'ready'") == 0
    page = await bob.request("history", room=room)
    assert all(m["kind"] != "file" for m in page["messages"])

    cluster.start_edge("camserver1", nats=0)
    cluster.wait_edges("camserver1")
    await eventually(lambda: unfinished(root) == [], 20, "the half file cleared on start")

    async def no_rows() -> bool:
        return await pool.fetchval("SELECT count(*) FROM files") == 0

    await eventually(no_rows, 20, "the dead upload's row aborted")
    retried = await up.upload(room, "report.pdf", data, cid="report-1")
    assert retried.status_code == 201, retried.text
    got = await down.get(f"/api/files/{retried.json()['file']['id']}")
    assert got.content == data
    assert len(visible_files(root)) == 1
    await alice.close()
    await bob.close()


async def test_the_load_balancers_refuse_an_oversized_upload_too(
    cluster_factory: Any, make_user: Any, tmp_path: Path
) -> None:
    """HAProxy and Caddy as shipped refuse a body over 100 MiB (cam.maxUploadBytes'
    default) even when the edges behind them would take it, and never pass on the
    node-to-node file route."""
    made = start_lb_cluster(cluster_factory, tmp_path / "lb",
                            edge_env={"CAM_MAX_UPLOAD_BYTES": str(1 << 30)})
    try:
        cluster = made.cluster
        user = await make_user()
        alice = await cluster.connect("camserver1", user)
        room = int((await alice.request("create_room", name="big"))["id"])
        boundary = "lbl1m1t"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                "filename=\"big.bin\"\r\n\r\n").encode()
        mib = os.urandom(1 << 20)
        size = 101 << 20
        for kind, balancer in made.balancers.items():
            token = await login(balancer.url, *user, verify=balancer.ssl_context())
            small = multipart(b"small.bin", b"fits")
            async with httpx.AsyncClient(base_url=balancer.url, timeout=30,
                                         verify=balancer.ssl_context()) as http:
                ok = await http.post(f"/api/rooms/{room}/files", content=small[0],
                                     headers={"authorization": f"Bearer {token}",
                                              "content-type": small[1]})
                assert ok.status_code == 201, (kind, ok.text)
                peer = await http.get(f"/CAMServer/files/{ok.json()['file']['id']}")
                assert peer.status_code == 404, kind
            for length in (size + len(head), None):  # declared, then chunked
                if kind == "haproxy" and length is None:
                    continue  # HAProxy bounds declared lengths; the edge bounds the rest
                status, answer = await send_slowly(
                    balancer.url, token, room, head, itertools.repeat(mib, 101),
                    f"multipart/form-data; boundary={boundary}",
                    ssl=balancer.ssl_context(), length=length)
                assert status == 413, (kind, length, answer[:300])
        await alice.close()
    finally:
        made.stop()


async def test_quotas_hold_in_bytes_and_in_counts_for_each_user(
    cluster_factory: Any, make_user: Any, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    cluster = start(cluster_factory(2), "shared", tmp_path,
                    CAM_USER_UPLOAD_BYTES_PER_HOUR="300000", CAM_USER_UPLOADS_PER_HOUR="3",
                    CAM_USER_STORAGE_BYTES="1000000")
    alice, up, bob, down, _, room = await people(cluster, make_user)
    assert (await up.upload(room, "a.bin", os.urandom(200_000))).status_code == 201
    # 100,000 bytes of the hour's 300,000 are left: the next 200,000 stop while streaming.
    over = await up.upload(room, "b.bin", os.urandom(200_000))
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert "quota" in over.json()["error"]["message"]
    assert (await up.upload(room, "c.bin", os.urandom(90_000))).status_code == 201
    # Another user's quota is their own.
    assert (await down.upload(room, "d.bin", os.urandom(200_000))).status_code == 201
    # Three uploads an hour: alice's third gets through, her fourth is refused by count.
    assert (await up.upload(room, "e.bin", b"tiny")).status_code == 201
    fourth = await up.upload(room, "f.bin", b"tiny")
    assert fourth.status_code == 429 and "retry in" in fourth.json()["error"]["message"]
    used = await pool.fetchrow(
        "SELECT count(*) AS n, sum(size) AS bytes FROM files WHERE uploader_id = $1",
        alice.user["id"])
    assert (used["n"], used["bytes"]) == (3, 290_004)
    await alice.close()
    await bob.close()


async def test_the_sweep_removes_unfinished_and_unsent_uploads_and_their_bytes(
    pool: asyncpg.Pool, make_user: Any, tmp_path: Path
) -> None:
    from cam_files.service import PENDING_TTL, UNSENT_TTL, FilesService

    from camcore import files, storage
    from camcore.config import load_settings

    name, _ = await make_user()
    uid = await pool.fetchval("SELECT id FROM users WHERE username = $1", name)
    room = await pool.fetchval(
        "INSERT INTO rooms (kind, name, created_by) VALUES ('group', 'r', $1) RETURNING id", uid)
    await pool.execute("INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)", room, uid)
    store = storage.LocalStore(tmp_path)
    ids = {kind: files.new_id() for kind in ("dead", "unsent", "sent", "fresh", "deleted")}
    for kind, file_id in ids.items():
        for key in (file_id, f"{file_id}.thumb"):
            src = tmp_path / "src"
            src.write_bytes(kind.encode())
            await store.put(key, src)
        age = PENDING_TTL + 60 if kind == "dead" else UNSENT_TTL + 60 if kind != "fresh" else 10
        await pool.execute(
            "INSERT INTO files (id, room_id, uploader_id, name, state, reserved, size, sha256,"
            " content_type, variants, storage, edge_node, created_at, committed_at)"
            " VALUES ($1, $2, $3, 'x', $4, 0, 1, $5, 'text/plain', '{thumb}', 'shared', 'n1',"
            " now() - make_interval(secs => $6), now() - make_interval(secs => $6))",
            file_id, room, uid, "pending" if kind == "dead" else "ready", bytes(32), age)
    for seq, kind in enumerate(("sent", "deleted"), start=1):
        await pool.execute(
            "INSERT INTO messages (room_id, seq, cid, sender_id, kind, body, file_id)"
            " VALUES ($1, $2, $3, $4, $5, 'x', $6)",
            room, seq, f"c{seq}", uid, "file" if kind == "sent" else "deleted", ids[kind])
    settings = load_settings(environ={"CAM_SERVER_DATE_PATH": str(tmp_path)})
    service = FilesService(pool, None, settings, store=store)  # type: ignore[arg-type]
    await service.sweep()
    left = {r["id"] for r in await pool.fetch("SELECT id FROM files")}
    assert left == {ids["sent"], ids["fresh"]}
    for kind, file_id in ids.items():
        kept = kind in ("sent", "fresh")
        assert await store.exists(file_id) is kept, kind
        assert await store.exists(f"{file_id}.thumb") is kept, kind
