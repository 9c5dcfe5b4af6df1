"""Backups under ``cam.backupPath``: base backups of the database (full, then
incremental), the WAL archive between them, the attachments and the configuration,
each backup verified by starting PostgreSQL on it.

Layout of the backup path::

    wal/                  the WAL archive (pg_receivewal), whole segments and .partial
    db/<id>/              one base backup (pg_basebackup, plain format, its backup_manifest)
    db/<id>.json          our manifest of it: kind, parent, times, per-room highest seq,
                          row counts, the attachments and their SHA-256
    files/                copy of the attachments (rclone), shared by all backups
    config/<id>/          boot.ini and the credentials folder (0700 / 0600)
    status.json           the last attempt and the last success

A backup id is its UTC start time, ``20261202T020000Z``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camcore.config import Settings

from . import filecopy, pgtools
from .pgtools import BackupError

log = logging.getLogger("cam_backups")

FULL_EVERY = 7
"""A chain is one full backup and up to FULL_EVERY - 1 incremental ones after it."""
SLOT = "cam_wal_archive"
"""The replication slot of the WAL archive: the primary keeps WAL until it is archived."""


@dataclass
class Manifest:
    """What one backup holds, read from PostgreSQL started on it (never estimated)."""

    id: str
    kind: str  # full | incremental
    parent: str | None
    started_at: str
    finished_at: str
    start_wal: str
    database: str
    rooms: dict[str, int] = field(default_factory=dict)  # room id -> highest seq
    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> size, sha256
    verified: bool = False
    seconds: float = 0.0

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        os.replace(tmp, path)

    @property
    def finished(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.finished_at)


_STATUS_LOCK = threading.Lock()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.wal = root / "wal"
        self.db = root / "db"
        self.files = root / "files"
        self.config = root / "config"
        self.status_path = root / "status.json"
        self.scratch = root / ".scratch"

    def ensure(self) -> None:
        for folder in (self.root, self.wal, self.db, self.files, self.config):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        user = pgtools.db_user()
        if user is not None:
            # The WAL archive belongs to the database account: pg_receivewal writes it as
            # that account, and a standby's restore_command reads it. The backup path
            # itself only lets it pass (no listing); db/, files/ and config/ stay root's.
            pgtools.chown_tree(self.wal, user)
            self.root.chmod(0o711)
            pgtools.allow_traverse(self.root.parent)

    def manifests(self) -> list[Manifest]:
        """Every finished backup, oldest first (unfinished ones have no manifest)."""
        found = []
        for path in sorted(self.db.glob("*.json")) if self.db.is_dir() else []:
            try:
                found.append(Manifest.read(path))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable backup manifest %s: %s", path, exc)
        return found

    def chain(self, backup_id: str) -> list[Manifest]:
        """The full backup ``backup_id`` rests on, then each incremental up to it."""
        by_id = {m.id: m for m in self.manifests()}
        chain: list[Manifest] = []
        current: str | None = backup_id
        while current is not None:
            m = by_id.get(current)
            if m is None:
                raise BackupError(f"backup {current} is missing from {self.db}"
                                  + (f" (needed by {chain[-1].id})" if chain else ""))
            chain.append(m)
            current = m.parent
        return list(reversed(chain))

    def read_status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text(encoding="utf-8"))
            return data
        except (OSError, ValueError):
            return {}

    def write_status(self, **changes: Any) -> None:
        with _STATUS_LOCK:
            self._write_status(changes)

    def _write_status(self, changes: dict[str, Any]) -> None:
        status = {**self.read_status(), **changes}
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        os.replace(tmp, self.status_path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One backup, restore or clean-up at a time on this backup path."""
        self.ensure()
        with (self.root / ".lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError(f"another backup or restore is using {self.root}") from None
            yield


def layout(settings: Settings) -> Layout:
    return Layout(settings.backup_root)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _id(at: dt.datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------ taking a backup


def take(settings: Settings, *, full: bool = False,
         say: Callable[[str], None] = lambda line: None) -> Manifest:
    """One backup: database, attachments, configuration; verified, then old ones pruned."""
    if not settings.backup_database_url:
        raise BackupError("no backup role: set cam.backupDatabaseUrl (camctl up sets it)")
    lay = layout(settings)
    with lay.lock():
        started = now_utc()
        try:
            manifest = _take(settings, lay, started, full, say)
        except BackupError as exc:
            lay.write_status(last_attempt=started.isoformat(), last_error=str(exc))
            raise
        lay.write_status(last_attempt=started.isoformat(), last_error=None,
                         last_success=manifest.finished_at, last_id=manifest.id)
        prune(lay, settings.backup_keep, say)
        return manifest


def _take(settings: Settings, lay: Layout, started: dt.datetime, full: bool,
          say: Callable[[str], None]) -> Manifest:
    conn = pgtools.Conninfo.parse(settings.backup_database_url)
    done = [m for m in lay.manifests() if m.verified]
    parent = None if full or not done else done[-1]
    if parent is not None and len(lay.chain(parent.id)) >= FULL_EVERY:
        parent = None
    backup_id = _id(started)
    target = lay.db / backup_id
    partial = lay.db / f"{backup_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    argv = [pgtools.tool("pg_basebackup"), "-d", conn.dsn, "-D", str(partial), "-Fp",
            "-X", "stream", "-c", "fast", "--manifest-checksums=SHA256", "-l", f"cam {backup_id}",
            "--no-password"]
    if parent is not None:
        argv.append(f"--incremental={lay.db / parent.id / 'backup_manifest'}")
    kind = "incremental" if parent else "full"
    say(f"database: {kind} base backup {backup_id}"
        + (f" on top of {parent.id}" if parent else ""))
    try:
        pgtools.run(argv, env=conn.env(), what="pg_basebackup")
        pgtools.run([pgtools.tool("pg_verifybackup"), "-q", str(partial)], what="pg_verifybackup")
        finished = now_utc()
        os.replace(partial, target)
    except BackupError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifest = Manifest(id=backup_id, kind=kind, parent=parent.id if parent else None,
                        started_at=started.isoformat(), finished_at=finished.isoformat(),
                        start_wal=pgtools.start_wal_file(target),
                        database=pgtools.database_name(settings.database_url or "cam"))
    try:
        say("files: copying attachments")
        filecopy.to_backup(settings, lay.files)
        save_config(settings, lay.config / backup_id)
        say("verifying: starting PostgreSQL on the backup")
        verify(lay, manifest)
    except BackupError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(lay.config / backup_id, ignore_errors=True)
        raise
    manifest.seconds = round((now_utc() - started).total_seconds(), 3)
    manifest.write(lay.db / f"{backup_id}.json")
    say(f"backup {backup_id} verified: {len(manifest.rooms)} rooms, "
        f"{sum(manifest.rows.values())} rows, {len(manifest.files)} files")
    return manifest


def save_config(settings: Settings, dest: Path) -> None:
    """boot.ini and the credentials folder, as protected as on the server."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, mode=0o700)
    source = Path(settings.source) if settings.source else None
    if source is not None and source.is_file():
        shutil.copy2(source, dest / "boot.ini")
        (dest / "boot.ini").chmod(0o600)
    creds = settings.data_root.expanduser().resolve() / "run" / "creds"
    if creds.is_dir():
        shutil.copytree(creds, dest / "creds", copy_function=shutil.copy2)
        for path in [dest / "creds", *(dest / "creds").rglob("*")]:
            path.chmod(0o700 if path.is_dir() else 0o600)


# ------------------------------------------------------------------ verifying


def check_chain(lay: Layout, chain: list[Manifest]) -> None:
    """pg_verifybackup on every backup of a chain: a changed, missing or extra byte in
    any file, or missing WAL, is refused here with the tool's own words."""
    for m in chain:
        folder = lay.db / m.id
        if not folder.is_dir():
            raise BackupError(f"backup {m.id} is missing: {folder}")
        try:
            pgtools.run([pgtools.tool("pg_verifybackup"), "-q", str(folder)],
                        what=f"pg_verifybackup of backup {m.id}")
        except BackupError as exc:
            raise BackupError(f"backup {m.id} is damaged and cannot be restored: {exc}") from None


def combine(lay: Layout, chain: list[Manifest], dest: Path) -> None:
    """The chain joined into one data directory (pg_combinebackup)."""
    pgtools.run([pgtools.tool("pg_combinebackup"), *(str(lay.db / m.id) for m in chain),
                 "-o", str(dest)], what="pg_combinebackup")


def read_contents(pg: pgtools.PrivatePostgres, database: str) -> tuple[
        dict[str, int], dict[str, int], dict[str, dict[str, Any]]]:
    """(highest seq per room, rows per table, stored files) of a running copy."""
    tables = [t for (t,) in _rows(pg.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'cam' ORDER BY 1", database))]
    rooms: dict[str, int] = {}
    if "messages" in tables:
        rooms = {room: int(seq) for room, seq in _rows(pg.psql(
            "SELECT room_id, max(seq) FROM cam.messages GROUP BY room_id ORDER BY 1", database))}
    rows: dict[str, int] = {}
    if tables:
        counts = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM cam.\"{t}\"" for t in tables)
        rows = {t: int(n) for t, n in _rows(pg.psql(counts, database))}
    files: dict[str, dict[str, Any]] = {}
    if "files" in tables:
        for key, size, digest, variants in _rows(pg.psql(
                "SELECT id, size, encode(sha256, 'hex'), array_to_string(variants, ',') "
                "FROM cam.files WHERE state = 'ready' ORDER BY 1", database)):
            files[key] = {"size": int(size), "sha256": digest,
                          "variants": [v for v in variants.split(",") if v]}
    return rooms, rows, files


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line]


def verify(lay: Layout, manifest: Manifest) -> None:
    """Start PostgreSQL on a copy of the new backup (its chain joined), read what it
    holds into the manifest, and check that every attachment it names is in the copy
    of the files with the right size and SHA-256."""
    chain = [*lay.chain(manifest.parent), manifest] if manifest.parent else [manifest]
    # The new backup is not listed yet (no manifest file): chain() stops at its parent.
    check_chain(lay, chain)
    with pgtools.private_dir(lay.scratch / f"verify-{manifest.id}") as scratch:
        data = scratch / "data"
        combine(lay, chain, data)
        with pgtools.PrivatePostgres(data, log_path=scratch / "postgres.log") as pg:
            manifest.rooms, manifest.rows, manifest.files = read_contents(pg, manifest.database)
    missing = filecopy.check(lay.files, manifest.files)
    if missing:
        raise BackupError(f"{len(missing)} attachment(s) named by the database are not in the "
                          f"backup: {', '.join(missing[:5])}")
    manifest.verified = True


# ------------------------------------------------------------------ retention


def prune(lay: Layout, keep: int, say: Callable[[str], None] = lambda line: None) -> list[str]:
    """Keep the newest ``keep`` backups (and the full ones they rest on); remove the
    rest, the WAL only they needed, and attachments no kept backup names."""
    manifests = lay.manifests()
    kept_ids: set[str] = set()
    for m in manifests[-keep:]:
        kept_ids.update(c.id for c in lay.chain(m.id))
    removed = [m.id for m in manifests if m.id not in kept_ids]
    for backup_id in removed:
        shutil.rmtree(lay.db / backup_id, ignore_errors=True)
        (lay.db / f"{backup_id}.json").unlink(missing_ok=True)
        shutil.rmtree(lay.config / backup_id, ignore_errors=True)
    kept = [m for m in manifests if m.id in kept_ids]
    if removed and kept:
        oldest = kept[0]
        pgtools.run([pgtools.tool("pg_archivecleanup"), str(lay.wal), oldest.start_wal],
                    what="pg_archivecleanup")
        named = {key for m in kept for key in m.files}
        filecopy.prune(lay.files, named, older_than=dt.datetime.fromisoformat(oldest.started_at))
        say(f"retention: removed {len(removed)} old backup(s): {', '.join(removed)}")
    return removed


# ------------------------------------------------------------------ status


def status(settings: Settings) -> dict[str, Any]:
    """What ``camctl backup status``, the heartbeat and the health service report."""
    lay = layout(settings)
    manifests = [m for m in lay.manifests() if m.verified]
    state = lay.read_status()
    last = manifests[-1] if manifests else None
    age = (now_utc() - last.finished).total_seconds() if last else None
    warnings = []
    if last is None:
        warnings.append("no backup yet")
    elif age is not None and age > settings.backup_max_age_hours * 3600:
        warnings.append(f"the last backup is {age / 3600:.1f} h old (more than "
                        f"{settings.backup_max_age_hours} h)")
    if state.get("last_error"):
        warnings.append(f"the last attempt failed: {str(state['last_error']).splitlines()[0]}")
    lag = state.get("wal_lag_bytes")
    if lag is None or state.get("wal_error"):
        warnings.append("the WAL archive is not running"
                        + (f": {state['wal_error']}" if state.get("wal_error") else ""))
    elif int(lag) > settings.backup_max_wal_lag_bytes:
        warnings.append(f"the WAL archive is {int(lag)} bytes behind "
                        f"(more than {settings.backup_max_wal_lag_bytes})")
    return {
        "path": str(lay.root),
        "schedule": list(settings.backup_schedule),
        "keep": settings.backup_keep,
        "backups": [{"id": m.id, "kind": m.kind, "finished_at": m.finished_at,
                     "rooms": len(m.rooms), "rows": sum(m.rows.values()),
                     "files": len(m.files)} for m in manifests],
        "last_success": last.finished_at if last else None,
        "last_backup_age": round(age, 1) if age is not None else None,
        "last_error": state.get("last_error"),
        "wal_lag_bytes": lag,
        "wal_checked_at": state.get("wal_checked_at"),
        "files_synced_at": state.get("files_synced_at"),
        "warnings": warnings,
        "ok": not warnings,
    }
