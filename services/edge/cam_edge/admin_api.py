"""The admin console's REST API: ``/api/admin/...`` (docs/protocol.md, "Admin API").

Every call resolves the caller's session and reads ``users.is_admin`` from the store,
never from a copy: a user whose role was just removed is refused on the next call.
No session is 401, a member who is not an admin is 403, on every route alike (the test
of this module lists the routes from :data:`ROUTES` and tries each one). Calls that
change something are POST or DELETE and pass ``check_state_change`` (an allowed
Origin, JSON bodies only), like every other state-changing call of the edge.

User changes run in ``camcore.admin``, which ``camctl`` calls too; room changes and
video drains go to the chat service and the video allocator, which check the admin
flag again themselves and write the audit rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from camcore import accounts, admin, bus, clusterview, errors, subjects, wire
from camcore.config import Settings
from camcore.errors import CamError, RequestError

from .context import Edge
from .files import request_token
from .rest import NO_STORE, Endpoint, check_state_change, read_json, rest

log = logging.getLogger(__name__)

class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str
    display_name: str | None = None
    is_admin: bool = False


class CsvImport(msgspec.Struct, forbid_unknown_fields=True):
    csv: str


class NewPassword(msgspec.Struct, forbid_unknown_fields=True):
    password: str


class Role(msgspec.Struct, forbid_unknown_fields=True):
    admin: bool


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise RequestError(f"{name} must be a whole number")
    return int(raw)


def _text_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return raw.strip() or None if raw is not None else None


def _path_id(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not isinstance(value, int) or not 1 <= value <= 2**62:
        raise RequestError(f"{name} must be a positive id")
    return value


def _ok(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=NO_STORE)


@dataclass
class AdminApi:
    settings: Settings
    edge: Callable[[], Edge]

    # ------------------------------------------------------------ the guard

    async def admin(self, request: Request, *, change: bool = False) -> accounts.User:
        """The calling admin; 401 without a session, 403 for anyone else."""
        if change:
            check_state_change(self.settings, request)
        token = request_token(request)
        user = await accounts.resolve_session(self.edge().pool, token) if token else None
        if user is None:
            raise CamError("log in as an administrator", errors.UNAUTHENTICATED)
        if not user.is_admin or user.is_guest:
            raise CamError("the admin console is for administrators", errors.FORBIDDEN)
        return user

    async def _closed(self, user_id: int, revoked: list[str]) -> None:
        """Close the revoked sessions' sockets on every node (the session check does it
        within cam.sessionRecheckInterval if the bus loses this)."""
        with contextlib.suppress(*errors.BUS_UNAVAILABLE_ERRORS):
            await self.edge().revoked(user_id, revoked)

    # ------------------------------------------------------------ cluster

    async def cluster(self, request: Request) -> Response:
        await self.admin(request)
        view, database = await asyncio.gather(
            bus.call(self.edge().nc, subjects.HEALTH_CLUSTER, wire.Empty(), timeout=2),
            clusterview.database(self.settings.database_url, self.edge().pool))
        return _ok(clusterview.cluster_page(self.settings, view, database))

    # ------------------------------------------------------------ video servers

    async def video(self, request: Request) -> Response:
        user = await self.admin(request)
        return _ok(await self._video(user, "status", None))

    async def video_drain(self, request: Request) -> Response:
        user = await self.admin(request, change=True)
        return _ok(await self._video(user, "drain", request.path_params["name"]))

    async def video_enable(self, request: Request) -> Response:
        user = await self.admin(request, change=True)
        return _ok(await self._video(user, "enable", request.path_params["name"]))

    async def _video(self, user: accounts.User, action: str, server: str | None
                     ) -> dict[str, Any]:
        if server is not None and (len(server) > 64 or not server.isprintable()):
            raise RequestError("a video server name is at most 64 printable characters")
        result: dict[str, Any] = await bus.call(
            self.edge().nc, subjects.video_rpc("admin_as"),
            wire.VideoAdminAs(user_id=user.id, action=action, server=server))  # type: ignore[arg-type]
        return result

    async def video_explain(self, request: Request) -> Response:
        await self.admin(request)
        room = _int_param(request, "room", None)
        if room is None or room < 1:
            raise RequestError("explain needs ?room=<room id>")
        result: dict[str, Any] = await bus.call(self.edge().nc, subjects.video_rpc("explain"),
                                                wire.ConfExplain(room=room))
        return _ok(result)

    # ------------------------------------------------------------ users

    async def policy(self, request: Request) -> Response:
        await self.admin(request)
        return _ok({"password_min_length": self.settings.user_password_min_length,
                    "password_max_length": accounts.MAX_PASSWORD,
                    "max_import_rows": admin.MAX_IMPORT_ROWS,
                    "max_import_bytes": self.settings.max_request_bytes})

    async def users(self, request: Request) -> Response:
        return await self._listing(request, "users", admin.list_users)

    async def _listing(self, request: Request, key: str, read: Any) -> Response:
        """A page of ``read`` (``admin.list_users``, ``admin.list_rooms``) from ``q``,
        ``after`` and ``limit``."""
        await self.admin(request)
        found, after = await read(
            self.edge().pool, query=_text_param(request, "q"),
            after=_int_param(request, "after", 0) or 0,
            limit=_int_param(request, "limit", 50) or 50)
        return _ok({key: found, "next": after})

    async def create_user(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        new = await read_json(request, NewUser)
        user = await admin.create_user(
            self.edge().pool, me.id, new.username, new.password,
            min_length=self.settings.user_password_min_length,
            display_name=new.display_name, is_admin=new.is_admin)
        log.info("admin %s created user %s", me.username, user["username"])
        return _ok({"user": user})

    async def import_users(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        body = await read_json(request, CsvImport)
        try:
            created = await admin.import_users(
                self.edge().pool, me.id, body.csv,
                min_length=self.settings.user_password_min_length)
        except admin.ImportRefused as refused:
            return JSONResponse({"error": {"code": refused.code, "message": refused.message,
                                           "rows": refused.rows}},
                                status_code=400, headers=NO_STORE)
        log.info("admin %s imported %d users", me.username, len(created))
        return _ok({"created": created})

    async def deactivate(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        user_id = _path_id(request, "user")
        user, revoked = await admin.deactivate(self.edge().pool, me.id, user_id)
        await self._closed(user_id, revoked)
        return _ok({"user": user, "revoked_sessions": len(revoked)})

    async def reactivate(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        return _ok({"user": await admin.reactivate(self.edge().pool, me.id,
                                                   _path_id(request, "user"))})

    async def reset_password(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        user_id = _path_id(request, "user")
        body = await read_json(request, NewPassword)
        user, revoked = await admin.reset_password(
            self.edge().pool, me.id, user_id, body.password,
            min_length=self.settings.user_password_min_length)
        await self._closed(user_id, revoked)
        return _ok({"user": user, "revoked_sessions": len(revoked)})

    async def role(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        body = await read_json(request, Role)
        return _ok({"user": await admin.set_admin(self.edge().pool, me.id,
                                                  _path_id(request, "user"), body.admin)})

    # ------------------------------------------------------------ rooms

    async def rooms(self, request: Request) -> Response:
        return await self._listing(request, "rooms", admin.list_rooms)

    async def members(self, request: Request) -> Response:
        await self.admin(request)
        return _ok(await admin.room_members(self.edge().pool, _path_id(request, "room")))

    async def remove_member(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        room, user_id = _path_id(request, "room"), _path_id(request, "user")
        username = await self.edge().pool.fetchval(
            "SELECT username FROM users WHERE id = $1", user_id)
        if username is None:
            raise CamError(f"no user with id {user_id}", errors.NO_SUCH_USER)
        return _ok(await self.edge().chat("admin_remove_member", wire.AdminRemoveMember(
            user_id=me.id, room=room, user=username)))

    async def delete_room(self, request: Request) -> Response:
        me = await self.admin(request, change=True)
        result = await self.edge().chat("admin_delete_room", wire.AdminDeleteRoom(
            user_id=me.id, room=_path_id(request, "room")))
        return _ok(await self.edge().close_guests(result))

    # ------------------------------------------------------------ audit log

    async def audit(self, request: Request) -> Response:
        await self.admin(request)
        entries, before = await admin.audit_page(
            self.edge().pool, actor=_text_param(request, "actor"),
            action=_text_param(request, "action"),
            before=_int_param(request, "before", None),
            limit=_int_param(request, "limit", 50) or 50)
        return _ok({"entries": entries, "next": before})

    # ------------------------------------------------------------ routes

    def routes(self) -> list[Route]:
        def r(path: str, endpoint: Endpoint, method: str) -> Route:
            return Route(f"/api/admin{path}", rest(endpoint), methods=[method])

        return [
            r("/cluster", self.cluster, "GET"),
            r("/video", self.video, "GET"),
            r("/video/explain", self.video_explain, "GET"),
            r("/video/{name:str}/drain", self.video_drain, "POST"),
            r("/video/{name:str}/enable", self.video_enable, "POST"),
            r("/policy", self.policy, "GET"),
            r("/users", self.users, "GET"),
            r("/users", self.create_user, "POST"),
            r("/users/import", self.import_users, "POST"),
            r("/users/{user:int}/deactivate", self.deactivate, "POST"),
            r("/users/{user:int}/reactivate", self.reactivate, "POST"),
            r("/users/{user:int}/password", self.reset_password, "POST"),
            r("/users/{user:int}/role", self.role, "POST"),
            r("/rooms", self.rooms, "GET"),
            r("/rooms/{room:int}/members", self.members, "GET"),
            r("/rooms/{room:int}/members/{user:int}", self.remove_member, "DELETE"),
            r("/rooms/{room:int}", self.delete_room, "DELETE"),
            r("/audit", self.audit, "GET"),
        ]
