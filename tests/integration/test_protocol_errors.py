"""Bad input from clients gets a clear error; nothing is lost and nobody else suffers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from camclient import Client, ClientError, login
from tests.conftest import Cluster


@pytest.fixture
async def pair(two_nodes: Cluster, make_user: Any) -> Any:
    """Two users of one room on node 1: ``bad`` misbehaves, ``good`` watches."""
    bad_u, good_u = await make_user(), await make_user()
    bad = await Client.connect(two_nodes.ws("camserver1"),
                               await login(two_nodes.http("camserver1"), *bad_u))
    good = await Client.connect(two_nodes.ws("camserver1"),
                                await login(two_nodes.http("camserver1"), *good_u))
    room = await good.request("create_room", name="r", members=[bad_u[0]])
    await bad.next_event("room_added")
    yield two_nodes, bad, good, room["id"]
    await bad.close()
    await good.close()


async def error_for(client: Client, raw: str) -> dict[str, Any]:
    await client.send_raw(raw)
    frame = await client.next_event("error", timeout=5)
    return frame


async def test_malformed_frames_get_error_frames_and_the_connection_stays(pair: Any):
    cluster, bad, good, room = pair
    cases = {
        "{not json": "malformed_frame",
        "[1, 2, 3]": "malformed_frame",
        '{"id": 1}': "malformed_frame",
        '{"op": 42}': "malformed_frame",
        '{"op": "launch_rockets", "id": 2}': "unknown_op",
        '{"op": "send", "id": 3, "room": "one", "cid": "a", "body": "x"}': "bad_request",
        '{"op": "send", "id": 4, "room": 1}': "bad_request",
        '{"op": "history", "id": 5, "room": 1, "limit": 100000}': "bad_request",
        '{"op": "send", "id": 6, "room": 1, "cid": "a", "body": "x", "extra": 1}': "bad_request",
    }
    for raw, code in cases.items():
        frame = await error_for(bad, raw)
        assert frame["code"] == code, raw
        assert frame["message"] and "Traceback" not in frame["message"]
    # The request id is echoed where the frame had one, so the client can match it.
    assert (await error_for(bad, '{"op": "nope", "id": "abc"}'))["id"] == "abc"
    # Still connected, still able to chat; the other member saw only real messages.
    ack = await bad.send(room, "still here")
    got = await good.next_event("message", where=lambda e: e["kind"] == "text")
    assert got["body"] == "still here" and got["seq"] == ack["seq"]


async def test_message_over_the_character_cap_is_refused_and_not_stored(pair: Any):
    cluster, bad, good, room = pair
    # The cap (cam.maxMessageChars, 4000) counts characters, not bytes: 4000 characters
    # of three bytes each pass, one more character does not.
    at_cap = "語" * 4000
    ack = await bad.send(room, at_cap)
    with pytest.raises(ClientError) as exc:
        await bad.send(room, at_cap + "x")
    assert exc.value.code == "message_too_large"
    with pytest.raises(ClientError) as exc:
        await bad.send(room, "x" * 4001)
    assert exc.value.code == "message_too_large"
    with pytest.raises(ClientError) as exc:
        await bad.send(room, "   ")
    assert exc.value.code == "bad_request"
    history = await good.history(room)
    texts = [(m["seq"], m["body"]) for m in history["messages"] if m["kind"] == "text"]
    assert texts == [(ack["seq"], at_cap)]


def padded(frame: dict[str, Any], size: int) -> str:
    """``frame`` as JSON padded with whitespace to exactly ``size`` bytes."""
    text = json.dumps(frame)
    return text[:-1] + " " * (size - len(text.encode())) + "}"


async def test_oversized_frame_closes_only_that_connection_with_1009(pair: Any):
    cluster, bad, good, room = pair
    limit = 65536  # cam.maxFrameBytes
    # A frame of exactly the limit is accepted...
    at_limit = padded({"op": "ping", "id": "at-limit"}, limit)
    assert len(at_limit.encode()) == limit
    await bad.send_raw(at_limit)
    pong = await bad.next_event("result", timeout=5)
    assert pong["id"] == "at-limit" and pong["result"]["pong"] is True
    # ...one byte more closes that connection with 1009, and its content is not stored.
    over = padded({"op": "send", "id": 1, "room": room, "cid": "big", "body": "too big"},
                  limit + 1)
    await bad.send_raw(over)
    assert await bad.wait_closed(5) == 1009
    ack = await good.send(room, "unaffected")
    texts = [(m["seq"], m["body"]) for m in (await good.history(room))["messages"]
             if m["kind"] == "text"]
    assert texts == [(ack["seq"], "unaffected")]


async def test_binary_frame_closes_with_1003(pair: Any):
    cluster, bad, good, room = pair
    await bad.send_raw(b"\x00\x01binary")
    assert await bad.wait_closed(5) == 1003
    assert (await good.request("ping"))["pong"] is True


async def test_ops_before_auth_and_wrong_versions_are_refused(two_nodes: Cluster, make_user: Any):
    client = await Client.open(two_nodes.ws("camserver1"))
    assert client.hello["op"] == "hello" and client.hello["v"] == 1
    with pytest.raises(ClientError) as exc:
        await client.request("rooms")
    assert exc.value.code == "unauthenticated"
    with pytest.raises(ClientError) as exc:
        await client.request("auth", token="forged-token")
    assert exc.value.code == "unauthenticated"
    user = await make_user()
    token = await login(two_nodes.http("camserver1"), *user)
    with pytest.raises(ClientError) as exc:
        await client.request("auth", token=token, v=99)
    assert exc.value.code == "unsupported_version"
    authed = await client.request("auth", token=token, v=1)
    assert authed["user"]["username"] == user[0]
    with pytest.raises(ClientError) as exc:
        await client.request("auth", token=token)
    assert exc.value.code == "already_authenticated"
    await client.close()


async def test_too_many_invalid_frames_close_the_connection_with_1008(pair: Any):
    cluster, bad, good, room = pair
    for _ in range(20):
        await bad.send_raw("garbage")
    assert await bad.wait_closed(5) == 1008
    assert (await good.request("ping"))["pong"] is True


async def test_websocket_from_a_foreign_origin_is_refused(two_nodes: Cluster):
    with pytest.raises(InvalidStatus) as exc:
        async with ws_connect(two_nodes.ws("camserver1"),
                              additional_headers={"Origin": "https://evil.example"}):
            pass
    assert exc.value.response.status_code == 403
    # Same-origin browsers are welcome.
    port = two_nodes.edge_ports["camserver1"]
    same = await Client.open(two_nodes.ws("camserver1"), origin=f"http://127.0.0.1:{port}")
    assert same.hello["op"] == "hello"
    await same.close()


async def test_configured_origin_is_allowed(cluster_factory: Any):
    cluster: Cluster = cluster_factory(1)
    cluster.start_chat()
    cluster.start_edge("camserver1", CAM_ALLOWED_ORIGINS="https://chat.example.com")
    cluster.wait_edges()
    ok = await Client.open(cluster.ws("camserver1"), origin="https://chat.example.com")
    assert ok.hello["op"] == "hello"
    await ok.close()
    with pytest.raises(InvalidStatus) as exc:
        await Client.open(cluster.ws("camserver1"), origin="https://chat.example.com.evil.io")
    assert exc.value.response.status_code == 403
