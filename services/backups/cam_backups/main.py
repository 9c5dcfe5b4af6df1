"""Entry point of a backups replica: ``cam-backups --config boot.ini``.

Every host may run one; the one that holds the database advisory lock (the leader)
streams the WAL archive (``pg_receivewal`` into ``<cam.backupPath>/wal``), copies new
attachments every few seconds, and takes the scheduled backups
(``cam.backupSchedule``). With ``cam.storage=local`` every replica copies its own
host's attachments. Each replica's heartbeat carries the backup age and the WAL
archive lag, so the health service and the cluster view show them.

``cam-backups --once`` takes one backup and exits (the systemd timer runs that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from camcore import bus, db, metrics
from camcore.config import Settings
from camcore.loops import Loops, every
from camcore.runtime import load_or_exit, setup_logging, wait_for_stop_signal
from camcore.service import instance_name
from camctl.rig import as_user

from . import backup, filecopy, pgtools
from .pgtools import BackupError

log = logging.getLogger("cam_backups")

LEADER_LOCK = 0x63616D42  # any number, the same in every replica
FILES_EVERY = 15.0
"""Seconds between copies of new attachments to the backup path."""
CHECK_EVERY = 5.0
"""Seconds between measurements of the WAL archive lag."""
CATCH_UP_AFTER = 30.0
"""A leader that finds no backup of the last 24 h takes one after this many seconds."""
RETRY_AFTER = 300.0
"""Seconds before a failed catch-up backup is tried again."""

_UNAVAILABLE: tuple[type[BaseException], ...] = (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    account = as_user(pgtools.db_user())
    return subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, user=account.get("user"),
                            group=account.get("group"), extra_groups=account.get("extra_groups"))


def _relay(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        log.warning("pg_receivewal: %s", line.decode(errors="replace").rstrip())
    log.warning("pg_receivewal exited with %s; it is started again", proc.wait())


def next_run(schedule: tuple[str, ...], after: dt.datetime) -> dt.datetime | None:
    """The next local time in ``schedule`` (HH:MM) strictly after ``after``."""
    if not schedule:
        return None
    local = after.astimezone()
    candidates = []
    for day in (0, 1):
        for hhmm in schedule:
            hour, minute = (int(x) for x in hhmm.split(":"))
            at = (local + dt.timedelta(days=day)).replace(hour=hour, minute=minute, second=0,
                                                          microsecond=0)
            if at > local:
                candidates.append(at)
    return min(candidates)


class Archiver:
    """The leader's work: the WAL receiver, the lag, the file copies, the schedule."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = backup.layout(settings)
        self.conn = pgtools.Conninfo.parse(settings.backup_database_url)
        self.lock_conn: asyncpg.Connection | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.lag: int | None = None
        self.busy = asyncio.Lock()
        self.state: dict[str, Any] = backup.status(settings)

    @property
    def leader(self) -> bool:
        return self.lock_conn is not None and not self.lock_conn.is_closed()

    async def lead(self) -> None:
        """Take the lead when nobody holds it; lose it with the connection."""
        if self.leader:
            return
        self.lock_conn = None
        try:
            conn = await asyncpg.connect(self.settings.backup_database_url, timeout=5,
                                         database="postgres")
        except _UNAVAILABLE as exc:
            log.debug("database not reachable for the backup lead: %s", exc)
            return
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
            self.lock_conn = conn
            log.info("leading backups into %s", self.layout.root)
        else:
            await conn.close()

    async def check(self) -> None:
        await self.lead()
        self.state = await asyncio.to_thread(backup.status, self.settings)
        if not self.leader:
            await self.stop_receiver()
            return
        await self.ensure_receiver()
        assert self.lock_conn is not None
        try:
            lag = await self.lock_conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = $1 AND active", backup.SLOT)
        except _UNAVAILABLE as exc:
            log.warning("cannot measure the WAL archive lag: %s", exc)
            await self._lose_lead()
            return
        self.lag = int(lag) if lag is not None else None
        running = self._receiving()
        self.layout.write_status(
            wal_lag_bytes=self.lag, wal_checked_at=backup.now_utc().isoformat(),
            wal_error=None if running and self.lag is not None else "pg_receivewal is not streaming")

    async def _lose_lead(self) -> None:
        if self.lock_conn is not None:
            with contextlib.suppress(Exception):
                await self.lock_conn.close()
        self.lock_conn = None
        await self.stop_receiver()

    def _receiving(self) -> bool:
        return self.receiver is not None and self.receiver.poll() is None

    async def ensure_receiver(self) -> None:
        if self._receiving():
            return
        self.layout.ensure()
        env = self.conn.env()
        dsn = self.conn.dsn + ("&" if "?" in self.conn.dsn else "?") + f"application_name={backup.SLOT}"
        base = [pgtools.tool("pg_receivewal"), "-d", dsn, "-D", str(self.layout.wal),
                "-S", backup.SLOT, "--no-password"]
        try:
            await asyncio.to_thread(pgtools.run, [*base, "--create-slot", "--if-not-exists"],
                                    env=env, what="creating the WAL archive's slot",
                                    timeout=30, user=pgtools.db_user())
        except BackupError as exc:
            log.warning("%s", exc)
            return
        # As the database account (a standby reads the archive as that account too);
        # plain subprocess: the event loop's own cannot change the user.
        self.receiver = await asyncio.to_thread(_spawn, [*base, "--synchronous", "--no-loop"], env)
        threading.Thread(target=_relay, args=(self.receiver,), daemon=True,
                         name="pg_receivewal log").start()
        log.info("WAL archive: pg_receivewal streaming into %s", self.layout.wal)

    async def stop_receiver(self) -> None:
        proc, self.receiver = self.receiver, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def copy_files(self) -> None:
        if not (self.leader or self.settings.storage == "local"):
            return
        try:
            await asyncio.to_thread(filecopy.to_backup, self.settings, self.layout.files)
        except BackupError as exc:
            log.warning("%s", exc)
            return
        if self.leader:
            self.layout.write_status(files_synced_at=backup.now_utc().isoformat())

    async def scheduled(self) -> None:
        """Sleep to the next scheduled time (or catch up a missed day), then back up."""
        while True:
            now = backup.now_utc()
            age = self.state["last_backup_age"]
            when = next_run(self.settings.backup_schedule, now)
            if when is None:
                return
            catch_up = age is None or age > 24 * 3600
            wait = CATCH_UP_AFTER if catch_up else (when - now).total_seconds()
            await asyncio.sleep(max(1.0, wait))
            if self.leader:
                if await self.take() is None and catch_up:
                    await asyncio.sleep(RETRY_AFTER)
            elif not catch_up:
                await asyncio.sleep(1.0)  # past the minute: the next slot

    async def take(self, full: bool = False) -> dict[str, Any] | None:
        async with self.busy:
            try:
                made = await asyncio.to_thread(backup.take, self.settings, full=full,
                                               say=lambda line: log.info("%s", line))
            except BackupError as exc:
                log.error("backup failed: %s", exc)
                return None
            self.state = await asyncio.to_thread(backup.status, self.settings)
            return {"id": made.id}

    def load(self) -> dict[str, float]:
        state = self.state
        age = state["last_backup_age"]
        return {"leader": float(self.leader),
                "backup_age": float(age) if age is not None else -1.0,
                "wal_lag_bytes": float(self.lag) if self.lag is not None else -1.0,
                "backup_ok": float(bool(state["ok"])),
                "backups": float(len(state["backups"]))}


