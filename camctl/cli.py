"""``camctl``: run a whole cluster locally, administer users, watch the bus."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import secrets
import signal
import sys
import time
from pathlib import Path

from camcore import accounts, bus, db, subjects, wire
from camcore.config import ConfigError, Settings, load_settings, settings_env
from camcore.errors import CamError

from . import lb, rig

STATE_FILE = "camctl-state.json"


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _data_root(settings: Settings) -> Path:
    return Path(settings.server_date_path).expanduser().resolve()


def _state(settings: Settings) -> dict[str, object]:
    path = _data_root(settings) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _database_url(settings: Settings) -> str:
    url = settings.database_url or str(_state(settings).get("database_url", ""))
    if not url:
        raise SystemExit("no database: set cam.databaseUrl, or start the cluster with 'camctl up'")
    return url


# ------------------------------------------------------------------ up


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = _data_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    logdir = root / "logs"
    procs: list[rig.Proc] = []
    sfus: list[rig.Janus] = []
    nats = pg = None
    plan: lb.LocalPlan | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"data root: {root}")
        nats = rig.NatsCluster(logdir, size=max(2, args.nats)).start()
        print(f"bus: NATS cluster of {len(nats.procs)} servers: {', '.join(nats.urls)}")
        database_url = settings.database_url
        if not database_url:
            pg = rig.Postgres(root / "postgres", port=args.pg_port or None).start()
            if not pg.database_exists("cam"):
                pg.create_database("cam")
            database_url = pg.dsn("cam")
            print(f"database: embedded PostgreSQL, data in {pg.datadir}")
        applied = asyncio.run(db.migrate(database_url))
        if applied:
            print(f"database: applied migrations {', '.join(applied)}")
        admin_note = asyncio.run(_ensure_admin(database_url, root))

        ports = [args.base_port + i for i in range(args.nodes)]
        busy = [p for p in ports if rig.port_open(p)]
        if busy:
            raise SystemExit(f"port(s) {busy} are in use; pick others with --base-port")
        if not args.no_lb:
            plan = lb.LocalPlan(args.lb, args.lb_port, root / "lb")
        names = [f"camserver{i + 1}" for i in range(args.nodes)]
        hosts = ";".join(f"127.0.0.1:{p}" for p in ports)
        base_env = settings_env(settings)
        base_env.update({"CAM_DATABASE_URL": database_url, "CAM_NATS_URL": ",".join(nats.urls)})
        if not settings.cluster_hosts:
            base_env["CAM_CLUSTER_HOSTS"] = hosts
        if plan:
            base_env.update(plan.edge_env(settings.trusted_proxies, settings.server_url_domain))
        for i in range(args.chat):
            env = {**base_env, "CAM_NODE_NAME": names[i % len(names)]}
            procs.append(rig.service("chat", f"chat{i + 1}", env, logdir).start())
        for i in range(args.presence):
            env = {**base_env, "CAM_NODE_NAME": names[i % len(names)]}
            procs.append(rig.service("presence", f"presence{i + 1}", env, logdir).start())
        sfus, video_env = _video_plan(args, settings, names, root)
        base_env.update(video_env)
        for sfu in sfus:
            sfu.start()
        if sfus:
            print(f"video: {len(sfus)} Janus servers: "
                  + ", ".join(f"{s.name} {s.url}" for s in sfus))
            procs.append(rig.service("video", "video1", {**base_env, "CAM_NODE_NAME": names[0]},
                                     logdir).start())
        elif settings.video_server_urls:
            procs.append(rig.service("video", "video1", {**base_env, "CAM_NODE_NAME": names[0]},
                                     logdir).start())
        else:
            print("video: Janus is not installed; conferences are off (apt-get install janus)")
        procs.append(rig.service("health", "health1", {**base_env, "CAM_NODE_NAME": names[0]},
                                 logdir).start())
        for i, (name, port) in enumerate(zip(names, ports, strict=True)):
            env = {**base_env, "CAM_NODE_NAME": name, "CAM_HTTP_PORT": str(port),
                   "CAM_HTTP_HOST": "127.0.0.1",
                   # Each edge prefers its own bus server; the others are for failover.
                   "CAM_NATS_URL": ",".join(nats.urls[i % len(nats.urls):]
                                            + nats.urls[: i % len(nats.urls)])}
            if not settings.cluster_hosts:
                # Each server lists its own host first (cluster-spec.md section 3).
                env["CAM_CLUSTER_HOSTS"] = ";".join(f"127.0.0.1:{p}" for p in ports[i:] + ports[:i])
            procs.append(rig.service("edge", name, env, logdir).start())
        for name, port in zip(names, ports, strict=True):
            rig.wait_for(lambda port=port: (_check(procs), rig.edge_ready(port))[1], 60,
                         f"{name} health check")
        balancer = plan.start([lb.Backend(n, "127.0.0.1", p) for n, p in zip(names, ports, strict=True)]
                              ) if plan else None
        rig.write_state(root / STATE_FILE, {
            "database_url": database_url, "nats_urls": nats.urls,
            "edges": {n: f"http://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)},
            "load_balancer": balancer.url if balancer else None,
        })
        print("\nThe cluster is up.")
        for name, port in zip(names, ports, strict=True):
            print(f"  {name}: http://127.0.0.1:{port}/   WebSocket ws://127.0.0.1:{port}/ws"
                  f"   health http://127.0.0.1:{port}/CAMServer/healthCheck")
        if balancer:
            print(f"  load balancer ({balancer.kind}): {balancer.url}/   WebSocket {balancer.ws_url}\n"
                  f"    certificate to trust: {balancer.ca_file}\n"
                  f"    curl --cacert {balancer.ca_file} {balancer.url}/CAMServer/healthCheck")
        print(admin_note)
        print(f"  logs: {logdir}\nPress Ctrl-C to stop.")
        while not stopping:
            _check(procs)
            time.sleep(0.5)
        print("\nstopping...")
        return 0
    except (rig.RigError, CamError) as exc:
        print(f"camctl up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if plan:
            plan.stop()
        for p in reversed(procs):
            p.stop()
        for sfu in sfus:
            sfu.stop()
        if nats:
            nats.stop()
        if pg:
            pg.stop()


def _video_plan(args: argparse.Namespace, settings: Settings, names: list[str],
                root: Path) -> tuple[list[rig.Janus], dict[str, str]]:
    """One local Janus per cam.videoDomains entry (default: one per node), unless the
    configuration names Janus servers of its own (cam.videoServerUrls)."""
    if args.no_video or settings.video_server_urls or rig.janus_binary() is None:
        return [], {}
    domains = [(d.name, d.capacity) for d in settings.video_domains] or [(n, 50) for n in names]
    key = secrets.token_hex(12)
    sfus = [rig.Janus(root / "janus", name, admin_key=key,
                      rtp_range=(20000 + i * 1000, 20999 + i * 1000))
            for i, (name, _) in enumerate(domains)]
    return sfus, {
        "CAM_VIDEO_DOMAINS": ";".join(f"{n}={c}" for n, c in domains),
        "CAM_VIDEO_SERVER_URLS": ";".join(f"{s.name}={s.url}" for s in sfus),
        "CAM_VIDEO_ADMIN_KEY": key,
    }


def _check(procs: list[rig.Proc]) -> None:
    for p in procs:
        p.check_alive()


async def _ensure_admin(database_url: str, root: Path) -> str:
    pool = await db.create_pool(database_url, max_size=2)
    try:
        if await accounts.list_users(pool):
            return "  log in with an existing user (create more with 'camctl user add NAME')"
        password = secrets.token_urlsafe(12)
        await accounts.create_user(pool, "admin", password, is_admin=True)
        note = root / "admin-password.txt"
        note.write_text(password + "\n", encoding="utf-8")
        note.chmod(0o600)
        return (f"  log in as 'admin' with password {password} (saved in {note}):\n"
                "    curl -s -X POST -H 'content-type: application/json' "
                f"-d '{{\"username\":\"admin\",\"password\":\"{password}\"}}' "
                "http://127.0.0.1:8080/api/login")
    finally:
        await pool.close()


# ------------------------------------------------------------------ users, migrate, sub


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    password = args.password or getpass.getpass(f"password for {args.name}: ")

    async def run() -> accounts.User:
        pool = await db.create_pool(_database_url(settings), max_size=2)
        try:
            return await accounts.create_user(pool, args.name, password,
                                              display_name=args.display_name, is_admin=args.admin)
        finally:
            await pool.close()

    try:
        user = asyncio.run(run())
    except CamError as exc:
        print(f"camctl user add: {exc.message}", file=sys.stderr)
        return 1
    print(f"created user {user.username} (id {user.id})")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> list[accounts.User]:
        pool = await db.create_pool(_database_url(settings), max_size=2)
        try:
            return await accounts.list_users(pool)
        finally:
            await pool.close()

    for u in asyncio.run(run()):
        role = "admin" if u.is_admin else "user"
        print(f"{u.id}\t{u.username}\t{role}\t{u.display_name}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(db.migrate(_database_url(_settings(args))))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
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
        nc = await bus.connect(urls, "camctl-sub", connect_deadline=5)
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

    asyncio.run(run())
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Operator view of the video servers: status, drain, enable, explain a placement."""
    settings = _settings(args)
    state_urls = _state(settings).get("nats_urls")
    urls = [str(u) for u in state_urls] if isinstance(state_urls, list) and state_urls \
        else list(settings.nats_urls)

    async def run() -> object:
        nc = await bus.connect(urls, "camctl-video", connect_deadline=5)
        try:
            if args.action == "explain":
                if not args.target or not args.target.isdigit():
                    raise CamError("explain needs a room id", "bad_request")
                return await bus.call(nc, subjects.video_rpc("explain"),
                                      wire.ConfExplain(room=int(args.target)))
            if args.action in ("drain", "enable") and not args.target:
                raise CamError(f"{args.action} needs a video server name", "bad_request")
            return await bus.call(nc, subjects.video_rpc("admin"),
                                  wire.VideoAdmin(action=args.action, server=args.target))
        finally:
            await nc.close()

    try:
        result = asyncio.run(run())
    except CamError as exc:
        print(f"camctl video {args.action}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camctl", description=__doc__)
    parser.add_argument("--config", help="boot.ini to read (default: $CAM_BOOT_INI, else defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a whole cluster on this machine (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, default=2, help="number of edges (default 2)")
    up.add_argument("--chat", type=int, default=2, help="number of chat replicas (default 2)")
    up.add_argument("--presence", type=int, default=2,
                    help="number of presence replicas (default 2)")
    up.add_argument("--nats", type=int, default=2, help="number of NATS servers (default 2)")
    up.add_argument("--base-port", type=int, default=8080, help="port of camserver1 (default 8080)")
    up.add_argument("--pg-port", type=int, default=0, help="embedded PostgreSQL port (default: free)")
    up.add_argument("--lb", choices=lb.KINDS, default=lb.DEFAULT_KIND,
                    help="load balancer in front of the edges, HTTPS with a local CA (default caddy)")
    up.add_argument("--no-lb", action="store_true", help="start no load balancer")
    up.add_argument("--no-video", action="store_true",
                    help="start no Janus video servers (by default one per node when installed)")
    up.add_argument("--lb-port", type=int, default=0,
                    help="HTTPS port of the load balancer (default 8443, or a free port if taken)")
    up.set_defaults(func=cmd_up)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_cmd", required=True)
    add = user.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--password", help="password (default: prompt)")
    add.add_argument("--display-name")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=cmd_user_add)
    user.add_parser("list", help="list users").set_defaults(func=cmd_user_list)

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

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
