"""The edge's ASGI application: REST (login, logout, guests, cluster info, the admin
console's ``/api/admin``), health, WebSocket. What the REST endpoints share is in
``rest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from camcore import PROTOCOL_VERSION, accounts, bus, db, errors, guests, protocol, subjects, wire
from camcore.config import Settings
from camcore.errors import CamError
from camcore.loops import Loops, every
from camcore.metrics import REGISTRY, exposition, exposition_of, identify

from .admin_api import AdminApi
from .connection import Connection
from .context import Edge
from .files import LOCAL_SWEEP_INTERVAL, FileRoutes, is_upload, request_token
from .forwarded import ForwardedMiddleware
from .headers import CorsMiddleware, SecurityHeadersMiddleware
from .health import HealthProbe
from .hub import Hub
from .limits import (
    BodyLimitMiddleware,
    ConnectionCounts,
    HttpRefusal,
    LoginGuard,
    RequestLimiter,
)
from .metrics import EdgeGauges
from .presence import PresenceAgent, PresenceWatch
from .probe import SelfProbe
from .requestid import RequestIdMiddleware
from .rest import (
    NO_STORE,
    check_state_change,
    error_response,
    is_https,
    origin_allowed,
    origin_rules,
    read_json,
    rest,
)
from .static import WEB_DIR, WebFiles, index_page
from .workers import Worker, WorkerMetrics

log = logging.getLogger(__name__)


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


class GuestRedeem(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    """The meeting link's token (from the fragment of its URL)."""
    name: str


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current: str
    new: str


