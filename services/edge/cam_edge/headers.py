"""What the edge says about itself to browsers: security headers and cross-origin rules.

**Origins.** A browser page may talk to an edge from three kinds of origin:

- its own (same-origin: the Origin's ``host:port`` is the ``Host`` header);
- one of ``cam.allowedOrigins`` (or any, with ``*``);
- the web app served by another node of the cluster: ``http(s)://H`` for every
  ``cam.clusterHosts`` entry ``H``, and the origin of ``cam.serverURLDomain``. The web
  app fails over from node to node without a load balancer, so the page of one node
  opens the WebSocket of the next and logs in there (docs/protocol.md, "Cross-origin").

Any other Origin is refused (cross-site WebSocket hijacking, forged logins). REST calls
from the cluster's own origins get CORS answers (:class:`CorsMiddleware`), without
credentials: such a page sends ``Authorization: Bearer <token>``, never the cookie.

**Headers.** Every HTTP answer carries the Content-Security-Policy of the web app, whose
``connect-src`` lists the same cluster origins (and their ``ws:``/``wss:`` forms) and
the video servers' public origins (``cam.videoPublicUrls``, :func:`video_origins`), and
``nosniff``, ``no-referrer`` and ``DENY`` framing (:class:`SecurityHeadersMiddleware`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders

from camcore import errors
from camcore.config import Settings

from .limits import HttpRefusal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OriginKey = tuple[str, str, int]
"""An origin compared as browsers do: scheme, lower-cased host, port (default filled in)."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_WS_SCHEME: Final = {"http": "ws", "https": "wss"}

API_PREFIX: Final = "/api/"
"""The REST routes, the only ones that answer cross-origin (CORS)."""
CORS_METHODS: Final = "GET, POST"
CORS_HEADERS: Final = "authorization, content-type"
CORS_MAX_AGE: Final = "600"


def origin_key(origin: str) -> OriginKey | None:
    """``http(s)://host[:port]`` as an :data:`OriginKey`; None for anything else (a path,
    user info, another scheme, ``null``)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc \
            or parts.path or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def server_url_origin(server_url_domain: str) -> str | None:
    """The origin of ``cam.serverURLDomain``: ``chat.example.com`` -> ``https://chat.example.com``
    (no scheme means HTTPS, as for clients: ``camclient.cluster.public_base_url``)."""
    value = server_url_domain.strip()
    if not value:
        return None
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def cluster_origins(settings: Settings) -> tuple[str, ...]:
    """The http(s) origins of the cluster's own web app, in order: ``http://H`` and
    ``https://H`` for every ``cam.clusterHosts`` entry ``H``, then the origin of
    ``cam.serverURLDomain``."""
    origins = [f"{scheme}://{entry.address}" for entry in settings.cluster_hosts
               for scheme in ("http", "https")]
    public = server_url_origin(settings.server_url_domain)
    if public is not None:
        origins.append(public)
    return tuple(dict.fromkeys(origins))


def connect_sources(settings: Settings) -> tuple[str, ...]:
    """CSP ``connect-src`` entries besides ``'self'``: ``http``, ``https``, ``ws`` and
    ``wss`` for every cluster host, the serverURLDomain origin and its WebSocket form,
    then the origin of every video server's public Janus API (the conference's url)."""
    sources = [f"{scheme}://{entry.address}" for entry in settings.cluster_hosts
               for scheme in ("http", "https", "ws", "wss")]
    public = server_url_origin(settings.server_url_domain)
    if public is not None:
        scheme, _, rest = public.partition("://")
        sources += [public, f"{_WS_SCHEME.get(scheme, scheme)}://{rest}"]
    sources += video_origins(settings)
    return tuple(dict.fromkeys(sources))


def video_origins(settings: Settings) -> tuple[str, ...]:
    """The origins of the Janus APIs clients call: ``cam.videoPublicUrls`` (or its
    default, the ``cam.videoServerUrls`` entry) of every ``cam.videoDomains`` server,
    then any other ``cam.videoPublicUrls`` entry."""
    urls = [settings.video_public_url(d.name) for d in settings.video_domains]
    urls += [url for _, url in settings.video_public_urls]
    return tuple(dict.fromkeys(f"{p.scheme.lower()}://{p.netloc.rpartition('@')[2].lower()}"
                               for p in map(urlsplit, urls)))


def content_security_policy(settings: Settings) -> str:
    """The web app's policy: its own scripts, styles, fonts and images only, no
    framing, no plugins, and connections to this cluster's nodes only."""
    connect = " ".join(("'self'", *connect_sources(settings)))
    return ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data: blob:; media-src 'self' blob:; font-src 'self'; "
            f"connect-src {connect}; manifest-src 'self'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


