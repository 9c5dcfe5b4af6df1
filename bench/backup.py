"""Backup and restore times: ``python -m bench.backup [--messages N]``.

A database of N messages of 200 bytes in 100 rooms on the embedded PostgreSQL; then a
full backup with its verification (PostgreSQL started on a copy, the manifest read
from it), an incremental one after 1 % more messages, and a restore of the chain
(verify, combine, replay, compare). Prints each time and size, and the incremental
backup's size as a fraction of the full one. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from cam_backups import backup, restore

from camcore import db
from camcore.config import load_settings
from camctl import rig


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.backup")
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cam-bench-backup-"))
    data = work / "data"
    pg = rig.Postgres(data / "postgres", secrets_dir=data / "run" / "creds").start()
    try:
        dsn = pg.create_app_database("cam")
        asyncio.run(db.migrate(dsn))
        pg.psql(f"""INSERT INTO cam.users (username, display_name, password_hash)
                VALUES ('u', 'u', 'x');
            INSERT INTO cam.rooms (kind, name, created_by)
                SELECT 'group', 'r' || g, 1 FROM generate_series(1, 100) g;
            INSERT INTO cam.messages (room_id, seq, cid, sender_id, body)
                SELECT g % 100 + 1, g / 100 + 1, 'c' || g, 1, repeat('x', 200)
                FROM generate_series(0, {args.messages - 1}) g""", database="cam")
        settings = load_settings(None, environ={
            "CAM_SERVER_DATE_PATH": str(data), "CAM_DATABASE_URL": dsn,
            "CAM_BACKUP_DATABASE_URL": pg.create_backup_role(),
            "CAM_BACKUP_PATH": str(work / "backups")})
        lay = backup.layout(settings)
        started = time.monotonic()
        full = backup.take(settings)
        full_s = time.monotonic() - started
        more = args.messages // 100
        pg.psql(f"""INSERT INTO cam.messages (room_id, seq, cid, sender_id, body)
            SELECT g % 100 + 1, {args.messages // 100 + 1} + g / 100, 'd' || g, 1, repeat('y', 200)
            FROM generate_series(0, {more - 1}) g""", database="cam")
        started = time.monotonic()
        incremental = backup.take(settings)
        incremental_s = time.monotonic() - started
        database = pg.psql("SELECT pg_size_pretty(pg_database_size('cam'))")
    finally:
        pg.stop()
    started = time.monotonic()
    restored = restore.restore(settings, data_path=work / "restored")
    restore_s = time.monotonic() - started
    full_b, incremental_b = size(lay.db / full.id), size(lay.db / incremental.id)
    print(f"database: {args.messages + more} messages, {database}")
    print(f"full backup + verification: {full_s:.1f} s, {full_b / 2**20:.0f} MiB")
    print(f"incremental after {more} more messages: {incremental_s:.1f} s, "
          f"{incremental_b / 2**20:.1f} MiB ({incremental_b / full_b:.2f} x the full one)")
    print(f"restore (verify, combine, replay, compare): {restore_s:.1f} s, "
          f"{sum(restored.rooms.values())} messages back")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