def create_app(settings: Settings, worker: Worker | None = None, *,
               web_dir: Path = WEB_DIR) -> Starlette:
    """The edge, or one of its workers (cam_edge.workers); ``web_dir`` holds the web app
    it serves (the package's own by default)."""
    state: dict[str, Any] = {}
    # A worker's own name on the bus, in presence and for its uploads; clients and the
    # load balancer see the node's.
    instance = settings.node_name if worker is None else worker.instance(settings.node_name)
    share = (lambda n: n) if worker is None else worker.share
    file_routes = FileRoutes(settings, lambda: state["edge"], instance)
    guard = LoginGuard(max_failures=share(settings.login_max_failures),
                       address_max_failures=share(settings.login_address_max_failures),
                       window=settings.login_failure_window,
                       concurrency=settings.login_concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url, max_size=max(2, share(10)))

        async def on_reconnect() -> None:
            # Anything may have happened while we were away: re-register and re-read.
            if "edge" in state:
                state["edge"].presence.request_sync(abandon=True)
                with contextlib.suppress(CamError):
                    await state["edge"].watch.refresh()

        try:
            nc = await bus.connect(settings.nats_urls, f"edge:{instance}",
                                   reconnected_cb=on_reconnect,
                                   credentials=settings.nats_credentials or None)
        except BaseException:
            await pool.close()
            raise
        edge = Edge(settings=settings, nc=nc, pool=pool, hub=Hub(nc),
                    presence=PresenceAgent(nc, instance, settings.heartbeat_interval,
                                            settings.node_timeout),
                    watch=PresenceWatch(nc, settings.node_timeout,
                                        max_users=settings.watch_per_edge),
                    requests=RequestLimiter(settings.request_rate_limit,
                                            settings.request_rate_window),
                    counts=ConnectionCounts(
                        per_address=share(settings.max_connections_per_address),
                        per_user=share(settings.max_connections_per_user)))
        state["edge"] = edge
        if worker is not None:
            state["metrics"] = WorkerMetrics(nc, settings.node_name, worker)
            await state["metrics"].start()
        state["health"] = HealthProbe(edge)
        await _start_files(file_routes, edge)
        # One self-probe and one sweep of local files per node: the first worker's.
        first = worker is None or worker.index == 0
        probe = SelfProbe(edge, settings.probe_interval) if settings.probe_interval and first else None
        gauges = EdgeGauges(edge, probe)
        REGISTRY.register(gauges)
        identify("edge", settings.node_name)
        try:
            async with Loops() as loops:
                loops.start("edge heartbeat", bus.heartbeat(
                    nc, "edge", instance, settings.node_name,
                    settings.heartbeat_interval,
                    lambda: {"connections": float(len(edge.connections)),
                             "rooms": float(edge.hub.room_count),
                             "watched": float(edge.watch.watched_count),
                             **(probe.load() if probe else {})},
                    address=settings.cluster_hosts[0].address if settings.cluster_hosts else ""))
                loops.start("presence agent", edge.presence.run)
                loops.start("presence watch refresh", edge.watch.run)
                loops.start("repair check", every(settings.repair_interval,
                                                  functools.partial(repair_check, edge)))
                loops.start("session check", every(settings.session_recheck_interval,
                                                   functools.partial(session_check, edge)))
                if probe is not None:
                    loops.start("self-probe", probe.run)
                if settings.storage == "local" and first:
                    loops.start("local file sweep", every(LOCAL_SWEEP_INTERVAL,
                                                          file_routes.sweep_local))
                log.info("edge %s ready", instance)
                try:
                    yield
                finally:
                    edge.draining = True
                    for conn in list(edge.connections):
                        conn.close(protocol.CLOSE_RECONNECT_ELSEWHERE, "node shutting down")
                    await edge.presence.shutdown()
        finally:
            REGISTRY.unregister(gauges)
            with contextlib.suppress(Exception):
                await nc.drain()
            await file_routes.close()
            await pool.close()

    def edge() -> Edge:
        return state["edge"]

    async def health(request: Request) -> Response:
        return await state["health"].endpoint(request)

    async def login(request: Request) -> Response:
        check_state_change(settings, request)
        creds = await read_json(request, Credentials)
        client = request.client.host if request.client else None
        guard.check(creds.username, client)
        async with guard.slot():
            guard.check(creds.username, client)  # failures may have come in while waiting
            try:
                user = await accounts.authenticate(edge().pool, creds.username, creds.password)
            except CamError as exc:
                if exc.code == errors.BAD_CREDENTIALS:
                    guard.failed(creds.username, client)
                    log.warning("failed login user=%r client=%s", creds.username[:64], client)
                raise
        guard.succeeded(creds.username)
        ttl = timedelta(hours=settings.session_ttl_hours)
        token = await accounts.create_session(edge().pool, user.id, ttl)
        response = JSONResponse({"token": token, "user": user.public(), "admin": user.is_admin},
                                headers=NO_STORE)
        response.set_cookie(protocol.SESSION_COOKIE, token, httponly=True, samesite="lax",
                            secure=is_https(request), max_age=int(ttl.total_seconds()),
                            path="/")
        return response

    async def guest(request: Request) -> Response:
        """Redeem a meeting link: a guest user and a session for its room's conference.

        A link that does not work counts as a failed login of the client address (the
        same window and lockout), so links cannot be guessed faster than passwords.
        No cookie: the page keeps the token for its tab only (a member's session in the
        same browser stays as it is).
        """
        check_state_change(settings, request)
        client = request.client.host if request.client else None
        guard.check_address(client)
        redeem = await read_json(request, GuestRedeem)
        try:
            made = await guests.redeem(edge().pool, redeem.token, redeem.name,
                                       timedelta(hours=settings.session_ttl_hours))
        except CamError as exc:
            if exc.code == errors.NOT_FOUND:
                guard.failed_address(client)
                log.warning("refused meeting link client=%s", client)
            raise
        log.info("guest %s let into room %s client=%s", made.user.username, made.room, client)
        return JSONResponse(made.public(), headers=NO_STORE)

    async def logout(request: Request) -> Response:
        check_state_change(settings, request)
        token = request_token(request)
        if not token:
            raise CamError("no session", errors.UNAUTHENTICATED)
        user = await accounts.resolve_session(edge().pool, token)
        revoked = await accounts.revoke_session(edge().pool, token)
        if user is not None and revoked:
            # Close this session's live sockets on every node.
            event = {"type": "session_revoked", "token_hash": accounts.token_hash_hex(token)}
            with contextlib.suppress(Exception):
                await edge().nc.publish(subjects.user_session(user.id), wire.encode(event))
        response = JSONResponse({"revoked": revoked}, headers=NO_STORE)
        response.delete_cookie(protocol.SESSION_COOKIE, path="/")
        return response

    async def change_password(request: Request) -> Response:
        """The caller's new password; every other session of theirs is revoked."""
        check_state_change(settings, request)
        token = request_token(request)
        user = await accounts.resolve_session(edge().pool, token) if token else None
        if user is None or token is None:
            raise CamError("not logged in", errors.UNAUTHENTICATED)
        change = await read_json(request, PasswordChange)
        client = request.client.host if request.client else None
        # Guessing the current password is guessing a password: the login limits apply.
        guard.check(user.username, client)
        async with guard.slot():
            ok = await accounts.verify_password(edge().pool, user.id, change.current)
        if not ok:
            guard.failed(user.username, client)
            log.warning("failed password change user=%r client=%s", user.username, client)
            raise CamError("the current password is wrong", errors.BAD_CREDENTIALS)
        revoked = await accounts.set_password(edge().pool, user.id, change.new, keep=token,
                                              min_length=settings.user_password_min_length)
        log.info("password changed user=%r client=%s; %d other sessions revoked",
                 user.username, client, len(revoked))
        with contextlib.suppress(Exception):  # the session check closes them anyway
            await edge().revoked(user.id, revoked)
        return JSONResponse({"changed": True, "revoked_sessions": len(revoked)},
                            headers=NO_STORE)

    async def upload(request: Request) -> Response:
        """An attachment into a room (cam_edge.files). Refused before a byte is read
        when the Origin may not call the API; a refusal while the body streams closes
        the connection (the rest of the body is never read)."""
        if not origin_allowed(settings, request.headers.get("origin"),
                              request.headers.get("host")):
            raise HttpRefusal("this origin may not call the API", errors.FORBIDDEN)
        try:
            return await file_routes.upload(request)
        except CamError as exc:
            response = error_response(errors.failure(exc))
            response.headers["connection"] = "close"
            return response

    async def cluster_view(request: Request) -> Response:
        await require_monitor(request)
        view = await bus.call(edge().nc, subjects.HEALTH_CLUSTER, wire.Empty(), timeout=2)
        return JSONResponse(view)

    async def metrics(request: Request) -> Response:
        """Prometheus (docs/monitoring.md): for the monitoring token, or an admin."""
        await require_monitor(request)
        if "metrics" in state:  # one of several workers: it answers for all of them
            return exposition_of(await state["metrics"].gather())
        return exposition()

    async def require_monitor(request: Request) -> None:
        """An admin's session, or the configured monitoring token (cam.monitoringToken)."""
        token = request_token(request)
        monitoring = settings.monitoring_token.encode()
        if token and monitoring and hmac.compare_digest(token.encode("utf-8", "replace"),
                                                        monitoring):
            return
        user = await accounts.resolve_session(edge().pool, token) if token else None
        if user is None:
            raise CamError("log in as an administrator or give the monitoring token",
                           errors.UNAUTHENTICATED)
        if not user.is_admin:
            raise HttpRefusal("the cluster view is for administrators", errors.FORBIDDEN)

    async def me(request: Request) -> Response:
        token = request_token(request)
        user = await accounts.resolve_session(edge().pool, token) if token else None
        if user is None:
            raise CamError("not logged in", errors.UNAUTHENTICATED)
        return JSONResponse({"user": user.public(), "admin": user.is_admin}, headers=NO_STORE)

    async def cluster(request: Request) -> Response:
        return JSONResponse({
            "node": settings.node_name,
            "hosts": [h.address for h in settings.cluster_hosts],
            # Each server lists its own host first (cluster-spec.md section 3).
            "own_host": settings.cluster_hosts[0].address if settings.cluster_hosts else None,
            "description": settings.cluster_hosts_desc,
            "server_url_domain": settings.server_url_domain,
            "load_balancer": settings.lb_in_front,
            "protocol": {"v": PROTOCOL_VERSION, "path": "/ws"},
            # The caller as this edge sees it (behind cam.trustedProxies: the real client).
            "client": {"address": request.client.host if request.client else None,
                       "scheme": request.url.scheme},
        })

    async def websocket(ws: WebSocket) -> None:
        if not origin_allowed(settings, ws.headers.get("origin"), ws.headers.get("host")):
            log.info("refused WebSocket from origin %r", ws.headers.get("origin"))
            await ws.close(code=protocol.CLOSE_POLICY)
            return
        if edge().draining:
            await ws.close(code=protocol.CLOSE_RECONNECT_ELSEWHERE)
            return
        address = ws.client.host if ws.client else "?"
        counts = edge().counts
        if not counts.open_address(address):
            log.warning("refused WebSocket: %d open from client=%s", counts.per_address, address)
            await ws.accept()
            await ws.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS,
                           reason="too many connections from this address")
            return
        try:
            await ws.accept()
            conn = Connection(ws, edge(), ws.cookies.get(protocol.SESSION_COOKIE))
            await conn.run()
        finally:
            counts.close_address(address)

    routes = [
        Route("/CAMServer/healthCheck", health, methods=["GET", "HEAD"]),
        Route("/api/login", rest(login), methods=["POST"]),
        Route("/api/logout", rest(logout), methods=["POST"]),
        Route("/api/guest", rest(guest), methods=["POST"]),
        Route("/api/me", rest(me), methods=["GET"]),
        Route("/api/password", rest(change_password), methods=["POST"]),
        Route("/api/cluster", rest(cluster), methods=["GET"]),
        Route("/api/cluster/view", rest(cluster_view), methods=["GET"]),
        Route("/metrics", rest(metrics), methods=["GET"]),
        *AdminApi(settings, edge).routes(),
        Route("/api/rooms/{room:int}/files", rest(upload), methods=["POST"]),
        Route("/api/files/{file_id:str}", rest(file_routes.download), methods=["GET"]),
        Route("/api/files/{file_id:str}/{variant:str}", rest(file_routes.download),
              methods=["GET"]),
        Route("/CAMServer/files/{key:str}", file_routes.peer, methods=["GET"]),
        WebSocketRoute("/ws", websocket),
        # The web app (docs/protocol.md, "Web app"): its page, then its files.
        Route("/", index_page(web_dir), methods=["GET", "HEAD"]),
        Mount("/app", app=WebFiles(directory=web_dir)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware, settings=settings),
        Middleware(ForwardedMiddleware, trusted_proxies=settings.trusted_proxies),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                   timeout=settings.http_header_timeout, exempt=is_upload),
        Middleware(CorsMiddleware, rules=origin_rules(settings))])
    app.state.cam = state
    return app


