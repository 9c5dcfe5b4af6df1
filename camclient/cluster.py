"""Where a client connects: the cluster information every edge serves.

``GET /api/cluster`` on any edge returns ``cam.clusterHosts`` in that server's order
(its own host first), ``cam.clusterHostsDesc``, ``cam.serverURLDomain`` and whether a
load balancer is in front. From it:

* no load balancer: the WebSocket URLs of the hosts, in the listed order; the client
  connects to the first and, when its node fails, moves on to the next;
* a load balancer: one URL, the load balancer's; it owns failover, so the client
  reconnects through it only.

Rule for the URL of a ``cam.clusterHosts`` entry: port 443 (also written without a
port) is ``wss://host/ws``; port 80 is ``ws://host/ws``; any other port uses the
scheme the cluster information was fetched with (``ws`` for ``http``, ``wss`` for
``https``), e.g. ``ws://camserver1:8080/ws``. The load balancer's URL is
``cam.serverURLDomain`` (``https://`` is assumed when it has no scheme).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx


def _split_host(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (as the edge serves them) -> (host, port)."""
    if address.startswith("["):
        end = address.index("]")
        host, rest = address[: end + 1], address[end + 1:]
    else:
        host, _, port_text = address.rpartition(":")
        if not host:
            return address, 443
        rest = ":" + port_text
    return host, int(rest[1:]) if rest.startswith(":") and rest[1:] else 443


def host_ws_url(address: str, *, secure_default: bool, path: str = "/ws") -> str:
    """The WebSocket URL of one ``cam.clusterHosts`` entry (rule in the module doc)."""
    host, port = _split_host(address)
    if port == 443:
        return f"wss://{host}{path}"
    if port == 80:
        return f"ws://{host}{path}"
    return f"{'wss' if secure_default else 'ws'}://{host}:{port}{path}"


def public_base_url(server_url_domain: str) -> str:
    """``cam.serverURLDomain`` as a base URL: ``chat.example.com`` -> ``https://chat.example.com``."""
    value = server_url_domain.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.netloc}"


def ws_from_http(base_url: str, path: str = "/ws") -> str:
    """``https://host:port`` -> ``wss://host:port/ws`` (and http -> ws)."""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class ClusterInfo:
    """What ``GET /api/cluster`` said, and the URLs a client derives from it."""

    node: str
    hosts: tuple[str, ...]
    own_host: str | None
    description: str
    server_url_domain: str
    load_balancer: bool
    ws_path: str = "/ws"
    fetched_from: str = "http://localhost"

    @classmethod
    def from_json(cls, data: Mapping[str, Any], fetched_from: str) -> ClusterInfo:
        hosts = tuple(str(h) for h in data.get("hosts", ()))
        return cls(
            node=str(data.get("node", "")),
            hosts=hosts,
            own_host=data.get("own_host", hosts[0] if hosts else None),
            description=str(data.get("description", "")),
            server_url_domain=str(data.get("server_url_domain", "")),
            load_balancer=bool(data.get("load_balancer", False)),
            ws_path=str(data.get("protocol", {}).get("path", "/ws")),
            fetched_from=fetched_from,
        )

    @property
    def load_balancer_url(self) -> str | None:
        """The load balancer's base URL, when one is in front."""
        if not self.load_balancer or not self.server_url_domain:
            return None
        return public_base_url(self.server_url_domain)

    def ws_urls(self) -> list[str]:
        """The WebSocket URLs to try, in order."""
        lb = self.load_balancer_url
        if lb is not None:
            return [ws_from_http(lb, self.ws_path)]
        if not self.hosts:
            # A single server without cam.clusterHosts: the one we asked.
            return [ws_from_http(self.fetched_from, self.ws_path)]
        secure = urlsplit(self.fetched_from).scheme == "https"
        return [host_ws_url(h, secure_default=secure, path=self.ws_path) for h in self.hosts]


async def fetch_cluster_info(base_url: str, *, verify: Any = True,
                             timeout: float = 5.0) -> ClusterInfo:
    """``GET {base_url}/api/cluster``."""
    base = base_url.rstrip("/")
    async with httpx.AsyncClient(verify=verify, timeout=timeout) as http:
        r = await http.get(base + "/api/cluster")
        r.raise_for_status()
    return ClusterInfo.from_json(r.json(), base)


async def first_cluster_info(base_urls: Sequence[str], **kwargs: Any) -> ClusterInfo:
    """The cluster information of the first of ``base_urls`` that answers."""
    errors: list[str] = []
    for url in base_urls:
        try:
            return await fetch_cluster_info(url, **kwargs)
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
    raise ConnectionError("no server answered /api/cluster: " + "; ".join(errors))
