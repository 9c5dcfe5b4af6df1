"""``camctl``: run a whole cluster locally, administer users, watch the bus."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil

from camcore import accounts, audit, bus, db, subjects, wire
from camcore.config import Settings, settings_env
from camcore.errors import CamError

from . import admin, backups, cluster, lb, rig, runlogs
from .common import bus_urls as _bus_urls
from .common import data_root as _data_root
from .common import database_url as _database_url
from .common import operator_credentials as _operator_credentials
from .common import settings_of as _settings
from .common import state_of as _state
from .supervisor import LogRotation, rpc, tree

# ------------------------------------------------------------------ up


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = _data_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    running = _running_camctl(settings)
    if running:
        print(f"a cluster is already running from {root} (camctl pid {running}); "
              "'camctl status' shows it, 'camctl down' stops it", file=sys.stderr)
        return 1
    run_id = runlogs.new_run_id()
    logdir, pruned = runlogs.start_run(root / "logs", run_id, settings.log_keep_runs)
    for marker in (root / "run").glob("*.down"):
        marker.unlink()
    c = cluster.LocalCluster(root, hosts=args.nodes, supervised=True, fixed_ports=True,
                             database_url=settings.database_url, data_path=root,
                             env=settings_env(settings), logdir=logdir,
                             log_rotation=LogRotation(settings.log_max_bytes, settings.log_backups))
    c.run_id = run_id
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"data root: {root}")
        if pruned:
            print(f"logs: removed the {len(pruned)} oldest run folders "
                  f"(cam.logKeepRuns={settings.log_keep_runs})")
        names = [h.name for h in c.hosts]
        print("hosts: " + ", ".join(f"{h.name} {h.address}" for h in c.hosts))
        domains = _video_domains(args, settings, names)
        edge_env: dict[str, str] = {}
        if not settings.monitoring_token:
            # Every process's /metrics and the edges' cluster view take it.
            c.extra_env["CAM_MONITORING_TOKEN"] = _monitoring_token(root)
        plan = None if args.no_lb else lb.LocalPlan(args.lb, args.lb_port, root / "lb")
        if plan:
            edge_env.update(plan.edge_env(settings.trusted_proxies, settings.server_url_domain))
        promoted = root / "postgres-standby"
        if (promoted / "PG_VERSION").exists() and not (promoted / "standby.signal").exists():
            print(f"{promoted} was promoted ('camctl db promote'): it holds the newest data, "
                  f"and {root / 'postgres'} is the old primary. Move {root / 'postgres'} away "
                  f"and {promoted} to {root / 'postgres'}, then start again (docs/backup.md, "
                  "'Bringing unit 1 back')", file=sys.stderr)
            return 1
        standby = None
        if args.standby:
            if args.nodes < 2 or settings.database_url:
                print("--standby needs two hosts and the embedded PostgreSQL", file=sys.stderr)
                return 2
            standby = root / "postgres-standby"
        (root / "run" / cluster.DEMOTED_MARKER).unlink(missing_ok=True)
        c.start_all(chat=args.chat, presence=args.presence, video=bool(domains),
                    standby=standby, standby_archive=settings.backup_root / "wal",
                    video_domains=domains, base_port=args.base_port,
                    lb_kind=plan.kind if plan else None, lb_port=plan.port if plan else 0,
                    pg_port=args.pg_port,
                    cluster_hosts="from boot.ini" if settings.cluster_hosts else "",
                    edge_env=edge_env, turn=args.turn, announce=print)
        if not domains:
            print("video: " + _no_video_reason(args, settings))
        admin_note = asyncio.run(_ensure_admin(c.database_url, root))
        c.write_state()
        first = next(iter(c.edge_ports))
        print("\nThe cluster is up.")
        for name in c.edge_ports:
            url = c.http(name)
            print(f"  {name.split('/')[0]}: {url}/   WebSocket {c.ws(name)}"
                  f"   health {url}/CAMServer/healthCheck")
        balancer = c.balancer
        if balancer:
            print(f"  load balancer ({balancer.kind}): {balancer.url}/   WebSocket {balancer.ws_url}\n"
                  f"    certificate to trust: {balancer.ca_file}\n"
                  f"    curl --cacert {balancer.ca_file} {balancer.url}/CAMServer/healthCheck")
        app_url = f"{balancer.url}/" if balancer else f"{c.http(first)}/"
        print(f"\n  Open the web app: {app_url}"
              + (f"  (the browser asks to trust {balancer.ca_file}, or accept the warning)"
                 if balancer else ""))
        print(admin_note.replace("{login_url}", c.http(first) + "/api/login"))
        print(f"  logs: {logdir}  ('camctl logs NAME')\n"
              "  'camctl status' lists every process; 'camctl down' or Ctrl-C stops the cluster.")
        watcher = cluster.Watcher(c)
        while not stopping:
            for line in watcher.poll():
                print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            time.sleep(0.5)
        print("\nstopping...")
        return 0
    except (rig.RigError, CamError) as exc:
        print(f"camctl up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        c.stop()
        (root / "run" / cluster.STATE_FILE).unlink(missing_ok=True)


def _monitoring_token(root: Path) -> str:
    """The token that reads /api/cluster/view (cam.monitoringToken), made on first start."""
    path = root / "run" / "creds" / "monitoring-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def _video_domains(args: argparse.Namespace, settings: Settings,
                   names: list[str]) -> list[tuple[str, int]]:
    """One local Janus per cam.videoDomains entry (default: one per host), unless the
    configuration names Janus servers of its own (cam.videoServerUrls)."""
    if args.no_video or settings.video_server_urls or rig.janus_binary() is None:
        return []
    return [(d.name, d.capacity) for d in settings.video_domains] or [(n, 50) for n in names]


def _no_video_reason(args: argparse.Namespace, settings: Settings) -> str:
    if args.no_video:
        return "off (--no-video)"
    if settings.video_server_urls:
        return "the Janus servers of cam.videoServerUrls"
    return ("Janus is not installed, so conferences are off; install it with "
            "'sudo apt-get install janus' (make up does this when run as root)")


def _running_camctl(settings: Settings) -> int | None:
    return _running_at(_data_root(settings))


def _running_at(root: Path) -> int | None:
    """The pid of the ``camctl up`` running from data root ``root``, if any."""
    try:
        pid = json.loads((root / "run" / cluster.STATE_FILE).read_text(encoding="utf-8")).get(
            "camctl_pid")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(pid, int) and psutil.pid_exists(pid):
        try:
            if "camctl" in " ".join(psutil.Process(pid).cmdline()):
                return pid
        except psutil.Error:
            return None
    return None


async def _ensure_admin(database_url: str, root: Path) -> str:
    pool = await db.create_pool(database_url, max_size=2)
    try:
        if await accounts.list_users(pool):
            return ("  log in with an existing user at {login_url} "
                    "(create more with 'camctl user add NAME')")
        password = secrets.token_urlsafe(12)
        await accounts.create_user(pool, "admin", password, is_admin=True)
        note = root / "admin-password.txt"
        note.write_text(password + "\n", encoding="utf-8")
        note.chmod(0o600)
        return (f"  log in as 'admin' with password {password} (saved in {note}):\n"
                "    curl -s -X POST -H 'content-type: application/json' "
                f"-d '{{\"username\":\"admin\",\"password\":\"{password}\"}}' "
                "{login_url}")
    finally:
        await pool.close()


# ------------------------------------------------------------------ users, migrate, sub


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(db.migrate(_database_url(_settings(args))))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state = _state(settings)
    servers: dict[str, Any] = state.get("database") or {}
    if args.action == "status":
        for started_as, info in servers.items():
            alive = not rig.port_free(int(info["port"]), info["address"])
            role = "standby" if (Path(info["datadir"]) / "standby.signal").exists() else "primary"
            if (_data_root(settings) / "run" / cluster.DEMOTED_MARKER).exists() and (
                    started_as == "primary"):
                role = "old primary, stopped (replaced by 'camctl db promote')"
            print(f"{role}: {info['address']}:{info['port']} on {info['host']} "
                  f"({'listening' if alive else 'down'}), data in {info['datadir']}")
        if not servers:
            print("no embedded PostgreSQL in the running cluster (cam.databaseUrl names it)")
        return 0
    datadir = Path(args.data_dir) if args.data_dir else (
        Path(servers["standby"]["datadir"]) if "standby" in servers else None)
    if datadir is None:
        print("no standby: start the cluster with 'camctl up --standby', or pass --data-dir",
              file=sys.stderr)
        return 1
    try:
        rig.promote_datadir(datadir)
    except rig.RigError as exc:
        print(f"camctl db promote: {exc}", file=sys.stderr)
        return 1
    # The old primary must not come back as a second primary.
    run_dir = _data_root(settings) / "run"
    if (run_dir / cluster.STATE_FILE).exists():
        (run_dir / cluster.DEMOTED_MARKER).touch()
    primary = servers.get("primary")
    if primary and primary.get("process") in state.get("processes", {}):
        p = state["processes"][primary["process"]]
        try:
            rpc(Path(state["hosts"][p["host"]]["socket"])).stopProcess(p["program"], True)
            print(f"stopped the old primary ({primary['process']})")
        except (OSError, KeyError, xmlrpc.client.Error):
            pass  # its host is down: the marker keeps it down when the host comes back
    print(f"{datadir}: promoted, it is the primary now. Services list both servers "
          "(target_session_attrs=read-write) and reconnect by themselves. The old primary "
          "stays stopped; docs/backup.md shows how to bring it back as the new standby.")
    return 0


def cmd_sub(args: argparse.Namespace) -> int:
    settings = _settings(args)
    urls = list(settings.nats_urls)
    state_urls = _state(settings).get("nats_urls")
    if args.server:
        urls = [args.server]
    elif isinstance(state_urls, list) and state_urls:
        urls = [str(u) for u in state_urls]

    async def run() -> None:
        nc = await bus.connect(urls, "camctl-sub", connect_deadline=5,
                               credentials=_operator_credentials(settings))
        count = 0
        done = asyncio.Event()

        async def show(msg: object) -> None:
            nonlocal count
            if args.count and count >= args.count:
                return  # more may arrive while the subscription closes
            data = msg.data  # type: ignore[attr-defined]
            try:
                payload: object = json.loads(data)
            except ValueError:
                payload = data.decode("utf-8", "replace")
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            line = {"time": stamp, "subject": msg.subject, "payload": payload}  # type: ignore[attr-defined]
            print(json.dumps(line, ensure_ascii=False), flush=True)
            count += 1
            if args.count and count >= args.count:
                done.set()

        await nc.subscribe(args.subject, cb=show)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, done.set)
        loop.add_signal_handler(signal.SIGTERM, done.set)
        await done.wait()
        await nc.close()

    try:
        asyncio.run(run())
    except CamError as exc:
        print(f"camctl sub: {exc.message}", file=sys.stderr)
        return 1
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Operator view of the video servers: status, drain, enable, explain a placement."""
    settings = _settings(args)
    urls = _bus_urls(settings)

    async def run() -> object:
        nc = await bus.connect(urls, "camctl-video", connect_deadline=5,
                               credentials=_operator_credentials(settings))
        try:
            if args.action == "explain":
                if not args.target or not args.target.isdigit():
                    raise CamError("explain needs a room id", "bad_request")
                return await bus.call(nc, subjects.video_rpc("explain"),
                                      wire.ConfExplain(room=int(args.target)))
            if args.action in ("drain", "enable") and not args.target:
                raise CamError(f"{args.action} needs a video server name", "bad_request")
            return await bus.call(nc, subjects.video_rpc("admin"),
                                  wire.VideoAdmin(action=args.action, server=args.target,
                                                  os_user=audit.os_user()))
        finally:
            await nc.close()

    try:
        result = asyncio.run(run())
    except CamError as exc:
        print(f"camctl video {args.action}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------ status, down, restart, logs


def _cluster_state(args: argparse.Namespace) -> tuple[Settings, dict[str, Any]]:
    settings = _settings(args)
    state = _state(settings)
    if not state or not _running_camctl(settings):
        raise SystemExit(f"no cluster is running from {_data_root(settings)} (start one with 'camctl up')")
    return settings, state


def _find(state: dict[str, Any], name: str) -> str:
    """The full name (``camserver2/edge``) for ``name``, a full name or a unique part."""
    procs: dict[str, Any] = state["processes"]
    if name in procs:
        return name
    matches = [n for n in procs if n.endswith("/" + name) or n.split("/")[0] == name
               and n.endswith("/edge")]
    if len(matches) == 1:
        return matches[0]
    raise SystemExit(f"no single process named {name!r}; 'camctl status' lists them "
                     f"({'ambiguous: ' + ', '.join(matches) if matches else 'none matches'})")


def _host_infos(state: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]] | None]:
    out: dict[str, dict[str, dict[str, Any]] | None] = {}
    for host, h in state["hosts"].items():
        try:
            infos = rpc(Path(h["socket"])).getAllProcessInfo()
            out[host] = {i["name"]: i for i in infos}
        except (OSError, KeyError, xmlrpc.client.Error):
            out[host] = None
    return out


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def cmd_status(args: argparse.Namespace) -> int:
    settings, state = _cluster_state(args)
    infos = _host_infos(state)
    try:
        restarts = json.loads((_data_root(settings) / "run" / "restarts.json").read_text())
    except (OSError, ValueError):
        restarts = {}
    rows = [("NAME", "HOST", "STATE", "PID", "UPTIME", "RESTARTS", "PORTS")]
    for name, p in state["processes"].items():
        host_infos = infos.get(p["host"])
        info = host_infos.get(p["program"]) if host_infos else None
        address = state["hosts"][p["host"]]["address"]
        ports = " ".join(f"{k}={address}:{v}" if k in ("http", "client", "https", "postgres",
                                                        "metrics")
                         else f"{k}={v}" for k, v in p["ports"].items())
        if info is None:
            rows.append((name, p["host"], "HOST DOWN", "-", "-", str(restarts.get(name, 0)), ports))
            continue
        up = _uptime(info["now"] - info["start"]) if info["statename"] == "RUNNING" else "-"
        rows.append((name, p["host"], info["statename"], str(info["pid"] or "-"), up,
                     str(restarts.get(name, 0)), ports))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if state.get("load_balancer"):
        print(f"load balancer: {state['load_balancer']}")
    if state.get("metrics"):
        print(f"metrics: GET /metrics of {len(state['metrics']['targets'])} processes (the "
              "edges' on http), bearer cam.monitoringToken; Prometheus targets: "
              f"{state['metrics']['targets_file']}")
    report = backups.backup.status(backups.with_cluster(settings, state))
    age = report["last_backup_age"]
    lag = report["wal_lag_bytes"]
    print(f"backups: {report['path']}, last "
          + (f"{backups.age_text(age)} ago" if age is not None else "none yet")
          + (f", WAL archive {lag} bytes behind" if lag is not None else ", WAL archive not streaming")
          + "".join(f"\n  WARNING {w}" for w in report["warnings"]))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    settings, state = _cluster_state(args)
    pid = int(state["camctl_pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        print(f"camctl up (pid {pid}) did not stop within 120 s", file=sys.stderr)
        return 1
    print("the cluster is stopped")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    _, state = _cluster_state(args)
    name = _find(state, args.name)
    p = state["processes"][name]
    api = rpc(Path(state["hosts"][p["host"]]["socket"]))
    try:
        if api.getProcessInfo(p["program"])["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            api.stopProcess(p["program"], True)
        api.startProcess(p["program"], True)
    except (OSError, xmlrpc.client.Error) as exc:
        print(f"camctl restart {name}: {exc}", file=sys.stderr)
        return 1
    info = api.getProcessInfo(p["program"])
    print(f"{name}: {info['statename']} (pid {info['pid']})")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    _, state = _cluster_state(args)
    name = _find(state, args.name)
    path = Path(state["processes"][name]["log"])
    try:
        with runlogs.RotatedLog(path) as log:
            print("\n".join(log.tail(args.lines)), flush=True)
            if args.follow:
                for chunk in log.follow():
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"camctl logs {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_kill_host(args: argparse.Namespace) -> int:
    settings, state = _cluster_state(args)
    host = state["hosts"].get(args.host)
    if host is None or args.host == "lb":
        raise SystemExit(f"no host {args.host!r}: expected one of "
                         + ", ".join(h for h in state["hosts"] if h != "lb"))
    run = _data_root(settings) / "run"
    (run / f"{args.host}.down").touch()
    pid = host.get("supervisor_pid")
    pids = tree(pid) if pid else []
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"{args.host}: killed {len(pids)} processes at once; "
          f"'camctl start-host {args.host}' brings it back")
    return 0


def cmd_start_host(args: argparse.Namespace) -> int:
    settings, state = _cluster_state(args)
    if args.host not in state["hosts"]:
        raise SystemExit(f"no host {args.host!r}")
    (_data_root(settings) / "run" / f"{args.host}.down").unlink(missing_ok=True)
    edges = [n for n, p in state["processes"].items() if p["host"] == args.host and n.endswith("/edge")]
    fenced = set()
    if (_data_root(settings) / "run" / cluster.DEMOTED_MARKER).exists():
        old = (state.get("database") or {}).get("primary", {}).get("process")
        if old in state["processes"]:
            fenced.add(state["processes"][old]["program"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = _state(settings)
        infos = _host_infos(st).get(args.host)
        if infos and all(i["statename"] == "RUNNING" for n, i in infos.items()
                         if n not in fenced) and all(
                rig.edge_ready(*_edge_addr(st, e)) for e in edges):
            print(f"{args.host}: back, every process running"
                  + (" but the old database primary (replaced by 'camctl db promote')"
                     if fenced else ""))
            return 0
        time.sleep(0.5)
    print(f"{args.host} did not come back within 120 s; see 'camctl status'", file=sys.stderr)
    return 1


def _edge_addr(state: dict[str, Any], name: str) -> tuple[int, str]:
    p = state["processes"][name]
    return int(p["ports"]["http"]), str(state["hosts"][p["host"]]["address"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camctl", description=__doc__)
    parser.add_argument("--config", help="boot.ini to read (default: $CAM_BOOT_INI, else defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a whole cluster on this machine (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, default=2,
                    help="number of CAMServer hosts, camserverN on 127.0.1.N (default 2)")
    up.add_argument("--chat", type=int, default=1, help="chat replicas per host (default 1)")
    up.add_argument("--presence", type=int, default=1, help="presence replicas per host (default 1)")
    up.add_argument("--base-port", type=int, default=8080,
                    help="HTTP port of every edge, on its host's address (default 8080)")
    up.add_argument("--pg-port", type=int, default=0, help="embedded PostgreSQL port (default: free)")
    up.add_argument("--lb", choices=lb.KINDS, default=lb.DEFAULT_KIND,
                    help="load balancer in front of the edges, HTTPS with a local CA (default caddy)")
    up.add_argument("--no-lb", action="store_true", help="start no load balancer")
    up.add_argument("--no-video", action="store_true",
                    help="start no Janus video servers (by default one per node when installed)")
    up.add_argument("--turn", action="store_true",
                    help="also start a coturn TURN server on 127.0.0.1:3478 and hand its "
                    "credentials to conference clients (Debian package coturn)")
    up.add_argument("--standby", action="store_true",
                    help="a streaming standby of PostgreSQL on camserver2 ('camctl db promote' "
                    "switches to it)")
    up.add_argument("--lb-port", type=int, default=0,
                    help="HTTPS port of the load balancer (default 8443, or a free port if taken)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("status", help="every process of the running cluster: host, state, pid, "
                   "uptime, restarts, ports").set_defaults(func=cmd_status)
    sub.add_parser("down", help="stop the running cluster").set_defaults(func=cmd_down)
    r = sub.add_parser("restart", help="restart one process (e.g. camserver2/edge, or camserver2)")
    r.add_argument("name")
    r.set_defaults(func=cmd_restart)
    lg = sub.add_parser("logs", help="the log of one process (this run's)")
    lg.add_argument("name")
    lg.add_argument("-n", "--lines", type=int, default=50)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_logs)
    kh = sub.add_parser("kill-host", help="SIGKILL every process of a host at once (a drill)")
    kh.add_argument("host")
    kh.set_defaults(func=cmd_kill_host)
    sh = sub.add_parser("start-host", help="bring a killed host back")
    sh.add_argument("host")
    sh.set_defaults(func=cmd_start_host)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_cmd", required=True)
    admin.add_user_parsers(user)
    admin.add_parsers(sub)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    v = sub.add_parser("video", help="video servers: status, drain NAME, enable NAME, explain ROOM")
    v.add_argument("action", choices=["status", "drain", "enable", "explain"])
    v.add_argument("target", nargs="?", help="server name (drain, enable) or room id (explain)")
    v.set_defaults(func=cmd_video)

    s = sub.add_parser("sub", help="print bus messages, decoded (e.g. camctl sub 'cam.>')")
    s.add_argument("subject", nargs="?", default="cam.>")
    s.add_argument("--server", help="NATS URL (default: the running local cluster)")
    s.add_argument("--count", type=int, default=0, help="stop after this many messages")
    s.set_defaults(func=cmd_sub)

    def with_settings(command: Any, args: argparse.Namespace) -> int:
        settings = _settings(args)
        extra = (_running_at,) if command is backups.cmd_restore else ()
        return int(command(args, settings, _state(settings), *extra))

    backups.add_parsers(sub, with_settings)
    dbp = sub.add_parser("db", help="the database: 'promote' makes the standby the primary")
    dbp.add_argument("action", choices=["promote", "status"])
    dbp.add_argument("--data-dir", help="the standby's data directory (default: the running "
                     "cluster's standby)")
    dbp.set_defaults(func=cmd_db)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
