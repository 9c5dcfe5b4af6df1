"""Logs: JSON lines, request ids from the edge across the bus to the services, and the
rotated, pruned log folders of ``camctl up``."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cam_edge.app import create_app
from cam_edge.connection import Connection
from cam_edge.hub import Hub
from cam_edge.requestid import RequestIdMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from camcore import bus, logs, requestid, subjects, wire
from camcore.accounts import User
from camcore.config import ConfigError, load_settings
from camcore.runtime import setup_logging
from camctl import runlogs
from camctl.supervisor import HostSupervisor, LogRotation, Program
from tests.unit.fakes import FakeWebSocket
from tests.unit.test_errors import FakeEdge

log = logging.getLogger("tests.logs")


def record(message: str, *args: Any, exc: BaseException | None = None,
           **extra: Any) -> logging.LogRecord:
    made = log.makeRecord(log.name, logging.WARNING, __file__, 1, message, args,
                          (type(exc), exc, exc.__traceback__) if exc else None, extra=extra)
    requestid.Filter().filter(made)
    return made


@pytest.fixture
def ids(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, with each record's request id (as the process's own handler has)."""
    caplog.handler.addFilter(requestid.Filter())
    caplog.set_level(logging.DEBUG)
    return caplog


def ids_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str | None]:
    return [getattr(r, "request_id", None) for r in caplog.records if r.name == logger]


# ---------------------------------------------------------------- formats


def test_a_json_line_parses_and_names_time_level_logger_process_node_and_request_id() -> None:
    formatter = logs.JsonFormatter("cam-chat", "camserver1")
    with requestid.bound("req-1"):
        made = record("room %s: %s", 7, "two\nlines", user=42)
    line = formatter.format(made)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "room 7: two\nlines"
    assert out["level"] == "WARNING" and out["logger"] == "tests.logs"
    assert out["process"] == "cam-chat" and out["node"] == "camserver1"
    assert out["pid"] == os.getpid()
    assert out["request_id"] == "req-1"
    assert out["user"] == 42  # extra= fields come along
    assert out["time"].endswith("Z")
    when = datetime.fromisoformat(out["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(when.timestamp() - made.created) < 0.001
    assert "exception" not in out


def test_a_json_line_outside_a_request_has_no_request_id_and_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        made = record("it failed", exc=exc)
    out = json.loads(logs.JsonFormatter("cam-edge").format(made))
    assert "request_id" not in out and "node" not in out
    assert out["exception"].startswith("Traceback") and "ValueError: boom" in out["exception"]


def test_a_text_line_ends_with_the_request_id_when_there_is_one() -> None:
    formatter = logs.TextFormatter("cam-edge")
    with requestid.bound("abc"):
        inside = formatter.format(record("hello"))
    outside = formatter.format(record("hello"))
    assert inside.endswith(" cam-edge WARNING tests.logs: hello request_id=abc")
    assert outside.endswith(" cam-edge WARNING tests.logs: hello")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    sys.excepthook = hook


def test_setup_logging_follows_the_settings_and_replaces_its_own_handler(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("cam-test")
    setup_logging("cam-test", load_settings(None, environ={}, overrides={
        "cam.logFormat": "JSON", "cam.logLevel": "warning", "cam.nodeName": "n7"}))
    log.info("not written: below cam.logLevel")
    log.warning("written")
    try:
        raise RuntimeError("the end")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)  # as Python does when it ends
    lines = capsys.readouterr().err.splitlines()
    out = [json.loads(line) for line in lines]  # every line is JSON
    assert [line["message"] for line in out] == ["written", "uncaught exception, exiting"]
    assert out[0]["node"] == "n7"
    assert "RuntimeError: the end" in out[1]["exception"]


@pytest.mark.parametrize(("key", "value"), [("cam.logFormat", "xml"), ("cam.logLevel", "LOUD")])
def test_a_bad_log_setting_stops_start_up_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={}, overrides={key: value})
    assert info.value.key == key


# ---------------------------------------------------------------- ids at the edge


@pytest.mark.parametrize("good", ["abc", "A-b_c.9", "x" * 64])
def test_a_short_safe_request_id_is_accepted(good: str) -> None:
    assert requestid.accept(good) == good
    assert requestid.accept(good.encode()) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "two words", "line\nbreak", "a\r\nX-Evil: 1",
                                 "ü", "a/b", "a;b", 42, None])
def test_anything_else_is_not(bad: object) -> None:
    assert requestid.accept(bad) is None
    fresh = requestid.accept_or_new(bad)
    assert fresh != bad and requestid.accept(fresh) == fresh


async def logging_app_call(headers: dict[str, str]) -> httpx.Response:
    async def endpoint(request: Request) -> JSONResponse:
        log.info("handling")
        return JSONResponse({"current": requestid.current.get()})

    app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(RequestIdMiddleware)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://edge") as client:
        return await client.get("/", headers=headers)


