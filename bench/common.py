"""A benchmark cluster: the same real processes as ``camctl up``, on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from camcore import accounts, db
from camctl import rig

RESULTS = Path(__file__).resolve().parent / "results"


class BenchCluster:
    def __init__(self, *, edges: int = 2, chat: int = 1, presence: int = 2,
                 extra_env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cam-bench-"))
        self.nats = rig.NatsCluster(self.tmp / "logs", size=2)
        self.pg = rig.Postgres(self.tmp / "pg")
        self.n_edges, self.n_chat, self.n_presence = edges, chat, presence
        self.extra_env = extra_env or {}
        self.procs: dict[str, rig.Proc] = {}
        self.ports: dict[str, int] = {}
        self.dsn = ""

    def env(self, name: str) -> dict[str, str]:
        return {"CAM_DATABASE_URL": self.dsn, "CAM_NATS_URL": ",".join(self.nats.urls),
                "CAM_SERVER_DATE_PATH": str(self.tmp / "data"), "CAM_NODE_NAME": name,
                "CAM_LOG_LEVEL": "WARNING", **self.extra_env}

    async def start(self) -> BenchCluster:
        self.nats.start()
        await asyncio.to_thread(self.pg.start)
        self.dsn = await asyncio.to_thread(self.pg.create_database, "cam")
        await db.migrate(self.dsn)
        logs = self.tmp / "logs"
        for i in range(self.n_chat):
            self.procs[f"chat{i + 1}"] = rig.service("chat", f"chat{i + 1}",
                                                     self.env(f"chat{i + 1}"), logs).start()
        for i in range(self.n_presence):
            name = f"presence{i + 1}"
            self.procs[name] = rig.service("presence", name, self.env(name), logs).start()
        for i in range(self.n_edges):
            name = f"camserver{i + 1}"
            port = self.ports[name] = rig.free_port()
            env = {**self.env(name), "CAM_HTTP_PORT": str(port), "CAM_HTTP_HOST": "127.0.0.1",
                   "CAM_NATS_URL": self.nats.url(i % 2)}
            self.procs[name] = rig.service("edge", name, env, logs).start()
        for name, port in self.ports.items():
            await asyncio.to_thread(rig.wait_for, lambda port=port: rig.edge_ready(port), 60, name)
        return self

    def ws(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.ports[name]}/ws"

    async def make_users(self, n: int, prefix: str = "b") -> list[tuple[int, str]]:
        """``n`` users with one session token each (hashing once, inserting in bulk)."""
        pool = await db.create_pool(self.dsn, max_size=2)
        try:
            pw_hash = accounts._hasher.hash(secrets.token_hex(8))
            rows = await pool.fetch(
                "INSERT INTO users (username, display_name, password_hash)"
                " SELECT $1 || g, $1 || g, $2 FROM generate_series(1, $3) g RETURNING id",
                prefix, pw_hash, n)
            out = []
            for r in rows:
                token = await accounts.create_session(pool, r["id"], timedelta(hours=1))
                out.append((r["id"], token))
            return out
        finally:
            await pool.close()

    async def pool(self) -> asyncpg.Pool:
        return await db.create_pool(self.dsn, max_size=4)

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()
        self.nats.stop()
        self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nats_server": version([rig.nats_server_binary(), "--version"]),
        "postgres": version([str(rig.postgres_bin() / "postgres"), "--version"]),
    }


def write_report(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md.write_text(markdown, encoding="utf-8")
    return js, md
