"""One supervisord per local host: the programs of a host, restarted when they die.

A real CAMServer host runs its processes under systemd (``deploy/systemd/``); a local
host of ``camctl up`` runs them under supervisord (PyPI ``supervisor``), which restarts
a dead program, backs off a program that keeps failing to start and finally marks it
FATAL, keeps one rotated log per program (:class:`LogRotation`), and answers
``camctl status``, ``restart`` and ``logs`` from any terminal over a unix socket (mode
0700).

Every program is started through :mod:`camctl.child`, so it dies with its supervisor;
the supervisor is started the same way, so it dies with ``camctl up``. Killing a host
(``camctl kill-host``) is SIGKILL of its supervisor and every process under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from .rig import Proc, RigError, tail, wait_for

# States of supervisord's process state machine (supervisor/states.py).
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")
BAD_NAME, ALREADY_STARTED, NOT_RUNNING = 10, 60, 70


@dataclass
class Program:
    """One process of a host, as the supervisor runs it."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log: Path
    priority: int = 50
    stop_signal: str = "TERM"
    stop_wait: float = 30.0
    user: str | None = None
    cwd: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LogRotation:
    """How supervisord rotates each program's log (``cam.logMaxBytes``, ``cam.logBackups``):
    at ``max_bytes`` (0: never), keeping ``backups`` old files, ``<log>.1`` the newest."""

    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5


def _ini_value(value: object) -> str:
    return str(value).replace("%", "%%")  # supervisord expands %(name)s


