"""One error table: what a client is told about each error, on the WebSocket, over REST
and in bus replies (``camcore.errors.failure``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from types import ModuleType
from typing import Any

import asyncpg
import httpx
import msgspec
import nats.errors
import pytest
from cam_edge.app import create_app
from cam_edge.connection import Connection
from cam_edge.limits import ConnectionCounts, RequestLimiter
from cam_edge.ops import registry
from cam_video_allocator import janus

from camcore import bus, errors, loops, wire
from camcore.accounts import User
from camcore.config import load_settings
from camcore.errors import CamError, RequestError, Unavailable
from tests.unit.fakes import FakeWebSocket

DATABASE_DOWN = [
    ConnectionRefusedError(111, "Connection refused"),
    OSError("network unreachable"),
    TimeoutError(),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("pool is closing"),
]
BUS_DOWN = [
    nats.errors.ConnectionClosedError(),
    nats.errors.NoRespondersError(),
    nats.errors.TimeoutError(),
    nats.errors.ConnectionReconnectingError(),
]


@pytest.mark.parametrize("exc", DATABASE_DOWN, ids=lambda e: type(e).__name__)
def test_database_down_errors_are_unavailable(exc: BaseException) -> None:
    failed = errors.failure(exc)
    assert (failed.code, failed.message) == ("unavailable", "database unavailable; retry later")
    assert failed.http_status == 503 and failed.expected


@pytest.mark.parametrize("exc", BUS_DOWN, ids=lambda e: type(e).__name__)
def test_bus_down_errors_are_unavailable(exc: BaseException) -> None:
    failed = errors.failure(exc)
    assert failed.code == "unavailable" and "bus" in failed.message
    assert failed.http_status == 503


def test_project_errors_keep_their_own_code_and_message() -> None:
    assert errors.failure(RequestError("message body is empty")) == errors.Failure(
        "bad_request", "message body is empty", True)
    assert errors.failure(Unavailable("no service is answering")).code == "unavailable"
    assert errors.failure(CamError("taken", errors.CONFLICT)).http_status == 409
    assert errors.failure(CamError("who?", errors.UNAUTHENTICATED)).http_status == 401
    assert errors.failure(janus.JanusError("http://v1/janus: janus error 458")).code == "unavailable"


@pytest.mark.parametrize("exc", [ValueError("secret detail"), KeyError("rooms"),
                                 asyncpg.UniqueViolationError("duplicate key value")],
                         ids=lambda e: type(e).__name__)
def test_anything_else_is_internal_and_shows_nothing_of_the_error(exc: BaseException) -> None:
    failed = errors.failure(exc)
    assert failed == errors.Failure("internal", "internal error", False)
    assert failed.http_status == 500


def test_every_code_has_an_http_status_and_a_description() -> None:
    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert codes == set(errors.CODES)
    for code in errors.CODES.values():
        assert 400 <= code.http_status < 600 and code.description


def test_report_logs_a_bug_with_its_traceback_and_an_outage_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.errors")
    with caplog.at_level(logging.DEBUG, "test.errors"):
        errors.report(log, "op send", RequestError("refused"))
        assert caplog.records == []
        errors.report(log, "op send", ConnectionRefusedError())
        errors.report(log, "op send", ZeroDivisionError())
    outage, bug = caplog.records
    assert outage.levelno == logging.WARNING and "database unavailable" in outage.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None


def _exceptions_defined_in(module: ModuleType) -> list[type[BaseException]]:
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__]


@pytest.mark.parametrize("module", [errors, loops, registry, janus], ids=lambda m: m.__name__)
def test_every_error_the_project_defines_is_a_cam_error(module: ModuleType) -> None:
    defined = _exceptions_defined_in(module)
    assert defined
    assert all(issubclass(cls, CamError) for cls in defined), defined


# ------------------------------------------------------------ the table's three users


class DownPool:
    """A pool whose database cannot be reached."""

    async def fetch(self, *args: Any, **kw: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    fetchrow = fetchval = execute = fetch


class FakeEdge:
    def __init__(self) -> None:
        self.settings = load_settings(None, environ={}, overrides={})
        self.pool = DownPool()
        self.connections: set[Any] = set()
        self.draining = False
        self.requests = RequestLimiter(100, 10)
        self.counts = ConnectionCounts(per_address=10, per_user=10)


async def test_a_websocket_op_with_the_database_down_gets_unavailable() -> None:
    ws = FakeWebSocket()
    conn = Connection(ws, FakeEdge(), None)  # type: ignore[arg-type]
    conn.user = User(1, "alice", "Alice", False)
    await conn._frame('{"op": "directory", "id": 5}')
    await conn._frame('{"op": "nope", "id": 6}')
    conn.close(1000, "done")
    await asyncio.wait_for(conn.out.closed(), 2)
    assert ws.sent == [
        {"op": "error", "id": 5, "code": "unavailable", "message": "database unavailable; retry later"},
        {"op": "error", "id": 6, "code": "unknown_op", "message": "unknown op 'nope'"},
    ]


async def rest(method: str, path: str, **kw: Any) -> httpx.Response:
    app = create_app(load_settings(None, environ={}, overrides={}))
    app.state.cam["edge"] = FakeEdge()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://camserver1") as client:
        return await client.request(method, path, **kw)


async def test_api_me_with_the_database_down_is_503_unavailable() -> None:
    r = await rest("GET", "/api/me", headers={"Authorization": "Bearer some-token"})
    assert r.status_code == 503
    assert r.json() == {"error": {"code": "unavailable", "message": "database unavailable; retry later"}}


async def test_rest_login_errors_use_the_same_table() -> None:
    down = await rest("POST", "/api/login", json={"username": "alice", "password": "pw"})
    assert (down.status_code, down.json()["error"]["code"]) == (503, "unavailable")
    bad = await rest("POST", "/api/login", content=b"{not json")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
    anonymous = await rest("GET", "/api/me")
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "unauthenticated")


class FakeSub:
    async def unsubscribe(self) -> None:
        pass


class FakeNats:
    def __init__(self) -> None:
        self.cb: Any = None

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> FakeSub:
        self.cb = cb
        return FakeSub()


class FakeMsg:
    def __init__(self, op: str) -> None:
        self.subject = f"cam.test.rpc.{op}"
        self.data = b"{}"
        self.headers: dict[str, str] | None = None
        self.reply = "_INBOX.1"
        self.replies: list[wire.Reply] = []

    async def respond(self, data: bytes) -> None:
        self.replies.append(msgspec.json.decode(data, type=wire.Reply))


async def test_bus_replies_use_the_same_table() -> None:
    async def database_down(req: wire.Empty) -> None:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    async def refuses(req: wire.Empty) -> None:
        raise RequestError("no such thing")

    async def bug(req: wire.Empty) -> None:
        raise KeyError("oops")

    nc = FakeNats()
    rpc = bus.RpcServer(nc, "cam.test.rpc", "test",  # type: ignore[arg-type]
                        {"down": (wire.Empty, database_down), "refuses": (wire.Empty, refuses),
                         "bug": (wire.Empty, bug)})
    await rpc.start()
    msgs = [FakeMsg(op) for op in ("down", "refuses", "bug", "missing")]
    for msg in msgs:
        await nc.cb(msg)
    await rpc.stop()
    assert [(m.replies[0].code, m.replies[0].message) for m in msgs] == [
        ("unavailable", "database unavailable; retry later"),
        ("bad_request", "no such thing"),
        ("internal", "internal error"),
        ("unknown_op", "unknown operation 'missing'"),
    ]
