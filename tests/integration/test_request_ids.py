"""One request id from the client through the edge and the bus to the services: a REST
upload and a WebSocket op, each with the client's id, found on the JSON log lines of the
edge, the chat service and the files service."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from camclient import login
from tests.conftest import Cluster
from tests.integration.test_files import multipart
from tests.waiting import eventually

JSON_LOGS = {"CAM_LOG_FORMAT": "json", "CAM_LOG_LEVEL": "DEBUG"}
"""DEBUG: the edge logs each WebSocket op, a replica each bus request it serves."""


def records(log: Path) -> list[dict[str, Any]]:
    """The JSON records of a log file (a line that is not one is no record)."""
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out.append(parsed)
    return out


def with_id(log: Path, request_id: str) -> list[dict[str, Any]]:
    return [r for r in records(log) if r.get("request_id") == request_id]


async def test_a_rest_call_and_a_websocket_op_keep_the_clients_id_on_every_process(
    cluster_factory: Any, make_user: Any
):
    c: Cluster = cluster_factory(1)
    c.extra_env.update(JSON_LOGS)
    chat = c.start_chat()
    c.start_presence()
    files = c.start_files()
    edge = c.start_edge("camserver1")
    c.wait_edges()
    user = await make_user()
    client = await c.connect("camserver1", user)
    room = (await client.request("create_room", name="ids"))["id"]

    # A WebSocket op with the client's id: answered with it, and it reaches chat.
    ws_id = f"it-ws-{uuid.uuid4().hex[:8]}"
    await client.send_raw(json.dumps({"op": "send", "id": "s1", "rid": ws_id, "room": room,
                                      "cid": "c1", "body": "hello"}))
    answer = await client.next_event("result", where=lambda e: e.get("id") == "s1")
    assert answer["rid"] == ws_id and answer["result"]["seq"] > 0

    # A REST upload with the client's id: echoed, and it reaches files and chat.
    rest_id = f"it-rest-{uuid.uuid4().hex[:8]}"
    body, content_type = multipart(b"notes.txt", b"some notes\n", b"text/plain")
    token = await login(c.http("camserver1"), *user)
    async with httpx.AsyncClient(base_url=c.http("camserver1"), timeout=30) as http:
        r = await http.post(f"/api/rooms/{room}/files", content=body, headers={
            "authorization": f"Bearer {token}", "content-type": content_type,
            "x-request-id": rest_id})
    assert r.status_code == 201, r.text
    assert r.headers["x-request-id"] == rest_id

    # Every line of those logs is JSON, and each process logged the ids it handled.
    for proc in (edge, chat, files):
        assert records(proc.log_path), f"{proc.log_path} has no JSON lines"
    edge_ws = await eventually(lambda: with_id(edge.log_path, ws_id), 10, "the edge's op line")
    assert edge_ws[0]["process"] == "cam-edge" and edge_ws[0]["node"] == "camserver1"
    chat_ws = await eventually(lambda: with_id(chat.log_path, ws_id), 10, "chat's line for the op")
    assert any(".send ok" in r["message"] for r in chat_ws)
    edge_rest = await eventually(lambda: with_id(edge.log_path, rest_id), 10,
                                 "the edge's access line")
    assert any(r["logger"] == "cam_edge.access" and r["status"] == 201 for r in edge_rest)
    chat_rest = await eventually(lambda: with_id(chat.log_path, rest_id), 10,
                                 "chat's line for the upload's message")
    assert any(".send_file ok" in r["message"] for r in chat_rest)
    assert await eventually(lambda: with_id(files.log_path, rest_id), 10, "files' line")
    # Each id stayed with its own request.
    assert all(".send_file" not in r["message"] for r in with_id(chat.log_path, ws_id))
    assert all(".send ok" not in r["message"] for r in with_id(chat.log_path, rest_id))
    await client.close()


async def test_an_unsafe_incoming_request_id_is_replaced_and_the_replacement_is_logged(
    cluster_factory: Any
):
    c: Cluster = cluster_factory(1)
    c.extra_env.update({"CAM_LOG_FORMAT": "json"})
    edge = c.start_edge("camserver1")
    c.wait_edges()
    forged = 'x" 200 {"level": "ERROR"}'  # would forge a log line if it were taken
    async with httpx.AsyncClient(base_url=c.http("camserver1"), timeout=30) as http:
        r = await http.get("/api/me", headers={"x-request-id": forged})
    assert r.status_code == 401
    given = r.headers["x-request-id"]
    assert given != forged and given.isalnum()
    [line] = await eventually(lambda: with_id(edge.log_path, given), 10, "the access line")
    assert line["logger"] == "cam_edge.access" and line["status"] == 401
