"""The local cluster runner, used as a newcomer would: start, check health, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camctl import rig


def _two_free_ports() -> int:
    for _ in range(50):
        port = rig.free_port()
        if port < 65000 and not rig.port_open(port + 1):
            return port
    pytest.fail("no two consecutive free ports")


def test_camctl_up_starts_a_healthy_two_node_cluster_and_stops_cleanly(tmp_path: Path):
    base = _two_free_ports()
    env = {**os.environ, "CAM_SERVER_DATE_PATH": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "up.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "camctl.cli", "up", "--base-port", str(base)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        rig.wait_for(lambda: proc.poll() is None and b"The cluster is up" in
                     (tmp_path / "up.out").read_bytes(), 120, "camctl up")
        text = (tmp_path / "up.out").read_text()
        assert f"camserver1: http://127.0.0.1:{base}/" in text
        assert f"camserver2: http://127.0.0.1:{base + 1}/" in text
        assert "log in as 'admin'" in text
        for port in (base, base + 1):
            assert rig.http_get(f"http://127.0.0.1:{port}/CAMServer/healthCheck") == (
                200, b'{"status":200}')
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()  # under serverDatePath
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, (tmp_path / "up.out").read_text()
    time.sleep(0.2)
    for port in (base, base + 1):
        assert not rig.port_open(port)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes left running after Ctrl-C"
