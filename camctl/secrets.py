"""The bus credentials of the docker compose cluster, made from camcore/permissions.py.

``camctl up`` makes one NATS credential per kind of process and the servers' users and
permissions from :data:`camcore.permissions.PERMISSIONS` (camctl/rig.py). The compose
file does the same with a one-shot ``secrets`` service:

``python -m camctl.secrets compose DIR --nats nats1 --nats nats2 ... --owner cam``
    writes, under ``DIR``:

    - ``DIR/<kind>/<kind>.json`` for every kind of :data:`~camcore.permissions.PERMISSIONS`
      (``edge``, ``chat``, ``files``, ``presence``, ``video``, ``health``,
      ``operator``): the credential that kind's processes read through
      ``cam.natsCredentials``. Mode 0600 in a 0700 directory, both owned by ``--owner``
      (the image's ``cam`` account). Each
      directory is a volume of its own in docker-compose.yml, mounted only into the
      containers of its kind, so no container holds another kind's password.
    - ``DIR/nats/nats.conf``: the config of every NATS server (a JSON document, which
      nats-server reads as its own format): the users with bcrypt hashes and the
      permissions of camcore/permissions.py (:func:`~camcore.permissions.nats_authorization`,
      the block camctl up's servers get), no anonymous access, cluster routes that
      authenticate as the ``route`` user, and monitoring on the container's loopback
      only. Each server is started with ``--name``. Mode 0600, owned by the caller (root
      in the container: the nats image runs as root). ``DIR/nats/route.json`` keeps the
      route password.

    Existing credentials are kept (a second run changes no password); the server config
    is written again each time.

``python -m camctl.secrets connected``
    exit 0 when a process on this machine (in a container: in this container) holds an
    established TCP connection to a NATS server port of ``cam.natsUrl``. The healthcheck
    of the bus services, whose own credentials may not subscribe to their heartbeats.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from camcore import permissions
from camcore.permissions import Credential

NATS_CONFIG = "nats.conf"
NATS_DIR = "nats"
CLIENT_PORT, ROUTE_PORT = 4222, 6222
MONITOR = "127.0.0.1:8222"
"""nats-server's monitoring (``/healthz`` for the container healthcheck): its loopback only."""


def credential_path(directory: Path, kind: str) -> Path:
    """Where :func:`write_compose` puts the credential of ``kind`` (``route``: beside the
    server config)."""
    if kind == permissions.ROUTE_USER:
        return directory / NATS_DIR / f"{kind}.json"
    return directory / kind / f"{kind}.json"


def _owner(spec: str | None) -> tuple[int, int] | None:
    """``NAME`` or ``UID:GID`` as ``(uid, gid)``; None: leave files to the caller."""
    if not spec:
        return None
    if ":" in spec:
        uid, _, gid = spec.partition(":")
        return int(uid), int(gid)
    entry = pwd.getpwnam(spec)
    return entry.pw_uid, entry.pw_gid


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(0o700)


def _write_private(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.chmod(0o600)
    tmp.replace(path)


def _keep_or_make(path: Path, kind: str, owner: tuple[int, int] | None) -> Credential:
    if not path.exists():
        _write_private(path, json.dumps({"user": kind, "password": secrets.token_urlsafe(24),
                                         "kind": kind}), owner)
    elif owner is not None:
        os.chown(path, *owner)
        path.chmod(0o600)
    cred = permissions.read_credential(path)
    if cred.user != kind or (cred.kind or kind) != kind:
        raise permissions.CredentialError(f"{path} holds user {cred.user!r}, not {kind!r}")
    return cred


def nats_config(creds: Mapping[str, Credential], servers: Sequence[str], *,
                cluster_name: str = "cam", client_port: int = CLIENT_PORT,
                route_port: int = ROUTE_PORT, monitor: str = MONITOR) -> dict[str, object]:
    """The config of every server of a NATS cluster whose members are ``servers``
    (host names): camcore/permissions.py's users, authenticated routes to all of them
    (a server skips the route to itself)."""
    route = creds[permissions.ROUTE_USER]
    # The very block camctl up's servers get, JSON after its "authorization:" key.
    authorization = json.loads(permissions.nats_authorization(creds).partition(":")[2])
    return {
        "listen": f"0.0.0.0:{client_port}",
        "http": monitor,
        "authorization": authorization,
        "cluster": {
            "name": cluster_name,
            "listen": f"0.0.0.0:{route_port}",
            "authorization": {"user": route.user,
                              "password": permissions.hash_password(route.password)},
            "routes": [f"nats-route://{route.user}:{route.password}@{host}:{route_port}"
                       for host in servers],
        },
    }


def write_compose(directory: Path, servers: Sequence[str], *, owner: tuple[int, int] | None = None,
                  cluster_name: str = "cam") -> dict[str, Credential]:
    """Every kind's credential in ``directory/<kind>/`` and the servers' config in
    ``directory/nats/`` (see the module's docstring); returns the credentials."""
    if not servers:
        raise permissions.CredentialError("a NATS cluster needs at least one server")
    creds: dict[str, Credential] = {}
    for kind in permissions.PERMISSIONS:
        _private_dir(directory / kind, owner)
        creds[kind] = _keep_or_make(credential_path(directory, kind), kind, owner)
    _private_dir(directory / NATS_DIR, None)
    creds[permissions.ROUTE_USER] = _keep_or_make(
        credential_path(directory, permissions.ROUTE_USER), permissions.ROUTE_USER, None)
    config = nats_config(creds, servers, cluster_name=cluster_name)
    _write_private(directory / NATS_DIR / NATS_CONFIG, json.dumps(config, indent=2) + "\n", None)
    return creds


# ------------------------------------------------------------------ healthcheck


def _established_remote_ports() -> set[int]:
    """Remote ports of the established TCP connections in this network namespace."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01":  # TCP_ESTABLISHED
                ports.add(int(fields[2].rpartition(":")[2], 16))
    return ports


def nats_ports(urls: Sequence[str]) -> set[int]:
    return {urlsplit(u).port or CLIENT_PORT for u in urls}


def connected(urls: Sequence[str]) -> bool:
    """Whether a connection to a NATS server of ``urls`` is established here."""
    return bool(nats_ports(urls) & _established_remote_ports())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camctl.secrets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("compose", help="write every kind's credential and the NATS config")
    make.add_argument("directory", type=Path)
    make.add_argument("--nats", action="append", required=True, metavar="HOST",
                      help="a NATS server of the cluster (repeatable)")
    make.add_argument("--owner", help="NAME or UID:GID owning the credentials (default: caller)")
    make.add_argument("--cluster-name", default="cam")
    sub.add_parser("connected", help="exit 0 when a connection to cam.natsUrl is established")
    args = parser.parse_args(argv)
    if args.command == "connected":
        from camcore.config import ConfigError, load_settings

        try:
            urls = load_settings(None).nats_urls
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        if connected(urls):
            return 0
        print(f"no connection to the bus ({', '.join(urls)})", file=sys.stderr)
        return 1
    try:
        write_compose(args.directory, args.nats, owner=_owner(args.owner),
                      cluster_name=args.cluster_name)
    except (OSError, KeyError, ValueError, permissions.CredentialError) as exc:
        print(f"camctl.secrets: {exc}", file=sys.stderr)
        return 1
    kinds = ", ".join(permissions.PERMISSIONS)
    print(f"{args.directory}: credentials of {kinds}; {NATS_DIR}/{NATS_CONFIG} for "
          f"{', '.join(args.nats)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