async def test_the_clients_request_id_is_kept_echoed_and_on_the_log_lines(
    ids: pytest.LogCaptureFixture,
) -> None:
    r = await logging_app_call({"X-Request-Id": "client-7"})
    assert r.headers["x-request-id"] == "client-7"
    assert r.json() == {"current": "client-7"}
    assert ids_of(ids, "tests.logs") == ["client-7"]
    assert requestid.current.get() is None  # nothing leaks out of the request


async def test_a_bad_incoming_request_id_is_replaced_by_a_fresh_one(
    ids: pytest.LogCaptureFixture,
) -> None:
    r = await logging_app_call({"X-Request-Id": "x" * 65})
    replaced = r.headers["x-request-id"]
    assert replaced != "x" * 65 and requestid.accept(replaced) == replaced
    assert r.json() == {"current": replaced}
    assert ids_of(ids, "tests.logs") == [replaced]
    r = await logging_app_call({})
    assert requestid.accept(r.headers["x-request-id"]) and r.headers["x-request-id"] != replaced


async def test_the_edges_answers_and_access_lines_carry_the_request_id(
    ids: pytest.LogCaptureFixture,
) -> None:
    app = create_app(load_settings(None, environ={}, overrides={}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://camserver1") as client:
        r = await client.get("/api/cluster", headers={"X-Request-Id": "edge-1"})
        refused = await client.get("/api/cluster", headers={"X-Request-Id": "bad id"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "edge-1"
    replaced = refused.headers["x-request-id"]
    assert replaced not in ("bad id", "edge-1")
    assert ids_of(ids, "cam_edge.access") == ["edge-1", replaced]
    first = next(r for r in ids.records if r.name == "cam_edge.access")
    line = json.loads(logs.JsonFormatter("cam-edge").format(first))
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/cluster", 200)
    assert line["request_id"] == "edge-1"


async def frames(*texts: str) -> list[dict[str, Any]]:
    ws = FakeWebSocket()
    conn = Connection(ws, FakeEdge(), None)  # type: ignore[arg-type]
    conn.user = User(1, "alice", "Alice", False)
    with requestid.bound("connection-1"):
        for text in texts:
            await conn._frame(text)
            assert requestid.current.get() == "connection-1"  # the op's id is gone again
    conn.close(1000, "done")
    await asyncio.wait_for(conn.out.closed(), 2)
    return ws.sent


async def test_a_websocket_op_runs_under_the_frames_rid_and_answers_with_it(
    ids: pytest.LogCaptureFixture,
) -> None:
    # With the database down, directory logs a warning: the op's id must be on it.
    sent = await frames('{"op": "directory", "id": 1, "rid": "op-7"}',
                        '{"op": "ping", "id": 2, "rid": "bad rid!"}',
                        '{"op": "ping", "id": 3}')
    assert sent[0]["rid"] == "op-7" and sent[0]["code"] == "unavailable"
    assert "op-7" in ids_of(ids, "cam_edge.connection")
    replaced = sent[1]["rid"]
    assert sent[1]["result"] == {"pong": True}
    assert replaced != "bad rid!" and requestid.accept(replaced) == replaced
    assert "rid" not in sent[2]  # a frame without one is answered as before
    op_ids = ids_of(ids, "cam_edge.connection")
    assert op_ids[-2] == replaced and op_ids[-1] not in ("connection-1", replaced, None)


# ---------------------------------------------------------------- ids across the bus


class Echo(msgspec.Struct):
    text: str


handler_log = logging.getLogger("tests.logs.handler")


@pytest.fixture
async def served(nats_url: str) -> AsyncIterator[tuple[Any, str]]:
    """A replica serving ``<prefix>.echo``, whose handler logs a line and answers with the
    request id it runs under."""
    nc = await bus.connect([nats_url], "test-logs", connect_deadline=10)

    async def echo(request: Echo) -> str | None:
        handler_log.info("echo %s", request.text)
        return requestid.current.get()

    prefix = f"test.{uuid.uuid4().hex}"
    server = bus.RpcServer(nc, prefix, "q", {"echo": (Echo, echo)})
    await server.start()
    yield nc, prefix
    await server.stop()
    await nc.close()


async def test_the_request_id_crosses_the_bus_to_the_handler_and_its_log_lines(
    served: tuple[Any, str], ids: pytest.LogCaptureFixture,
) -> None:
    nc, prefix = served
    with requestid.bound("from-the-edge.1"):
        assert await bus.call(nc, f"{prefix}.echo", Echo(text="one")) == "from-the-edge.1"
    # The next request, made outside any request, carries none: nothing stays behind.
    assert await bus.call(nc, f"{prefix}.echo", Echo(text="two")) is None
    assert ids_of(ids, "tests.logs.handler") == ["from-the-edge.1", None]
    served_lines = [r for r in ids.records if r.name == "camcore.bus" and ".echo ok" in r.getMessage()]
    assert [getattr(r, "request_id", None) for r in served_lines] == ["from-the-edge.1", None]


async def test_a_bad_request_id_header_on_the_bus_is_ignored(
    served: tuple[Any, str], ids: pytest.LogCaptureFixture,
) -> None:
    nc, prefix = served
    msg = await nc.request(f"{prefix}.echo", msgspec.json.encode(Echo(text="x")), timeout=5,
                           headers={requestid.BUS_HEADER: "no spaces allowed"})
    reply = msgspec.json.decode(msg.data)
    assert reply["ok"] and reply.get("result") is None  # the handler ran, under no id
    assert ids_of(ids, "tests.logs.handler") == [None]


class Seen:
    """A hub listener that notes the request id each event is delivered under."""

    def __init__(self) -> None:
        self.ids: asyncio.Queue[str | None] = asyncio.Queue()

    def offer(self, room: int, seq: int, frame: str, leaving: Any = None) -> None:
        self.ids.put_nowait(requestid.current.get())


async def test_events_are_not_delivered_under_the_id_of_the_op_that_subscribed(
    nats_url: str,
) -> None:
    # nats runs a subscription's callbacks in a task made when subscribing: an op that
    # joins a room must not lend its id to every later event of the room.
    nc = await bus.connect([nats_url], "test-logs-hub", connect_deadline=10)
    try:
        hub, seen, room = Hub(nc), Seen(), 7
        with requestid.bound("auth-op-1"):
            await hub.join_room(room, seen)  # type: ignore[arg-type]
        event = wire.Message(room=room, seq=1, cid="c", sender=1, sender_name="a",
                             kind="text", body="hi", ts=0)
        await nc.publish(subjects.room_events(room), wire.encode(event))
        assert await asyncio.wait_for(seen.ids.get(), 5) is None
    finally:
        await nc.close()


# ---------------------------------------------------------------- camctl up's log files


def supervisord_conf(tmp_path: Path, rotation: LogRotation | None = None) -> configparser.RawConfigParser:
    sup = HostSupervisor("camserver1", tmp_path / "run", tmp_path / "logs", rotation=rotation)
    sup.programs["edge"] = Program("edge", ["true"], {}, tmp_path / "logs" / "edge.log")
    sup._write()
    conf = configparser.RawConfigParser()
    conf.read(sup.conf)
    return conf


def test_each_program_log_is_rotated_by_the_supervisor(tmp_path: Path) -> None:
    default = supervisord_conf(tmp_path / "a")["program:edge"]
    assert default["stdout_logfile"].endswith("edge.log")
    assert (default["stdout_logfile_maxbytes"], default["stdout_logfile_backups"]) == (
        str(10 * 1024 * 1024), "5")
    conf = supervisord_conf(tmp_path / "b", LogRotation(max_bytes=4096, backups=2))
    assert (conf["program:edge"]["stdout_logfile_maxbytes"],
            conf["program:edge"]["stdout_logfile_backups"]) == ("4096", "2")
    assert conf["supervisord"]["logfile_maxbytes"] and conf["supervisord"]["silent"] == "true"


def test_the_rotation_keys_default_to_10_mib_times_5_and_10_runs() -> None:
    settings = load_settings(None, environ={}, overrides={})
    assert (settings.log_max_bytes, settings.log_backups, settings.log_keep_runs) == (
        10 * 1024 * 1024, 5, 10)


def test_a_new_run_keeps_only_the_newest_runs_folders(tmp_path: Path) -> None:
    logs_dir = tmp_path / "logs"
    old = [f"2030010{d}-120000" for d in range(1, 6)]
    for run in old:
        (logs_dir / run).mkdir(parents=True)
        (logs_dir / run / "edge.log").write_text("x\n")
    (logs_dir / "notes").mkdir()  # not a run folder: left alone
    folder, removed = runlogs.start_run(logs_dir, "20300106-120000", keep=3)
    assert folder == logs_dir / "20300106-120000" and folder.is_dir()
    assert sorted(p.name for p in removed) == old[:3]
    assert sorted(p.name for p in logs_dir.iterdir()) == [
        "20300104-120000", "20300105-120000", "20300106-120000", "latest", "notes"]
    assert (logs_dir / "latest").resolve() == folder.resolve()


def test_camctl_logs_reads_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "edge.log"
    path.with_name("edge.log.1").write_text("1\n2\n3\n")
    path.write_text("4\n")
    with runlogs.RotatedLog(path) as log_file:
        assert log_file.tail(3) == ["2", "3", "4"]
        assert log_file.tail(0) == []
        followed = log_file.follow(poll=0.01)
        # The supervisor rotates: what was written before the rename is read, then the new file.
        with path.open("a") as f:
            f.write("5\n")
        path.with_name("edge.log.1").rename(path.with_name("edge.log.2"))
        path.rename(path.with_name("edge.log.1"))
        path.write_text("6\n")
        assert next(followed) == "5\n"
        assert next(followed) == "6\n"
