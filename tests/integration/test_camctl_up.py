"""The local cluster runner, used as a newcomer and an operator would: ``make up`` in a
fresh clone, the printed login hint, conferences, then ``camctl status``, ``restart``,
``logs``, ``kill-host``, ``start-host`` and ``down`` from another terminal; and no
process left behind when ``camctl`` itself is killed."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from camctl import rig

REPO = Path(__file__).resolve().parents[2]


class Up:
    """A running ``make up`` / ``camctl up`` and what it printed."""

    def __init__(self, tmp_path: Path, argv: list[str], cwd: Path = REPO, *,
                 make: bool = False) -> None:
        self.data = tmp_path / "data"
        self.base, self.lb_port = rig.free_port(), rig.free_port()
        self.env = {**os.environ, "CAM_SERVER_DATE_PATH": str(self.data), "PYTHONUNBUFFERED": "1",
                    "CAM_DRAIN_SECONDS": "0.3"}
        self.out = tmp_path / "up.out"
        options = ["--base-port", str(self.base), "--lb-port", str(self.lb_port)]
        argv = [*argv, "ARGS=" + " ".join(options)] if make else [*argv, *options]
        with open(self.out, "wb") as out:
            # Its own process group, as a terminal gives it: Ctrl-C reaches make and camctl.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=cwd, start_new_session=True)
        rig.wait_for(self.started, 180, "the cluster to be up")
        self.children = {p.pid: p for p in psutil.Process(self.proc.pid).children(recursive=True)}

    def started(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"camctl up exited with {self.proc.returncode}:\n{self.text()}")
        return "The cluster is up" in self.text()

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def camctl(self, *argv: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        """``camctl`` from another terminal."""
        return subprocess.run([sys.executable, "-m", "camctl.cli", *argv], capture_output=True,
                              text=True, env=self.env, timeout=timeout)

    def status(self) -> dict[str, list[str]]:
        r = self.camctl("status")
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()[1:] if line and "/" in line.split()[0]]
        return {row[0]: row[1:] for row in rows}

    def leftovers(self) -> list[str]:
        """The processes started for this cluster that still run."""
        left = []
        for proc in self.children.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(proc.cmdline())[:120])
            except psutil.NoSuchProcess:
                pass
        return left


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Iterator[Path]:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # Uncommitted work is part of what is tested when run from a work tree.
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True, check=True)
    if diff.stdout:
        subprocess.run(["git", "-C", str(clone), "apply", "--whitespace=nowarn"], input=diff.stdout,
                       check=True)
    yield clone


def test_make_up_in_a_fresh_clone_runs_conferences_and_the_login_hint_works(
        tmp_path: Path, fresh_clone: Path):
    venv = Path(sys.executable).parent.parent  # the venv `make` would make, already made
    # -o: the venv counts as installed (make must not reinstall it from the clone).
    up = Up(tmp_path, ["make", "--no-print-directory", "-o", f"{venv}/.installed", "up",
                       f"VENV={venv}"], cwd=fresh_clone, make=True)
    try:
        text = up.text()
        assert "video: 2 Janus servers" in text, text
        for i in (1, 2):
            assert f"camserver{i}: http://127.0.1.{i}:{up.base}/" in text
        # The printed login command works as printed.
        hint = re.search(r"(curl -s -X POST .*/api/login)", text)
        assert hint, text
        argv = shlex.split(hint.group(1))
        body = argv[argv.index("-d") + 1]
        url = argv[-1]
        assert url == f"http://127.0.1.1:{up.base}/api/login"
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["token"], r.text

        # Conferences: every Janus is healthy in the allocator's view.
        video = up.camctl("video", "status")
        assert video.returncode == 0, video.stderr
        servers = json.loads(video.stdout)["servers"]
        assert sorted(s["name"] for s in servers) == ["camserver1", "camserver2"]
        assert all(s["healthy"] for s in servers), servers

        status = up.status()
        for host in ("camserver1", "camserver2"):
            for part in ("edge", "nats", "chat1", "presence1", "files1", "health", "backups",
                         "video", "janus"):
                assert status[f"{host}/{part}"][1] == "RUNNING", status
        assert status["camserver1/postgres"][1] == "RUNNING"
        assert status["lb/caddy"][1] == "RUNNING"
        old_pid = status["camserver2/chat1"][2]

        restart = up.camctl("restart", "camserver2/chat1")
        assert restart.returncode == 0 and "RUNNING" in restart.stdout, restart.stderr
        rig.wait_for(lambda: up.status()["camserver2/chat1"][4] == "1", 10, "restart counted")
        assert up.status()["camserver2/chat1"][2] != old_pid

        logs = up.camctl("logs", "camserver1/edge", "-n", "5")
        assert logs.returncode == 0 and "cam-edge" in logs.stdout, logs.stdout + logs.stderr
        assert len(logs.stdout.splitlines()) <= 5

        killed = up.camctl("kill-host", "camserver2")
        assert killed.returncode == 0, killed.stderr
        rig.wait_for(lambda: all(v[1] == "HOST" for k, v in up.status().items()
                                 if k.startswith("camserver2/")), 15, "camserver2 shown down")
        assert rig.edge_ready(up.base, "127.0.1.1")  # the other host keeps serving
        assert "camserver2: killed" in up.text()
        back = up.camctl("start-host", "camserver2")
        assert back.returncode == 0, back.stdout + back.stderr
        assert rig.edge_ready(up.base, "127.0.1.2")

        down = up.camctl("down")
        assert down.returncode == 0, down.stderr
        assert up.proc.wait(30) == 0, up.text()
    finally:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C
            up.proc.wait(90)
    assert not rig.port_open(up.base, "127.0.1.1") and not rig.port_open(up.lb_port)
    rig.wait_for(lambda: up.leftovers() == [], 10, "no process left after camctl down")


def test_killing_camctl_with_sigkill_leaves_no_process_behind(tmp_path: Path):
    up = Up(tmp_path, [sys.executable, "-m", "camctl.cli", "up", "--no-video"])
    # Supervisors, NATS, PostgreSQL and its workers, services, edges, the load balancer.
    assert len(up.leftovers()) >= 12, up.leftovers()
    up.proc.kill()
    up.proc.wait(10)
    rig.wait_for(lambda: up.leftovers() == [], 60, "every child of camctl to be gone")
    assert not rig.port_open(up.base, "127.0.1.1")


def test_camctl_up_backs_up_and_switches_to_its_database_standby(tmp_path: Path):
    up = Up(tmp_path, [sys.executable, "-m", "camctl.cli", "up", "--no-video", "--no-lb",
                       "--standby"])
    try:
        assert "database: streaming standby on camserver2" in up.text()
        status = up.status()
        assert status["camserver2/postgres-standby"][1] == "RUNNING"
        assert all(status[f"{h}/backups"][1] == "RUNNING" for h in ("camserver1", "camserver2"))
        taken = up.camctl("backup")
        assert taken.returncode == 0 and "taken and verified" in taken.stdout, taken.stderr

        def report() -> dict[str, Any]:
            r = up.camctl("backup", "status", "--json")
            got: dict[str, Any] = json.loads(r.stdout)
            return got

        rig.wait_for(lambda: report()["ok"], 60, "backups without warnings")
        shown = report()
        assert shown["path"] == f"{up.data}-backups" and shown["wal_lag_bytes"] is not None
        assert up.camctl("backup", "verify").returncode == 0

        # Unit 1 fails as a whole; the standby becomes the primary.
        assert up.camctl("kill-host", "camserver1").returncode == 0
        promoted = up.camctl("db", "promote")
        assert promoted.returncode == 0 and "promoted" in promoted.stdout, promoted.stderr
        # Services on camserver2 find it by themselves: a login (a write) works there.
        password = (up.data / "admin-password.txt").read_text().strip()

        def logs_in() -> bool:
            r = httpx.post(f"http://127.0.1.2:{up.base}/api/login",
                           json={"username": "admin", "password": password})
            return r.status_code == 200

        rig.wait_for(logs_in, 60, "a login on camserver2 after the promotion")
        # The old primary stays stopped when its host comes back.
        back = up.camctl("start-host", "camserver1")
        assert back.returncode == 0 and "old database primary" in back.stdout, back.stdout
        roles = up.camctl("db", "status").stdout
        assert "old primary, stopped" in roles and "primary: 127.0.1.2" in roles, roles
        assert rig.edge_ready(up.base, "127.0.1.1")
        assert up.camctl("down").returncode == 0
        assert up.proc.wait(30) == 0, up.text()
        # Started again as it was, the old primary would be a second primary: refused.
        again = up.camctl("up", "--no-video", "--no-lb", timeout=60)
        assert again.returncode == 1 and "was promoted" in again.stderr, again.stderr
    finally:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGINT)
            up.proc.wait(90)
