"""Node configuration: boot.ini, then CAM_* environment variables, then overrides.

The keys of cluster-spec.md section 3 (``cam.clusterHosts`` ...) plus our own keys are
listed once, in :data:`KEYS`; parsing, validation, the child-process environment and
the generated docs are all driven by that table. A bad value fails at start-up with a
:class:`ConfigError` whose one-line message names the key, the value and what was
expected.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import logging
import math
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from .logs import FORMATS, LEVELS

DEFAULT_HOST_PORT: Final = 443
"""Port of a ``cam.clusterHosts`` entry written without ``:port`` (the spec's HTTPS)."""

BOOT_INI_ENV: Final = "CAM_BOOT_INI"
"""Environment variable naming the boot.ini to read when no path is given."""

OTHER_CAM_ENV: Final = frozenset({BOOT_INI_ENV, "CAM_DEPLOY_DIR",
                                  "CAM_PUBLIC_HOST", "CAM_HTTPS_PORT"})
"""CAM_* variables that are not configuration keys (read by other parts or by compose)."""

OTHER_CAM_ENV_PREFIXES: Final = ("CAM_LB_",)
"""Prefixes of CAM_* variables read by the load balancer configs (deploy/caddy)."""

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A bad configuration value; str() is one line naming the key, value and expectation."""

    def __init__(self, key: str, value: str, expected: str, source: str = "") -> None:
        # All four go to args so the exception survives pickling (multiprocessing).
        super().__init__(key, value, expected, source)
        self.key = key
        self.value = value
        self.expected = expected
        self.source = source

    def __str__(self) -> str:
        where = f" (from {_one_line(self.source)})" if self.source else ""
        return (
            f"config error: {_one_line(self.key)}='{_one_line(self.value)}'{where}: "
            f"expected {_one_line(self.expected)}"
        )


def _one_line(text: str) -> str:
    # Env values may carry newlines; escaping them keeps the error a single log line.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Invalid(ValueError):
    """Raised by a key parser; load_settings turns it into a ConfigError."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class HostEntry:
    """One ``cam.clusterHosts`` entry; ``host`` is kept without IPv6 brackets."""

    host: str
    port: int
    explicit_port: bool

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets)."""
        return f"{_bracket(self.host)}:{self.port}"

    def as_config(self) -> str:
        """The entry as written in boot.ini (no port when it was implicit)."""
        return self.address if self.explicit_port else _bracket(self.host)


@dataclass(frozen=True)
class VideoDomain:
    """One ``cam.videoDomains`` entry: a server and its target number of participants."""

    name: str
    capacity: int


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NUMERIC_HOST = re.compile(r"^[0-9.]+$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_ORIGIN = re.compile(r"^(https?)://(\[[^\]/\s]+\]|[^/:?#\[\]@\s]+)(?::([0-9]+))?$")
_USERINFO_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]*@")


def _is_hostname(host: str) -> bool:
    """A DNS name or dotted IPv4; '_' is allowed because compose service names use it."""
    if _NUMERIC_HOST.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _parse_port(text: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise _Invalid(f"port '{text}' to be 1..65535")
    return int(text)


def _parse_host_entry(text: str) -> HostEntry:
    """``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port``."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not _is_ipv6(text[1:end]):
            raise _Invalid(f"'{text}' to hold an IPv6 address in brackets")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return HostEntry(host, DEFAULT_HOST_PORT, False)
        if not rest.startswith(":"):
            raise _Invalid(f"'{text}' to be [IPv6] or [IPv6]:port")
        return HostEntry(host, _parse_port(rest[1:]), True)
    if text.count(":") > 1:
        raise _Invalid(f"'{text}' to be host or host:port (IPv6 addresses go in brackets)")
    host, sep, port = text.partition(":")
    if not _is_hostname(host):
        raise _Invalid(f"'{host}' to be a host name, FQDN or IPv4 address")
    if not sep:
        return HostEntry(host, DEFAULT_HOST_PORT, False)
    return HostEntry(host, _parse_port(port), True)


def _split(text: str, sep: str, what: str) -> list[str]:
    """Split a list value; an empty value is an empty list, an empty entry is an error."""
    if not text:
        return []
    items = [item.strip() for item in text.split(sep)]
    for index, item in enumerate(items, start=1):
        if not item:
            raise _Invalid(f"{what} (entry {index} is empty)")
    return items


def _host_of(value: str) -> str:
    """Lower-cased host of a URL or ``host[:port]``; the raw value when unparsable."""
    host: str | None
    try:
        host = urlsplit(value).hostname if "://" in value else _parse_host_entry(value).host
    except ValueError:
        host = None
    return (host or value).lower().rstrip(".")


def _redact(value: str) -> str:
    # URLs may carry a password; error messages end up in logs.
    return _USERINFO_PASSWORD.sub(r"\1***@", value)


# --------------------------------------------------------------------------- parsers


def _text(raw: str) -> str:
    return raw


def _non_empty(raw: str) -> str:
    if not raw:
        raise _Invalid("a non-empty path")
    return raw


_TRUE: Final = frozenset({"true", "yes", "1", "on"})
_FALSE: Final = frozenset({"false", "no", "0", "off"})


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Invalid("a boolean: true/false, yes/no, on/off or 1/0")


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not _INT.match(raw) or not low <= int(raw) <= high:
            raise _Invalid(f"an integer from {low} to {high}")
        return int(raw)

    return parse


def _workers(raw: str) -> int:
    if raw.lower() == "auto":
        return max(1, min(64, len(os.sched_getaffinity(0))))
    if not _INT.match(raw) or not 1 <= int(raw) <= 64:
        raise _Invalid("auto, or an integer from 1 to 64")
    return int(raw)


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw) if _FLOAT.match(raw) else math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise _Invalid(f"a number of seconds from {low:g} to {high:g}")
        return value

    return parse


_HOSTS_EXPECTED: Final = (
    "host names separated by ';', each a hostname, FQDN, IPv4 or [IPv6] address, "
    "optionally with :port (1..65535)"
)


def _cluster_hosts(raw: str) -> tuple[HostEntry, ...]:
    entries: list[HostEntry] = []
    for item in _split(raw, ";", _HOSTS_EXPECTED):
        try:
            entries.append(_parse_host_entry(item))
        except _Invalid as exc:
            raise _Invalid(f"{_HOSTS_EXPECTED} ({exc.expected})") from None
    return tuple(entries)


def _hosts_text(value: tuple[HostEntry, ...]) -> str:
    return ";".join(entry.as_config() for entry in value)


_VIDEO_EXPECTED: Final = (
    "server=capacity pairs separated by ';' with capacity a positive integer "
    "and each server named once"
)


