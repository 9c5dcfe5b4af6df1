"""The edge's op dispatch table is derived from the protocol's client frames.

``camcore.wire.CLIENT_FRAMES`` is the one list of client frames; the edge's handlers are
registered per frame type, and joining them into the table refuses any mismatch.
"""

from __future__ import annotations

from typing import Any

import pytest
from cam_edge.ops import GROUPS, OPS, OpGroup, OpTableError, dispatch_table
from cam_edge.ops.registry import op_name

from camcore import wire


class NotAClientFrame(wire.Frame, tag="not_a_client_frame"):
    pass


async def handler(conn: Any, frame: Any) -> None:
    return None


def test_every_client_frame_has_exactly_one_handler() -> None:
    assert OPS.keys() == wire.CLIENT_FRAMES.keys()
    for name, op in OPS.items():
        assert op.frame is wire.CLIENT_FRAMES[name]


def test_only_ping_and_auth_can_be_used_before_auth() -> None:
    assert {name for name, op in OPS.items() if op.anonymous} == {"auth", "ping"}


def test_a_guest_may_use_only_the_ops_of_its_meeting() -> None:
    assert {name for name, op in OPS.items() if op.guest} == {
        "ping", "auth", "conf_join", "conf_leave", "conf_signal", "conf_participants"}


def test_ops_are_grouped_by_subject_family() -> None:
    families = {g.family: {op_name(op.frame) for op in g.ops} for g in GROUPS}
    assert families["session"] == {"auth", "ping"}
    assert {"send", "history", "subscribe", "typing"} <= families["chat"]
    assert {"set_status", "watch", "unwatch"} <= families["presence"]
    # Meeting links are served by chat (membership, room creator, admin flag, audit).
    links = {"conf_link_create", "conf_links", "conf_link_revoke"}
    assert links <= families["chat"]
    assert families["conference"] == {n for n in wire.CLIENT_FRAMES
                                      if n.startswith("conf_")} - links


def test_a_client_frame_without_a_handler_is_an_error() -> None:
    frames: dict[str, type[wire.Frame]] = {**wire.CLIENT_FRAMES, "not_a_client_frame": NotAClientFrame}
    with pytest.raises(OpTableError, match="without a handler: not_a_client_frame"):
        dispatch_table(GROUPS, frames)


def test_a_handler_for_a_frame_that_is_not_a_client_frame_is_an_error() -> None:
    extra = OpGroup("extra")
    extra.handles(NotAClientFrame)(handler)
    with pytest.raises(OpTableError, match="NotAClientFrame, which is not a client frame"):
        dispatch_table([*GROUPS, extra], wire.CLIENT_FRAMES)


def test_two_handlers_for_one_frame_are_an_error() -> None:
    extra = OpGroup("extra")
    extra.handles(wire.Ping)(handler)
    with pytest.raises(OpTableError, match="two handlers for op 'ping'"):
        dispatch_table([*GROUPS, extra], wire.CLIENT_FRAMES)
