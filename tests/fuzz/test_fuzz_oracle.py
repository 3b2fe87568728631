"""The fuzz oracle itself (no server): the compiled schema agrees with jsonschema, and the
expectations follow PROTOCOL.md's "How a frame is checked".

A fuzzer whose oracle is wrong either drowns real failures in noise or, worse, passes frames
it should flag; these tests keep both halves honest.
"""

from __future__ import annotations

from typing import Any

import pytest
from fuzz.engine import expect_for
from fuzz.schema_check import SchemaOracle, _error_key, load_schema
from fuzz.strategies import (
    SCALARS,
    WRONG_VALUES,
    Grammar,
    Raw,
    World,
    _draw,
    dumps,
    replace_slots,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from protocol.errors import ERROR_CODES

ORACLE = SchemaOracle()
DEFS = ORACLE.document["$defs"]
REFERENCE = Draft202012Validator({"$ref": "#/$defs/ServerFrame", "$defs": DEFS})

VALID: list[dict[str, Any]] = [
    {"type": "welcome", "protocol": "seatd.v1", "session_id": "s4", "user_id": "bob",
     "role": "user", "server_time": "2026-11-27T02:45:25.148Z", "max_frame_bytes": 65536,
     "max_inflight": 256, "max_seats_per_hold": 100},
    {"id": 1, "type": "ping", "ok": True, "result": {"server_time": "2026-11-27T02:45:23.086Z"}},
    {"id": "b2", "type": "hold", "ok": True, "result": {
        "hold_id": "f4f0235d-c077-4db3-87df-d722f0ad8412", "event_id": "e", "user_id": "bob",
        "seat_ids": ["floor-B-1"], "expires_at": "2026-11-27T02:50:25.149Z",
        "max_expires_at": "2026-11-27T03:15:25.149Z"}},
    {"id": None, "ok": False, "error": {"code": "invalid_json", "message": "x",
                                        "temporary": False}},
    {"id": 17, "ok": False, "error": {"code": "invalid_request", "message": "$.type ...",
     "temporary": False, "details": {"path": "$.type", "types": ["ping"]}}},
    {"id": "u1", "ok": False, "type": "hold", "error": {"code": "unavailable", "message": "m",
     "temporary": True, "retry_after_ms": 500}},
    {"type": "availability", "event_id": "e", "from_version": 4, "version": 4, "changes": [
        {"seat_id": "floor-B-1", "state": "held", "expires_at": "2026-11-27T02:50:25.149Z"}]},
    {"type": "goaway", "reason": "server restart", "reconnect": True},
]  # fmt: skip

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*at, index))
    return out


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _set(copy[path[0]], path[1:], new)
    return copy


@st.composite
def near_valid_frames(draw: st.DrawFn) -> Any:
    """A valid server frame with one value replaced, one key dropped, or one key added."""
    frame = draw(st.sampled_from(VALID))
    how = draw(st.sampled_from(("replace", "drop", "add", "code")))
    if how == "code":
        error = {**frame.get("error", {}), "code": draw(st.sampled_from(sorted(ERROR_CODES)))}
        error["temporary"] = draw(st.booleans())
        return {**frame, "ok": False, "error": error}
    path = draw(st.sampled_from(_paths(frame)))
    if how == "replace":
        return _set(frame, path, draw(JSON_VALUES | st.sampled_from([True, False, 1.0, 0, ""])))
    if how == "drop" and path:
        parent = frame
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            return _set(frame, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
    return {**frame, draw(st.text(max_size=8)): draw(JSON_VALUES)}


@pytest.mark.parametrize("frame", VALID, ids=lambda f: str(f.get("type", f.get("ok"))))
def test_documented_frames_are_valid(frame: dict[str, Any]) -> None:
    assert ORACLE.check(frame) is None
    assert REFERENCE.is_valid(frame)


ALWAYS_CROSS_CHECKED = SchemaOracle(cross_check_every=1, document=ORACLE.document)


@settings(max_examples=250, deadline=None)
@given(near_valid_frames())
def test_compiled_schema_agrees_with_jsonschema(frame: Any) -> None:
    valid = ALWAYS_CROSS_CHECKED._check(frame)
    assert valid == REFERENCE.is_valid(frame), frame
    assert (ALWAYS_CROSS_CHECKED.check(frame) is None) == valid, frame


@settings(max_examples=150, deadline=None)
@given(near_valid_frames(), near_valid_frames())
def test_error_replies_with_one_key_are_equally_valid(a: Any, b: Any) -> None:
    """The verdict cache of error replies is sound: one key, one verdict."""
    if _error_key(a) is not None and _error_key(a) == _error_key(b):
        assert REFERENCE.is_valid(a) == REFERENCE.is_valid(b), (a, b)


# PROTOCOL.md, "How a frame is checked": the frames of its table, and what their replies say.
TABLE: list[tuple[str, Any, str, str | None]] = [
    ('{"id": 12, "type": "hold"', None, "invalid_json", None),
    ('["ping"]', None, "invalid_json", None),
    ('{"type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": 1.5, "type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": 17}', 17, "invalid_request", None),
    ('{"id": 13, "type": "book", "event_id": "winter-gala-2026"}', 13, "unknown_type", None),
    ('{"id": 2e3, "type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": "", "type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": true, "type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": 9223372036854775808, "type": "ping"}', None, "invalid_request", "ping"),
    ('{"id": 1, "type": "ping", "x": 1e400}', None, "invalid_json", None),
]


@pytest.mark.parametrize(("text", "request_id", "code", "request_type"), TABLE)
def test_expectations_follow_the_protocol(
    text: str, request_id: Any, code: str, request_type: str | None
) -> None:
    expect = expect_for(text.encode(), binary=False, max_frame_bytes=65536)
    assert (expect.request_id, expect.null_id) == (request_id, request_id is None)
    assert (expect.code, expect.request_type) == (code, request_type)


def test_frames_that_must_close() -> None:
    assert expect_for(b'{"x":"\xff"}', binary=False, max_frame_bytes=65536).close == (1007,)
    assert expect_for(b"x" * 300, binary=False, max_frame_bytes=256).close == (1009,)
    binary = expect_for(b'{"id":1,"type":"ping"}', binary=True, max_frame_bytes=65536)
    assert (binary.null_id, binary.code) == (True, "invalid_json")


def test_raw_tokens_are_written_as_they_are() -> None:
    text = dumps({"a": Raw("1e400"), "b": [Raw("-0")], "c": "\x01R0\x01"}, raw=True)
    assert text == b'{"a":1e400,"b":[-0],"c":"\\u0001R0\\u0001"}'


def test_corpus_is_reproducible_and_covers_every_request_type() -> None:
    world = World.from_schema(load_schema(), events=("e1",), seats=("A-1", "A-2"))
    grammar = Grammar(world)
    planned = {name for name, _, count in grammar.plan(500) if count}
    assert {f"request.{t}" for t in world.request_schemas} <= planned
    first = _draw(grammar.request("hold"), 30, 7, 10)
    assert [t.body for t in first] == [t.body for t in _draw(grammar.request("hold"), 30, 7, 10)]
    for t in first:  # every template renders to JSON text
        assert isinstance(dumps(replace_slots(t.body), raw=True), bytes)


@given(WRONG_VALUES | SCALARS)
@settings(max_examples=100, deadline=None)
def test_hostile_values_serialise(value: Any) -> None:
    dumps({"v": value}, raw=True)
