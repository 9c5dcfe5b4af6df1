"""boot.ini parsing, environment/override precedence and validation of every key."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from camcore.config import (
    KEYS,
    ConfigError,
    HostEntry,
    Settings,
    VideoDomain,
    load_settings,
    parse_boot_ini,
    render_example,
    require_database_url,
    settings_env,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "boot.ini.example"

# cluster-spec.md section 3, verbatim, plus a Japanese description.
SPEC_EXAMPLE = """\
cam.clusterHosts=camserver1;camserver2
cam.clusterHostsDesc=camserver1 is the main server, camserver2 is the standby server.
cam.serverDatePath=\\\\disk\\CAMServer\\data
cam.disableLANNetwork=true
# Video server distribution: "server=target number of participants" per server.
cam.videoDomains=camserver1=50;camserver2=50;camserver3=50
"""

JAPANESE_DESC = "camserver1 はメインサーバー、camserver2 は待機サーバーです。"


def write_ini(tmp_path: Path, text: str, name: str = "boot.ini") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_settings(write_ini(tmp_path, text), environ={})


def load_value(key: str, value: str) -> Settings:
    return load_settings(None, environ={}, overrides={key: value})


# --------------------------------------------------------------------------- spec example


def test_the_spec_example_parses_to_the_expected_values(tmp_path: Path) -> None:
    path = write_ini(tmp_path, SPEC_EXAMPLE)
    settings = load_settings(path, environ={})
    assert settings.cluster_hosts == (
        HostEntry("camserver1", 443, False),
        HostEntry("camserver2", 443, False),
    )
    assert settings.cluster_hosts_desc == (
        "camserver1 is the main server, camserver2 is the standby server."
    )
    assert settings.server_date_path == r"\\disk\CAMServer\data"
    assert settings.disable_lan_network is True
    assert settings.video_domains == (
        VideoDomain("camserver1", 50),
        VideoDomain("camserver2", 50),
        VideoDomain("camserver3", 50),
    )
    assert settings.server_url_domain == ""
    assert settings.unknown_keys == ()
    assert settings.source == str(path)


def test_a_japanese_description_and_a_windows_path_survive_intact(tmp_path: Path) -> None:
    text = SPEC_EXAMPLE + f"cam.clusterHostsDesc={JAPANESE_DESC}\n"
    settings = load_text(tmp_path, text)
    assert settings.cluster_hosts_desc == JAPANESE_DESC
    assert settings.server_date_path == "\\\\disk\\CAMServer\\data"
    assert str(settings.data_root) == r"\\disk\CAMServer\data"


def test_host_entries_with_a_port_keep_it_and_plain_names_mean_443(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "cam.clusterHosts=camserver1:8080; camserver2:8080 ;cam3\n")
    assert settings.cluster_hosts == (
        HostEntry("camserver1", 8080, True),
        HostEntry("camserver2", 8080, True),
        HostEntry("cam3", 443, False),
    )
    assert settings.cluster_hosts[0].address == "camserver1:8080"
    assert settings.cluster_hosts[2].address == "cam3:443"


def test_fqdn_ipv4_and_bracketed_ipv6_hosts_are_accepted() -> None:
    hosts = "cam1.example.co.jp;10.0.0.5:8443;[::1]:8080;[fe80::2]"
    settings = load_value("cam.clusterHosts", hosts)
    assert settings.cluster_hosts == (
        HostEntry("cam1.example.co.jp", 443, False),
        HostEntry("10.0.0.5", 8443, True),
        HostEntry("::1", 8080, True),
        HostEntry("fe80::2", 443, False),
    )
    assert settings.cluster_hosts[2].address == "[::1]:8080"


def test_no_file_at_all_gives_the_defaults() -> None:
    settings = load_settings(None, environ={})
    assert settings.cluster_hosts == ()
    assert settings.cluster_hosts_desc == ""
    assert settings.server_date_path == "./data"
    assert settings.data_root == Path("./data")
    assert settings.disable_lan_network is True
    assert settings.video_domains == ()
    assert settings.nats_urls == ("nats://127.0.0.1:4222",)
    assert settings.database_url == ""
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)
    assert settings.allowed_origins == ()
    assert settings.max_frame_bytes == 65536
    assert settings.max_message_chars == 4000
    assert settings.session_ttl_hours == 720
    assert (settings.heartbeat_interval, settings.node_timeout) == (1.0, 6.0)
    assert settings.trusted_proxies == ()
    assert settings.source == ""
    assert settings.node_name  # derived from the host name, always a valid token
    assert load_value("cam.nodeName", settings.node_name).node_name == settings.node_name


def test_every_key_has_a_matching_settings_field_and_a_description() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [key.field for key in KEYS] == [n for n in names if n not in ("unknown_keys", "source")]
    for key in KEYS:
        assert key.ini.startswith("cam.") and key.env.startswith("CAM_") and key.description


# --------------------------------------------------------------------------- boot.ini syntax


def test_comments_blank_lines_and_a_bom_are_ignored(tmp_path: Path) -> None:
    text = "\ufeff# first comment\n\n   ! bang comment\n  \t\ncam.nodeName = node-a  \r\n"
    path = tmp_path / "boot.ini"
    path.write_bytes(text.encode("utf-8"))
    assert load_settings(path, environ={}).node_name == "node-a"
    assert parse_boot_ini(text) == {"cam.nodeName": ("node-a", 5)}


def test_only_the_first_equals_sign_splits_key_from_value() -> None:
    parsed = parse_boot_ini("cam.videoDomains=a=1;b=2\ncam.databaseUrl=postgres://h/db?x=y\n")
    assert parsed["cam.videoDomains"] == ("a=1;b=2", 1)
    assert parsed["cam.databaseUrl"] == ("postgres://h/db?x=y", 2)


def test_a_duplicate_key_takes_the_last_value(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "cam.httpPort=1000\ncam.httpPort=2000\n")
    assert settings.http_port == 2000


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "camcore.config" and r.levelno == logging.WARNING]


def test_unknown_keys_are_kept_for_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "camcore.config")
    text = "cam.someOtherProductKey=1\ncam.nodeName=n1\nfoo.bar=x\ncam.natsUrls=nats://h:1\n"
    settings = load_text(tmp_path, text)
    assert settings.unknown_keys == ("cam.someOtherProductKey", "foo.bar", "cam.natsUrls")
    assert settings.node_name == "n1"
    assert settings.nats_urls == ("nats://127.0.0.1:4222",)  # the misspelt key is not used
    [warning] = config_warnings(caplog)
    assert str(tmp_path / "boot.ini") in warning
    assert "unknown keys ignored" in warning
    assert "cam.someOtherProductKey" in warning and "foo.bar" in warning
    assert "cam.natsUrls (did you mean cam.natsUrl?)" in warning


def test_known_keys_give_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "camcore.config")
    load_settings(write_ini(tmp_path, SPEC_EXAMPLE), environ={"CAM_HTTP_PORT": "9000"})
    assert config_warnings(caplog) == []


def test_unknown_cam_environment_variables_are_warned_about_by_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "camcore.config")
    environ = {
        "CAM_NATS_URLS": "nats://elsewhere:4222",  # misspelt CAM_NATS_URL
        "CAM_HTTPPORT": "9000",
        "CAM_HTTP_PORT": "9100",
        # Not configuration keys, read by other parts: no warning.
        "CAM_BOOT_INI": "",
        "CAM_DEPLOY_DIR": "/srv/deploy",
        "CAM_LB_SITE": "https://chat.example.com",
        "PATH": "/usr/bin",
        "cam_lower_case": "x",
    }
    settings = load_settings(None, environ=environ)
    assert settings.nats_urls == ("nats://127.0.0.1:4222",)
    assert settings.http_port == 9100
    assert settings.unknown_keys == ("CAM_HTTPPORT", "CAM_NATS_URLS")
    [warning] = config_warnings(caplog)
    assert "unknown CAM_* environment variables ignored" in warning
    assert "CAM_NATS_URLS (did you mean CAM_NATS_URL?)" in warning
    assert "CAM_HTTPPORT (did you mean CAM_HTTP_PORT?)" in warning
    for quiet in ("CAM_BOOT_INI", "CAM_DEPLOY_DIR", "CAM_LB_SITE", "PATH",
                  "cam_lower_case"):
        assert quiet not in warning


def test_backslashes_are_not_escapes() -> None:
    assert parse_boot_ini("p=C:\\temp\\new\\n\n")["p"] == ("C:\\temp\\new\\n", 1)


def test_a_line_without_equals_names_the_line_and_its_number(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "cam.nodeName=n1\njust some words\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.key == "just some words"
    assert_one_line_error(info.value, "just some words", "")
    assert "line 2" in str(info.value)


def test_the_error_message_has_the_documented_shape() -> None:
    error = ConfigError(
        "cam.videoDomains",
        "camserver1=abc",
        "server=capacity pairs separated by ';' with capacity a positive integer",
        "boot.ini line 5",
    )
    assert str(error) == (
        "config error: cam.videoDomains='camserver1=abc' (from boot.ini line 5): "
        "expected server=capacity pairs separated by ';' with capacity a positive integer"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.value, copy.expected, copy.source) == (
        error.key,
        error.value,
        error.expected,
        error.source,
    )


# --------------------------------------------------------------------------- boot.ini.example


def test_the_committed_boot_ini_example_is_generated_from_the_key_table() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "deploy/boot.ini.example is stale: run "
        "'.venv/bin/python -m camcore.config --example > deploy/boot.ini.example'"
    )


def test_the_example_lists_every_key_once_and_loads_without_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "camcore.config")
    text = render_example()
    lines = text.splitlines()
    for key in KEYS:
        written = [line for line in lines if line.lstrip("#").startswith(f"{key.ini}=")]
        assert len(written) == 1, key.ini
        assert key.env in text, key.env
    # As shipped: the spec keys are set to the spec's example, the rest are defaults.
    shipped = load_text(tmp_path, text)
    assert shipped.unknown_keys == ()
    assert shipped.cluster_hosts == (HostEntry("camserver1", 443, False),
                                     HostEntry("camserver2", 443, False))
    assert shipped.server_date_path == "\\\\disk\\CAMServer\\data"
    assert [d.capacity for d in shipped.video_domains] == [50, 50, 50]
    # Every commented-out line is a valid value too: uncommenting all of them loads.
    uncommented = "\n".join(
        line[1:] if line.startswith("#cam.") else line for line in lines
    )
    everything = load_text(tmp_path, uncommented)
    assert everything.node_name == "camserver1"
    assert dataclasses.replace(everything, node_name=shipped.node_name) == shipped
    assert config_warnings(caplog) == []


def test_python_m_camcore_config_prints_the_example() -> None:
    result = subprocess.run([sys.executable, "-m", "camcore.config", "--example"],
                            capture_output=True, text=True, encoding="utf-8", check=True,
                            cwd=ROOT)
    assert result.stdout == render_example()
    assert result.stderr == ""


def test_python_m_camcore_config_check_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "cam.httpPort=eighty\n")
    result = subprocess.run([sys.executable, "-m", "camcore.config", "--check", str(path)],
                            capture_output=True, text=True, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr == (
        f"config error: cam.httpPort='eighty' (from {path} line 1): "
        "expected an integer from 0 to 65535\n"
    )


# --------------------------------------------------------------------------- precedence


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_ini(tmp_path, SPEC_EXAMPLE + "cam.httpPort=9000\n")
    settings = load_settings(
        path, environ={"CAM_HTTP_PORT": "9100", "CAM_CLUSTER_HOSTS": "a1;a2:8080"}
    )
    assert settings.http_port == 9100
    assert settings.cluster_hosts == (HostEntry("a1", 443, False), HostEntry("a2", 8080, True))
    assert settings.video_domains[0] == VideoDomain("camserver1", 50)


def test_overrides_beat_the_environment(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "cam.httpPort=9000\n")
    settings = load_settings(
        path, environ={"CAM_HTTP_PORT": "9100"}, overrides={"cam.httpPort": "9200"}
    )
    assert settings.http_port == 9200


def test_cam_boot_ini_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "cam.nodeName=from-env-file\n")
    settings = load_settings(None, environ={"CAM_BOOT_INI": str(path)})
    assert settings.node_name == "from-env-file"
    assert settings.source == str(path)


def test_settings_env_round_trips_through_load_settings(tmp_path: Path) -> None:
    text = (
        SPEC_EXAMPLE
        + f"cam.clusterHostsDesc={JAPANESE_DESC}\n"
        + "cam.clusterHosts=camserver1:8080;[::1];10.1.2.3:8443\n"
        + "cam.serverURLDomain=https://chat.example.com\n"
        + "cam.disableLANNetwork=off\n"
        + "cam.natsUrl=nats://n1:4222, tls://n2:4222\n"
        + "cam.databaseUrl=postgresql://cam@db:5432/cam\n"
        + "cam.httpHost=::\n"
        + "cam.httpPort=0\n"
        + "cam.allowedOrigins=https://chat.example.com;http://localhost:8080\n"
        + "cam.heartbeatInterval=0.1\n"
        + "cam.nodeTimeout=0.7\n"
        + "cam.trustedProxies=10.0.0.0/8;192.168.1.1\n"
        + "cam.unknownKey=x\n"
    )
    original = load_text(tmp_path, text)
    env = settings_env(original)
    assert set(env) == {key.env for key in KEYS}
    assert all(isinstance(value, str) for value in env.values())
    again = load_settings(None, environ=env)
    assert again == dataclasses.replace(original, unknown_keys=(), source="")


def test_settings_env_round_trips_the_defaults() -> None:
    defaults = load_settings(None, environ={})
    assert load_settings(None, environ=settings_env(defaults)) == defaults


def test_booleans_accept_the_usual_spellings() -> None:
    for text in ("true", "TRUE", "Yes", "1", "on", " On "):
        assert load_value("cam.disableLANNetwork", text).disable_lan_network is True
    for text in ("false", "False", "no", "0", "OFF"):
        assert load_value("cam.disableLANNetwork", text).disable_lan_network is False


def test_allowed_origins_accept_a_star_or_a_list() -> None:
    assert load_value("cam.allowedOrigins", "*").allowed_origins == ("*",)
    origins = load_value("cam.allowedOrigins", "https://Chat.Example.com;http://localhost:8080")
    assert origins.allowed_origins == ("https://chat.example.com", "http://localhost:8080")


# --------------------------------------------------------------------------- bad values


def assert_one_line_error(error: ConfigError, key: str, value: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert key in message
    assert value in message
    assert "expected" in message


BAD_VALUES: list[tuple[str, str]] = [
    ("cam.videoDomains", "camserver1=abc"),
    ("cam.videoDomains", "camserver1=0"),
    ("cam.videoDomains", "camserver1=-5"),
    ("cam.videoDomains", "camserver1"),
    ("cam.videoDomains", "camserver1=50;CamServer1=20"),
    ("cam.videoDomains", "camserver1=50;;camserver2=50"),
    ("cam.clusterHosts", "camserver1;;camserver2"),
    ("cam.clusterHosts", "camserver1;"),
    ("cam.clusterHosts", "camserver1:0"),
    ("cam.clusterHosts", "camserver1:65536"),
    ("cam.clusterHosts", "camserver1:http"),
    ("cam.clusterHosts", "camserver1:"),
    ("cam.clusterHosts", "bad host"),
    ("cam.clusterHosts", "-bad.example.com"),
    ("cam.clusterHosts", "999.1.1.1"),
    ("cam.clusterHosts", "::1"),
    ("cam.disableLANNetwork", "maybe"),
    ("cam.disableLANNetwork", ""),
    ("cam.serverDatePath", ""),
    ("cam.serverURLDomain", "ftp://chat.example.com"),
    ("cam.serverURLDomain", "chat example com"),
    ("cam.nodeName", "node.one"),
    ("cam.nodeName", "node one"),
    ("cam.nodeName", "node>"),
    ("cam.nodeName", "-node"),
    ("cam.nodeName", "n" * 64),
    ("cam.natsUrl", "http://127.0.0.1:4222"),
    ("cam.natsUrl", "127.0.0.1:4222"),
    ("cam.natsUrl", "nats://"),
    ("cam.natsUrl", "nats://n1:4222,"),
    ("cam.natsUrl", ""),
    ("cam.databaseUrl", "mysql://db/cam"),
    ("cam.databaseUrl", "db:5432"),
    ("cam.httpHost", "not a host"),
    ("cam.allowedOrigins", "https://chat.example.com/app"),
    ("cam.allowedOrigins", "https://chat.example.com/"),
    ("cam.allowedOrigins", "ftp://chat.example.com"),
    ("cam.allowedOrigins", "chat.example.com"),
    ("cam.allowedOrigins", "*;https://chat.example.com"),
    ("cam.httpPort", "65536"),
    ("cam.httpPort", "-1"),
    ("cam.httpPort", "eighty"),
    ("cam.maxFrameBytes", "1023"),
    ("cam.maxFrameBytes", "16777217"),
    ("cam.maxMessageChars", "0"),
    ("cam.maxMessageChars", "100001"),
    ("cam.sessionTtlHours", "0"),
    ("cam.sessionTtlHours", "87601"),
    ("cam.sessionTtlHours", "1.5"),
    ("cam.heartbeatInterval", "0.01"),
    ("cam.heartbeatInterval", "61"),
    ("cam.heartbeatInterval", "nan"),
    ("cam.nodeTimeout", "2.0"),
    ("cam.nodeTimeout", "301"),
    ("cam.trustedProxies", "10.0.0.0/33"),
    ("cam.trustedProxies", "proxy.example.com"),
    ("cam.trustedProxies", "10.0.0.1;;10.0.0.2"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_bad_value_raises_a_one_line_error_naming_key_value_and_expectation(
    key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_value(key, value)
    assert info.value.key == key
    assert info.value.value == value
    assert_one_line_error(info.value, key, value)


def test_a_bad_value_in_the_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_ini(tmp_path, SPEC_EXAMPLE.replace("camserver2=50", "camserver2=abc"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.source == f"{path} line 6"
    assert_one_line_error(info.value, "cam.videoDomains", "camserver2=abc")


def test_a_bad_value_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"CAM_HTTP_PORT": "http"})
    assert "CAM_HTTP_PORT" in str(info.value)
    assert_one_line_error(info.value, "cam.httpPort", "http")


def test_node_timeout_must_exceed_two_heartbeats() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"CAM_HEARTBEAT_INTERVAL": "5"})
    assert_one_line_error(info.value, "cam.nodeTimeout", "6.0")
    assert "cam.heartbeatInterval" in str(info.value)
    ok = load_settings(None, environ={"CAM_HEARTBEAT_INTERVAL": "5", "CAM_NODE_TIMEOUT": "10.5"})
    assert ok.node_timeout == 10.5


def test_a_missing_file_given_explicitly_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "boot.ini"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, environ={})
    assert info.value.key == "boot.ini"
    assert_one_line_error(info.value, "boot.ini", str(missing))


def test_a_missing_file_named_by_cam_boot_ini_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"CAM_BOOT_INI": missing})
    assert_one_line_error(info.value, "boot.ini", missing)


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "boot.ini"
    path.write_bytes("cam.clusterHostsDesc=メイン\n".encode("shift_jis"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert_one_line_error(info.value, "boot.ini", str(path))
    assert "UTF-8" in str(info.value)


def test_an_unknown_override_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={}, overrides={"cam.noSuchKey": "1"})
    assert_one_line_error(info.value, "cam.noSuchKey", "1")


def test_a_newline_in_an_environment_value_stays_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"CAM_NODE_NAME": "a\nb"})
    assert "\n" not in str(info.value)
    assert "a\\nb" in str(info.value)


def test_a_password_in_a_bad_url_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_value("cam.databaseUrl", "mysql://cam:s3cret@db/cam")
    assert "s3cret" not in str(info.value)
    assert "mysql://cam:***@db/cam" in str(info.value)


def test_a_missing_database_url_where_one_is_required_is_a_one_line_config_error(
    tmp_path: Path,
) -> None:
    path = write_ini(tmp_path, SPEC_EXAMPLE)
    with pytest.raises(ConfigError) as info:
        require_database_url(load_settings(path, environ={}), "the chat service")
    assert (info.value.key, info.value.value) == ("cam.databaseUrl", "")
    assert info.value.source == str(path)
    assert str(info.value) == (
        f"config error: cam.databaseUrl='' (from {path}): expected a postgres:// or "
        "postgresql:// URL (the chat service needs the database; set cam.databaseUrl or "
        "CAM_DATABASE_URL)"
    )
    with pytest.raises(ConfigError) as info:
        require_database_url(load_settings(None, environ={}), "the edge")
    assert_one_line_error(info.value, "cam.databaseUrl", "")
    assert "(from default)" in str(info.value) and "the edge needs the database" in str(info.value)


def test_a_set_database_url_is_returned_as_is() -> None:
    url = "postgresql://cam:secret@db:5432/cam"
    settings = load_settings(None, environ={"CAM_DATABASE_URL": url})
    assert require_database_url(settings, "the edge") == url


# --------------------------------------------------------------------------- load balancer


def lb(hosts: str, url_domain: str) -> bool:
    overrides = {"cam.clusterHosts": hosts, "cam.serverURLDomain": url_domain}
    return load_settings(None, environ={}, overrides=overrides).lb_in_front


def test_no_server_url_domain_means_no_load_balancer() -> None:
    assert lb("camserver1;camserver2", "") is False
    assert lb("", "") is False


def test_a_server_url_domain_equal_to_a_cluster_host_means_no_load_balancer() -> None:
    assert lb("camserver1;camserver2", "camserver1") is False
    assert lb("camserver1;camserver2", "CAMSERVER2") is False
    assert lb("camserver1;camserver2", "https://camserver1") is False


def test_a_host_with_port_8080_still_counts_as_that_host() -> None:
    assert lb("camserver1:8080;camserver2:8080", "camserver1:8080") is False
    assert lb("camserver1:8080;camserver2:8080", "http://camserver2:8080/") is False


def test_a_different_domain_means_a_load_balancer_in_front() -> None:
    assert lb("camserver1:8080;camserver2:8080", "chat.example.com") is True
    assert lb("camserver1;camserver2", "https://chat.example.com") is True


def test_per_department_lists_each_starting_with_the_own_host() -> None:
    # Sales and support run separate clusters; each file lists its own host first.
    assert lb("sales1.example.com;sales2.example.com", "sales1.example.com") is False
    assert lb("sales2.example.com;sales1.example.com", "sales1.example.com") is False
    assert lb("support1.example.com;support2.example.com", "sales1.example.com") is True
    assert lb("support1.example.com;support2.example.com", "chat.example.com") is True


@pytest.mark.parametrize(("env", "key"), [
    ({"CAM_STORAGE": "nfs"}, "cam.storage"),
    ({"CAM_STORAGE": "s3", "CAM_S3_ACCESS_KEY": "a", "CAM_S3_SECRET_KEY": "b"}, "cam.s3Bucket"),
    ({"CAM_STORAGE": "s3", "CAM_S3_BUCKET": "b", "CAM_S3_SECRET_KEY": "b"}, "cam.s3AccessKey"),
    ({"CAM_STORAGE": "local", "CAM_CLUSTER_HOSTS": "a:8080;b:8080"}, "cam.clusterSecret"),
    ({"CAM_CLUSTER_SECRET": "short"}, "cam.clusterSecret"),
    ({"CAM_S3_ENDPOINT": "s3.example.com"}, "cam.s3Endpoint"),
    ({"CAM_MAX_UPLOAD_BYTES": "100MB"}, "cam.maxUploadBytes"),
])
def test_storage_settings_that_cannot_work_are_refused(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    assert info.value.key == key


def test_the_storage_defaults() -> None:
    s = load_settings(environ={})
    assert (s.storage, s.max_upload_bytes, s.image_max_pixels) == ("shared", 100 << 20, 25_000_000)
    local = load_settings(environ={"CAM_STORAGE": "local", "CAM_CLUSTER_HOSTS": "a;b",
                                   "CAM_CLUSTER_SECRET": "x" * 32})
    assert local.storage == "local"
