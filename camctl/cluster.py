"""A whole cluster on this machine: CAMServer hosts, their processes, readiness, faults.

Each host ``camserverN`` has a loopback address of its own (``127.0.1.N``) and runs
what a real CAMServer host runs: a NATS server, chat, presence and files replicas, a
health replica, a video allocator and a Janus SFU when video is on, and the edge.
PostgreSQL runs on host 1 (the spec's small configuration). The load balancer is the
front door on ``127.0.0.1``.

``camctl up``, the test fixtures, the load-balancer fixtures and the benchmarks all
build their clusters here. Processes run either directly (:class:`camctl.rig.Proc`:
what dies stays dead, for tests that decide themselves) or under one supervisor per
host (:mod:`camctl.supervisor`: what dies is restarted, and a host can be killed as a
whole, as ``camctl up`` runs them).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import signal
import time
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camcore import bus, permissions, subjects, wire
from camcore.errors import CamError

from . import lb, rig
from .supervisor import HostSupervisor, LogRotation, Program, SupervisedProc, wait_running

HOST_NETWORK = "127.0.1."
"""camserverN listens on 127.0.1.N: every host its own address, as real servers have."""
LB_ADDRESS = "127.0.0.1"
"""The load balancer, the cluster's front door, listens here (as https://localhost)."""
LB_SOURCE_ADDRESS = lb.SOURCE_ADDRESS
"""... and connects to the edges from here, the one address they trust for X-Forwarded-*."""
STATE_FILE = "cluster.json"
TARGETS_FILE = "prometheus-targets.json"
"""Beside the state file: every process's /metrics, as a Prometheus file_sd list."""
DEMOTED_MARKER = "postgres-primary.demoted"
"""Written by ``camctl db promote``: the old primary stays stopped."""
DEFAULT_PORTS = {"edge": 8080, "nats": 4222, "route": 6222, "postgres": 5432, "janus": 8088}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    index: int

    @classmethod
    def numbered(cls, index: int, own_address: bool = True) -> Host:
        address = f"{HOST_NETWORK}{index + 1}" if own_address else "127.0.0.1"
        return cls(f"camserver{index + 1}", address, index)