def socket_path(rundir: Path, host: str) -> Path:
    """A unix socket path short enough for AF_UNIX (108 bytes)."""
    path = rundir / f"{host}.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(rundir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"cam-{os.geteuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / f"{host}.sock"


class _Api:
    """supervisord's XML-RPC ``supervisor.*`` methods, one connection per call."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> Any:
            transport = SupervisorTransport(None, None, f"unix://{self.sock}")
            try:
                proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
                return getattr(proxy.supervisor, method)(*args)
            finally:
                transport.close()

        return call


def rpc(sock: Path) -> Any:
    """The supervisor listening on ``sock``."""
    return _Api(sock)


class HostSupervisor:
    """supervisord for one host, with its programs declared up front or added later."""

    def __init__(self, host: str, rundir: Path, logdir: Path, *, autorestart: bool = True,
                 start_retries: int = 5, rotation: LogRotation | None = None) -> None:
        self.host = host
        self.rotation = rotation or LogRotation()
        self.rundir = rundir / host
        self.logdir = logdir
        self.autorestart = autorestart
        self.start_retries = start_retries
        self.sock = socket_path(rundir, host)
        self.programs: dict[str, Program] = {}
        self.proc: Proc | None = None

    # -------------------------------------------------------------- config

    @property
    def conf(self) -> Path:
        return self.rundir / "supervisord.conf"

    def _spec_path(self, name: str) -> Path:
        return self.rundir / "programs" / f"{name}.json"

    def _write(self) -> None:
        (self.rundir / "programs").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.rundir.chmod(0o700)
        lines = [
            "[unix_http_server]", f"file={_ini_value(self.sock)}", "chmod=0700", "",
            "[supervisord]", "nodaemon=true", f"identifier={self.host}",
            f"logfile={_ini_value(self.logdir / f'{self.host}-supervisord.log')}",
            "logfile_maxbytes=5MB", "logfile_backups=2",
            # Its own log only to that file: stdout (<host>-supervisord.out) is not rotated.
            "silent=true",
            f"pidfile={_ini_value(self.rundir / 'supervisord.pid')}",
            f"childlogdir={_ini_value(self.logdir)}", "minfds=1024", "minprocs=200", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{_ini_value(self.sock)}", "",
        ]
        for prog in self.programs.values():
            spec = self._spec_path(prog.name)
            spec.write_text(json.dumps({
                "argv": prog.argv, "env": dict(prog.env), "user": prog.user,
                "cwd": str(prog.cwd) if prog.cwd else None, "pdeathsig": "SIGKILL",
            }), encoding="utf-8")
            spec.chmod(0o600)  # the environment holds database URLs and keys
            prog.log.parent.mkdir(parents=True, exist_ok=True)
            lines += [
                f"[program:{prog.name}]",
                f"command={_ini_value(sys.executable)} -m camctl.child {_ini_value(spec)}",
                f"priority={prog.priority}", "autostart=false",
                f"autorestart={'true' if self.autorestart else 'false'}",
                # A program that dies within 2 s of starting is retried with a growing
                # delay (1 s, 2 s, ...) and marked FATAL after start_retries tries.
                "startsecs=2", f"startretries={self.start_retries}",
                f"stopsignal={prog.stop_signal}", f"stopwaitsecs={int(prog.stop_wait)}",
                "killasgroup=true", "redirect_stderr=true",
                f"stdout_logfile={_ini_value(prog.log)}",
                f"stdout_logfile_maxbytes={self.rotation.max_bytes}",
                f"stdout_logfile_backups={self.rotation.backups}", "",
            ]
        self.conf.write_text("\n".join(lines), encoding="utf-8")

    def add(self, prog: Program) -> None:
        """Declare ``prog``; on a running supervisor it is added at once (not started)."""
        self.programs[prog.name] = prog
        self._write()
        if self.running():
            api = rpc(self.sock)
            api.reloadConfig()
            try:
                api.addProcessGroup(prog.name)
            except xmlrpc.client.Fault as exc:
                if "ALREADY_ADDED" not in exc.faultString:
                    raise
                # Changed program: replace it so the new spec applies.
                if self.state(prog.name) in RUNNING_STATES:
                    api.stopProcess(prog.name, True)
                api.removeProcessGroup(prog.name)
                api.addProcessGroup(prog.name)

    # -------------------------------------------------------------- the supervisor

    def start(self, timeout: float = 20.0) -> HostSupervisor:
        self._write()
        self.sock.unlink(missing_ok=True)
        spec = self.rundir / "supervisord.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # SIGTERM on its parent's death: supervisord then stops its programs in order.
        spec.write_text(json.dumps({
            "argv": [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            "env": env, "user": None, "cwd": None, "pdeathsig": "SIGTERM"}), encoding="utf-8")
        spec.chmod(0o600)
        self.proc = Proc(f"{self.host}-supervisord", [sys.executable, "-m", "camctl.child", str(spec)],
                         self.logdir / f"{self.host}-supervisord.out").start()
        wait_for(lambda: (self.proc.check_alive(), self.running())[1],  # type: ignore[union-attr]
                 timeout, f"supervisor of {self.host}")
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.alive() else None

    def running(self) -> bool:
        try:
            return bool(rpc(self.sock).getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every program (reverse priority order) and the supervisor itself."""
        if not self.alive():
            return
        try:
            rpc(self.sock).shutdown()
        except (OSError, xmlrpc.client.Error):
            self.proc.signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert self.proc is not None and self.proc.popen is not None
        try:
            self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def kill_all(self) -> list[int]:
        """SIGKILL the supervisor and every process under it at once (a host crash)."""
        pids = tree(self.proc.pid) if self.alive() else []  # type: ignore[union-attr]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.popen is not None:
            self.proc.popen.wait(10)
        return pids

    # -------------------------------------------------------------- programs

    def info(self, name: str) -> dict[str, Any]:
        return dict(rpc(self.sock).getProcessInfo(name))

    def all_info(self) -> list[dict[str, Any]]:
        return [dict(i) for i in rpc(self.sock).getAllProcessInfo()]

    def state(self, name: str) -> str:
        return str(self.info(name)["statename"])

    def start_program(self, name: str) -> None:
        try:
            rpc(self.sock).startProcess(name, False)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != ALREADY_STARTED:
                raise RigError(f"{self.host}/{name} did not start: {exc.faultString}") from None

    def stop_program(self, name: str) -> None:
        try:
            rpc(self.sock).stopProcess(name, True)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != NOT_RUNNING:
                raise

    def pid_of(self, name: str) -> int:
        return int(self.info(name)["pid"])


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


class SupervisedProc:
    """A supervised program with the interface of :class:`camctl.rig.Proc`."""

    def __init__(self, supervisor: HostSupervisor, program: Program) -> None:
        self.supervisor, self.program = supervisor, program
        self.name = program.name
        self.log_path = program.log

    def start(self) -> SupervisedProc:
        self.supervisor.start_program(self.name)
        return self

    @property
    def pid(self) -> int:
        return self.supervisor.pid_of(self.name)

    def alive(self) -> bool:
        try:
            return self.supervisor.state(self.name) in ("STARTING", "RUNNING", "STOPPING")
        except (OSError, xmlrpc.client.Error):
            return False

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the supervisor may then restart it)."""
        if self.alive():
            pid = self.pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not psutil.pid_exists(pid) or _zombie(pid), 10, f"{self.name} to die")

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.supervisor.stop_program(self.name)

    def tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def check_alive(self) -> None:
        if not self.alive():
            state = "unknown"
            try:
                state = self.supervisor.state(self.name)
            except (OSError, xmlrpc.client.Error):
                pass
            raise RigError(f"{self.supervisor.host}/{self.name} is {state}; last log lines:\n"
                           f"{self.tail()}")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_running(supervisor: HostSupervisor, name: str, timeout: float) -> int:
    """Until ``name`` is RUNNING; returns its pid. Raises on FATAL."""
    deadline = time.monotonic() + timeout
    while True:
        info = supervisor.info(name)
        if info["statename"] == "RUNNING":
            return int(info["pid"])
        if info["statename"] == "FATAL" or time.monotonic() > deadline:
            raise RigError(f"{supervisor.host}/{name} is {info['statename']}")
        time.sleep(0.1)
