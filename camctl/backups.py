"""``camctl backup``, ``camctl backup status|verify`` and ``camctl restore``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cam_backups import backup, restore
from cam_backups.pgtools import BackupError

from camcore.config import Settings


def with_cluster(settings: Settings, state: dict[str, Any]) -> Settings:
    """Settings completed by the running local cluster (``camctl up``): its database and
    backup role, when boot.ini names none."""
    return dataclasses.replace(
        settings,
        database_url=settings.database_url or str(state.get("database_url") or ""),
        backup_database_url=(settings.backup_database_url
                             or str(state.get("backup_database_url") or "")))


def _fail(exc: BackupError) -> int:
    print(f"camctl: {exc}", file=sys.stderr)
    return 1


def cmd_backup(args: argparse.Namespace, settings: Settings, state: dict[str, Any]) -> int:
    settings = with_cluster(settings, state)
    action = args.action or "take"
    if action == "status":
        report = backup.status(settings)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_status(report))
        return 0 if report["ok"] else 3
    if action == "verify":
        return _verify(settings, args.backup)
    try:
        made = backup.take(settings, full=args.full, say=print)
    except BackupError as exc:
        return _fail(exc)
    print(f"backup {made.id} taken and verified in {made.seconds:.1f} s, in "
          f"{backup.layout(settings).root}")
    return 0


def _verify(settings: Settings, backup_id: str | None) -> int:
    lay = backup.layout(settings)
    try:
        chosen = restore.choose(lay, backup_id, None)
        chain = lay.chain(chosen.id)
        backup.check_chain(lay, chain)
    except BackupError as exc:
        return _fail(exc)
    from cam_backups import filecopy

    bad = filecopy.check(lay.files, chosen.files, remember=False)  # every file hashed again
    if bad:
        print(f"camctl: backup {chosen.id}: {len(bad)} attachment(s) missing or damaged: "
              + ", ".join(bad[:10]), file=sys.stderr)
        return 1
    print(f"backup {chosen.id}: database files and WAL intact (pg_verifybackup, chain of "
          f"{len(chain)}), {len(chosen.files)} attachments checked")
    return 0


def format_status(report: dict[str, Any]) -> str:
    lines = [f"backup path: {report['path']}",
             f"schedule: {', '.join(report['schedule']) or 'off'} (local time), keep {report['keep']}"]
    age = report["last_backup_age"]
    lines.append("last backup: " + (f"{report['last_success']} ({age_text(age)} ago)"
                                    if age is not None else "none yet"))
    lag = report["wal_lag_bytes"]
    lines.append("WAL archive: " + (f"{lag} bytes behind (checked {report['wal_checked_at']})"
                                    if lag is not None else "not streaming"))
    if report["files_synced_at"]:
        lines.append(f"attachments copied: {report['files_synced_at']}")
    lines.append(f"backups ({len(report['backups'])}):")
    for b in report["backups"]:
        lines.append(f"  {b['id']}  {b['kind']:<11}  finished {b['finished_at']}  "
                     f"{b['rooms']} rooms, {b['rows']} rows, {b['files']} files")
    for warning in report["warnings"]:
        lines.append(f"WARNING {warning}")
    return "\n".join(lines)


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_restore(args: argparse.Namespace, settings: Settings, state: dict[str, Any],
                running: Callable[[Path], int | None]) -> int:
    settings = with_cluster(settings, state)
    target = Path(args.data_path).expanduser().resolve() if args.data_path else None
    where = target or settings.data_root.expanduser().resolve()
    pid = running(where)
    if pid:
        print(f"camctl: a cluster is running from {where} (camctl pid {pid}); stop it with "
              "'camctl down' before restoring", file=sys.stderr)
        return 1
    try:
        to = restore.parse_time(args.to) if args.to else None
        result = restore.restore(settings, to=to, backup_id=args.backup, data_path=target,
                                 say=print)
    except BackupError as exc:
        return _fail(exc)
    print(f"\nrestored backup {result.backup.id}"
          + (f" and the WAL archive up to {result.target}" if result.target
             else " and the whole WAL archive after it")
          + f" into {result.data_path}.\n'camctl up' starts the cluster on it"
          + (f" (with cam.serverDatePath={result.data_path})" if target else "") + ".")
    return 0


def add_parsers(sub: Any, run: Callable[..., int]) -> None:
    b = sub.add_parser("backup", help="take a backup now; 'status' and 'verify' check them")
    b.add_argument("action", nargs="?", choices=["take", "status", "verify"], default="take")
    b.add_argument("backup", nargs="?", help="with verify: the backup id (default: the latest)")
    b.add_argument("--full", action="store_true", help="a full backup, not an incremental one")
    b.add_argument("--json", action="store_true", help="with status: the report as JSON")
    b.set_defaults(func=lambda args: run(cmd_backup, args))
    r = sub.add_parser("restore", help="restore the latest backup (or one up to --to) into a "
                       "fresh data path")
    r.add_argument("--to", help="replay the WAL archive up to this ISO 8601 time")
    r.add_argument("--backup", help="the backup id to start from (default: the newest that fits)")
    r.add_argument("--data-path", help="restore here instead of cam.serverDatePath")
    r.set_defaults(func=lambda args: run(cmd_restore, args))