def _video_domains(raw: str) -> tuple[VideoDomain, ...]:
    domains: list[VideoDomain] = []
    seen: set[str] = set()
    for item in _split(raw, ";", _VIDEO_EXPECTED):
        name, sep, capacity = (part.strip() for part in item.partition("="))
        if not sep or not _INT.match(capacity) or int(capacity) <= 0:
            raise _Invalid(f"{_VIDEO_EXPECTED} (bad entry '{item}')")
        try:
            _parse_host_entry(name)
        except _Invalid as exc:
            raise _Invalid(f"{_VIDEO_EXPECTED} ({exc.expected})") from None
        # Host names are case-insensitive, so CamServer1 and camserver1 are one server.
        if name.lower() in seen:
            raise _Invalid(f"{_VIDEO_EXPECTED} ('{name}' is listed twice)")
        seen.add(name.lower())
        domains.append(VideoDomain(name, int(capacity)))
    return tuple(domains)


def _video_text(value: tuple[VideoDomain, ...]) -> str:
    return ";".join(f"{domain.name}={domain.capacity}" for domain in value)


_VIDEO_URLS_EXPECTED: Final = "name=http(s)://host:port/janus pairs separated by ';'"


def _video_server_urls(raw: str) -> tuple[tuple[str, str], ...]:
    urls: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in _split(raw, ";", _VIDEO_URLS_EXPECTED):
        name, sep, url = (part.strip() for part in item.partition("="))
        parts = urlsplit(url) if sep else None
        if not sep or not name or parts is None or parts.scheme not in ("http", "https") \
                or not parts.hostname:
            raise _Invalid(f"{_VIDEO_URLS_EXPECTED} (bad entry '{item}')")
        if name.lower() in seen:
            raise _Invalid(f"{_VIDEO_URLS_EXPECTED} ('{name}' is listed twice)")
        seen.add(name.lower())
        urls.append((name, url.rstrip("/")))
    return tuple(urls)


def _video_urls_text(value: tuple[tuple[str, str], ...]) -> str:
    return ";".join(f"{name}={url}" for name, url in value)


_STUN_EXPECTED: Final = (
    "stun: or stuns: URIs separated by ';', each scheme:host[:port] (RFC 7064)"
)
_TURN_EXPECTED: Final = (
    "turn: or turns: URIs separated by ';', each scheme:host[:port] with an optional "
    "?transport=udp or ?transport=tcp (RFC 7065)"
)


def _ice_uris(schemes: tuple[str, ...], expected: str,
              query: bool) -> Callable[[str], tuple[str, ...]]:
    """A parser of ``scheme:host[:port][?transport=...]`` lists (the browser's
    RTCIceServer ``urls``); the host part is checked as a ``cam.clusterHosts`` entry,
    the scheme is lower-cased."""

    def parse(raw: str) -> tuple[str, ...]:
        uris: list[str] = []
        for uri in _split(raw, ";", expected):
            scheme, sep, rest = uri.partition(":")
            address, qsep, params = rest.partition("?")
            bad = (not sep or scheme.lower() not in schemes or address.startswith("/")
                   or (qsep and (not query or params.lower() not in ("transport=udp",
                                                                      "transport=tcp"))))
            if not bad:
                try:
                    _parse_host_entry(address)
                except _Invalid:
                    bad = True
            if bad:
                raise _Invalid(f"{expected} (bad entry '{uri}')")
            uris.append(f"{scheme.lower()}:{rest}")
        return tuple(uris)

    return parse


def _log_format(raw: str) -> str:
    if raw.lower() not in FORMATS:
        raise _Invalid("'text' (lines for people) or 'json' (one JSON object per line)")
    return raw.lower()


def _log_level(raw: str) -> str:
    if raw.upper() not in LEVELS:
        raise _Invalid("one of " + ", ".join(LEVELS))
    return raw.upper()


def _video_overflow(raw: str) -> str:
    if raw not in ("least_loaded", "reject"):
        raise _Invalid("'least_loaded' or 'reject'")
    return raw


def _storage(raw: str) -> str:
    if raw not in ("shared", "local", "s3"):
        raise _Invalid("'shared' (every node mounts cam.serverDatePath), 'local' (no "
                       "shared disk: nodes fetch from each other) or 's3'")
    return raw


def _http_url_or_empty(raw: str) -> str:
    if raw and not re.match(r"^https?://[^/\s]+(/\S*)?$", raw):
        raise _Invalid("an http:// or https:// URL")
    return raw


def _server_url_domain(raw: str) -> str:
    if not raw:
        return raw
    expected = "a host, host:port or http(s):// URL with a host"
    if "://" in raw:
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise _Invalid(expected) from None
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not (_is_hostname(host) or _is_ipv6(host)):
            raise _Invalid(expected)
        if port == 0:
            raise _Invalid(expected)
        return raw
    try:
        _parse_host_entry(raw)
    except _Invalid as exc:
        raise _Invalid(f"{expected} ({exc.expected})") from None
    return raw


def _default_node_name() -> str:
    """The machine's short host name, made into a valid subject token."""
    label = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", label).lstrip("_-")[:63]
    return name if _NODE_NAME.match(name) else "node"


def _node_name(raw: str) -> str:
    if not _NODE_NAME.match(raw):
        raise _Invalid(
            "a node name of 1-63 letters, digits, '_' or '-' starting with a letter or digit"
        )
    return raw


_NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")


def _nats_urls(raw: str) -> tuple[str, ...]:
    expected = "one or more nats://, tls://, ws:// or wss:// URLs with a host, separated by ','"
    urls = _split(raw, ",", expected)
    if not urls:
        raise _Invalid(expected)
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _Invalid(f"{expected} (bad URL '{_redact(url)}')") from None
        if parts.scheme not in _NATS_SCHEMES or not parts.hostname or port == 0:
            raise _Invalid(f"{expected} (bad URL '{_redact(url)}')")
    return tuple(urls)


def _database_url(raw: str) -> str:
    if raw and (not raw.startswith(("postgres://", "postgresql://")) or re.search(r"\s", raw)):
        raise _Invalid("empty (embedded Postgres) or a postgres:// or postgresql:// URL")
    return raw


_CLOCK: Final = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _backup_schedule(raw: str) -> tuple[str, ...]:
    if raw.strip().lower() == "off":
        return ()
    times = tuple(t.strip() for t in raw.split(","))
    if not times or not all(_CLOCK.match(t) for t in times):
        raise _Invalid("'off' or times of day HH:MM separated by ',' (e.g. 02:00,14:00)")
    return tuple(sorted(set(times)))


def _http_host(raw: str) -> str:
    if not (_is_hostname(raw) or _is_ipv6(raw)):
        raise _Invalid("an address to listen on: host name, IPv4 or IPv6 address (no brackets)")
    return raw


_ORIGINS_EXPECTED: Final = (
    "'*' or origins separated by ';', each http(s)://host[:port] with no path"
)


def _allowed_origins(raw: str) -> tuple[str, ...]:
    if raw == "*":
        return ("*",)
    origins: list[str] = []
    for item in _split(raw, ";", _ORIGINS_EXPECTED):
        match = _ORIGIN.match(item)
        if not match:
            raise _Invalid(f"{_ORIGINS_EXPECTED} (bad origin '{item}')")
        host, port = match.group(2), match.group(3)
        host_ok = _is_ipv6(host[1:-1]) if host.startswith("[") else _is_hostname(host)
        port_ok = port is None or (_PORT.match(port) is not None and 1 <= int(port) <= 65535)
        if not (host_ok and port_ok):
            raise _Invalid(f"{_ORIGINS_EXPECTED} (bad origin '{item}')")
        # Browsers send Origin lower-cased; storing it so makes matching a plain compare.
        origins.append(item.lower())
    return tuple(origins)


