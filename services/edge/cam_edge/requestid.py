"""The request id of every HTTP request and WebSocket handshake (``camcore.requestid``).

The client's ``X-Request-Id`` is kept when it is short and safe, else replaced by a
fresh id; the id is current while the request is handled (log lines, bus requests) and
is sent back in the answer's ``X-Request-Id``. On a WebSocket it is the id of the
connection; each op gets its own (``Connection._frame``).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from camcore import requestid

_HEADER = requestid.HTTP_HEADER.lower().encode("ascii")


def of_scope(scope: Scope) -> str:
    """The id for a request: its first ``X-Request-Id`` if acceptable, else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER:
            return requestid.accept_or_new(value)
    return requestid.new()


class RequestIdMiddleware:
    """Gives each request its id (outermost, so every answer carries it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = of_scope(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers[requestid.HTTP_HEADER] = request_id
            await send(message)

        with requestid.bound(request_id):
            await self.app(scope, receive, send_with_id)
