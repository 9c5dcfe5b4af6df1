"""What every REST endpoint of the edge shares: the error answers, the state-change
check (Origin and JSON), the no-store header and reading a JSON body.

REST errors go through the project's one error table (``camcore.errors.failure``), like
the WebSocket ops and the bus replies: the same code, with its HTTP status. Refusals
that exist only over HTTP (429, 413, 408, 415, 403) come from ``limits``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from camcore import errors
from camcore.config import Settings
from camcore.errors import CamError, Failure

from .headers import OriginRules
from .limits import HttpRefusal

log = logging.getLogger("cam_edge.app")

Endpoint = Callable[[Request], Awaitable[Response]]

NO_STORE = {"cache-control": "no-store"}


def error_response(failed: Failure) -> JSONResponse:
    return JSONResponse({"error": {"code": failed.code, "message": failed.message}},
                        status_code=failed.http_status, headers=NO_STORE)


def refusal_response(refused: HttpRefusal) -> Response:
    return Response(refused.body(), status_code=refused.status, headers=refused.headers(),
                    media_type="application/json")


def rest(endpoint: Endpoint) -> Endpoint:
    """A REST route whose errors are answered with their code and HTTP status."""

    @functools.wraps(endpoint)
    async def route(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpRefusal as refused:
            return refusal_response(refused)
        except Exception as exc:
            return error_response(errors.report(log, f"{request.method} {request.url.path}", exc))

    return route


def origin_allowed(settings: Settings, origin: str | None, host: str | None) -> bool:
    """Browsers always send Origin; allow same-origin, the configured allow-list, and
    the web app of every node of the cluster (``headers.OriginRules``)."""
    return origin_rules(settings).allowed_origin(origin, host)


@functools.lru_cache(maxsize=8)
def origin_rules(settings: Settings) -> OriginRules:
    return OriginRules(settings)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def check_state_change(settings: Settings, request: Request) -> None:
    """A state-changing call: from an allowed Origin (the WebSocket handshake's check),
    and with a JSON body if it declares a type. A form or a cross-site script cannot pass:
    browsers send Origin with every cross-origin POST, and forms cannot declare JSON."""
    if not origin_allowed(settings, request.headers.get("origin"), request.headers.get("host")):
        log.info("refused %s from origin %r", request.url.path, request.headers.get("origin"))
        raise HttpRefusal("this origin may not call the API", errors.FORBIDDEN)
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise HttpRefusal("the request body must be application/json",
                          errors.UNSUPPORTED_MEDIA_TYPE)




async def read_json(request: Request, type_: type[Any]) -> Any:
    """The request's JSON body as ``type_``; ``bad_request`` naming what is wrong."""
    body = await request.body()  # bounded by BodyLimitMiddleware (cam.maxRequestBytes)
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.MsgspecError as exc:
        raise CamError(f"invalid request body: {exc}", errors.BAD_REQUEST) from None
