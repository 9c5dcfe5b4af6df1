"""The restore drill: backups taken under load, the data path wiped, and everything the
clients were told back after ``camctl restore``; a restore to a point in time; a
damaged backup refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cam_backups import backup, filecopy, restore
from cam_backups.pgtools import BackupError

from camclient import Client, ClientError
from camclient.client import login
from camcore import accounts, db
from camcore.config import Settings, load_settings
from camctl import rig
from tests.conftest import MONITORING_TOKEN, Cluster
from tests.integration.test_files import Node, png
from tests.waiting import eventually

MONITORING = {"Authorization": f"Bearer {MONITORING_TOKEN}"}


@dataclass
class Site:
    """One CAMServer data path with its own PostgreSQL (and the backup path beside it),
    and the cluster running on it."""

    root: Path
    data: Path
    backups: Path
    pg: rig.Postgres
    dsn: str
    backup_url: str
    cluster: Cluster | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path, data: Path | None = None, backups: Path | None = None) -> Site:
        data = data or root / "data"
        pg = rig.Postgres(data / "postgres", secrets_dir=data / "run" / "creds",
                          log_path=root / f"postgres-{time.monotonic_ns()}.log").start()
        dsn = pg.create_app_database("cam")
        return cls(root, data, backups or root / "backups", pg, dsn, pg.create_backup_role())

    def settings(self, **extra: str) -> Settings:
        env = {"CAM_SERVER_DATE_PATH": str(self.data), "CAM_BACKUP_PATH": str(self.backups),
               "CAM_DATABASE_URL": self.dsn, "CAM_BACKUP_DATABASE_URL": self.backup_url, **extra}
        return load_settings(None, environ=env)

    def run_cluster(self, cluster: Cluster, *, backups: bool = True,
                    standby: bool = False) -> Cluster:
        cluster.database = cluster.database_url = self.dsn
        if standby:  # on host 2; every URL then lists both servers
            cluster.pg, cluster.backup_url = self.pg, self.backup_url
            cluster.start_standby(self.root / "standby" / "postgres", archive=self.backups / "wal")
            self.dsn = cluster.database = cluster.database_url
            self.backup_url = cluster.backup_url
        cluster.data_path = self.data
        cluster.extra_env.update({"CAM_SERVER_DATE_PATH": str(self.data),
                                  "CAM_BACKUP_PATH": str(self.backups)})
        cluster.start_chat()
        cluster.start_files()
        cluster.start_health()
        if backups:
            cluster.start_backups(0, "backups1", CAM_BACKUP_DATABASE_URL=self.backup_url,
                                  CAM_BACKUP_SCHEDULE="off")
        cluster.start_edge("camserver1", nats=0)
        cluster.start_edge("camserver2", nats=1)
        cluster.wait_edges()
        self.cluster = cluster
        return cluster

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.pg.stop()

    async def wal_position(self) -> str:
        return self.pg.psql("SELECT pg_current_wal_lsn()")

    async def wait_archived(self, lsn: str) -> None:
        """Until the WAL archive has everything up to ``lsn``."""
        def archived() -> bool:
            got = self.pg.psql("SELECT coalesce(pg_wal_lsn_diff(restart_lsn, "
                               f"'{lsn}') >= 0, false) FROM pg_replication_slots "
                               f"WHERE slot_name = '{backup.SLOT}'")
            return got == "t"
        await eventually(archived, timeout=60, what="the WAL archive to catch up")


async def camctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "camctl.cli", *args],
                                   env=env, capture_output=True, text=True, timeout=600)


async def make_users(dsn: str, *names: str) -> list[tuple[str, str]]:
    pool = await db.create_pool(dsn, max_size=2)
    try:
        await db.migrate(dsn)
        for name in names:
            await accounts.create_user(pool, name, f"{name}-password")
    finally:
        await pool.close()
    return [(name, f"{name}-password") for name in names]


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[list[Site]]:
    made: list[Site] = []
    yield made
    for site in made:
        site.stop()


def take(settings: Settings, **kw: Any) -> backup.Manifest:
    return backup.take(settings, say=lambda line: print("backup:", line), **kw)


async def all_messages(client: Client, room: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.history(room, after=after, limit=200)
        found += page["messages"]
        if not page["has_more"]:
            return found
        after = found[-1]["seq"]


class Writer:
    """One client writing steadily on one node: text messages, and every fifth an
    attachment. Keeps exactly what it was told: each acknowledgement and file."""

    def __init__(self, name: str, client: Client, node: Node, room: int) -> None:
        self.name, self.client, self.node, self.room = name, client, node, room
        self.acked: dict[int, str] = {}  # seq -> body, or "file:<id>"
        self.files: dict[str, bytes] = {}
        self.sent = 0
        self.refused = 0  # answers 'unavailable' (retried)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sent += 1
            if self.sent % 5 == 0:
                data = png(60 + self.sent, 50) if self.sent % 10 == 0 else os.urandom(
                    20_000 + self.sent)
                info = await self.upload(data)
                self.files[info["file"]["id"]] = data
                self.acked[info["message"]["seq"]] = f"file:{info['file']['id']}"
            else:
                body = f"{self.name} {self.sent}"
                ack = await self.send(body, f"{self.name}-{self.sent}")
                self.acked[ack["seq"]] = body
            await asyncio.sleep(0.01)

    async def send(self, body: str, cid: str) -> dict[str, Any]:
        """Sent with the same cid until it is acknowledged, as a client must during an
        outage (whose only allowed answer is ``unavailable``)."""
        while True:
            try:
                return await self.client.send(self.room, body, cid=cid)
            except ClientError as exc:
                assert exc.code == "unavailable", exc
                self.refused += 1
                await asyncio.sleep(0.2)

    async def upload(self, data: bytes) -> dict[str, Any]:
        while True:
            answer = await self.node.upload(self.room, f"{self.name}-{self.sent}.bin", data,
                                            cid=f"{self.name}-f{self.sent}")
            if answer.status_code == 201:
                result: dict[str, Any] = answer.json()
                return result
            assert answer.status_code == 503, answer.text
            self.refused += 1
            await asyncio.sleep(0.2)


async def start_writers(cluster: Cluster, users: list[tuple[str, str]]) -> tuple[
        list[Writer], int]:
    alice = await cluster.connect("camserver1", users[0])
    bob = await cluster.connect("camserver2", users[1])
    room = await alice.request("create_room", name="drill", members=[users[1][0]])
    await bob.next_event("room_added", where=lambda e: e["room"]["id"] == room["id"])
    writers = []
    for name, client, node, user in (("alice", alice, "camserver1", users[0]),
                                     ("bob", bob, "camserver2", users[1])):
        writers.append(Writer(name, client, Node(cluster, node, await login(
            cluster.http(node), *user)), int(room["id"])))
    return writers, int(room["id"])


async def drill(tmp_path: Path, sites: list[Site], cluster_factory: Any, **kw: Any) -> tuple[
        Site, Cluster, list[tuple[str, str]], list[Writer], int]:
    """A site with a two-node cluster on it, alice on camserver1 and bob on camserver2
    in one room, each with a writer."""
    site = Site.start(tmp_path)
    sites.append(site)
    users = await make_users(site.dsn, "alice", "bob")
    cluster = site.run_cluster(cluster_factory(2), **kw)
    writers, room = await start_writers(cluster, users)
    return site, cluster, users, writers, room


async def test_restore_drill_under_load_brings_back_every_acknowledged_message_and_file(
    tmp_path: Path, sites: list[Site], cluster_factory: Any
) -> None:
    site, cluster, users, writers, room = await drill(tmp_path, sites, cluster_factory)
    settings = site.settings()
    stop = asyncio.Event()
    load = [asyncio.ensure_future(w.run(stop)) for w in writers]
    def acked(at_least: int) -> bool:
        for task in load:
            if task.done():
                task.result()  # a writer that failed fails the test
        return sum(len(w.acked) for w in writers) >= at_least

    await eventually(lambda: acked(40), timeout=60, what="writes before the backup")
    # 1. A full backup, then an incremental one, both taken while the clients write.
    full = await asyncio.to_thread(take, settings)
    acked_at_full = sum(len(w.acked) for w in writers)
    incremental = await asyncio.to_thread(take, settings)
    assert (full.kind, incremental.kind, incremental.parent) == ("full", "incremental", full.id)
    assert incremental.rooms[str(room)] > full.rooms[str(room)]  # the load hit the backups
    # ... and keep writing after it.
    after_backup = sum(len(w.acked) for w in writers)
    await eventually(lambda: acked(after_backup + 40), timeout=60, what="writes after the backup")
    stop.set()
    await asyncio.gather(*load)
    last = await site.wal_position()
    await site.wait_archived(last)
    last_upload = time.time()
    await eventually(lambda: (backup.layout(settings).read_status().get("files_synced_at") or "")
                     > dt.datetime.fromtimestamp(last_upload, dt.UTC).isoformat(),
                     timeout=60, what="the attachments to be copied")
    # The health service's view shows the backup age and the archive lag.
    async def view_backups() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            view = (await http.get(cluster.http("camserver2") + "/api/cluster/view",
                                   headers=MONITORING)).json()
        shown: dict[str, Any] = view["backups"]
        return shown if shown["age"] is not None and shown["wal_lag_bytes"] is not None else {}
    shown = await eventually(view_backups, timeout=30, what="the backups in the cluster view")
    assert shown["ok"] and shown["age"] < 600 and shown["warnings"] == [], shown
    for w in writers:
        await w.client.close()
    told = {seq: body for w in writers for seq, body in w.acked.items()}
    files = {fid: data for w in writers for fid, data in w.files.items()}
    assert len(told) > acked_at_full + 40 and len(files) >= 8

    # 2. The data path wiped, as a failed disk leaves it.
    site.stop()
    sites.remove(site)
    shutil.rmtree(site.data)

    # 3. Restore to the latest point, with camctl, then start the cluster on it.
    env = {**os.environ, "CAM_SERVER_DATE_PATH": str(site.data),
           "CAM_BACKUP_PATH": str(site.backups), "CAM_DATABASE_URL": site.dsn,
           "CAM_BACKUP_DATABASE_URL": site.backup_url}
    out = await camctl(env, "restore")
    assert out.returncode == 0, out.stderr + out.stdout
    assert f"restored backup {incremental.id}" in out.stdout
    assert f"room {room}: seq {max(told)} (backup {incremental.rooms[str(room)]}, +" in out.stdout
    assert "WARNING" not in out.stdout, out.stdout
    restored = Site.start(tmp_path, site.data, site.backups)
    sites.append(restored)
    assert restored.pg.app_password == site.pg.app_password  # the credentials came back
    again = restored.run_cluster(cluster_factory(2), backups=False)
    reader = await again.connect("camserver2", users[1])
    history = {m["seq"]: m for m in await all_messages(reader, room)}
    for seq, body in told.items():
        message = history.get(seq)
        assert message is not None, f"acknowledged seq {seq} lost"
        if body.startswith("file:"):
            assert message["kind"] == "file" and message["file"]["id"] == body[5:]
        else:
            assert message["body"] == body, seq
    assert sorted(history) == list(range(1, max(history) + 1))  # no gap, no duplicate
    node = Node(again, "camserver1", await login(again.http("camserver1"), *users[0]))
    for fid, data in files.items():
        got = await node.get(f"/api/files/{fid}")
        assert got.status_code == 200 and got.content == data, fid
    async with httpx.AsyncClient() as http:
        for name in ("camserver1", "camserver2"):
            health = await http.get(f"{again.http(name)}/CAMServer/healthCheck")
            assert health.status_code == 200
    await reader.close()


async def test_a_restore_to_a_time_between_two_writes_holds_exactly_what_came_before(
    tmp_path: Path, sites: list[Site], cluster_factory: Any
) -> None:
    site, cluster, users, writers, room = await drill(tmp_path, sites, cluster_factory)
    alice = writers[0].client
    settings = site.settings()
    for i in range(5):
        await alice.send(room, f"early {i}")
    await asyncio.to_thread(take, settings)
    before = [await alice.send(room, f"before {i}") for i in range(10)]
    await asyncio.sleep(0.3)
    point = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.3)
    after = [await alice.send(room, f"after {i}") for i in range(10)]
    await site.wait_archived(await site.wal_position())
    await alice.close()
    await writers[1].client.close()

    def messages(result: restore.Restored) -> list[tuple[int, str]]:
        pg = rig.Postgres(Path(result.data_path) / "postgres",
                          secrets_dir=Path(result.data_path) / "run" / "creds",
                          log_path=tmp_path / f"check-{time.monotonic_ns()}.log").start()
        try:
            rows = pg.psql(f"SELECT seq || '|' || body FROM cam.messages WHERE room_id = {room} "
                           "AND kind = 'text' ORDER BY seq", database="cam")
        finally:
            pg.stop()
        return [(int(s), b) for s, b in (line.split("|", 1) for line in rows.splitlines())]

    at_point = await asyncio.to_thread(restore.restore, settings, to=point,
                                       data_path=tmp_path / "at-point", say=print)
    got = messages(at_point)
    assert [b for _, b in got] == [f"early {i}" for i in range(5)] + [f"before {i}" for i in range(10)]
    assert got[-1][0] == before[-1]["seq"]
    # The archive does hold what came after: a restore to its end has it all.
    latest = await asyncio.to_thread(restore.restore, settings, data_path=tmp_path / "latest",
                                     say=print)
    assert [s for s, _ in messages(latest)][-10:] == [a["seq"] for a in after]
    # A time before any backup finished is refused, clearly.
    with pytest.raises(BackupError, match="no backup finished before"):
        restore.restore(settings, to=point - dt.timedelta(days=1), data_path=tmp_path / "early")


async def test_a_damaged_backup_is_found_by_verification_and_a_restore_refuses_it(
    tmp_path: Path, sites: list[Site]
) -> None:
    site = Site.start(tmp_path)
    sites.append(site)
    await make_users(site.dsn, "alice")
    settings = site.settings()
    made = take(settings)
    env = {**os.environ, "CAM_SERVER_DATE_PATH": str(site.data),
           "CAM_BACKUP_PATH": str(site.backups), "CAM_DATABASE_URL": site.dsn,
           "CAM_BACKUP_DATABASE_URL": site.backup_url}
    ok = await camctl(env, "backup", "verify")
    assert ok.returncode == 0 and f"backup {made.id}: database files and WAL intact" in ok.stdout
    # One byte changed in the biggest table file of the backup.
    folder = backup.layout(settings).db / made.id
    victim = max((p for p in (folder / "base").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    bad = await camctl(env, "backup", "verify")
    assert bad.returncode == 1
    assert f"backup {made.id} is damaged" in bad.stderr and "checksum" in bad.stderr, bad.stderr
    target = tmp_path / "restored"
    refused = await camctl(env, "restore", "--data-path", str(target))
    assert refused.returncode == 1
    assert f"backup {made.id} is damaged and cannot be restored" in refused.stderr
    assert not (target / "postgres").exists() or not any((target / "postgres").iterdir())


async def test_promoting_the_standby_under_traffic_loses_no_acknowledged_message(
    tmp_path: Path, sites: list[Site], cluster_factory: Any
) -> None:
    site, cluster, users, writers, room = await drill(tmp_path, sites, cluster_factory,
                                                      standby=True)
    assert cluster.standby is not None and "target_session_attrs=read-write" in site.dsn
    stop = asyncio.Event()
    load = [asyncio.ensure_future(w.run(stop)) for w in writers]

    def acked(at_least: int) -> bool:
        for task in load:
            if task.done():
                task.result()
        return sum(len(w.acked) for w in writers) >= at_least

    await eventually(lambda: acked(60), timeout=60, what="writes before the failure")
    services = {n: p.pid for n, p in cluster.procs.items() if not n.startswith("postgres")}
    # Unit 1's database fails (as a crash: no clean shutdown) while the clients write.
    site.pg.stop("immediate")
    await eventually(lambda: sum(w.refused for w in writers) > 0, timeout=30,
                     what="the failure to reach the clients")
    before = sum(len(w.acked) for w in writers)
    env = {**os.environ, "CAM_SERVER_DATE_PATH": str(site.data)}
    promoted = await camctl(env, "db", "promote", "--data-dir", str(cluster.standby.datadir))
    assert promoted.returncode == 0, promoted.stderr
    assert not cluster.standby.in_recovery()
    # Nobody is restarted or reconfigured: the same processes write to the new primary.
    await eventually(lambda: acked(before + 60), timeout=90, what="writes after the promotion")
    stop.set()
    await asyncio.gather(*load)
    assert {n: p.pid for n, p in cluster.procs.items() if n in services} == services
    assert all(cluster.procs[n].alive() for n in services)
    async with httpx.AsyncClient() as http:
        for name in ("camserver1", "camserver2"):
            async def healthy(name: str = name) -> bool:
                answer = await http.get(f"{cluster.http(name)}/CAMServer/healthCheck")
                return answer.status_code == 200
            await eventually(healthy, timeout=30, what=f"{name}'s health check")
    told = {seq: body for w in writers for seq, body in w.acked.items()}
    history = {m["seq"]: m for m in await all_messages(writers[1].client, room)}
    for seq, body in told.items():
        message = history.get(seq)
        assert message is not None, f"acknowledged seq {seq} lost in the promotion"
        assert message["body"] == body if not body.startswith("file:") else (
            message["file"]["id"] == body[5:])
    assert sorted(history) == list(range(1, max(history) + 1))  # no gap, no duplicate
    for w in writers:
        await w.client.close()


async def test_attachments_in_s3_go_to_the_backup_and_back(tmp_path: Path) -> None:
    """With cam.storage=s3, rclone copies the bucket's files/ to the backup path and back
    (a real S3 server; the key pair only in rclone's environment)."""
    from camcore.s3 import S3Store
    from tests.integration.test_files import SECRET

    s3 = rig.S3Server(tmp_path / "s3").start()
    try:
        settings = load_settings(None, environ={
            "CAM_SERVER_DATE_PATH": str(tmp_path / "data"), "CAM_STORAGE": "s3",
            "CAM_S3_ENDPOINT": s3.endpoint, "CAM_S3_BUCKET": s3.bucket,
            "CAM_S3_ACCESS_KEY": s3.access_key, "CAM_S3_SECRET_KEY": s3.secret_key,
            "CAM_CLUSTER_SECRET": SECRET})
        store = S3Store(s3.endpoint, s3.bucket, "us-east-1", s3.access_key, s3.secret_key)
        blobs = {f"key{i}-{os.urandom(4).hex()}": os.urandom(1000 + i) for i in range(3)}
        for key, data in blobs.items():
            src = tmp_path / key
            src.write_bytes(data)
            await store.put(key, src)
        copy = tmp_path / "backup-files"
        await asyncio.to_thread(filecopy.to_backup, settings, copy)
        wanted = {k: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                  for k, d in blobs.items()}
        assert filecopy.check(copy, wanted) == []
        for key in blobs:
            await store.delete(key)
        await asyncio.to_thread(filecopy.from_backup, settings, copy)
        for key, data in blobs.items():
            got = await store.get(key)
            assert b"".join([c async for c in got.chunks]) == data
        # A wrong key pair is refused with rclone's words, not ignored.
        bad = dataclasses.replace(settings, s3_secret_key="wrong")
        with pytest.raises(BackupError, match="copying attachments to the backup failed"):
            await asyncio.to_thread(filecopy.to_backup, bad, tmp_path / "other")
        await store.close()
    finally:
        s3.stop()