class LocalCluster:
    """Hosts and their processes. Start parts one by one, or all with :meth:`start_all`."""

    def __init__(self, root: Path, *, hosts: int = 2, supervised: bool = False,
                 autorestart: bool = True, fixed_ports: bool = False,
                 database_url: str = "", data_path: Path | None = None,
                 env: Mapping[str, str] | None = None, logdir: Path | None = None,
                 own_addresses: bool = True, start_retries: int = 5,
                 bus_auth: bool = True, log_rotation: LogRotation | None = None) -> None:
        self.root = root.resolve()
        # own_addresses=False puts every host on 127.0.0.1 (ports still per process).
        self.hosts = [Host.numbered(i, own_addresses) for i in range(hosts)]
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.logdir = logdir or self.root
        self.rundir = self.root / "run"
        self.data_path = data_path or self.root / "data"
        self.supervised, self.autorestart, self.fixed_ports = supervised, autorestart, fixed_ports
        self.start_retries = start_retries
        self.log_rotation = log_rotation
        self.bus_auth = bus_auth
        self.credentials: dict[str, permissions.Credential] = {}
        self.database_url = database_url
        self.backup_url = ""
        self.extra_env: dict[str, str] = dict(env or {})
        self.procs: dict[str, rig.Handle] = {}
        self.host_of: dict[str, str] = {}
        self.ports: dict[str, dict[str, int]] = {}
        self.ready_checks: dict[str, Callable[[], bool]] = {}
        self.edge_ports: dict[str, int] = {}
        self.supervisors: dict[str, HostSupervisor] = {}
        self.nats: rig.NatsCluster | None = None
        self.pg: rig.Postgres | None = None
        self.standby: rig.Postgres | None = None
        self.sfus: dict[str, rig.Janus] = {}
        self.turn: rig.Turn | None = None
        self.balancer: lb.LoadBalancer | None = None
        self.down: set[str] = set()

    # -------------------------------------------------------------- hosts and ports

    def host(self, ref: int | str) -> Host:
        if isinstance(ref, int):
            return self.hosts[ref % len(self.hosts)]
        for h in self.hosts:
            if ref in (h.name, h.address):
                return h
        raise rig.RigError(f"no host {ref!r}: expected one of {', '.join(h.name for h in self.hosts)}")

    def port(self, host: Host, kind: str, preferred: int = 0) -> int:
        """The port of ``kind`` on ``host``: the well-known one when free and asked for."""
        wanted = preferred or (DEFAULT_PORTS.get(kind, 0) if self.fixed_ports else 0)
        if wanted and rig.port_free(wanted, host.address):
            return wanted
        return rig.free_port(host.address)

    def supervisor(self, host: Host) -> HostSupervisor:
        sup = self.supervisors.get(host.name)
        if sup is None:
            sup = HostSupervisor(host.name, self.rundir, self.logdir, autorestart=self.autorestart,
                                 start_retries=self.start_retries, rotation=self.log_rotation)
            self.supervisors[host.name] = sup.start()
        return sup

    def spawner(self, host: Host) -> rig.Spawn:
        """How processes of ``host`` are made: directly, or by the host's supervisor."""
        if not self.supervised:
            return rig.Proc
        sup = self.supervisor(host)

        def spawn(name: str, argv: list[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                  user: str | None = None, cwd: Path | None = None, stop_signal: str = "TERM",
                  priority: int = 50) -> rig.Handle:
            program = Program(name.replace("/", "-"), argv, dict(env if env is not None else os.environ),
                              log_path, priority=priority, stop_signal=stop_signal, user=user, cwd=cwd)
            sup.add(program)
            return SupervisedProc(sup, program)

        return spawn

    def _track(self, name: str, host: Host, handle: rig.Handle, ports: dict[str, int],
               ready: Callable[[], bool] | None = None) -> rig.Handle:
        self.procs[name] = handle
        self.host_of[name] = host.name
        self.ports[name] = ports
        if ready is not None:
            self.ready_checks[name] = ready
        return handle

    # -------------------------------------------------------------- environment

    def nats_urls(self, host: Host | None = None) -> list[str]:
        """Every NATS URL, the one of ``host`` first (each process prefers its own)."""
        assert self.nats is not None, "start_nats first"
        urls = self.nats.urls
        if host is None:
            return urls
        i = host.index % len(urls)
        return urls[i:] + urls[:i]

    @property
    def creds_dir(self) -> Path:
        return self.rundir / "creds"

    def credential(self, kind: str) -> str:
        """The credentials file of ``kind`` (e.g. ``operator`` for camctl and probes), or
        "" when the bus runs without authentication."""
        return str(self.creds_dir / f"{kind}.json") if self.bus_auth else ""

    def nats_options(self, kind: str = "operator") -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` with the credential of ``kind``."""
        if not self.bus_auth:
            return {}
        cred = self.credentials[kind]
        return {"user": cred.user, "password": cred.password, "inbox_prefix": cred.inbox_prefix}

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        return {
            **self.extra_env,  # e.g. boot.ini's settings; what the cluster decides wins
            "CAM_DATABASE_URL": self.database_url,
            "CAM_NATS_URL": ",".join(self.nats_urls(host)),
            "CAM_SERVER_DATE_PATH": str(self.data_path),
            "CAM_NODE_NAME": host.name,
            **extra,
        }

    # -------------------------------------------------------------- parts

    def start_nats(self, servers: int | None = None, *, tries: int = 3) -> rig.NatsCluster:
        """One NATS server per host (or on the first ``servers`` hosts), joined by routes.

        A free port can be taken by another process between choosing it and binding it;
        then the servers are stopped and started again on other ports."""
        for attempt in range(tries):
            try:
                return self._start_nats(servers)
            except rig.RigError as exc:
                assert self.nats is not None
                self.nats.stop()
                for name in self.nats.names:
                    self.procs.pop(name, None)
                if "address already in use" not in str(exc) or attempt == tries - 1:
                    raise
        raise AssertionError("not reached")

    def _start_nats(self, servers: int | None) -> rig.NatsCluster:
        hosts = [self.host(i) for i in range(servers or len(self.hosts))]
        if self.bus_auth:
            self.credentials = permissions.ensure_credentials(self.creds_dir)
        self.nats = rig.NatsCluster(
            self.logdir, len(hosts), addresses=[h.address for h in hosts],
            client_ports=[self.port(h, "nats") for h in hosts],
            route_ports=[self.port(h, "route") for h in hosts],
            names=[self._name(h, "nats") for h in hosts],
            spawn=[self.spawner(h) for h in hosts],
            credentials=self.credentials if self.bus_auth else None)
        for i, (h, proc) in enumerate(zip(hosts, self.nats.procs, strict=True)):
            self._track(self.nats.names[i], h, proc, {"client": self.nats.client_ports[i],
                                             "route": self.nats.route_ports[i]},
                        functools.partial(self.nats.ready, i))
        self.nats.start()
        return self.nats

    def _name(self, host: Host, local: str) -> str:
        """Process names: ``camserver1/edge`` under supervision, ``local`` names otherwise."""
        return f"{host.name}/{local}" if self.supervised else (
            local if local != "nats" else f"nats{host.index + 1}")

    def start_postgres(self, datadir: Path, *, port: int = 0, database: str = "cam") -> str:
        """The embedded PostgreSQL on host 1; returns the URL of ``database``."""
        h = self.hosts[0]
        self.pg = rig.Postgres(datadir, self.port(h, "postgres", port), address=h.address,
                               log_path=self.logdir / "postgres.log", spawn=self.spawner(h),
                               secrets_dir=self.creds_dir).start()
        assert self.pg.proc is not None
        self._track(self._name(h, "postgres"), h, self.pg.proc, {"postgres": self.pg.port},
                    self.pg._ready)
        self.database_url = self.pg.create_app_database(database)
        self.backup_url = self.pg.create_backup_role()
        return self.database_url

    def start_standby(self, datadir: Path, *, port: int = 0,
                      archive: Path | None = None) -> rig.Postgres:
        """A streaming standby of the embedded PostgreSQL on host 2 (the spec's unit 2).

        Commits then wait until the standby or the WAL archive has them (quorum
        ``ANY 1``), so an acknowledged message survives the loss of the primary, and
        either one may fail without stopping writes. Every database URL the services
        get lists both servers with ``target_session_attrs=read-write``: after
        ``camctl db promote`` they reconnect to the new primary by themselves."""
        assert self.pg is not None, "start_postgres first"
        h = self.hosts[1 % len(self.hosts)]
        sb = rig.Postgres(datadir, self.port(h, "postgres", port),
                          address=h.address, log_path=self.logdir / "postgres-standby.log",
                          spawn=self.spawner(h), secrets_dir=self.pg.secrets_dir, primary=self.pg,
                          name="postgres-standby")
        sb.archive = archive
        sb.start()
        assert sb.proc is not None
        self._track(self._name(h, "postgres-standby"), h, sb.proc, {"postgres": sb.port},
                    sb._ready)
        self.standby = sb
        self.pg.psql(f"ALTER SYSTEM SET synchronous_standby_names = "
                     f"'ANY 1 ({rig.STANDBY_ROLE}, cam_wal_archive)'")
        self.pg.psql("SELECT pg_reload_conf()")
        servers = [self.pg, sb]
        self.database_url = rig.with_servers(self.database_url, servers)
        if self.backup_url:
            self.backup_url = rig.with_servers(self.backup_url, servers)
        return sb

    def start_janus(self, host: Host, name: str, admin_key: str) -> rig.Janus:
        # RTP port ranges are global to the machine: one thousand ports per host. Janus
        # binds its HTTP API only to an address an interface holds (127.0.0.1 on lo, not
        # the rest of 127/8), so each host's Janus takes its own port there.
        base = 20000 + host.index * 1000
        http_port = DEFAULT_PORTS["janus"] + host.index if self.fixed_ports else 0
        sfu = rig.Janus(self.root / "janus", name, address="127.0.0.1",
                        port=http_port if http_port and rig.port_free(http_port) else rig.free_port(),
                        admin_key=admin_key,
                        rtp_range=(base, base + 999), spawn=self.spawner(host))
        full = self._name(host, "janus") if self.supervised else name
        sfu.proc = self.spawner(host)(full, *_janus_argv(sfu), priority=30)
        sfu.start()
        self.sfus[name] = sfu
        self._track(full, host, sfu.proc, {"http": sfu.port, "rtp_first": base,
                                                     "rtp_last": base + 999}, sfu.ready)
        return sfu

    def start_turn(self, host: Host | int = 0) -> rig.Turn:
        """One coturn for the cluster, on ``host``'s supervisor but listening on 127.0.0.1
        (port 3478 with fixed ports, when free), with the secret in run/creds/turn-secret."""
        h = host if isinstance(host, Host) else self.host(host)
        port = rig.TURN_PORT if self.fixed_ports and rig.port_free(rig.TURN_PORT) else rig.free_port()
        turn = rig.Turn(self.root / "turn", rig.turn_secret(self.creds_dir / "turn-secret"),
                        port=port, spawn=self.spawner(h))
        full = self._name(h, "turn")
        turn.proc = self.spawner(h)(full, *turn.command(), priority=30)
        turn.start()
        self.turn = turn
        self._track(full, h, turn.proc, {"turn": turn.port, "relay_first": turn.relay_range[0],
                                         "relay_last": turn.relay_range[1]}, turn.ready)
        return turn

    def turn_env(self) -> dict[str, str]:
        """What the edges need of the started coturn: cam.turnServers, cam.turnSecret."""
        if self.turn is None:
            return {}
        return {"CAM_TURN_SERVERS": ";".join(self.turn.urls), "CAM_TURN_SECRET": self.turn.secret}

    def start_service(self, kind: str, name: str, host: Host | int = 0, **extra: str) -> rig.Handle:
        """A bus service process, with a metrics listener of its own on its host's
        address (cam.metricsPort; the edges serve /metrics on their HTTP port)."""
        h = host if isinstance(host, Host) else self.host(host)
        extra.setdefault("CAM_NATS_CREDENTIALS", self.credential(kind))
        extra.setdefault("CAM_HTTP_HOST", h.address)
        extra.setdefault("CAM_METRICS_PORT", str(self.ports.get(name, {}).get("metrics")
                                                 or self.port(h, "metrics")))
        proc = rig.service(kind, name, self.env(h, **extra), self.logdir, spawn=self.spawner(h))
        metrics_port = int(extra["CAM_METRICS_PORT"])
        self._track(name, h, proc.start(), {"metrics": metrics_port} if metrics_port else {})
        return proc

    def start_backups(self, host: Host | int = 0, name: str = "", **extra: str) -> rig.Handle:
        """A backups replica; only it gets the backup role's URL."""
        h = host if isinstance(host, Host) else self.host(host)
        if self.backup_url:
            extra.setdefault("CAM_BACKUP_DATABASE_URL", self.backup_url)
        return self.start_service("backups", name or self._name(h, "backups"), h, **extra)

    def start_edge(self, name: str, host: Host | int = 0, *, port: int = 0, **extra: str) -> rig.Handle:
        h = host if isinstance(host, Host) else self.host(host)
        port = self.edge_ports.get(name) or self.port(h, "edge", port)
        self.edge_ports[name] = port
        extra.setdefault("CAM_NATS_CREDENTIALS", self.credential("edge"))
        env = self.env(h, CAM_NODE_NAME=name.split("/")[0], CAM_HTTP_PORT=str(port),
                       CAM_HTTP_HOST=h.address, **extra)
        proc = rig.service("edge", name, env, self.logdir, spawn=self.spawner(h))
        self._track(name, h, proc.start(), {"http": port},
                    lambda: rig.edge_ready(port, h.address))
        return proc

    def start_lb(self, kind: str, port: int = 0, workdir: Path | None = None) -> lb.LoadBalancer:
        backends = [lb.Backend(n.split("/")[0], self.host(self.host_of[n]).address, p)
                    for n, p in self.edge_ports.items()]
        front = Host("lb", LB_ADDRESS, -1)
        balancer = lb.make(kind, workdir or self.root / "lb", backends, port=port or None,
                           source=LB_SOURCE_ADDRESS,
                           spawn=self.spawner(front) if self.supervised else rig.Proc)
        self.balancer = balancer.start(60)
        assert balancer.proc is not None
        self._track(f"lb/{kind}" if self.supervised else kind, front, balancer.proc,
                    {"https": balancer.port, "http": balancer.http_port})
        return balancer

    # -------------------------------------------------------------- readiness

    def edge(self, name: str) -> str:
        """The edge called ``name``, or the edge of host ``name``."""
        return name if name in self.edge_ports else f"{name}/edge"

    def http(self, name: str) -> str:
        name = self.edge(name)
        return f"http://{self.host(self.host_of[name]).address}:{self.edge_ports[name]}"

    def ws(self, name: str) -> str:
        return self.http(name).replace("http://", "ws://", 1) + "/ws"

    def wait_ready(self, *names: str, timeout: float = 60.0) -> None:
        """Until each named process (default: every one) is alive and answers."""
        for name in names or tuple(self.procs):
            proc, check = self.procs[name], self.ready_checks.get(name)
            rig.wait_for(lambda proc=proc, check=check: (proc.check_alive(),  # type: ignore[misc]
                                                         check is None or check())[1],
                         timeout, f"{name} to be ready")

    def wait_services(self, timeout: float = 30.0) -> None:
        """Until every started bus service answers, through every NATS server (interest
        crosses routes asynchronously: a service reachable from one may not be from another)."""
        probes = {"chat": (subjects.chat_rpc("room_heads"), wire.RoomHeads(rooms=[])),
                  "presence": (subjects.presence_rpc("query"), wire.PresenceQuery(users=[])),
                  "files": (subjects.files_rpc("usage"), wire.FilesUsage(user_id=0)),
                  "video": (subjects.video_rpc("admin"), wire.VideoAdmin(action="status"))}
        kinds = {n.split("/")[-1].rstrip("0123456789") for n in self.procs}
        wanted = [probe for kind, probe in probes.items() if kind in kinds]
        urls = [u for i, u in enumerate(self.nats_urls())
                if self.nats and self.nats.procs[i].alive()]

        async def probe() -> None:
            for url in urls:
                nc = await bus.connect([url], "readiness", connect_deadline=timeout,
                                       credentials=self.credential("operator") or None)
                try:
                    for subject, request in wanted:
                        deadline = time.monotonic() + timeout
                        while True:
                            try:
                                await bus.call(nc, subject, request, timeout=2)
                                break
                            except CamError:
                                if time.monotonic() > deadline:
                                    raise
                                await asyncio.sleep(0.05)
                finally:
                    await nc.close()

        if wanted:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, probe()).result()

    # -------------------------------------------------------------- faults

    def on_host(self, host: str) -> list[str]:
        return [n for n, h in self.host_of.items() if h == host]

    def kill_host(self, name: str) -> list[int]:
        """SIGKILL every process of host ``name`` at once, as a power cut would."""
        h = self.host(name)
        self.down.add(h.name)
        (self.rundir).mkdir(parents=True, exist_ok=True)
        (self.rundir / f"{h.name}.down").touch()
        if self.supervised:
            return self.supervisors[h.name].kill_all()
        pids = [p.pid for n in self.on_host(h.name) if (p := self.procs[n]).alive()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for n in self.on_host(h.name):
            self.procs[n].kill()
        return pids

    def start_host(self, name: str, timeout: float = 60.0) -> None:
        """Bring host ``name`` back: its processes in start order, each once ready."""
        h = self.host(name)
        (self.rundir / f"{h.name}.down").unlink(missing_ok=True)
        names = sorted(self.on_host(h.name), key=lambda n: _priority(self.procs[n]))
        names = [n for n in names if not self._fenced(self.procs[n])]
        if self.supervised:
            sup = self.supervisors[h.name]
            sup.start()
        for n in names:
            self.procs[n].start()
            self.wait_ready(n, timeout=timeout)
        if self.supervised:
            self.wait_supervised(h.name)
        self.down.discard(h.name)

    # -------------------------------------------------------------- the whole cluster

    def start_all(self, *, chat: int = 1, presence: int = 1, video: bool = True,
                  video_domains: list[tuple[str, int]] | None = None, base_port: int = 8080,
                  lb_kind: str | None = lb.DEFAULT_KIND, lb_port: int = 0, pg_port: int = 0,
                  cluster_hosts: str = "", edge_env: Mapping[str, str] | None = None,
                  turn: bool = False, backups: bool = True, standby: Path | None = None,
                  standby_archive: Path | None = None,
                  announce: Callable[[str], None] = lambda line: None) -> None:
        """Everything, in readiness order: bus, store, SFUs (and with ``turn`` a coturn
        whose servers and secret only the edges get), services, edges, balancer."""
        self.start_nats()
        announce(f"bus: {len(self.nats.procs)} NATS servers: {', '.join(self.nats.urls)}")  # type: ignore[union-attr]
        if not self.database_url:
            self.start_postgres(self.data_path / "postgres", port=pg_port)
            announce(f"database: embedded PostgreSQL on {self.hosts[0].name}, data in "
                     f"{self.pg.datadir}")  # type: ignore[union-attr]
        self.migrate(announce)
        if standby is None and self.pg is not None:
            # No standby this time: commits must not wait for one (an earlier
            # --standby run persisted the setting in the data directory).
            self.pg.psql("ALTER SYSTEM RESET synchronous_standby_names")
            self.pg.psql("SELECT pg_reload_conf()")
        if standby is not None and self.pg is not None:
            sb = self.start_standby(standby, archive=standby_archive)
            announce(f"database: streaming standby on {self.hosts[1 % len(self.hosts)].name} "
                     f"({sb.address}:{sb.port}), data in {sb.datadir}; commits wait for it or "
                     "the WAL archive; 'camctl db promote' makes it the primary")
        if video and video_domains:
            key = secrets.token_hex(12)
            for i, (domain, _) in enumerate(video_domains):
                self.start_janus(self.host(i), domain, key)
            self.extra_env.update({
                "CAM_VIDEO_DOMAINS": ";".join(f"{n}={c}" for n, c in video_domains),
                "CAM_VIDEO_SERVER_URLS": ";".join(f"{n}={s.url}" for n, s in self.sfus.items()),
                "CAM_VIDEO_ADMIN_KEY": key})
            announce(f"video: {len(self.sfus)} Janus servers: "
                     + ", ".join(f"{n} {s.url}" for n, s in self.sfus.items()))
        if turn:
            t = self.start_turn()
            announce(f"turn: coturn on {t.address}:{t.port} (UDP and TCP), relay ports "
                     f"{t.relay_range[0]}-{t.relay_range[1]}, secret in {self.creds_dir / 'turn-secret'}")
        for h in self.hosts:
            for i in range(chat):
                self.start_service("chat", self._name(h, f"chat{i + 1}"), h)
            for i in range(presence):
                self.start_service("presence", self._name(h, f"presence{i + 1}"), h)
            self.start_service("files", self._name(h, "files1"), h)
            self.start_service("health", self._name(h, "health"), h)
            if backups and (self.backup_url or self.extra_env.get("CAM_BACKUP_DATABASE_URL")):
                self.start_backups(h)
            if self.sfus or "CAM_VIDEO_SERVER_URLS" in self.extra_env:
                self.start_service("video", self._name(h, "video"), h)
        edges = [self._name(h, "edge") for h in self.hosts]
        ports = {h.name: self.port(h, "edge", base_port) for h in self.hosts}
        for h, name in zip(self.hosts, edges, strict=True):
            env = {**(edge_env or {}), **self.turn_env()}
            if not cluster_hosts:
                # Each server lists its own host first (cluster-spec.md section 3).
                order = self.hosts[h.index:] + self.hosts[:h.index]
                env["CAM_CLUSTER_HOSTS"] = ";".join(f"{o.address}:{ports[o.name]}" for o in order)
            self.start_edge(name, h, port=ports[h.name], **env)
        self.wait_ready(*edges)
        self.wait_services()
        if lb_kind:
            self.start_lb(lb_kind, lb_port, self.data_path / "lb")
        self.wait_supervised()

    def wait_supervised(self, *hosts: str, timeout: float = 30.0) -> None:
        """Until the supervisors count every started program as RUNNING (it has stayed up
        through its start window), so status shows what readiness already proved."""
        fenced = [getattr(getattr(p, "program", None), "name", None)
                  for p in self.procs.values() if self._fenced(p)]
        for name in hosts or tuple(self.supervisors):
            sup = self.supervisors[name]
            for program in sup.programs:
                if program not in fenced:
                    wait_running(sup, program, timeout)

    def _fenced(self, proc: rig.Handle) -> bool:
        """A primary replaced by 'camctl db promote': it never comes back as a second
        primary (docs/backup.md: it rejoins as the new standby)."""
        return (self.pg is not None and proc is self.pg.proc
                and (self.rundir / DEMOTED_MARKER).exists())

    def migrate(self, announce: Callable[[str], None] = lambda line: None) -> None:
        from camcore import db

        applied = asyncio.run(db.migrate(self.database_url))
        if applied:
            announce(f"database: applied migrations {', '.join(applied)}")

    def stop(self) -> None:
        """Everything, in reverse start order."""
        if self.supervised:
            for name in ("lb", *reversed([h.name for h in self.hosts])):
                if name in self.supervisors:
                    self.supervisors[name].shutdown()
            return
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    # -------------------------------------------------------------- state and watching

    def state(self) -> dict[str, Any]:
        """What ``camctl status``, ``restart``, ``logs`` and ``down`` read from another
        terminal: every host, its supervisor socket and every process with its ports."""
        hosts: dict[str, dict[str, Any]] = {h.name: {"address": h.address} for h in self.hosts}
        for name, sup in self.supervisors.items():
            hosts.setdefault(name, {"address": LB_ADDRESS, "source": LB_SOURCE_ADDRESS})
            hosts[name].update({"socket": str(sup.sock), "supervisor_pid": sup.pid})
        return {
            "run_id": self.run_id, "camctl_pid": os.getpid(), "logs": str(self.logdir),
            "database_url": self.database_url, "backup_database_url": self.backup_url,
            "database": {role: {"datadir": str(pg.datadir), "address": pg.address,
                                "port": pg.port, "host": self.host_of.get(name, ""),
                                "process": name}
                         for role, pg in (("primary", self.pg), ("standby", self.standby))
                         if pg is not None and pg.proc is not None
                         for name in [next((n for n, p in self.procs.items() if p is pg.proc),
                                           "")]},
            "nats_urls": self.nats_urls() if self.nats else [],
            "nats_operator_credentials": self.credential("operator"),
            "hosts": hosts,
            "edges": {n.split("/")[0]: self.http(n) for n in self.edge_ports},
            "load_balancer": self.balancer.url if self.balancer else None,
            # Where it connects to the edges from: their cam.trustedProxies.
            "load_balancer_source": self.balancer.source if self.balancer else None,
            "processes": {n: {"host": self.host_of[n], "ports": self.ports.get(n, {}),
                              "log": str(p.log_path), "program": p.name}
                          for n, p in self.procs.items()},
            # GET /metrics of each process, for the monitoring token (docs/monitoring.md).
            "metrics": {"targets_file": str(self.rundir / TARGETS_FILE),
                        "targets": [{**t["labels"], "url": f"http://{t['targets'][0]}/metrics"}
                                    for t in self.metrics_targets()]},
        }

    def metrics_targets(self) -> list[dict[str, Any]]:
        """Every process's ``/metrics`` (the edges' on their HTTP port) as Prometheus
        file_sd entries, labelled with its ``component`` (its kind), ``host`` and
        ``process`` name: target labels that no metric of ours has (``kind`` and ``node``
        are labels of metrics)."""
        out = []
        for name, ports in self.ports.items():
            port = ports.get("metrics") or (self.edge_ports.get(name) if name in self.edge_ports
                                            else None)
            if not port:
                continue
            host = self.host(self.host_of[name])
            kind = "edge" if name in self.edge_ports else name.split("/")[-1].rstrip("0123456789")
            address = f"[{host.address}]" if ":" in host.address else host.address
            out.append({"targets": [f"{address}:{port}"],
                        "labels": {"component": kind, "host": host.name, "process": name}})
        return out

    def write_state(self) -> Path:
        """The state file, and beside it the metrics targets (file_sd JSON, no secret)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        targets = self.rundir / TARGETS_FILE
        tmp_targets = targets.with_suffix(".tmp")
        tmp_targets.write_text(json.dumps(self.metrics_targets(), indent=2) + "\n",
                               encoding="utf-8")
        tmp_targets.replace(targets)
        path = self.rundir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o600)  # holds the database URL
        tmp.replace(path)
        return path


def _priority(proc: rig.Handle) -> int:
    program = getattr(proc, "program", None)
    return int(getattr(program, "priority", getattr(proc, "priority", 50)))


def _janus_argv(sfu: rig.Janus) -> tuple[list[str], Path]:
    binary = rig.janus_binary()
    if binary is None:
        raise rig.RigError("janus not found: install the Debian package janus")
    return [binary, "-F", str(sfu.workdir / "conf"), "-o"], sfu.workdir / "janus.log"


class Watcher:
    """Notices deaths, restarts and crash loops of supervised processes, and hosts whose
    supervisor died; ``camctl up`` prints what it yields and brings dead hosts back
    unless they were killed on purpose (``camctl kill-host``)."""

    CRASH_WINDOW, CRASH_LIMIT = 60.0, 3

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, tuple[str, int, int]] = {}  # program -> (state, pid, start)
        self.restarts: dict[str, int] = {}
        self.crashes: dict[str, list[float]] = {}

    def poll(self) -> Iterator[str]:
        c = self.cluster
        for host, sup in c.supervisors.items():
            marker = c.rundir / f"{host}.down"
            if not sup.alive():
                if host in c.down and not marker.exists():
                    yield f"{host}: starting again (camctl start-host)"
                    c.start_host(host)
                    yield f"{host}: back, every process ready"
                elif host not in c.down:
                    c.down.add(host)
                    if marker.exists():
                        yield (f"{host}: killed (every process at once); the others keep serving."
                               f" 'camctl start-host {host}' brings it back")
                    else:
                        yield f"{host}: its supervisor died; starting the host again"
                        marker.unlink(missing_ok=True)
                        c.start_host(host)
                continue
            try:
                infos = sup.all_info()
            except (OSError, xmlrpc.client.Error):
                continue
            for info in infos:
                yield from self._program(host, info)
        c.rundir.mkdir(parents=True, exist_ok=True)
        (c.rundir / "restarts.json").write_text(json.dumps(self.restarts), encoding="utf-8")

    def _program(self, host: str, info: dict[str, Any]) -> Iterator[str]:
        key = f"{host}/{info['name']}"
        state, pid, start = str(info["statename"]), int(info["pid"]), int(info["start"])
        before = self.seen.get(key)
        self.seen[key] = (state, pid, start)
        if before is None or before == (state, pid, start):
            return
        label = _display(key)
        if before[0] == "RUNNING" and pid != before[1]:
            yield f"{label}: died (was pid {before[1]}); the supervisor restarts it"
        if start != before[2] and before[2] != 0 and state in ("STARTING", "RUNNING"):
            self.restarts[label] = self.restarts.get(label, 0) + 1
            now = time.monotonic()
            recent = [t for t in self.crashes.get(label, []) if now - t < self.CRASH_WINDOW] + [now]
            self.crashes[label] = recent
            yield f"{label}: started again (restart {self.restarts[label]})"
            if len(recent) >= self.CRASH_LIMIT:
                yield (f"{label}: WARNING crashed {len(recent)} times in the last "
                       f"{self.CRASH_WINDOW:.0f} s; see 'camctl logs {label}'")
        if state == "FATAL":
            yield (f"{label}: FATAL, gave up after repeated start failures; last log lines:\n"
                   + rig.tail(Path(info.get("stdout_logfile", "")), 15))


def _display(key: str) -> str:
    host, program = key.split("/", 1)
    prefix = f"{host}-"
    return f"{host}/{program[len(prefix):]}" if program.startswith(prefix) else key