class BackupGauges(Collector):
    """The archiver's state as ``cam_backup_*``, read at each scrape."""

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def collect(self) -> Iterable[Metric]:
        a = self.archiver
        age, lag = a.state["last_backup_age"], a.lag
        yield GaugeMetricFamily("cam_backup_leader", "1 while this replica leads the backups "
                                "(holds the lock, streams the WAL archive).", float(a.leader))
        age_family = GaugeMetricFamily("cam_backup_age_seconds", "Seconds since the last "
                                       "successful, verified base backup (absent: none yet).")
        if age is not None:
            age_family.add_metric([], float(age))
        yield age_family
        yield GaugeMetricFamily("cam_backup_last_ok", "1 when the last backup attempt "
                                "succeeded and none is missing.", float(bool(a.state["ok"])))
        yield GaugeMetricFamily("cam_backups_kept", "Base backups kept in cam.backupPath.",
                                float(len(a.state["backups"])))
        streaming = a.leader and a._receiving() and lag is not None
        yield GaugeMetricFamily("cam_backup_wal_streaming", "1 while this replica's "
                                "pg_receivewal streams the WAL archive.", float(streaming))
        lag_family = GaugeMetricFamily("cam_backup_wal_lag_bytes", "WAL not yet in the "
                                       "archive, in bytes (only on the streaming leader).")
        if streaming:
            lag_family.add_metric([], float(lag or 0))
        yield lag_family


async def serve(settings: Settings) -> None:
    if not settings.backup_database_url:
        raise SystemExit("cam-backups: set cam.backupDatabaseUrl (the REPLICATION role's URL); "
                         "docs/backup.md shows how")
    archiver = Archiver(settings)
    async with metrics.serving(settings, "backups", BackupGauges(archiver)):
        await _serve(settings, archiver)


async def _serve(settings: Settings, archiver: Archiver) -> None:
    instance = instance_name(settings)
    nc = await bus.connect(settings.nats_urls, f"backups:{instance}",
                           credentials=settings.nats_credentials or None)
    try:
        async with Loops() as loops:
            loops.start("backups heartbeat", bus.heartbeat(
                nc, "backups", instance, settings.node_name, settings.heartbeat_interval,
                archiver.load))
            loops.start("backups lead and WAL lag", every(CHECK_EVERY, archiver.check,
                                                          at_once=True))
            loops.start("backups file copies", every(FILES_EVERY, archiver.copy_files))
            loops.start("backups schedule", archiver.scheduled)
            await loops.run_until(wait_for_stop_signal())
    finally:
        await archiver.stop_receiver()
        if archiver.lock_conn is not None:
            with contextlib.suppress(Exception):
                await archiver.lock_conn.close()
        with contextlib.suppress(Exception):
            await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(prog="cam-backups")
    parser.add_argument("--config", help="path to boot.ini (default: $CAM_BOOT_INI)")
    parser.add_argument("--once", action="store_true", help="take one backup now and exit")
    parser.add_argument("--full", action="store_true", help="with --once: a full backup")
    args = parser.parse_args()
    setup_logging("cam-backups")
    settings = load_or_exit(args.config)
    setup_logging("cam-backups", settings)
    if args.once:
        try:
            made = backup.take(settings, full=args.full, say=lambda line: log.info("%s", line))
        except BackupError as exc:
            print(f"cam-backups: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"backup {made.id} taken and verified")
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
