"""``camctl up`` with its load balancer, and ``camctl sub`` against the running cluster."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from camclient.client import Client, login
from camctl import lb, rig


class Up:
    """A running ``camctl up`` and what it printed."""

    def __init__(self, tmp_path: Path) -> None:
        self.base, self.lb_port = rig.free_port(), rig.free_port()
        self.env = {**os.environ, "CAM_SERVER_DATE_PATH": str(tmp_path / "data"),
                    "PYTHONUNBUFFERED": "1", "CAM_DRAIN_SECONDS": "0.3"}
        self.out = tmp_path / "up.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "camctl.cli", "up", "--base-port", str(self.base),
                 "--lb-port", str(self.lb_port)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                              env=self.env, timeout=60)

    def sub(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "camctl.cli", "sub", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path)
    try:
        def started() -> bool:
            if running.proc.poll() is not None:
                pytest.fail(f"camctl up exited with {running.proc.returncode}:\n{running.text()}")
            return "The cluster is up" in running.text()

        rig.wait_for(started, 120, "camctl up")
        yield running
    finally:
        code = running.stop() if running.proc.poll() is None else running.proc.returncode
        assert code == 0, running.text()
        assert not rig.port_open(running.lb_port), "load balancer left running"


async def test_camctl_up_puts_a_load_balancer_in_front_and_sub_prints_the_bus(up: Up) -> None:
    text = up.text()
    url = f"https://{lb.LB_HOST}:{up.lb_port}"
    assert f"load balancer (caddy): {url}/" in text
    ca = Path(re.search(r"certificate to trust: (\S+)", text).group(1))  # type: ignore[union-attr]
    ctx = ssl.create_default_context(cafile=str(ca))
    async with httpx.AsyncClient(verify=ctx, base_url=url) as http:
        health = await http.get("/CAMServer/healthCheck")
        assert (health.status_code, health.content) == lb.HEALTH_OK
        info = (await http.get("/api/cluster")).json()
    assert info["load_balancer"] is True and info["client"]["scheme"] == "https"
    # Each edge lists its own host first; camserverN listens on 127.0.1.N.
    own = f"127.0.1.{info['node'][-1]}:{up.base}"
    assert info["own_host"] == info["hosts"][0] == own
    assert sorted(info["hosts"]) == [f"127.0.1.1:{up.base}", f"127.0.1.2:{up.base}"]

    # The other commands docker-compose.yml runs, against this cluster: the edge
    # healthcheck and the one-shot migration (already applied by camctl up).
    probe = up.run("camctl.lb", "probe", f"http://127.0.1.1:{up.base}/CAMServer/healthCheck")
    assert probe.returncode == 0, probe.stderr
    migrate = up.run("camctl.cli", "migrate")
    assert migrate.returncode == 0 and "up to date" in migrate.stdout, migrate.stderr

    # Every bus message, decoded: heartbeats flow all the time.
    every = up.sub("cam.>", "--count", "5")
    out, err = every.communicate(timeout=30)
    assert every.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5 and all(line["subject"].startswith("cam.") for line in lines)
    assert any(line["subject"].startswith("cam.hb.") and isinstance(line["payload"], dict)
               for line in lines)

    # A chat message sent through the load balancer shows up on its room subject.
    password = (Path(up.env["CAM_SERVER_DATE_PATH"]) / "admin-password.txt").read_text().strip()
    token = await login(url, "admin", password, verify=ctx)
    rooms = up.sub("cam.room.*.ev", "--count", "1")
    client = await _connect(f"wss://{lb.LB_HOST}:{up.lb_port}/ws", token, ca)
    try:
        room = await client.request("create_room", name="debug", members=[])
        # The subscriber is ready once it sees traffic; send until it has printed one
        # event and exited (--count 1).
        deadline = time.monotonic() + 30
        while rooms.poll() is None:
            assert time.monotonic() < deadline, "camctl sub printed no room event in 30 s"
            await client.send(room["id"], "seen on the bus")
            await asyncio.sleep(0.1)
        out, err = rooms.communicate(timeout=30)
    finally:
        await client.close()
        if rooms.poll() is None:
            rooms.kill()
    assert rooms.returncode == 0, err
    [printed] = out.splitlines()
    event = json.loads(printed)
    assert event["subject"] == f"cam.room.{room['id']}.ev"
    assert "seen on the bus" in json.dumps(event["payload"], ensure_ascii=False)


async def _connect(url: str, token: str, ca: Path) -> Client:
    """A WebSocket client that trusts ``ca`` (the default trust store reads SSL_CERT_FILE)."""
    previous = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca)
    try:
        return await Client.connect(url, token)
    finally:
        if previous is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = previous