async def session_check(edge: Edge) -> None:
    """Close every WebSocket whose session expired or was revoked.

    Logout and revocation also close sockets at once through ``cam.user.<id>.session``;
    this catches expiry, and any revocation whose event was lost.
    """
    by_digest: dict[bytes, list[Connection]] = {}
    for conn in list(edge.connections):
        if conn.token_digest is not None and conn.close_code is None:
            by_digest.setdefault(conn.token_digest, []).append(conn)
    if not by_digest:
        return
    try:
        live = await accounts.live_sessions(edge.pool, list(by_digest))
    except Exception as exc:  # noqa: BLE001 - a database outage closes nobody
        log.debug("session check skipped: %s", exc)
        return
    for digest, conns in by_digest.items():
        if digest not in live:
            for conn in conns:
                conn.close(protocol.CLOSE_SESSION_REVOKED, "session expired or revoked")


async def repair_check(edge: Edge) -> None:
    """Compare what each room delivered with the store's head, and fetch any tail.

    A message whose bus event was lost (a chat replica killed between commit and
    publish, a NATS server dying) is caught by the next message of the room; this
    catches it when no next message comes, within cam.repairInterval.
    """
    rooms = sorted(edge.hub.subscribed_rooms())
    for i in range(0, len(rooms), 5000):
        try:
            heads = await edge.chat("room_heads", wire.RoomHeads(rooms=rooms[i:i + 5000]))
        except CamError as exc:
            log.debug("repair check skipped: %s", exc.message)
            return
        for room, head in heads["heads"]:
            for listener in edge.hub.room_listeners(room):
                listener.behind(room, head)


async def _start_files(routes: FileRoutes, edge: Edge) -> None:
    """Clear this node's unfinished uploads of an earlier run, on disk and in the store
    (the files service may be starting too: a miss is swept later)."""
    await asyncio.to_thread(routes.clear_temp)
    try:
        aborted = await bus.call(edge.nc, subjects.files_rpc("abort_node"),
                                 wire.FilesAbortNode(user_id=0, node=routes.instance),
                                 timeout=2)
        # Their bytes may have reached the store just before the edge died.
        await routes.forget(aborted["aborted"])
    except CamError as exc:
        log.info("unfinished uploads of %s not aborted now (%s); the sweep will",
                 routes.instance, exc.message)
