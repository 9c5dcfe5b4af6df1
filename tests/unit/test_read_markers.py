"""The edge's side of read markers, and the frames of the web app's protocol additions:
a ``read`` event from chat becomes the client frame ``read`` (never a lower marker after
a higher one), it counts only on the subject chat publishes, and the new frames validate
their fields."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from cam_edge.cursors import Cursor
from cam_edge.hub import _from_its_publisher

from camcore import accounts, subjects, wire
from tests.unit.test_membership import connection, finish


async def test_a_read_event_is_forwarded_as_the_read_frame_and_never_backwards() -> None:
    conn, edge, ws = connection(None)
    conn.cursors[7] = Cursor(3)
    for event in ({"type": "read", "room": 7, "read_seq": 5},
                  {"type": "read", "room": 7, "read_seq": 4},   # published late by a replica
                  {"type": "read", "room": 7, "read_seq": 5},   # told again: said again
                  {"type": "read", "room": 8, "read_seq": 2},   # not tracked (yet): forwarded
                  {"type": "read", "room": "7", "read_seq": 9},
                  {"type": "read", "room": 7, "read_seq": True},
                  {"type": "read", "room": 7}):
        conn.on_user_event(event)
    conn.forget_room(7)
    conn.on_user_event({"type": "read", "room": 7, "read_seq": 1})  # after it was left
    await finish(conn)
    assert ws.sent == [{"op": "read", "room": 7, "read_seq": 5},
                       {"op": "read", "room": 7, "read_seq": 5},
                       {"op": "read", "room": 8, "read_seq": 2},
                       {"op": "room_removed", "room": 7},
                       {"op": "read", "room": 7, "read_seq": 1}]


def test_read_counts_only_from_chat_on_the_users_event_subject() -> None:
    assert _from_its_publisher(subjects.user_events(5), {"type": "read"}) is True
    assert _from_its_publisher(subjects.user_session(5), {"type": "read"}) is False


def test_mark_read_is_a_client_frame_and_a_chat_op() -> None:
    assert wire.CLIENT_FRAMES["mark_read"] is wire.MarkReadFrame
    assert wire.CHAT_OPS["mark_read"] is wire.MarkRead


@pytest.mark.parametrize(("fields", "ok"), [
    ({"room": 1, "seq": 0}, True),
    ({"room": 1, "seq": 2**62}, True),
    ({"room": 1, "seq": 2**62 + 1}, False),
    ({"room": 1, "seq": -1}, False),
    ({"room": 0, "seq": 1}, False),
    ({"room": 1}, False),
    ({"room": 1, "seq": 1, "extra": 1}, False),
])
def test_mark_read_frame_fields(fields: dict[str, Any], ok: bool) -> None:
    raw = {"op": "mark_read", **fields}
    if ok:
        assert msgspec.convert(raw, wire.MarkReadFrame).seq == fields["seq"]
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(raw, wire.MarkReadFrame)


@pytest.mark.parametrize(("query", "ok"), [
    (None, True), ("a", True), ("x" * 64, True), ("", False), ("x" * 65, False), (3, False),
])
def test_directory_query_is_1_to_64_characters(query: Any, ok: bool) -> None:
    raw: dict[str, Any] = {"op": "directory"} if query is None else {"op": "directory", "query": query}
    if ok:
        assert msgspec.convert(raw, wire.DirectoryFrame).query == query
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(raw, wire.DirectoryFrame)


@pytest.mark.parametrize(("text", "pattern"), [
    ("ann", "%ann%"),
    ("100%", "%100\\%%"),
    ("a_b", "%a\\_b%"),
    ("back\\slash", "%back\\\\slash%"),
    ("\\%_", "%\\\\\\%\\_%"),
])
def test_directory_search_takes_like_wildcards_literally(text: str, pattern: str) -> None:
    assert accounts.like_contains(text) == pattern