def _trusted_proxies(raw: str) -> tuple[str, ...]:
    expected = "IP addresses or CIDR networks separated by ';'"
    items = _split(raw, ";", expected)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _Invalid(f"{expected} (bad entry '{item}')") from None
    return tuple(items)


def _join(sep: str) -> Callable[[tuple[str, ...]], str]:
    return sep.join


# --------------------------------------------------------------------------- key table


@dataclass(frozen=True)
class ConfigKey:
    """One configuration key: where it is read from and how it is checked."""

    ini: str
    env: str
    field: str
    default: str
    """Raw default as it would be written in boot.ini (or a description when computed)."""
    description: str
    parse: Callable[[str], Any]
    """Raw text -> typed value; raises _Invalid with what was expected."""
    format: Callable[[Any], str] = str
    """Typed value -> raw text that parses back to the same value."""
    default_factory: Callable[[], str] | None = None
    """Computes the raw default at load time (then ``default`` only documents it)."""
    spec: bool = False
    """A key of cluster-spec.md section 3 (set in deploy/boot.ini.example, not commented)."""
    example: str | None = None
    """Value written in deploy/boot.ini.example; None writes the default."""
    note: str = ""
    """More advice for deploy/boot.ini.example, after the description."""

    def raw_default(self) -> str:
        """The raw default value to parse when nothing sets the key."""
        return self.default_factory() if self.default_factory else self.default


