"""GET /CAMServer/healthCheck: exactly {"status":200} while the node can serve."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

from camcore import db
from camctl import rig
from tests.conftest import Cluster


def health(cluster: Cluster, node: str) -> tuple[int, bytes]:
    return rig.http_get(cluster.http(node) + "/CAMServer/healthCheck")


def healthy(cluster: Cluster, node: str) -> bool:
    return health(cluster, node) == (200, b'{"status":200}')


def test_every_edge_answers_200_with_the_exact_body(two_nodes: Cluster):
    for node in ("camserver1", "camserver2"):
        status, body = health(two_nodes, node)
        assert status == 200 and body == b'{"status":200}'


def test_health_turns_non_200_when_the_bus_is_down_and_recovers(two_nodes: Cluster):
    for proc in two_nodes.nats.procs:
        proc.kill()
    rig.wait_for(lambda: health(two_nodes, "camserver1")[0] == 503, 15, "503 on camserver1")
    rig.wait_for(lambda: health(two_nodes, "camserver2")[0] == 503, 15, "503 on camserver2")
    status, body = health(two_nodes, "camserver1")
    assert b"bus" in body and body != b'{"status":200}'
    for i in range(len(two_nodes.nats.procs)):
        two_nodes.nats.restart(i)
    # The edges reconnect by themselves; no restart.
    for node in ("camserver1", "camserver2"):
        rig.wait_for(functools.partial(healthy, two_nodes, node), 20, f"{node} healthy again")


async def test_health_turns_non_200_when_the_database_is_down(
    tmp_path: Path, cluster_factory: Any
):
    pg = rig.Postgres(tmp_path / "own-pg").start()
    try:
        dsn = pg.create_app_database("cam")
        await db.migrate(dsn)
        cluster: Cluster = cluster_factory(1)
        cluster.database = cluster.database_url = dsn  # this test's own PostgreSQL
        cluster.start_edge("camserver1")
        cluster.wait_edges()
        pg.stop("immediate")
        rig.wait_for(lambda: health(cluster, "camserver1")[0] == 503, 15, "503 without database")
        assert b"database" in health(cluster, "camserver1")[1]
        pg.start()
        rig.wait_for(lambda: health(cluster, "camserver1") == (200, b'{"status":200}'), 20,
                     "healthy after the database returns")
    finally:
        pg.stop()


def test_a_bad_config_value_stops_start_up_with_one_clear_line(tmp_path: Path):
    ini = tmp_path / "boot.ini"
    ini.write_text("cam.clusterHosts=camserver1;camserver2\n"
                   "cam.videoDomains=camserver1=fifty\n", encoding="utf-8")
    for module in ("cam_edge.main", "cam_chat.main", "cam_health.main"):
        r = subprocess.run([sys.executable, "-m", module, "--config", str(ini)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, module
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert "cam.videoDomains" in lines[0] and "fifty" in lines[0] and "expected" in lines[0]


def test_unknown_keys_are_named_in_a_warning_and_the_node_still_serves(
    tmp_path: Path, cluster_factory: Any
):
    ini = tmp_path / "boot.ini"
    ini.write_text("cam.clusterHosts=camserver1\ncam.natsUrls=nats://typo:4222\n", encoding="utf-8")
    cluster: Cluster = cluster_factory(1)
    edge = cluster.start_edge("camserver1", CAM_BOOT_INI=str(ini), CAM_HTTPPORT="1")
    cluster.wait_edges()
    assert health(cluster, "camserver1") == (200, b'{"status":200}')
    log = edge.log_path.read_text(errors="replace")
    assert "unknown keys ignored: cam.natsUrls (did you mean cam.natsUrl?)" in log
    assert "unknown CAM_* environment variables ignored: CAM_HTTPPORT" in log