class OriginRules:
    """Which browser origins may open a WebSocket or change state, and get CORS."""

    def __init__(self, settings: Settings) -> None:
        self.allow_any = "*" in settings.allowed_origins
        self.allowed = frozenset(settings.allowed_origins)
        self.cluster: frozenset[OriginKey] = frozenset(
            key for key in map(origin_key, cluster_origins(settings)) if key is not None)

    def cross_origin(self, origin: str) -> bool:
        """``origin`` is the web app of one of the cluster's nodes (or its public URL):
        the origins that get CORS answers."""
        key = origin_key(origin)
        return key is not None and key in self.cluster

    def allowed_origin(self, origin: str | None, host: str | None) -> bool:
        """Browsers always send Origin; allow same-origin, the configured allow-list and
        the cluster's own origins."""
        if origin is None:
            return True  # not a browser: the session token is the credential
        if self.allow_any or origin in self.allowed:
            return True
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and bool(host) and parts.netloc == host:
            return True
        return self.cross_origin(origin)


def _add_vary(headers: MutableHeaders, value: str) -> None:
    present = [v.strip().lower() for v in headers.get("vary", "").split(",") if v.strip()]
    if value.lower() not in present:
        headers.add_vary_header(value)


class CorsMiddleware:
    """CORS on the REST routes, for exactly the cluster's own origins.

    A preflight from one of them is answered 204 with what it may send; a preflight
    from any other origin is refused with 403 and no CORS headers, and so are the
    answers to its requests (the state-changing ones are refused by the Origin check).
    No credentials: cross-origin calls carry the Bearer token.
    """

    def __init__(self, app: ASGIApp, rules: OriginRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = origin is not None and self.rules.cross_origin(origin)
        if scope["method"] == "OPTIONS" and origin is not None \
                and "access-control-request-method" in headers:
            await self._preflight(send, origin if allowed else None)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response = MutableHeaders(scope=message)
                _add_vary(response, "Origin")
                if allowed and origin is not None:
                    response["access-control-allow-origin"] = origin
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _preflight(send: Send, origin: str | None) -> None:
        if origin is None:
            refused = HttpRefusal("this origin may not call the API", errors.FORBIDDEN)
            body = refused.body()
            head = {**refused.headers(), "content-type": "application/json",
                    "content-length": str(len(body)), "vary": "Origin"}
            status = refused.status
        else:
            body = b""
            head = {"access-control-allow-origin": origin,
                    "access-control-allow-methods": CORS_METHODS,
                    "access-control-allow-headers": CORS_HEADERS,
                    "access-control-max-age": CORS_MAX_AGE,
                    "vary": "Origin"}
            status = 204
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.items()]})
        await send({"type": "http.response.body", "body": body})


def _is_web_app(path: str) -> bool:
    return path == "/" or path.startswith("/app/")


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP answer of the edge (those the answer
    does not set itself), and ``Cache-Control: no-cache`` to the web app's files, so a
    new version is picked up at the next load (revalidated with its ETag)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.headers: tuple[tuple[str, str], ...] = (
            ("content-security-policy", content_security_policy(settings)),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        web_app = _is_web_app(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response = MutableHeaders(scope=message)
                _set_missing(response, self.headers)
                if web_app and message.get("status", 200) in (200, 304):
                    _set_missing(response, (("cache-control", "no-cache"),))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _set_missing(headers: MutableHeaders, values: Iterable[tuple[str, str]]) -> None:
    for name, value in values:
        if name not in headers:
            headers[name] = value
