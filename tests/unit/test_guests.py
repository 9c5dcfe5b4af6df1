"""Guests without a cluster: the name rule of ``POST /api/guest``, the link objects, the
limit of live links, and a guest connection's refusals at the edge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from cam_chat.service import links_over_limit
from cam_edge.connection import GUEST_ONLY, Connection
from cam_edge.context import Edge

from camcore import errors, guests, wire
from camcore.accounts import User
from camcore.config import load_settings
from camcore.errors import CamError
from tests.unit.fakes import FakeWebSocket


@pytest.mark.parametrize(("raw", "kept"), [
    ("Ana", "Ana"),
    ("  Guest Ōta \t", "Guest Ōta"),
    ("Guest <b>Ōta</b>", "Guest <b>Ōta</b>"),  # markup is the page's business: kept as text
    ("x" * 64, "x" * 64),
    ("e\u0301" * 64, "e\u0301" * 64),  # 64 characters of e + combining acute, 192 bytes
    ("👩\u200d💻", "👩\u200d💻"),  # a zero-width joiner is a format character, not a control
])
def test_a_guest_name_is_stripped_and_kept(raw: str, kept: str) -> None:
    assert guests.check_name(raw) == kept


@pytest.mark.parametrize(("raw", "why"), [
    ("", "give a name"),
    (" \t\u3000 ", "give a name"),
    ("\u0301\u0301", "give a name"),  # marks with nothing to sit on
    ("x" * 65, "65 characters"),
    ("a" + "\u0301" * 300, "bytes of UTF-8"),  # one character, 601 bytes (Zalgo)
    ("e\u0301\u0301" * 60, "bytes of UTF-8"),  # 60 characters, 300 bytes
    ("Ana\nBob", "control characters (U+000A)"),
    ("Ana\x00Bob", "control characters (U+0000)"),
    ("Ana\x7fBob", "control characters (U+007F)"),
    ("Ana\x85Bob", "control characters (U+0085)"),
    ("Ana\u2028Bob", "control characters (U+2028)"),
    ("Ana\ud800", "control characters (U+D800)"),
])
def test_a_bad_guest_name_is_a_bad_request(raw: str, why: str) -> None:
    with pytest.raises(CamError) as exc:
        guests.check_name(raw)
    assert exc.value.code == errors.BAD_REQUEST
    assert why in exc.value.message


def test_link_tokens_are_32_random_bytes_and_only_their_hash_is_kept() -> None:
    token = guests.new_token()
    assert len(token) == 43 and "=" not in token
    assert guests.new_token() != token
    assert len(guests.digest(token)) == 32 and guests.digest(token) != token.encode()


def test_a_link_object_shows_its_token_only_when_given() -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    row = {"id": 4, "room_id": 9, "expires_at": at + timedelta(days=1), "max_guests": 5,
           "guests": 1, "created_by": 2, "created_at": at}
    listed = guests.link_object(row)
    assert listed == {"id": 4, "room": 9, "expires_at": "2030-01-03T03:04:05.678Z",
                      "max_guests": 5, "guests": 1, "created_by": 2,
                      "created_at": "2030-01-02T03:04:05.678Z"}
    created = guests.link_object(row, "tok")
    assert created == {**listed, "token": "tok"}


def test_twenty_live_links_per_room_and_no_more() -> None:
    assert links_over_limit(0) is None
    assert links_over_limit(wire.LINKS_PER_ROOM - 1) is None
    refusal = links_over_limit(wire.LINKS_PER_ROOM)
    assert refusal is not None and "20 live meeting links" in refusal


def test_link_bounds_are_in_the_frames() -> None:
    frame = msgspec.convert({"op": "conf_link_create", "room": 1}, wire.ConfLinkCreateFrame)
    assert (frame.ttl, frame.max_guests) == (86_400, 20)
    for bad in ({"ttl": 299}, {"ttl": 604_801}, {"max_guests": 0}, {"max_guests": 101}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"op": "conf_link_create", "room": 1, **bad},
                            wire.ConfLinkCreateFrame)


def test_a_guest_user_says_so_and_a_member_has_no_guest_field() -> None:
    assert User(1, "alice", "Alice", False).public() == {
        "id": 1, "username": "alice", "display_name": "Alice"}
    assert User(2, "guest-00", "Ana", False, guest_room=7).public() == {
        "id": 2, "username": "guest-00", "display_name": "Ana", "guest": True}


# ------------------------------------------------------------ the edge side


class NoLimit:
    def hit(self, key: str) -> None:
        pass

    def forget(self, key: str) -> None:
        pass


class FakeEdge:
    """An edge that records what reaches the chat service (nothing should)."""

    def __init__(self) -> None:
        self.settings = load_settings(None, environ={}, overrides={})
        self.requests = NoLimit()
        self.chat_calls: list[tuple[str, Any]] = []

    async def chat(self, op: str, request: Any, *, timeout: float = 5.0) -> Any:
        self.chat_calls.append((op, request))
        return {}


async def test_a_guest_connection_is_refused_every_op_but_its_meetings() -> None:
    edge = FakeEdge()
    ws = FakeWebSocket()
    conn = Connection(ws, edge, None)  # type: ignore[arg-type]
    conn.user = User(5, "guest-00", "Ana", False, guest_room=7)
    for i, frame in enumerate(['{"op": "rooms"}', '{"op": "send", "room": 7, "cid": "c", "body": "x"}',
                               '{"op": "directory"}', '{"op": "conf_links", "room": 7}',
                               '{"op": "set_status", "status": "away"}']):
        await conn._frame(frame.replace('{"op"', f'{{"id": {i}, "op"', 1))
    conn.close(1000, "done")
    await asyncio.wait_for(conn.out.closed(), 2)
    assert [(f["op"], f["code"], f["message"]) for f in ws.sent] == [
        ("error", "forbidden", GUEST_ONLY)] * 5
    assert edge.chat_calls == []  # nothing reached a service


def test_a_guest_is_a_member_of_the_room_of_its_link_only() -> None:
    conn = Connection(FakeWebSocket(), FakeEdge(), None)  # type: ignore[arg-type]
    conn.user = User(5, "guest-00", "Ana", False, guest_room=7)
    conn.require_member(7)
    with pytest.raises(CamError) as exc:
        conn.require_member(8)
    assert exc.value.code == errors.NOT_A_MEMBER


async def test_the_edge_takes_the_guest_sessions_out_of_a_reply_and_closes_them() -> None:
    published: list[tuple[int, list[str]]] = []

    class Closing:
        async def revoked(self, user_id: int, fingerprints: list[str]) -> None:
            published.append((user_id, fingerprints))

    closing = Closing()
    reply = {"link": 3, "revoked": True, wire.GUEST_SESSIONS: [[5, "aa"], [6, "bb"], [5, "cc"]]}
    result = await Edge.close_guests(closing, reply)  # type: ignore[arg-type]
    assert result == {"link": 3, "revoked": True}
    assert published == [(5, ["aa", "cc"]), (6, ["bb"])]