KEYS: Final[tuple[ConfigKey, ...]] = (
    ConfigKey(
        ini="cam.clusterHosts",
        env="CAM_CLUSTER_HOSTS",
        field="cluster_hosts",
        default="",
        description="Every server's host, ';'-separated, own host first; no :port means 443.",
        parse=_cluster_hosts,
        format=_hosts_text,
        spec=True,
        example="camserver1;camserver2",
        note="Behind an L7 load balancer on port 8080: camserver1:8080;camserver2:8080.",
    ),
    ConfigKey(
        ini="cam.clusterHostsDesc",
        env="CAM_CLUSTER_HOSTS_DESC",
        field="cluster_hosts_desc",
        default="",
        description="Free-text description of the cluster shown to administrators.",
        parse=_text,
        spec=True,
        example="camserver1 is the main server, camserver2 is the standby server.",
        note="Written as name=text parts separated by ';' (camserver1=the main server;"
        "camserver2=the standby), the admin console's cluster page shows each node its own.",
    ),
    ConfigKey(
        ini="cam.serverDatePath",
        env="CAM_SERVER_DATE_PATH",
        field="server_date_path",
        default="./data",
        description="Shared data root (attachments; embedded Postgres data when no database URL).",
        parse=_non_empty,
        spec=True,
        example="\\\\disk\\CAMServer\\data",
        note="On Linux e.g. /srv/cam/data.",
    ),
    ConfigKey(
        ini="cam.disableLANNetwork",
        env="CAM_DISABLE_LAN_NETWORK",
        field="disable_lan_network",
        default="true",
        description="Disable serverless LAN mode (not needed in a cluster).",
        parse=_bool,
        format=_bool_text,
        spec=True,
    ),
    ConfigKey(
        ini="cam.videoDomains",
        env="CAM_VIDEO_DOMAINS",
        field="video_domains",
        default="",
        description="Video servers in order of use with target participants: 'a=50;b=50'.",
        parse=_video_domains,
        format=_video_text,
        spec=True,
        example="camserver1=50;camserver2=50;camserver3=50",
        note="Servers are filled in the listed order.",
    ),
    ConfigKey(
        ini="cam.serverURLDomain",
        env="CAM_SERVER_URL_DOMAIN",
        field="server_url_domain",
        default="",
        description="Public URL/domain; not a cluster host means a load balancer.",
        parse=_server_url_domain,
        spec=True,
        note="E.g. https://chat.example.com; the load balancer then owns failover.",
    ),
    ConfigKey(
        ini="cam.nodeName",
        env="CAM_NODE_NAME",
        field="node_name",
        default="the short host name",
        description="Name of this node on the bus (letters, digits, '_', '-').",
        parse=_node_name,
        default_factory=_default_node_name,
        example="camserver1",
    ),
    ConfigKey(
        ini="cam.natsUrl",
        env="CAM_NATS_URL",
        field="nats_urls",
        default="nats://127.0.0.1:4222",
        description="NATS server URLs, ','-separated (nats://, tls://, ws://, wss://).",
        parse=_nats_urls,
        format=_join(","),
        note="List this node's own bus server first.",
    ),
    ConfigKey(
        ini="cam.natsCredentials",
        env="CAM_NATS_CREDENTIALS",
        field="nats_credentials",
        default="",
        description="File holding this process's NATS user and password (JSON, mode 0600).",
        parse=_text,
        format=str,
        note="Each kind of process has its own (camcore/permissions.py); camctl up makes them.",
    ),
    ConfigKey(
        ini="cam.databaseUrl",
        env="CAM_DATABASE_URL",
        field="database_url",
        default="",
        description="Postgres URL; empty: camctl up runs an embedded Postgres under "
        "cam.serverDatePath.",
        parse=_database_url,
        note="E.g. postgresql://cam:secret@dbhost:5432/cam. A server started on its own "
        "(cam-edge, cam-chat, ...) needs it.",
    ),
    ConfigKey(
        ini="cam.httpHost",
        env="CAM_HTTP_HOST",
        field="http_host",
        default="0.0.0.0",
        description="Address the HTTP/WebSocket edge listens on, and every other process's "
        "metrics listener (cam.metricsPort).",
        parse=_http_host,
    ),
    ConfigKey(
        ini="cam.httpPort",
        env="CAM_HTTP_PORT",
        field="http_port",
        default="8080",
        description="Port the HTTP/WebSocket edge listens on (0 picks a free port).",
        parse=_int_range(0, 65535),
    ),
    ConfigKey(
        ini="cam.allowedOrigins",
        env="CAM_ALLOWED_ORIGINS",
        field="allowed_origins",
        default="",
        description="Browser origins allowed to open a WebSocket, ';'-separated, or '*'.",
        parse=_allowed_origins,
        format=_join(";"),
        note="Same-origin pages are always allowed.",
    ),
    ConfigKey(
        ini="cam.maxFrameBytes",
        env="CAM_MAX_FRAME_BYTES",
        field="max_frame_bytes",
        default="65536",
        description="Largest WebSocket frame accepted from a client, in bytes.",
        parse=_int_range(1024, 16_777_216),
    ),
    ConfigKey(
        ini="cam.maxMessageChars",
        env="CAM_MAX_MESSAGE_CHARS",
        field="max_message_chars",
        default="4000",
        description="Longest chat message body, in characters.",
        parse=_int_range(1, 100_000),
    ),
    ConfigKey(
        ini="cam.sessionTtlHours",
        env="CAM_SESSION_TTL_HOURS",
        field="session_ttl_hours",
        default="720",
        description="Lifetime of a login session, in hours.",
        parse=_int_range(1, 87_600),
    ),
    ConfigKey(
        ini="cam.heartbeatInterval",
        env="CAM_HEARTBEAT_INTERVAL",
        field="heartbeat_interval",
        default="1.0",
        description="Seconds between heartbeats of every process.",
        parse=_float_range(0.05, 60.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.nodeTimeout",
        env="CAM_NODE_TIMEOUT",
        field="node_timeout",
        default="6.0",
        description="Seconds without heartbeat before a node counts as down (> 2 x heartbeat).",
        parse=_float_range(0.05, 300.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.repairInterval",
        env="CAM_REPAIR_INTERVAL",
        field="repair_interval",
        default="2.0",
        description="Seconds between an edge's checks that it delivered every stored message.",
        parse=_float_range(0.1, 60.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.outgoingQueueFrames",
        env="CAM_OUTGOING_QUEUE_FRAMES",
        field="outgoing_queue_frames",
        default="2048",
        description="Frames queued for one client before it is closed as too slow (4001).",
        parse=_int_range(16, 1_000_000),
        format=str,
    ),
    ConfigKey(
        ini="cam.drainSeconds",
        env="CAM_DRAIN_SECONDS",
        field="drain_seconds",
        default="2.0",
        description="On SIGTERM, seconds the health check answers 503 before clients are closed.",
        parse=_float_range(0.0, 300.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.wsPingInterval",
        env="CAM_WS_PING_INTERVAL",
        field="ws_ping_interval",
        default="20.0",
        description="Seconds between WebSocket pings to each client; a client that does not "
        "answer within the same time is dropped (0 turns pings off).",
        parse=_float_range(0.0, 3600.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.wsCompression",
        env="CAM_WS_COMPRESSION",
        field="ws_compression",
        default="false",
        description="Offer permessage-deflate on client WebSockets (costs CPU and about "
        "100 KiB of memory per connection; chat frames are small).",
        parse=_bool,
        format=_bool_text,
    ),
    ConfigKey(
        ini="cam.videoServerUrls",
        env="CAM_VIDEO_SERVER_URLS",
        field="video_server_urls",
        default="",
        description="Janus HTTP API of each video server: 'a=http://a:8088/janus;...' "
        "(default http://<name>:8088/janus).",
        parse=_video_server_urls,
        format=_video_urls_text,
    ),
    ConfigKey(
        ini="cam.videoOverflow",
        env="CAM_VIDEO_OVERFLOW",
        field="video_overflow",
        default="least_loaded",
        description="When every video server is over capacity: 'least_loaded' "
        "(lowest load/capacity) or 'reject'.",
        parse=_video_overflow,
        format=str,
    ),
    ConfigKey(
        ini="cam.videoAdminKey",
        env="CAM_VIDEO_ADMIN_KEY",
        field="video_admin_key",
        default="",
        description="Janus VideoRoom admin_key needed to create rooms (empty: none).",
        parse=_text,
        format=str,
    ),
    ConfigKey(
        ini="cam.videoProbeInterval",
        env="CAM_VIDEO_PROBE_INTERVAL",
        field="video_probe_interval",
        default="2.0",
        description="Seconds between health probes and reconciliation of video servers.",
        parse=_float_range(0.1, 300.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.videoPublicUrls",
        env="CAM_VIDEO_PUBLIC_URLS",
        field="video_public_urls",
        default="",
        description="Janus HTTP API of each video server as clients reach it (the "
        "conference's url): 'a=https://video1.example.com/janus;...' (default: its "
        "cam.videoServerUrls entry).",
        parse=_video_server_urls,
        format=_video_urls_text,
        note="Set it when clients reach the servers under other names than the allocator; "
        "the edges allow these origins in the web app's connect-src.",
    ),
    ConfigKey(
        ini="cam.stunServers",
        env="CAM_STUN_SERVERS",
        field="stun_servers",
        default="",
        description="STUN servers handed to clients for conferences (ice_servers): "
        "'stun:stun.example.com:3478;...'.",
        parse=_ice_uris(("stun", "stuns"), _STUN_EXPECTED, query=False),
        format=_join(";"),
    ),
    ConfigKey(
        ini="cam.turnServers",
        env="CAM_TURN_SERVERS",
        field="turn_servers",
        default="",
        description="TURN servers handed to clients for conferences, with time-limited "
        "credentials: 'turn:turn.example.com:3478?transport=udp;turns:turn.example.com:5349'.",
        parse=_ice_uris(("turn", "turns"), _TURN_EXPECTED, query=True),
        format=_join(";"),
        note="Needs cam.turnSecret.",
    ),
    ConfigKey(
        ini="cam.turnSecret",
        env="CAM_TURN_SECRET",
        field="turn_secret",
        default="",
        description="The static-auth-secret of the TURN servers (coturn use-auth-secret); "
        "edges sign each user's credentials with it and never send it.",
        parse=_text,
        format=str,
        note="Keep it secret like a password; only the edges need it.",
    ),
    ConfigKey(
        ini="cam.turnCredentialTtl",
        env="CAM_TURN_CREDENTIAL_TTL",
        field="turn_credential_ttl",
        default="3600",
        description="Seconds a TURN credential handed to a client stays valid.",
        parse=_int_range(60, 604_800),
    ),
    ConfigKey(
        ini="cam.trustedProxies",
        env="CAM_TRUSTED_PROXIES",
        field="trusted_proxies",
        default="",
        description="Proxies (IPs/CIDRs, ';'-separated) whose X-Forwarded-* are trusted.",
        parse=_trusted_proxies,
        format=_join(";"),
    ),
    ConfigKey(
        ini="cam.userPasswordMinLength",
        env="CAM_USER_PASSWORD_MIN_LENGTH",
        field="user_password_min_length",
        default="8",
        description="The shortest password a user may be given (by the user, an admin or "
        "camctl); the longest is 1024 characters.",
        parse=_int_range(8, 1024),
        note="Checked when a password is set, not at login: raising it does not lock "
        "anyone out.",
    ),
    ConfigKey(
        ini="cam.loginMaxFailures",
        env="CAM_LOGIN_MAX_FAILURES",
        field="login_max_failures",
        default="5",
        description="Failed logins of one account within cam.loginFailureWindow before "
        "its logins get 429 until the oldest failure leaves the window.",
        parse=_int_range(1, 1_000_000),
        note="Four times as many within 16 windows lock it for up to 16 windows (backoff).",
    ),
    ConfigKey(
        ini="cam.loginAddressMaxFailures",
        env="CAM_LOGIN_ADDRESS_MAX_FAILURES",
        field="login_address_max_failures",
        default="20",
        description="Failed logins from one client address (behind cam.trustedProxies: the "
        "real client) within cam.loginFailureWindow before its logins get 429.",
        parse=_int_range(1, 1_000_000),
    ),
    ConfigKey(
        ini="cam.loginFailureWindow",
        env="CAM_LOGIN_FAILURE_WINDOW",
        field="login_failure_window",
        default="60",
        description="Seconds over which failed logins are counted.",
        parse=_int_range(1, 86_400),
    ),
    ConfigKey(
        ini="cam.loginConcurrency",
        env="CAM_LOGIN_CONCURRENCY",
        field="login_concurrency",
        default="4",
        description="Password verifications (Argon2id) an edge runs at once; up to 8 times "
        "as many logins wait for one, more get 429.",
        parse=_int_range(1, 256),
    ),
    ConfigKey(
        ini="cam.maxRequestBytes",
        env="CAM_MAX_REQUEST_BYTES",
        field="max_request_bytes",
        default="65536",
        description="Largest REST request body, in bytes; larger ones get 413 before they "
        "are read.",
        parse=_int_range(1024, 16_777_216),
    ),
    ConfigKey(
        ini="cam.httpHeaderTimeout",
        env="CAM_HTTP_HEADER_TIMEOUT",
        field="http_header_timeout",
        default="10.0",
        description="Seconds a client connection has to send a complete request line and "
        "headers; then it is closed. Also the time allowed for a REST request body (408).",
        parse=_float_range(0.1, 300.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.httpKeepAlive",
        env="CAM_HTTP_KEEP_ALIVE",
        field="http_keep_alive",
        default="5",
        description="Seconds an idle HTTP keep-alive connection stays open.",
        parse=_int_range(1, 3600),
    ),
    ConfigKey(
        ini="cam.httpMaxPendingConnections",
        env="CAM_HTTP_MAX_PENDING_CONNECTIONS",
        field="http_max_pending_connections",
        default="1000",
        description="Connections that may wait for their request headers at once; more are "
        "closed as they open.",
        parse=_int_range(1, 1_000_000),
    ),
    ConfigKey(
        ini="cam.monitoringToken",
        env="CAM_MONITORING_TOKEN",
        field="monitoring_token",
        default="",
        description="Bearer token that may read GET /api/cluster/view without an admin "
        "session, and GET /metrics of every process (empty: the cluster view for admins "
        "only, and no metrics for anyone).",
        parse=_text,
        format=str,
        note="Keep it secret like a password; at least 16 characters. Prometheus reads it "
        "from a file (authorization: credentials_file).",
    ),
    ConfigKey(
        ini="cam.metricsPort",
        env="CAM_METRICS_PORT",
        field="metrics_port",
        default="0",
        description="Port of the Prometheus GET /metrics listener of a chat, presence, "
        "files, video, health or backups process, on cam.httpHost (0: none). The edge "
        "serves /metrics on cam.httpPort instead.",
        parse=_int_range(0, 65535),
        note="One port per process: two processes on one host need two values. camctl up "
        "assigns them (docs/monitoring.md).",
    ),
    ConfigKey(
        ini="cam.probeInterval",
        env="CAM_PROBE_INTERVAL",
        field="probe_interval",
        default="10.0",
        description="Seconds between an edge's self-probes: a message posted through it "
        "into the probe room, timed until every edge of cam.clusterHosts delivers it "
        "(0 turns the probe off).",
        parse=_float_range(0.0, 3600.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.outgoingQueueBytes",
        env="CAM_OUTGOING_QUEUE_BYTES",
        field="outgoing_queue_bytes",
        default="4194304",
        description="Bytes of frames queued for one client before it is closed as too slow "
        "(4001), whatever cam.outgoingQueueFrames allows.",
        parse=_int_range(1_048_576, 1_073_741_824),
        note="At least 1 MiB, so the largest reply (a 512 KiB page) always fits.",
    ),
    ConfigKey(
        ini="cam.maxConnectionsPerUser",
        env="CAM_MAX_CONNECTIONS_PER_USER",
        field="max_connections_per_user",
        default="32",
        description="WebSockets one user may have open on one edge; one more is closed "
        "with 4429 after auth.",
        parse=_int_range(1, 100_000),
    ),
    ConfigKey(
        ini="cam.edgeWorkers",
        env="CAM_EDGE_WORKERS",
        field="edge_workers",
        default="1",
        description="Edge worker processes on cam.httpPort, each with its own socket on the "
        "port (SO_REUSEPORT), so an edge host uses that many cores; auto: one per CPU "
        "this process may run on.",
        parse=_workers,
        format=str,
        note="With several, the per-address and per-user connection caps and the login "
        "lockout thresholds are shared out between the workers (docs/architecture.md, "
        "\"Edge workers\").",
    ),
    ConfigKey(
        ini="cam.maxConnectionsPerAddress",
        env="CAM_MAX_CONNECTIONS_PER_ADDRESS",
        field="max_connections_per_address",
        default="1024",
        description="WebSockets open at once on one edge from one client address (behind "
        "cam.trustedProxies: the real client); one more is refused with 4429.",
        parse=_int_range(1, 1_000_000),
    ),
    ConfigKey(
        ini="cam.requestRateLimit",
        env="CAM_REQUEST_RATE_LIMIT",
        field="request_rate_limit",
        default="200",
        description="Requests one WebSocket may make within cam.requestRateWindow; more "
        "are answered 'rate_limited' with retry_after.",
        parse=_int_range(1, 10_000_000),
    ),
    ConfigKey(
        ini="cam.requestRateWindow",
        env="CAM_REQUEST_RATE_WINDOW",
        field="request_rate_window",
        default="10",
        description="Seconds of the moving window of cam.requestRateLimit.",
        parse=_int_range(1, 3600),
    ),
    ConfigKey(
        ini="cam.watchPerConnection",
        env="CAM_WATCH_PER_CONNECTION",
        field="watch_per_connection",
        default="5000",
        description="Users one WebSocket may watch for presence at once.",
        parse=_int_range(1, 1_000_000),
    ),
    ConfigKey(
        ini="cam.watchPerEdge",
        env="CAM_WATCH_PER_EDGE",
        field="watch_per_edge",
        default="200000",
        description="Distinct users watched for presence on one edge (one bus "
        "subscription each); a watch past it is answered 'limit_reached'.",
        parse=_int_range(1, 100_000_000),
    ),
    ConfigKey(
        ini="cam.sessionRecheckInterval",
        env="CAM_SESSION_RECHECK_INTERVAL",
        field="session_recheck_interval",
        default="30.0",
        description="Seconds between an edge's checks that the session of every open "
        "WebSocket is still valid; expired or revoked ones are closed (4403).",
        parse=_float_range(0.1, 3600.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.roomsPerHour",
        env="CAM_ROOMS_PER_HOUR",
        field="rooms_per_hour",
        default="60",
        description="Rooms (group and direct) one user may create within an hour; more "
        "are answered 'rate_limited'.",
        parse=_int_range(1, 1_000_000),
    ),
    ConfigKey(
        ini="cam.maxRoomMembers",
        env="CAM_MAX_ROOM_MEMBERS",
        field="max_room_members",
        default="10000",
        description="Members one room may have; a create_room or invite past it is "
        "answered 'limit_reached'.",
        parse=_int_range(2, 10_000_000),
    ),
    ConfigKey(
        ini="cam.storage",
        env="CAM_STORAGE",
        field="storage",
        default="shared",
        description="Where attachments live: 'shared' (cam.serverDatePath, mounted by every "
        "node), 'local' (each node's own disk; nodes fetch from the holder) or 's3'.",
        parse=_storage,
        format=str,
        note="docs/storage.md describes each mode and how to move between them.",
    ),
    ConfigKey(
        ini="cam.s3Endpoint",
        env="CAM_S3_ENDPOINT",
        field="s3_endpoint",
        default="",
        description="S3-compatible endpoint URL for cam.storage=s3 (empty: AWS).",
        parse=_http_url_or_empty,
        format=str,
    ),
    ConfigKey(
        ini="cam.s3Bucket",
        env="CAM_S3_BUCKET",
        field="s3_bucket",
        default="",
        description="Bucket for cam.storage=s3 (it must exist).",
        parse=_text,
        format=str,
    ),
    ConfigKey(
        ini="cam.s3Region",
        env="CAM_S3_REGION",
        field="s3_region",
        default="us-east-1",
        description="Region of the bucket for cam.storage=s3.",
        parse=_non_empty,
        format=str,
    ),
    ConfigKey(
        ini="cam.s3AccessKey",
        env="CAM_S3_ACCESS_KEY",
        field="s3_access_key",
        default="",
        description="Access key id for cam.storage=s3.",
        parse=_text,
        format=str,
    ),
    ConfigKey(
        ini="cam.s3SecretKey",
        env="CAM_S3_SECRET_KEY",
        field="s3_secret_key",
        default="",
        description="Secret access key for cam.storage=s3.",
        parse=_text,
        format=str,
        note="Keep it secret; prefer the CAM_S3_SECRET_KEY environment variable.",
    ),
    ConfigKey(
        ini="cam.clusterSecret",
        env="CAM_CLUSTER_SECRET",
        field="cluster_secret",
        default="",
        description="Secret shared by every node that signs node-to-node file fetches "
        "(cam.storage=local); at least 32 characters.",
        parse=_text,
        format=str,
        note="The same value on every server; needed with cam.storage=local and more "
        "than one host.",
    ),
    ConfigKey(
        ini="cam.maxUploadBytes",
        env="CAM_MAX_UPLOAD_BYTES",
        field="max_upload_bytes",
        default="104857600",
        description="Largest attachment, in bytes; a larger upload is refused (413) while "
        "it streams, and by the load balancer.",
        parse=_int_range(1024, 68_719_476_736),
    ),
    ConfigKey(
        ini="cam.userUploadBytesPerHour",
        env="CAM_USER_UPLOAD_BYTES_PER_HOUR",
        field="user_upload_bytes_per_hour",
        default="2147483648",
        description="Bytes one user may upload within an hour.",
        parse=_int_range(1024, 2**50),
    ),
    ConfigKey(
        ini="cam.userUploadsPerHour",
        env="CAM_USER_UPLOADS_PER_HOUR",
        field="user_uploads_per_hour",
        default="300",
        description="Attachments one user may upload within an hour.",
        parse=_int_range(1, 10_000_000),
    ),
    ConfigKey(
        ini="cam.userStorageBytes",
        env="CAM_USER_STORAGE_BYTES",
        field="user_storage_bytes",
        default="10737418240",
        description="Bytes of attachments one user may keep in total.",
        parse=_int_range(1024, 2**60),
    ),
    ConfigKey(
        ini="cam.userStorageFiles",
        env="CAM_USER_STORAGE_FILES",
        field="user_storage_files",
        default="20000",
        description="Attachments one user may keep in total.",
        parse=_int_range(1, 100_000_000),
    ),
    ConfigKey(
        ini="cam.userUploadsAtOnce",
        env="CAM_USER_UPLOADS_AT_ONCE",
        field="user_uploads_at_once",
        default="4",
        description="Uploads one user may have in progress at once, cluster-wide.",
        parse=_int_range(1, 1000),
    ),
    ConfigKey(
        ini="cam.imageMaxPixels",
        env="CAM_IMAGE_MAX_PIXELS",
        field="image_max_pixels",
        default="25000000",
        description="Largest image (width x height) decoded for thumbnails; a larger one, "
        "or one that claims to be an image and is not, is refused.",
        parse=_int_range(1, 89_478_485),
        note="Well below Pillow's own bomb limit; decoding runs in a worker with a "
        "memory limit.",
    ),
    ConfigKey(
        ini="cam.uploadIdleTimeout",
        env="CAM_UPLOAD_IDLE_TIMEOUT",
        field="upload_idle_timeout",
        default="30.0",
        description="Seconds an upload may send nothing before it is refused (408).",
        parse=_float_range(1.0, 3600.0),
        format=repr,
    ),
    ConfigKey(
        ini="cam.backupPath",
        env="CAM_BACKUP_PATH",
        field="backup_path",
        default="",
        description="Where backups go: the second server's disk, e.g. a mounted share "
        "(empty: '<cam.serverDatePath>-backups' beside the data path).",
        parse=_text,
        format=str,
        note="docs/backup.md: what is kept there, the loss window and how to restore.",
    ),
    ConfigKey(
        ini="cam.backupSchedule",
        env="CAM_BACKUP_SCHEDULE",
        field="backup_schedule",
        default="02:00",
        description="When the database and files are backed up: local times HH:MM "
        "separated by ',', every day; 'off' for none (WAL archiving still runs).",
        parse=_backup_schedule,
        format=lambda times: ",".join(times) or "off",
    ),
    ConfigKey(
        ini="cam.backupKeep",
        env="CAM_BACKUP_KEEP",
        field="backup_keep",
        default="7",
        description="Backups kept; older ones, and the WAL only they need, are removed.",
        parse=_int_range(1, 1000),
    ),
    ConfigKey(
        ini="cam.backupDatabaseUrl",
        env="CAM_BACKUP_DATABASE_URL",
        field="backup_database_url",
        default="",
        description="Postgres URL of the backup role (REPLICATION, nothing else) that "
        "takes base backups and streams the WAL archive.",
        parse=_database_url,
        note="camctl up makes the role 'cam_backup'; docs/backup.md shows how elsewhere.",
    ),
    ConfigKey(
        ini="cam.backupMaxAgeHours",
        env="CAM_BACKUP_MAX_AGE_HOURS",
        field="backup_max_age_hours",
        default="26",
        description="Age of the last successful backup, in hours, beyond which the health "
        "service warns (a daily schedule, plus slack).",
        parse=_int_range(1, 24 * 365),
    ),
    ConfigKey(
        ini="cam.backupMaxWalLagBytes",
        env="CAM_BACKUP_MAX_WAL_LAG_BYTES",
        field="backup_max_wal_lag_bytes",
        default="16777216",
        description="WAL not yet in the archive, in bytes, beyond which the health "
        "service warns.",
        parse=_int_range(0, 1 << 40),
    ),
    ConfigKey(
        ini="cam.logFormat",
        env="CAM_LOG_FORMAT",
        field="log_format",
        default="text",
        description="How every process writes its log: 'text', a line for people, or "
        "'json', one object per line (time, level, logger, message, process, node, pid, "
        "request_id, exception).",
        parse=_log_format,
        note="docs/deployment.md, 'Logs'.",
    ),
    ConfigKey(
        ini="cam.logLevel",
        env="CAM_LOG_LEVEL",
        field="log_level",
        default="INFO",
        description="The least severe log records written: DEBUG, INFO, WARNING, ERROR or "
        "CRITICAL.",
        parse=_log_level,
        note="DEBUG also logs every WebSocket op an edge handles and every bus request a "
        "replica serves, each with its request id.",
    ),
    ConfigKey(
        ini="cam.logMaxBytes",
        env="CAM_LOG_MAX_BYTES",
        field="log_max_bytes",
        default="10485760",
        description="Under camctl up, the size in bytes at which a process's log file is "
        "rotated (0: never).",
        parse=_int_range(0, 1 << 40),
        note="Servers under systemd log to journald, which rotates by its own settings.",
    ),
    ConfigKey(
        ini="cam.logBackups",
        env="CAM_LOG_BACKUPS",
        field="log_backups",
        default="5",
        description="Under camctl up, the rotated log files kept per process "
        "(<name>.log.1 is the newest).",
        parse=_int_range(0, 100),
    ),
    ConfigKey(
        ini="cam.logKeepRuns",
        env="CAM_LOG_KEEP_RUNS",
        field="log_keep_runs",
        default="10",
        description="camctl up keeps the log folders of this many runs "
        "(<cam.serverDatePath>/logs/<run>), its own included; it removes older ones as "
        "it starts.",
        parse=_int_range(1, 1000),
    ),
)

_BY_INI: Final[dict[str, ConfigKey]] = {key.ini: key for key in KEYS}
_BY_ENV: Final[dict[str, ConfigKey]] = {key.env: key for key in KEYS}
_ENV_NAME: Final = re.compile(r"^CAM_[A-Z0-9_]+$")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one node (field meanings: see :data:`KEYS`)."""

    cluster_hosts: tuple[HostEntry, ...]
    cluster_hosts_desc: str
    server_date_path: str
    disable_lan_network: bool
    video_domains: tuple[VideoDomain, ...]
    server_url_domain: str
    node_name: str
    nats_urls: tuple[str, ...]
    nats_credentials: str
    database_url: str
    http_host: str
    http_port: int
    allowed_origins: tuple[str, ...]
    max_frame_bytes: int
    max_message_chars: int
    session_ttl_hours: int
    heartbeat_interval: float
    node_timeout: float
    repair_interval: float
    outgoing_queue_frames: int
    drain_seconds: float
    ws_ping_interval: float
    ws_compression: bool
    video_server_urls: tuple[tuple[str, str], ...]
    video_overflow: str
    video_admin_key: str
    video_probe_interval: float
    video_public_urls: tuple[tuple[str, str], ...]
    stun_servers: tuple[str, ...]
    turn_servers: tuple[str, ...]
    turn_secret: str
    turn_credential_ttl: int
    trusted_proxies: tuple[str, ...]
    user_password_min_length: int
    login_max_failures: int
    login_address_max_failures: int
    login_failure_window: int
    login_concurrency: int
    max_request_bytes: int
    http_header_timeout: float
    http_keep_alive: int
    http_max_pending_connections: int
    monitoring_token: str
    metrics_port: int
    probe_interval: float
    outgoing_queue_bytes: int
    max_connections_per_user: int
    edge_workers: int
    max_connections_per_address: int
    request_rate_limit: int
    request_rate_window: int
    watch_per_connection: int
    watch_per_edge: int
    session_recheck_interval: float
    rooms_per_hour: int
    max_room_members: int
    storage: str
    s3_endpoint: str
    s3_bucket: str
    s3_region: str
    s3_access_key: str
    s3_secret_key: str
    cluster_secret: str
    max_upload_bytes: int
    user_upload_bytes_per_hour: int
    user_uploads_per_hour: int
    user_storage_bytes: int
    user_storage_files: int
    user_uploads_at_once: int
    image_max_pixels: int
    upload_idle_timeout: float
    backup_path: str
    backup_schedule: tuple[str, ...]
    backup_keep: int
    backup_database_url: str
    backup_max_age_hours: int
    backup_max_wal_lag_bytes: int
    log_format: str
    log_level: str
    log_max_bytes: int
    log_backups: int
    log_keep_runs: int
    unknown_keys: tuple[str, ...]
    """boot.ini keys and CAM_* environment variables that name no key (warned, ignored)."""
    source: str

    def video_url(self, name: str) -> str:
        """The Janus HTTP API URL of a video server named in cam.videoDomains."""
        for server, url in self.video_server_urls:
            if server.lower() == name.lower():
                return url
        return f"http://{name}:8088/janus"

    def video_public_url(self, name: str) -> str:
        """The URL clients use for a video server's Janus API: its cam.videoPublicUrls
        entry, else the same as :meth:`video_url`."""
        for server, url in self.video_public_urls:
            if server.lower() == name.lower():
                return url
        return self.video_url(name)

    @property
    def lb_in_front(self) -> bool:
        """True when cam.serverURLDomain names a host that is none of cam.clusterHosts."""
        if not self.server_url_domain:
            return False
        public = _host_of(self.server_url_domain)
        return all(public != entry.host.lower().rstrip(".") for entry in self.cluster_hosts)

    @property
    def backup_root(self) -> Path:
        """cam.backupPath, or the folder beside the data path when it is empty."""
        if self.backup_path:
            return Path(self.backup_path)
        root = self.data_root.expanduser().resolve()
        return root.with_name(root.name + "-backups")

    @property
    def data_root(self) -> Path:
        """cam.serverDatePath as a Path (a UNC path stays a plain string path on POSIX)."""
        return Path(self.server_date_path)


def parse_boot_ini(text: str, source: str = "boot.ini") -> dict[str, tuple[str, int]]:
    """key -> (raw value, line number) of ``key=value`` lines; '#'/'!' lines are comments."""
    if text.startswith("\ufeff"):
        text = text[1:]
    result: dict[str, tuple[str, int]] = {}
    # Not str.splitlines(): it also splits on form feeds and Unicode separators,
    # which would shift line numbers away from what an editor shows.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(stripped, "", "key=value", f"{source} line {number}")
        result[key] = (value.strip(), number)
    return result


def _read_boot_ini(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError:
        raise ConfigError("boot.ini", path, "an existing readable file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "boot.ini", path, f"UTF-8 text (invalid byte at offset {exc.start})"
        ) from None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Read boot.ini, apply CAM_* environment variables, then overrides; validate all."""
    env = os.environ if environ is None else environ
    file_path = os.fspath(path) if path is not None else env.get(BOOT_INI_ENV, "")

    # key ini name -> (raw value, where it came from)
    raw: dict[str, tuple[str, str]] = {}
    unknown: list[str] = []
    if file_path:
        entries = parse_boot_ini(_read_boot_ini(file_path), file_path)
        for name, (value, line) in entries.items():
            if name in _BY_INI:
                raw[name] = (value, f"{file_path} line {line}")
            else:
                unknown.append(name)
        if unknown:
            log.warning("%s: unknown keys ignored: %s", file_path,
                        ", ".join(_with_hint(name, _BY_INI) for name in unknown))
    unknown_env = unknown_env_keys(env)
    if unknown_env:
        log.warning("unknown CAM_* environment variables ignored: %s",
                    ", ".join(_with_hint(name, _BY_ENV) for name in unknown_env))
        unknown.extend(unknown_env)
    for key in KEYS:
        if key.env in env:
            raw[key.ini] = (env[key.env].strip(), f"environment variable {key.env}")
    for name, value in (overrides or {}).items():
        if name not in _BY_INI:
            raise ConfigError(name, value, "a known configuration key", "overrides")
        raw[name] = (value.strip(), "override")

    values: dict[str, Any] = {}
    for key in KEYS:
        value, where = raw.setdefault(key.ini, (key.raw_default(), "default"))
        try:
            values[key.field] = key.parse(value)
        except _Invalid as exc:
            raise ConfigError(key.ini, _redact(value), exc.expected, where) from None

    # A node must miss at least two heartbeats before it is declared down.
    if values["node_timeout"] <= 2 * values["heartbeat_interval"]:
        value, where = raw["cam.nodeTimeout"]
        raise ConfigError(
            "cam.nodeTimeout",
            value,
            f"more than 2 x cam.heartbeatInterval "
            f"({2 * values['heartbeat_interval']:g} seconds) and at most 300",
            where,
        )
    # Time-limited TURN credentials are signed with the secret: no secret, no TURN.
    if values["turn_servers"] and not values["turn_secret"]:
        raise ConfigError("cam.turnSecret", "", "the static-auth-secret of the TURN servers "
                          "when cam.turnServers is set", raw["cam.turnSecret"][1])
    if values["storage"] == "s3":
        for key_name, field in (("cam.s3Bucket", "s3_bucket"), ("cam.s3AccessKey", "s3_access_key"),
                                ("cam.s3SecretKey", "s3_secret_key")):
            if not values[field]:
                raise ConfigError(key_name, "", "a value when cam.storage=s3", raw[key_name][1])
    if (values["storage"] == "local" and len(values["cluster_hosts"]) > 1
            and not values["cluster_secret"]):
        raise ConfigError("cam.clusterSecret", "", "a secret shared by every server when "
                          "cam.storage=local and cam.clusterHosts lists several",
                          raw["cam.clusterSecret"][1])
    if values["cluster_secret"] and len(values["cluster_secret"]) < 32:
        raise ConfigError("cam.clusterSecret", "***", "at least 32 characters",
                          raw["cam.clusterSecret"][1])
    return Settings(**values, unknown_keys=tuple(unknown), source=file_path)


def settings_env(settings: Settings) -> dict[str, str]:
    """The CAM_* environment that reproduces these settings (for child processes)."""
    return {key.env: key.format(getattr(settings, key.field)) for key in KEYS}


def unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """CAM_* variables in ``environ`` that look like a configuration key but name none.

    Those of :data:`OTHER_CAM_ENV` (and ``CAM_LB_*``) belong to other parts and are not
    reported; a misspelt key (``CAM_NATS_URLS``) is.
    """
    return sorted(
        name for name in environ
        if _ENV_NAME.match(name) and name not in _BY_ENV and name not in OTHER_CAM_ENV
        and not name.startswith(OTHER_CAM_ENV_PREFIXES)
    )


def _with_hint(name: str, known: Mapping[str, ConfigKey]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f"{name} (did you mean {close[0]}?)" if close else name


def require_database_url(settings: Settings, needed_by: str) -> str:
    """cam.databaseUrl, or a :class:`ConfigError` when it is empty.

    Only ``camctl up`` runs an embedded PostgreSQL; a server started on its own needs
    the URL, and an empty one must stop it with the usual one-line config error.
    """
    if settings.database_url:
        return settings.database_url
    raise ConfigError(
        "cam.databaseUrl",
        "",
        f"a postgres:// or postgresql:// URL ({needed_by} needs the database; "
        "set cam.databaseUrl or CAM_DATABASE_URL)",
        settings.source or "default",
    )


# --------------------------------------------------------------------------- boot.ini.example

EXAMPLE_HEADER: Final = """\
# boot.ini: configuration of one server (node) of the cluster.
#
# Generated from camcore/config.py (KEYS) by `python -m camcore.config --example`;
# edit the table there, not this file.
#
# Every server in the cluster carries the same keys: key=value lines, '#' comments,
# UTF-8 values (Japanese text is fine), Windows paths with backslashes kept as written.
# Servers read it with --config PATH or $CAM_BOOT_INI. Each key's CAM_* environment
# variable (named in its comment) overrides the file. A bad value stops start-up with
# one line naming the key, the value and what was expected; an unknown key is ignored
# with a warning that names it.
#
# The keys of the cluster specification (cluster-spec.md section 3) are set to the
# specification's example. Our own keys follow, commented out at their defaults.
"""

_EXAMPLE_WIDTH: Final = 88


def _example_block(key: ConfigKey) -> list[str]:
    text = f"{key.description} {key.note}".strip()
    lines = textwrap.wrap(text, _EXAMPLE_WIDTH - 2, break_long_words=False,
                          break_on_hyphens=False)
    lines.append(f"Default: {key.default or 'empty'}. Env: {key.env}.")
    value = key.default if key.example is None else key.example
    setting = f"{key.ini}={value}"
    return [f"# {line}" for line in lines] + [setting if key.spec else f"#{setting}"]


def render_example() -> str:
    """The text of deploy/boot.ini.example: every key of :data:`KEYS`, in order."""
    out = [EXAMPLE_HEADER]
    for title, spec in (("cluster-spec.md keys", True), ("our own keys", False)):
        out.append(f"# {'-' * 60} {title}\n")
        for key in KEYS:
            if key.spec == spec:
                out.append("\n".join(_example_block(key)) + "\n")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m camcore.config``: print deploy/boot.ini.example, or check a boot.ini."""
    parser = argparse.ArgumentParser(prog="python -m camcore.config")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--example", action="store_true",
                        help="print deploy/boot.ini.example, generated from the key table")
    action.add_argument("--check", metavar="BOOT_INI",
                        help="load BOOT_INI plus the CAM_* environment and report errors")
    args = parser.parse_args(argv)
    if args.example:
        sys.stdout.write(render_example())
        return 0
    logging.basicConfig(format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        load_settings(args.check)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


# Catch a KEYS/Settings mismatch at import time rather than at the first load.
assert {key.field for key in KEYS} | {"unknown_keys", "source"} == {
    f.name for f in fields(Settings)
}


if __name__ == "__main__":
    raise SystemExit(main())
