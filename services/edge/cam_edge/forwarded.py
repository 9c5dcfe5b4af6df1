"""Client address and scheme behind a load balancer: X-Forwarded-For / -Proto.

The headers are believed only when the direct peer (the TCP connection) is one of
``cam.trustedProxies``. Then ``X-Forwarded-For`` is read from the right, skipping
trusted proxies: the first address that is not one of them is the client. A client
that sends its own ``X-Forwarded-For`` straight to the edge changes nothing, and one
that sends it through the load balancer only adds entries to the left of the address
the load balancer saw (our configurations drop it anyway).

The result replaces ``scope["client"]`` and ``scope["scheme"]``, so Starlette's
``request.client`` and ``request.url.scheme`` (and with them the log, cookies'
``Secure`` flag and anything that limits by address) see the real client. The direct
peer stays in ``scope["cam.peer"]``. Every request is logged with the resolved
address (health checks at DEBUG).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("cam_edge.access")

Scope = dict[str, Any]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_QUIET_PATHS = frozenset({b"/CAMServer/healthCheck"})


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``cam.trustedProxies`` entries (addresses or CIDR networks) as networks."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def parse_address(text: str) -> IPAddress | None:
    """An address from a header entry: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def _header(scope: Scope, name: bytes) -> list[str]:
    """Every value of a header, split on commas, in order of arrival."""
    values: list[str] = []
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            values.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [v for v in values if v]


def resolve(scope: Scope, networks: tuple[IPNetwork, ...]) -> tuple[str | None, str, bool]:
    """``(client address, scheme, proxied)`` of a connection scope.

    ``proxied`` is true when the direct peer is a trusted proxy, i.e. when the
    forwarded headers were used.
    """
    scheme = str(scope.get("scheme", "http"))
    peer = scope.get("client")
    peer_host = peer[0] if peer else None
    peer_address = parse_address(peer_host) if peer_host else None
    if peer_address is None or not _trusted(peer_address, networks):
        return peer_host, scheme, False

    client: IPAddress = peer_address
    for entry in reversed(_header(scope, b"x-forwarded-for")):
        address = parse_address(entry)
        if address is None:
            break  # not an address: stop at the last hop we could read
        client = address
        if not _trusted(address, networks):
            break

    protos = _header(scope, b"x-forwarded-proto")
    if protos:
        proto = protos[-1].lower()  # the nearest proxy's value
        secure = {"https": True, "wss": True, "http": False, "ws": False}.get(proto)
        if secure is not None:
            if scope["type"] == "websocket":
                scheme = "wss" if secure else "ws"
            else:
                scheme = "https" if secure else "http"
    return str(client), scheme, True


class ForwardedMiddleware:
    """Pure ASGI middleware: resolve the client behind trusted proxies, log requests."""

    def __init__(self, app: Any, trusted_proxies: Iterable[str] = ()) -> None:
        self.app = app
        self.networks = parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client, scheme, proxied = resolve(scope, self.networks)
        peer = scope.get("client")
        scope = dict(scope)
        scope["cam.peer"] = peer
        scope["scheme"] = scheme
        if proxied and client is not None:
            scope["client"] = (client, 0)
        path = scope.get("raw_path") or scope.get("path", "").encode()
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if not log.isEnabledFor(level):
            await self.app(scope, receive, send)
            return

        # Percent-encoded raw path: no control characters reach the log.
        shown = path.decode("ascii", "replace") if isinstance(path, bytes) else str(path)
        via = f" via={peer[0]}" if proxied and peer else ""
        if scope["type"] == "websocket":
            # Logged when it opens; its frames do not pass through here.
            log.log(level, "WS %s open client=%s scheme=%s%s", shown, client, scheme, via,
                    extra={"method": "WS", "path": shown, "client": client})
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        logged = False

        async def send_and_log(message: dict[str, Any]) -> None:
            nonlocal logged
            if not logged and message["type"] == "http.response.start":
                logged = True
                log.log(level, "%s %s %s client=%s scheme=%s%s", method, shown,
                        message.get("status"), client, scheme, via,
                        extra={"method": method, "path": shown, "status": message.get("status"),
                               "client": client})
            await send(message)

        await self.app(scope, receive, send_and_log)
