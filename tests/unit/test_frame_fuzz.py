"""Property tests of the edge's frame decoder: whatever a client sends, the answer is a
valid frame struct or a refusal with a stable code, never another exception."""

from __future__ import annotations

import json
from typing import Any

from cam_edge.connection import frame_of, parse_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camcore import errors, wire
from camcore.errors import CamError

REFUSALS = frozenset({errors.MALFORMED_FRAME, errors.UNKNOWN_OP, errors.BAD_REQUEST})
FUZZ = settings(max_examples=150, deadline=500, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),  # includes NUL and lone surrogates are excluded by JSON
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)


def field_values(frame: type[wire.Frame]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the frame's own field names (so validation is reached), some of them
    missing or extra, holding values of any JSON type."""
    names = [f for f in frame.__struct_fields__]
    known = st.dictionaries(st.sampled_from(names), json_values, max_size=len(names)) \
        if names else st.just({})
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.tuples(known, extra).map(lambda pair: {**pair[1], **pair[0]})


def decode(text: str) -> wire.Frame:
    _, frame = frame_of(parse_frame(text))
    return frame


def assert_decodes_or_refuses(text: str, op: str | None = None) -> None:
    try:
        frame = decode(text)
    except CamError as exc:
        assert exc.code in REFUSALS, (exc.code, text)
        assert exc.message and "Traceback" not in exc.message
        return
    assert isinstance(frame, wire.Frame)
    if op is not None:
        assert type(frame) is wire.CLIENT_FRAMES[op]


@FUZZ
@given(st.sampled_from(sorted(wire.CLIENT_FRAMES)).flatmap(
    lambda op: st.tuples(st.just(op), field_values(wire.CLIENT_FRAMES[op]))))
def test_every_op_with_arbitrary_fields_is_decoded_or_refused_with_a_stable_code(
        case: tuple[str, dict[str, Any]]):
    op, fields = case
    assert_decodes_or_refuses(json.dumps({**fields, "op": op}), op)


@FUZZ
@given(json_values)
def test_any_json_value_is_decoded_or_refused_with_a_stable_code(value: Any):
    assert_decodes_or_refuses(json.dumps(value))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_is_decoded_or_refused_with_a_stable_code(text: str):
    assert_decodes_or_refuses(text)


@FUZZ
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_malformed_not_a_crash(depth: int, opener: str):
    closer = "]" if opener == "[" else "}"
    text = '{"op": "conf_signal", "room": 1, "to": 1, "data": {"x": ' \
        + opener * depth + "1" + closer * depth + "}}"
    try:
        decode(text)
    except CamError as exc:
        assert depth > 30 and exc.code == errors.MALFORMED_FRAME
    else:
        assert depth <= 30
