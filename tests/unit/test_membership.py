"""Membership changes without a cluster: the chat service's refusals, and how a
connection stops delivering a room it learns (or finds out) the user left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cam_chat.service import blocked_message, members_over_limit, rooms_rate_message
from cam_edge.connection import Connection
from cam_edge.cursors import Cursor
from cam_edge.hub import _from_its_publisher, message_frame
from cam_edge.wsproto import Frame

from camcore import errors, subjects, wire
from camcore.accounts import User
from camcore.config import load_settings
from camcore.errors import CamError
from tests.unit.fakes import FakeWebSocket
from tests.waiting import eventually

# ------------------------------------------------------------ chat service refusals


def test_the_blocked_message_names_who_blocked_the_caller() -> None:
    assert blocked_message(["alice"]) == (
        "alice does not accept direct messages or invitations from you")
    assert blocked_message(["alice", "carol"]).startswith("alice, carol do not accept")


@pytest.mark.parametrize(("wait", "shown"), [(0.2, "1 s"), (1.0, "1 s"), (59.01, "60 s"),
                                             (3599.5, "3600 s")])
def test_the_rooms_per_hour_refusal_says_when_to_retry(wait: float, shown: str) -> None:
    message = rooms_rate_message(5, wait)
    assert "at most 5 new rooms per hour" in message
    assert message.endswith(f"retry in {shown}")


@pytest.mark.parametrize(("current", "adding", "limit", "fits"), [
    (0, 3, 3, True),     # create_room of exactly the limit
    (0, 4, 3, False),
    (2, 1, 3, True),     # invite up to the limit
    (2, 2, 3, False),    # all or nothing: not even one of the two
    (3, 0, 3, True),     # nobody new (all were members already)
    (5, 0, 3, True),     # a room over a lowered limit keeps its members
    (5, 1, 3, False),
])
def test_members_per_room_are_all_or_nothing(current: int, adding: int, limit: int,
                                             fits: bool) -> None:
    refusal = members_over_limit(current, adding, limit)
    assert (refusal is None) is fits
    if refusal is not None:
        assert f"limit of {limit} members per room" in refusal


def test_room_removed_counts_only_from_chat_on_the_users_event_subject() -> None:
    assert _from_its_publisher(subjects.user_events(5), {"type": "room_removed"}) is True
    # An edge may publish cam.user.<id>.session only: a forged removal there is dropped.
    assert _from_its_publisher(subjects.user_session(5), {"type": "room_removed"}) is False


def test_every_new_op_is_a_client_frame_and_a_chat_op() -> None:
    new = {"leave", "block", "unblock", "blocks", "admin_remove_member", "admin_delete_room",
           "admin_delete_message"}
    assert new <= wire.CLIENT_FRAMES.keys()
    assert new <= wire.CHAT_OPS.keys()


# ------------------------------------------------------------ the edge side


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def leave_room(self, room: int, listener: Any) -> None:
        self.calls.append(("leave", room))

    async def join_room(self, room: int, listener: Any) -> None:
        self.calls.append(("join", room))


class FakeEdge:
    """An edge whose chat service answers every history request with ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.settings = load_settings(None, environ={}, overrides={})
        self.hub = FakeHub()
        self.answer = answer
        self.requests: list[tuple[str, Any]] = []

    async def chat(self, op: str, request: Any, *, timeout: float = 5.0) -> Any:
        self.requests.append((op, request))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def connection(answer: Any) -> tuple[Connection, FakeEdge, FakeWebSocket]:
    ws, edge = FakeWebSocket(), FakeEdge(answer)
    conn = Connection(ws, edge, None)  # type: ignore[arg-type]
    conn.user = User(1, "alice", "Alice", False)
    return conn, edge, ws


def frame(room: int, seq: int) -> Frame:
    return message_frame(wire.Message(room=room, seq=seq, cid=f"c{seq}", sender=2,
                                      sender_name="bob", kind="text", body="hi", ts=0))


async def finish(conn: Connection) -> None:
    conn.close(1000, "done")
    await asyncio.wait_for(conn.out.closed(), 2)


async def test_room_removed_drops_the_room_once_and_tells_the_client() -> None:
    conn, edge, ws = connection(None)
    conn.cursors[7] = Cursor(3)
    conn.cursors[8] = Cursor(1)
    conn.on_user_event({"type": "room_removed", "room": 7})
    conn.on_user_event({"type": "room_removed", "room": 7})  # again (the leaver's own)
    conn.offer(7, 4, frame(7, 4))  # a late live message of the room: not delivered
    await eventually(lambda: edge.hub.calls, 2, "the unsubscription")
    await finish(conn)
    assert ws.sent == [{"op": "room_removed", "room": 7}]
    assert list(conn.cursors) == [8]
    assert edge.hub.calls == [("leave", 7)]


async def test_a_room_added_again_before_the_unsubscription_stays_subscribed() -> None:
    conn, edge, ws = connection(None)
    conn.cursors[7] = Cursor(3)
    assert conn.forget_room(7) is True
    conn.cursors[7] = Cursor(9)  # room_added came in between (track)
    await eventually(lambda: len(edge.hub.calls) == 2, 2, "leave and join again")
    await finish(conn)
    assert edge.hub.calls == [("leave", 7), ("join", 7)]


async def test_a_repair_answered_not_a_member_drops_the_room_instead_of_retrying() -> None:
    """The lost-event fallback: a gap in a room the user no longer belongs to."""
    conn, edge, ws = connection(CamError("not a member", errors.NOT_A_MEMBER))
    conn.cursors[7] = Cursor(3)
    conn.offer(7, 5, frame(7, 5))  # seq 4 is missing: a repair asks the store
    await eventually(lambda: 7 not in conn.cursors, 2, "the room dropped")
    conn.offer(7, 6, frame(7, 6))  # and nothing more is asked for it
    conn.behind(7, 6)
    await eventually(lambda: edge.hub.calls, 2, "the unsubscription")
    await finish(conn)
    assert [op for op, _ in edge.requests] == ["history"]
    assert ws.sent == [{"op": "room_removed", "room": 7}]
    assert edge.hub.calls == [("leave", 7)]


async def test_a_repair_that_fails_otherwise_keeps_the_room_for_the_next_try() -> None:
    conn, edge, ws = connection(CamError("no chat replica", errors.UNAVAILABLE))
    conn.cursors[7] = Cursor(3)
    conn.offer(7, 5, frame(7, 5))
    await eventually(lambda: edge.requests and not conn.cursors[7].repairing, 2,
                     "the failed repair")
    await finish(conn)
    assert 7 in conn.cursors and conn.cursors[7].pending
    assert ws.sent == [] and edge.hub.calls == []
