"""Attachments to and from the backup path, with rclone.

The copy under ``<cam.backupPath>/files`` mirrors the store it comes from: the
``<first two characters>/<key>`` folders of ``cam.storage=shared`` and ``local``, or
the flat keys of the bucket's ``files/`` prefix with ``cam.storage=s3``. Copies only
add (``rclone copy``, never ``sync``): a file deleted on the server stays in the backup
for as long as a kept backup names it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from camcore.config import Settings
from camctl.rig import rclone_binary

from .pgtools import BackupError

_REMOTE = "camstore"
_CHECKED = ".checked.json"


def _store(settings: Settings) -> tuple[str, dict[str, str]]:
    """The rclone source of this node's attachments, and the environment that names it
    (an S3 key pair goes in the environment, never on the command line)."""
    if settings.storage == "s3":
        prefix = f"RCLONE_CONFIG_{_REMOTE.upper()}_"
        env = {prefix + "TYPE": "s3", prefix + "PROVIDER": "Other",
               prefix + "ACCESS_KEY_ID": settings.s3_access_key,
               prefix + "SECRET_ACCESS_KEY": settings.s3_secret_key,
               prefix + "REGION": settings.s3_region, prefix + "FORCE_PATH_STYLE": "true"}
        if settings.s3_endpoint:
            env[prefix + "ENDPOINT"] = settings.s3_endpoint
        return f"{_REMOTE}:{settings.s3_bucket}/files", env
    return str(settings.data_root.expanduser().resolve() / "files"), {}


def _rclone(args: list[str], extra_env: dict[str, str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update(extra_env)
    env["RCLONE_CONFIG"] = "/dev/null"  # remotes come from the environment only
    r = subprocess.run([rclone_binary(), *args, "--exclude", "/.tmp/**", "--exclude",
                        f"/{_CHECKED}", "--retries", "3", "--low-level-retries", "3",
                        "--contimeout", "10s", "--timeout", "60s", "-q"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()[-6:]
        raise BackupError(f"{what} failed (rclone exit {r.returncode}): " + "\n  ".join(lines))


def to_backup(settings: Settings, dest: Path) -> None:
    """New attachments of this node's store into the backup."""
    source, env = _store(settings)
    if not env and not Path(source).is_dir():
        return  # nothing uploaded yet
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    _rclone(["copy", source, str(dest)], env, "copying attachments to the backup")


def from_backup(settings: Settings, source: Path) -> None:
    """Every attachment of the backup into this node's store."""
    dest, env = _store(settings)
    if not env:
        Path(dest).mkdir(parents=True, exist_ok=True)
    _rclone(["copy", str(source), dest], env, "copying attachments from the backup")


def locate(files: Path, key: str) -> Path | None:
    for path in (files / key[:2] / key, files / key):
        if path.is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(files: Path, wanted: dict[str, dict[str, Any]], *, remember: bool = True) -> list[str]:
    """The attachments of ``wanted`` (key -> size, sha256) that are missing from the
    copy or differ. With ``remember``, each file is hashed once: what was checked is
    kept by size and modification time in ``.checked.json``."""
    cache_path = files / _CHECKED
    try:
        cache: dict[str, list[Any]] = (json.loads(cache_path.read_text(encoding="utf-8"))
                                       if remember else {})
    except (OSError, ValueError):
        cache = {}
    bad = []
    for key, info in wanted.items():
        path = locate(files, key)
        if path is None:
            bad.append(f"{key} (missing)")
            continue
        st = path.stat()
        if st.st_size != info["size"]:
            bad.append(f"{key} (size {st.st_size}, expected {info['size']})")
            continue
        seen = [st.st_size, st.st_mtime_ns, info["sha256"]]
        if cache.get(key) == seen:
            continue
        if _sha256(path) != info["sha256"]:
            bad.append(f"{key} (SHA-256 differs)")
            continue
        cache[key] = seen
    if remember and files.is_dir():
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, cache_path)
    return bad


def prune(files: Path, named: set[str], older_than: dt.datetime) -> int:
    """Remove copies that no kept backup names and that are older than the oldest kept
    backup (newer ones belong to the WAL archive's span, after the last backup)."""
    limit = older_than.timestamp()
    keys = {k for key in named for k in (key, f"{key}.thumb", f"{key}.preview")}
    removed = 0
    for path in files.rglob("*"):
        if path.is_file() and path.name != _CHECKED and path.name not in keys:
            if path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
    return removed
