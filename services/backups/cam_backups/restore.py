"""``camctl restore``: a backup, and the WAL archive after it up to a point, into a
fresh data path; then a comparison of what came back with the backup's manifest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camcore.config import Settings
from camctl.rig import restore_command

from . import filecopy, pgtools
from .backup import Layout, Manifest, check_chain, combine, layout, read_contents
from .pgtools import BackupError


@dataclass
class Restored:
    backup: Manifest
    chain: list[str]
    target: str | None
    data_path: str
    rooms: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    lines: list[str] = field(default_factory=list)


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is this machine's local time."""
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BackupError(f"--to {text!r}: expected an ISO 8601 time such as "
                          "2026-12-02T14:30:00+01:00") from None
    return at.astimezone() if at.tzinfo is None else at


def choose(lay: Layout, backup_id: str | None, to: dt.datetime | None) -> Manifest:
    manifests = [m for m in lay.manifests() if m.verified]
    if not manifests:
        raise BackupError(f"no verified backup in {lay.root}: nothing to restore")
    if backup_id:
        for m in manifests:
            if m.id == backup_id:
                if to is not None and m.finished > to:
                    raise BackupError(f"backup {m.id} finished at {m.finished_at}, after --to")
                return m
        raise BackupError(f"no backup {backup_id} in {lay.root}; 'camctl backup status' lists them")
    if to is None:
        return manifests[-1]
    before = [m for m in manifests if m.finished <= to]
    if not before:
        raise BackupError(f"no backup finished before {to.isoformat()}; the oldest kept one "
                          f"finished at {manifests[0].finished_at}")
    return before[-1]


def restore(settings: Settings, *, to: dt.datetime | None = None, backup_id: str | None = None,
            data_path: Path | None = None,
            say: Callable[[str], None] = lambda line: None) -> Restored:
    lay = layout(settings)
    target_root = (data_path or settings.data_root).expanduser().resolve()
    pgdir = target_root / "postgres"
    if pgdir.exists() and any(pgdir.iterdir()):
        raise BackupError(f"{pgdir} holds a database already. A restore goes into a fresh data "
                          "path: move that folder away first, or pass --data-path")
    with lay.lock():
        chosen = choose(lay, backup_id, to)
        chain = lay.chain(chosen.id)
        say(f"backup {chosen.id} ({chosen.kind}, finished {chosen.finished_at})"
            + (f", chain {' + '.join(m.id for m in chain)}" if len(chain) > 1 else ""))
        say("checking the backup with pg_verifybackup")
        check_chain(lay, chain)
        target_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(pgdir, ignore_errors=True)
        say(f"database: joining the chain into {pgdir}")
        combine(lay, chain, pgdir)
        staged = target_root / "restore-wal"
        stage_wal(lay.wal, chosen.start_wal, staged)
        recovery = {"restore_command": restore_command(staged),
                    "recovery_target_action": "promote", "recovery_target_timeline": "latest"}
        if to is not None:
            recovery["recovery_target_time"] = to.astimezone(dt.UTC).isoformat(sep=" ")
        say("database: replaying the WAL archive "
            + (f"up to {to.isoformat()}" if to else "to its end"))
        try:
            with pgtools.PrivatePostgres(pgdir, recovery=recovery,
                                         log_path=target_root / "restore-postgres.log") as pg:
                rooms, rows, files = read_contents(pg, chosen.database)
                # The restored server has no standby yet: its commits must not wait
                # for one (docs/backup.md, the standby).
                pg.psql("ALTER SYSTEM RESET synchronous_standby_names")
        except BackupError as exc:
            shutil.rmtree(pgdir, ignore_errors=True)
            if to is not None and "before configured recovery target" in str(exc):
                raise BackupError(f"the WAL archive ends before {to.isoformat()}: restore to an "
                                  "earlier time, or without --to for everything archived") from None
            raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        (pgdir / "recovery.signal").unlink(missing_ok=True)
        _restore_config(lay, chosen, target_root, say)
        restored_settings = dataclasses.replace(settings, server_date_path=str(target_root))
        say("files: copying attachments back")
        filecopy.from_backup(restored_settings, lay.files)
        result = Restored(backup=chosen, chain=[m.id for m in chain],
                          target=to.isoformat() if to else None, data_path=str(target_root),
                          rooms=rooms, rows=rows, files=len(files))
        result.lines = compare(chosen, rooms, rows)
        if settings.storage != "s3":
            bad = filecopy.check(target_root / "files", files, remember=False)
            if bad:
                result.lines.append(f"WARNING {len(bad)} attachment(s) missing or different: "
                                    + ", ".join(bad[:5]))
            else:
                result.lines.append(f"files: all {len(files)} attachments present, SHA-256 checked")
        for line in result.lines:
            say(line)
        return result


def stage_wal(wal: Path, start_wal: str, dest: Path) -> int:
    """The archived WAL a restore from a backup starting at ``start_wal`` needs, copied
    where PostgreSQL's account may read it (the backup path is root's alone)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, mode=0o700)
    copied = 0
    for path in sorted(wal.iterdir()) if wal.is_dir() else []:
        name = path.name
        segment = name.removesuffix(".partial")
        needed = name.endswith(".history") or (
            len(segment) == 24 and segment[8:] >= start_wal[8:])
        if needed and path.is_file():
            shutil.copy2(path, dest / name)
            copied += 1
    pgtools.chown_tree(dest, pgtools.db_user())
    return copied


def _restore_config(lay: Layout, chosen: Manifest, target_root: Path,
                    say: Callable[[str], None]) -> None:
    saved = lay.config / chosen.id
    if (saved / "creds").is_dir():
        creds = target_root / "run" / "creds"
        creds.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copytree(saved / "creds", creds, dirs_exist_ok=True, copy_function=shutil.copy2)
        say(f"credentials: restored into {creds}")
    if (saved / "boot.ini").is_file():
        dest = target_root / "restored-boot.ini"
        shutil.copy2(saved / "boot.ini", dest)
        dest.chmod(0o600)
        say(f"configuration: the backup's boot.ini is in {dest}")


def compare(manifest: Manifest, rooms: dict[str, int], rows: dict[str, int]) -> list[str]:
    """How what came back compares with the backup: per room, messages from the base
    backup and from the WAL archive after it."""
    lines = []
    total_backup = sum(manifest.rooms.values())
    total_now = sum(rooms.values())
    fewer = [r for r, seq in manifest.rooms.items() if rooms.get(r, 0) < seq]
    lines.append(f"rooms: {len(rooms)} (backup: {len(manifest.rooms)}); highest seqs add up to "
                 f"{total_now} (backup: {total_backup}, +{total_now - total_backup} replayed "
                 "from the WAL archive)")
    for room in sorted(set(rooms) | set(manifest.rooms), key=_room_order)[:20]:
        then, now = manifest.rooms.get(room, 0), rooms.get(room, 0)
        lines.append(f"  room {room}: seq {now} (backup {then}{f', +{now - then}' if now > then else ''})")
    if len(rooms) > 20:
        lines.append(f"  ... and {len(rooms) - 20} more rooms")
    changed = {t: (manifest.rows.get(t, 0), n) for t, n in rows.items()
               if manifest.rows.get(t, 0) != n}
    lines.append("rows: " + ", ".join(f"{t} {n}" for t, n in sorted(rows.items()))
                 + (f" (changed since the backup: {', '.join(changed)})" if changed else ""))
    if fewer:
        lines.append(f"WARNING rooms with fewer messages than the backup: {', '.join(fewer[:10])}")
    return lines


def _room_order(room: str) -> Any:
    return (0, int(room)) if room.isdigit() else (1, room)
