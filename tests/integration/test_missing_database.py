"""A server started without cam.databaseUrl stops at once with the one-line config
error that names the key, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("module", ["cam_edge.main", "cam_chat.main", "cam_presence.main",
                                    "cam_files.main", "cam_video_allocator.main"])
def test_a_server_without_a_database_url_says_so_in_one_line(module: str, tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "CAM_SERVER_DATE_PATH": str(tmp_path), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if "config error" in line or "Traceback" in line]
    assert len(lines) == 1 and "cam.databaseUrl" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
