"""When backups run, and what the health service and ``camctl backup status`` say
about them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cam_backups import backup
from cam_backups.main import next_run
from cam_health.main import ClusterView

from camcore.config import ConfigError, load_settings


def settings(tmp_path: Path, **env: str) -> Any:
    return load_settings(None, environ={"CAM_SERVER_DATE_PATH": str(tmp_path / "data"), **env})


def test_the_schedule_is_local_times_of_day_or_off(tmp_path: Path) -> None:
    assert settings(tmp_path).backup_schedule == ("02:00",)
    assert settings(tmp_path, CAM_BACKUP_SCHEDULE="14:30, 02:00").backup_schedule == (
        "02:00", "14:30")
    assert settings(tmp_path, CAM_BACKUP_SCHEDULE="off").backup_schedule == ()
    for bad in ("2am", "25:00", "02:00;03:00", ""):
        with pytest.raises(ConfigError, match="cam.backupSchedule"):
            settings(tmp_path, CAM_BACKUP_SCHEDULE=bad)


def test_the_backup_path_defaults_to_a_folder_beside_the_data_path(tmp_path: Path) -> None:
    assert settings(tmp_path).backup_root == tmp_path / "data-backups"
    assert settings(tmp_path, CAM_BACKUP_PATH="/mnt/camserver2").backup_root == Path(
        "/mnt/camserver2")


def test_the_next_run_is_the_next_listed_time() -> None:
    tz = dt.datetime.now().astimezone().tzinfo
    at = dt.datetime(2026, 12, 2, 1, 59, tzinfo=tz)
    assert next_run(("02:00",), at) == at.replace(hour=2, minute=0)
    assert next_run(("02:00",), at.replace(hour=2, minute=0)) == dt.datetime(
        2026, 12, 3, 2, 0, tzinfo=tz)
    assert next_run(("02:00", "14:00"), at.replace(hour=9)) == at.replace(hour=14, minute=0)
    assert next_run((), at) is None


def test_status_warns_before_the_first_backup_and_without_an_archive(tmp_path: Path) -> None:
    report = backup.status(settings(tmp_path))
    assert not report["ok"] and report["last_backup_age"] is None
    assert "no backup yet" in report["warnings"]
    assert any("WAL archive is not running" in w for w in report["warnings"])


def beat(kind: str, **load: float) -> dict[str, Any]:
    return {"kind": kind, "instance": f"{kind}-1", "node": "camserver1", "pid": 1,
            "heartbeat_age": 0.5, "alive": True, "load": load}


def test_the_health_view_warns_on_an_old_backup_or_a_lagging_archive(tmp_path: Path) -> None:
    view = ClusterView(settings(tmp_path, CAM_BACKUP_MAX_WAL_LAG_BYTES="1000"))
    fine = view.backups([beat("backups", leader=1, backup_age=3600, wal_lag_bytes=0,
                              backup_ok=1)])
    assert fine["ok"] and fine["age"] == 3600 and fine["warnings"] == []
    old = view.backups([beat("backups", leader=1, backup_age=27 * 3600, wal_lag_bytes=0,
                             backup_ok=0)])
    assert not old["ok"] and old["warnings"] == ["the last backup is 27.0 h old"]
    lagging = view.backups([beat("backups", leader=1, backup_age=60, wal_lag_bytes=5000,
                                 backup_ok=1)])
    assert lagging["warnings"] == ["the WAL archive is 5000 bytes behind"]
    assert view.backups([beat("edge")])["warnings"] == ["no backups replica is running"]
    assert view.backups([beat("backups", leader=0)])["warnings"] == [
        "no backups replica is leading"]


def test_a_restore_time_is_iso_8601_and_local_without_a_zone() -> None:
    from cam_backups.pgtools import BackupError
    from cam_backups.restore import parse_time

    zoned = parse_time("2026-12-02T14:30:00+01:00")
    assert zoned.utcoffset() == dt.timedelta(hours=1)
    naive = parse_time("2026-12-02 14:30")
    assert naive.tzinfo is not None and naive.replace(tzinfo=None) == dt.datetime(2026, 12, 2, 14, 30)
    for bad in ("yesterday", "2026-13-01", "14:30:00+25:00", ""):
        with pytest.raises(BackupError, match="expected an ISO 8601 time"):
            parse_time(bad)


def test_nothing_to_restore_is_said_plainly(tmp_path: Path) -> None:
    from cam_backups.pgtools import BackupError
    from cam_backups.restore import restore

    with pytest.raises(BackupError, match="no verified backup in .*nothing to restore"):
        restore(settings(tmp_path), data_path=tmp_path / "target")
    assert not (tmp_path / "target" / "postgres").exists()
