"""Tests for protocol._validate: strict decoding, error paths, to_plain and JSON Schema."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from protocol._validate import ValidationError, decoder, spec, to_json_schema, to_plain


@dataclass(frozen=True, slots=True)
class SeatSpec:
    seat_id: str = spec(min_len=1, max_len=64, pattern=r"^[^\x00-\x1f]+$")
    section: str = spec(default="", max_len=64)
    number: int | None = spec(default=None, ge=0, le=1_000_000)
    x: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    event_id: str = spec(min_len=1, max_len=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    seat_ids: tuple[str, ...] = spec(
        min_items=1, max_items=50, unique=True, item=dict(min_len=1, max_len=64)
    )
    on_behalf_of: str | None = spec(default=None, min_len=1, max_len=128)
    mode: Literal["all", "any"] = "all"
    seats: tuple[SeatSpec, ...] = spec(default=(), max_items=20000)
    # RUF009 cannot know spec() is a field specifier; see extend-immutable-calls.
    attrs: dict[str, str] = spec(default_factory=dict, max_items=16)


@dataclass(frozen=True, slots=True)
class Numbers:
    count: int = 0
    small: int = spec(default=0, ge=-5, le=5)
    ratio: float = 0.0
    share: float | None = spec(default=None, ge=0.0, le=1.0)
    flag: bool = False
    level: Literal[1, 2, 3] = 1


@dataclass(frozen=True, slots=True)
class Window:
    """A required nullable field plus a cross-field rule."""

    start: int
    end: int
    note: str | None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("end must be >= start")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    children: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    rows: tuple[tuple[int, ...], ...] = spec(default=(), item=dict(max_items=3, item=dict(ge=0)))
    by_name: dict[str, SeatSpec] = spec(default_factory=dict)
    main: SeatSpec | None = None
    tags: tuple[str | None, ...] = ()


HOLD: dict[str, Any] = {"event_id": "ev-1", "seat_ids": ["A1", "A2"]}


def hold(**changes: Any) -> dict[str, Any]:
    return {**HOLD, **changes}


# --------------------------------------------------------------------------- good input

GOOD = [
    pytest.param(Hold, HOLD, Hold(event_id="ev-1", seat_ids=("A1", "A2")), id="hold-minimal"),
    pytest.param(
        Hold,
        hold(
            on_behalf_of="bob",
            mode="any",
            seats=[{"seat_id": "A1", "section": "B", "number": 0, "x": 1.5}, {"seat_id": "Ä2"}],
            attrs={"k": "v", "with space": ""},
        ),
        Hold(
            event_id="ev-1",
            seat_ids=("A1", "A2"),
            on_behalf_of="bob",
            mode="any",
            seats=(SeatSpec("A1", "B", 0, 1.5), SeatSpec("Ä2")),
            attrs={"k": "v", "with space": ""},
        ),
        id="hold-full",
    ),
    pytest.param(Hold, hold(on_behalf_of=None), Hold("ev-1", ("A1", "A2")), id="explicit-null"),
    pytest.param(SeatSpec, {"seat_id": "s", "x": 3}, SeatSpec("s", x=3.0), id="int-for-float"),
    pytest.param(SeatSpec, {"seat_id": "s", "number": 1_000_000}, SeatSpec("s", number=1_000_000)),
    pytest.param(
        Numbers,
        {"count": 2**63 - 1, "small": -5, "ratio": -0.0, "share": 1, "flag": True, "level": 3},
        Numbers(count=2**63 - 1, small=-5, ratio=-0.0, share=1.0, flag=True, level=3),
        id="numbers-bounds",
    ),
    pytest.param(Numbers, {"count": -(2**63)}, Numbers(count=-(2**63)), id="int64-min"),
    pytest.param(Window, {"start": 1, "end": 2, "note": None}, Window(1, 2, None), id="req-null"),
    pytest.param(
        Node,
        {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]},
        Node("a", (Node("b", (Node("c"),)),)),
        id="recursive",
    ),
    pytest.param(
        Layout,
        {"rows": [[1, 2, 3], []], "by_name": {"a": {"seat_id": "s"}}, "tags": ["x", None]},
        Layout(rows=((1, 2, 3), ()), by_name={"a": SeatSpec("s")}, tags=("x", None)),
        id="nested-containers",
    ),
]


@pytest.mark.parametrize(("cls", "data", "expected"), GOOD)
def test_decodes_valid_input(cls: type, data: dict[str, Any], expected: object) -> None:
    result: object = decoder(cls)(data)
    assert result == expected
    assert type(result) is cls


def test_int_for_float_becomes_float() -> None:
    seat = decoder(SeatSpec)({"seat_id": "s", "x": 7})
    assert seat.x == 7.0
    assert type(seat.x) is float


def test_tuples_and_defaults() -> None:
    h = decoder(Hold)(HOLD)
    assert type(h.seat_ids) is tuple
    assert h.seats == ()
    assert h.attrs == {}
    assert decoder(Hold)(HOLD).attrs is not h.attrs  # default_factory runs per instance


def test_ignore_skips_envelope_keys() -> None:
    envelope = hold(id=7, type="hold")
    with pytest.raises(ValidationError) as info:
        decoder(Hold)(envelope)
    assert info.value.path == "$.id"
    assert decoder(Hold, ignore=frozenset({"id", "type"}))(envelope) == decoder(Hold)(HOLD)
    # Ignored keys only apply at the top level.
    with pytest.raises(ValidationError) as info:
        decoder(Hold, ignore={"id"})(hold(seats=[{"seat_id": "s", "id": 1}]))
    assert info.value.path == "$.seats[0].id"


def test_decoder_is_cached() -> None:
    assert decoder(Hold) is decoder(Hold)
    assert decoder(Hold, ignore={"id"}) is decoder(Hold, ignore=frozenset({"id"}))


# --------------------------------------------------------------------------- bad input

# (cls, data, path, reason substring, the JSON Schema must also reject it)
BAD = [
    pytest.param(Hold, [], "$", "expected an object, got array", True, id="not-object"),
    pytest.param(Hold, None, "$", "expected an object, got null", True, id="null"),
    pytest.param(Hold, {"seat_ids": ["a"]}, "$.event_id", "required field is missing", True),
    pytest.param(Hold, hold(event_id=5), "$.event_id", "expected a string, got integer", True),
    pytest.param(Hold, hold(event_id=""), "$.event_id", "at least 1 character", True),
    pytest.param(Hold, hold(event_id="a b"), "$.event_id", "must match ^[A-Za-z0-9]", True),
    # Python's `$` would match before a trailing newline; ECMA-262 / our decoder do not.
    pytest.param(Hold, hold(event_id="ab\n"), "$.event_id", "must match", False, id="eol"),
    pytest.param(Hold, hold(event_id="a" * 65), "$.event_id", "at most 64 characters", True),
    pytest.param(Hold, hold(seat_ids="A1"), "$.seat_ids", "expected an array, got string", True),
    pytest.param(Hold, hold(seat_ids=[]), "$.seat_ids", "must have at least 1 item(s)", True),
    pytest.param(
        Hold,
        hold(seat_ids=[f"s{i}" for i in range(51)]),
        "$.seat_ids",
        "must have at most 50 item(s)",
        True,
    ),
    pytest.param(Hold, hold(seat_ids=["a", ""]), "$.seat_ids[1]", "at least 1 character", True),
    pytest.param(Hold, hold(seat_ids=["a", 1]), "$.seat_ids[1]", "expected a string", True),
    pytest.param(Hold, hold(seat_ids=["a", "b", "a"]), "$.seat_ids[2]", "duplicate item", True),
    pytest.param(
        Hold, hold(on_behalf_of=3), "$.on_behalf_of", "expected a string or null, got integer", True
    ),
    pytest.param(Hold, hold(on_behalf_of=""), "$.on_behalf_of", "at least 1 character", True),
    pytest.param(Hold, hold(mode="some"), "$.mode", "must be one of 'all', 'any'", True),
    pytest.param(Hold, hold(mode=None), "$.mode", "must be one of 'all', 'any'", True),
    pytest.param(Hold, hold(bogus=1), "$.bogus", "unknown field", True),
    pytest.param(Hold, hold(**{"a b": 1}), '$["a b"]', "unknown field", True, id="odd-key"),
    pytest.param(Hold, hold(seats={}), "$.seats", "expected an array, got object", True),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a"}, {"seat_id": "b"}, {"seat_id": ""}]),
        "$.seats[2].seat_id",
        "at least 1 character",
        True,
        id="nested-path",
    ),
    pytest.param(
        Hold, hold(seats=[{"seat_id": "a\x01"}]), "$.seats[0].seat_id", "must match", True
    ),
    pytest.param(Hold, hold(seats=[{}]), "$.seats[0].seat_id", "required field is missing", True),
    pytest.param(Hold, hold(seats=["a"]), "$.seats[0]", "expected an object, got string", True),
    pytest.param(
        Hold, hold(seats=[{"seat_id": "a", "extra": 1}]), "$.seats[0].extra", "unknown field", True
    ),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a", "number": -1}]),
        "$.seats[0].number",
        "must be >= 0",
        True,
    ),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a", "number": 1_000_001}]),
        "$.seats[0].number",
        "must be <= 1000000",
        True,
    ),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a", "number": True}]),
        "$.seats[0].number",
        "expected an integer or null, got boolean",
        True,
        id="bool-for-int",
    ),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a", "number": 1.0}]),
        "$.seats[0].number",
        "expected an integer or null, got number",
        False,  # JSON Schema's "integer" admits 1.0
        id="float-for-int",
    ),
    pytest.param(
        Hold,
        hold(seats=[{"seat_id": "a", "x": False}]),
        "$.seats[0].x",
        "expected a number or null, got boolean",
        True,
        id="bool-for-float",
    ),
    pytest.param(
        Hold, hold(seats=[{"seat_id": "a", "x": "1"}]), "$.seats[0].x", "got string", True
    ),
    pytest.param(Hold, hold(attrs=[]), "$.attrs", "expected an object, got array", True),
    pytest.param(Hold, hold(attrs={"k": 1}), "$.attrs.k", "expected a string, got integer", True),
    pytest.param(Hold, hold(attrs={"a-b": None}), '$.attrs["a-b"]', "got null", True),
    pytest.param(
        Hold,
        hold(attrs={str(i): "" for i in range(17)}),
        "$.attrs",
        "must have at most 16 item(s)",
        True,
    ),
    pytest.param(
        Hold, hold(attrs={"k" * 257: ""}), "$.attrs", "keys must be at most 256 characters", True
    ),
    pytest.param(
        Hold,
        {"event_id": 1, "seat_ids": [], "bogus": 1},
        "$.bogus",
        "unknown field",
        True,
        id="unknown-fields-first",
    ),
    pytest.param(
        Hold, {"event_id": "", "seat_ids": []}, "$.event_id", "at least 1", True, id="field-order"
    ),
    pytest.param(Numbers, {"count": 2**63}, "$.count", "64-bit", True, id="int64-max+1"),
    pytest.param(Numbers, {"count": -(2**63) - 1}, "$.count", "64-bit", True, id="int64-min-1"),
    pytest.param(Numbers, {"count": 2**64 - 1}, "$.count", "64-bit", True, id="uint64-max"),
    pytest.param(Numbers, {"count": True}, "$.count", "got boolean", True, id="bool-count"),
    pytest.param(Numbers, {"small": 6}, "$.small", "must be <= 5", True),
    pytest.param(Numbers, {"small": -6}, "$.small", "must be >= -5", True),
    pytest.param(Numbers, {"ratio": math.nan}, "$.ratio", "finite", False, id="nan"),
    pytest.param(Numbers, {"ratio": math.inf}, "$.ratio", "finite", False, id="inf"),
    pytest.param(Numbers, {"ratio": -math.inf}, "$.ratio", "finite", False, id="-inf"),
    pytest.param(Numbers, {"ratio": 10**400}, "$.ratio", "finite", False, id="huge-int"),
    pytest.param(Numbers, {"share": 1.5}, "$.share", "must be <= 1.0", True),
    pytest.param(Numbers, {"flag": 1}, "$.flag", "expected a boolean, got integer", True),
    pytest.param(Numbers, {"flag": "true"}, "$.flag", "expected a boolean, got string", True),
    pytest.param(Numbers, {"level": 4}, "$.level", "must be one of 1, 2, 3", True),
    pytest.param(Numbers, {"level": True}, "$.level", "must be one of 1, 2, 3", False, id="lit-T"),
    pytest.param(Numbers, {"level": 1.0}, "$.level", "must be one of 1, 2, 3", False, id="lit-1.0"),
    pytest.param(Numbers, {"level": "1"}, "$.level", "must be one of 1, 2, 3", True),
    pytest.param(Window, {"start": 1, "end": 2}, "$.note", "required field is missing", True),
    pytest.param(Window, {"start": 2, "end": 1, "note": None}, "$", "end must be >= start", False),
    pytest.param(
        Node,
        {"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]},
        "$.children[0].children[0].name",
        "expected a string",
        True,
    ),
    pytest.param(Layout, {"rows": [[1], [0, -1]]}, "$.rows[1][1]", "must be >= 0", True),
    pytest.param(Layout, {"rows": [[1, 2, 3, 4]]}, "$.rows[0]", "at most 3 item(s)", True),
    pytest.param(
        Layout,
        {"by_name": {"x": {"seat_id": "s", "number": "1"}}},
        "$.by_name.x.number",
        "expected an integer or null, got string",
        True,
    ),
    pytest.param(Layout, {"main": []}, "$.main", "expected an object or null, got array", True),
    pytest.param(Layout, {"main": {}}, "$.main.seat_id", "required field is missing", True),
    pytest.param(Layout, {"tags": [None, 1]}, "$.tags[1]", "expected a string or null", True),
]


@pytest.mark.parametrize(("cls", "data", "path", "reason", "in_schema"), BAD)
def test_rejects_invalid_input(
    cls: type, data: object, path: str, reason: str, in_schema: bool
) -> None:
    with pytest.raises(ValidationError) as info:
        decoder(cls)(data)
    err = info.value
    assert err.path == path
    assert reason in err.reason
    assert str(err) == f"{path}: {err.reason}"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(("cls", "data"), [p.values[:2] for p in BAD if p.values[4]])
def test_schema_agrees_on_invalid_input(cls: type, data: object) -> None:
    assert not Draft202012Validator(to_json_schema(cls)).is_valid(data)


def test_huge_unknown_key_is_truncated_in_path() -> None:
    with pytest.raises(ValidationError) as info:
        decoder(Hold)(hold(**{"x y" * 1000: 1}))
    assert len(info.value.path) < 100
    assert info.value.reason == "unknown field"


def test_deep_recursion_is_a_validation_error() -> None:
    data: dict[str, Any] = {"name": "leaf"}
    for _ in range(5000):
        data = {"name": "n", "children": [data]}
    with pytest.raises(ValidationError) as info:
        decoder(Node)(data)
    assert info.value.path == "$"


def test_validation_error_pickles() -> None:
    err = ValidationError("$.a[1]", "duplicate item")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == ("$.a[1]", "duplicate item", str(err))


# --------------------------------------------------------------------------- build-time errors


def test_spec_rejects_bad_constraints() -> None:
    with pytest.raises(TypeError, match="unknown item constraint"):
        spec(item=dict(min_length=1))
    with pytest.raises(ValueError, match="greater than"):
        spec(min_len=5, max_len=1)
    with pytest.raises(TypeError, match="non-negative"):
        spec(max_items=-1)
    with pytest.raises(ValueError, match="invalid pattern"):
        spec(pattern="(")
    with pytest.raises(ValueError, match="both default"):
        spec(default=(), default_factory=tuple)


def test_decoder_rejects_misapplied_constraint() -> None:
    @dataclass(frozen=True, slots=True)
    class Bad:
        n: int = spec(min_len=1)

    with pytest.raises(TypeError, match="min_len cannot apply to a int"):
        decoder(Bad)


def test_decoder_rejects_invalid_default() -> None:
    @dataclass(frozen=True, slots=True)
    class Bad:
        name: str = spec(default="", min_len=1)

    with pytest.raises(TypeError, match="default '' is invalid"):
        decoder(Bad)


@pytest.mark.parametrize(
    "annotation", ["list[str]", "int | str", "tuple[int, str]", "dict[int, str]", "Literal[True]"]
)
def test_decoder_rejects_unsupported_annotations(annotation: str) -> None:
    cls: type = dataclass(frozen=True)(type("Bad", (), {"__annotations__": {"v": annotation}}))
    cls.__module__ = __name__
    with pytest.raises(TypeError, match=r"Bad\.v"):
        decoder(cls)


# --------------------------------------------------------------------------- to_plain


def test_to_plain_shapes_and_omits_default_none() -> None:
    h = Hold(
        event_id="e",
        seat_ids=("a", "b"),
        seats=(SeatSpec("s", number=None, x=2.5),),
        attrs={"k": "v"},
    )
    plain = to_plain(h)
    assert plain == {
        "event_id": "e",
        "seat_ids": ["a", "b"],
        "mode": "all",
        "seats": [{"seat_id": "s", "section": "", "x": 2.5}],
        "attrs": {"k": "v"},
    }
    assert plain["attrs"] is not h.attrs
    # A None that the decoder would not restore from a missing key is kept as null.
    assert to_plain(Window(1, 2, None)) == {"start": 1, "end": 2, "note": None}
    assert to_plain(Layout(tags=("a", None), main=SeatSpec("m"))) == {
        "rows": [],
        "by_name": {},
        "main": {"seat_id": "m", "section": ""},
        "tags": ["a", None],
    }


def test_to_plain_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        to_plain({"a": 1})


# --------------------------------------------------------------------------- JSON Schema


def test_schema_shape() -> None:
    schema = to_json_schema(
        Hold,
        extra_properties={"id": {"type": "integer"}, "type": {"const": "hold"}},
        extra_required=["type"],
    )
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert list(schema["properties"])[:2] == ["id", "type"]
    assert schema["required"] == ["type", "event_id", "seat_ids"]
    assert schema["properties"]["seats"]["items"] == {"$ref": "#/$defs/SeatSpec"}
    assert schema["$defs"]["SeatSpec"]["required"] == ["seat_id"]
    assert schema["properties"]["seat_ids"]["uniqueItems"] is True
    assert schema["properties"]["mode"]["enum"] == ["all", "any"]
    validator = Draft202012Validator(schema)
    assert validator.is_valid(hold(type="hold", id=3))
    assert not validator.is_valid(HOLD)  # "type" is required
    assert not validator.is_valid(hold(type="release"))


def test_schema_recursive_and_nested() -> None:
    for cls in (Node, Layout, Window, Numbers):
        Draft202012Validator.check_schema(to_json_schema(cls))
    node = to_json_schema(Node, extra_properties={"type": {"const": "node"}})
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert "type" not in node["$defs"]["Node"]["properties"]
    assert Draft202012Validator(node).is_valid(
        {"type": "node", "name": "a", "children": [{"name": "b"}]}
    )
    assert Draft202012Validator(to_json_schema(Window)).is_valid(to_plain(Window(1, 2, None)))


def test_schema_rejects_clashing_extras() -> None:
    with pytest.raises(ValueError, match="clash"):
        to_json_schema(Hold, extra_properties={"mode": {}})
    with pytest.raises(ValueError, match="unknown"):
        to_json_schema(Hold, extra_required=["nope"])


# --------------------------------------------------------------------------- round trip


_text = st.text(st.characters(min_codepoint=0x20, codec="utf-8"))
_keys = st.text(st.characters(codec="utf-8"), max_size=256)
seat_specs = st.builds(
    SeatSpec,
    seat_id=st.text(st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1, max_size=64),
    section=st.text(st.characters(codec="utf-8"), max_size=64),
    number=st.none() | st.integers(0, 1_000_000),
    x=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
holds = st.builds(
    Hold,
    event_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    seat_ids=st.lists(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=64),
        min_size=1,
        max_size=50,
        unique=True,
    ).map(tuple),
    on_behalf_of=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
    mode=st.sampled_from(["all", "any"]),
    seats=st.lists(seat_specs, max_size=5).map(tuple),
    attrs=st.dictionaries(_keys, _text, max_size=16),
)
numbers = st.builds(
    Numbers,
    count=st.integers(-(2**63), 2**63 - 1),
    small=st.integers(-5, 5),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    share=st.none() | st.floats(0.0, 1.0),
    flag=st.booleans(),
    level=st.sampled_from([1, 2, 3]),
)
nodes = st.recursive(
    st.builds(Node, name=_text),
    lambda inner: st.builds(Node, name=_text, children=st.lists(inner, max_size=3).map(tuple)),
    max_leaves=10,
)
windows = st.builds(
    lambda a, b, note: Window(min(a, b), max(a, b), note),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.none() | _text,
)
layouts = st.builds(
    Layout,
    rows=st.lists(st.lists(st.integers(0, 2**63 - 1), max_size=3).map(tuple), max_size=3).map(
        tuple
    ),
    by_name=st.dictionaries(_keys, seat_specs, max_size=3),
    main=st.none() | seat_specs,
    tags=st.lists(st.none() | _text, max_size=3).map(tuple),
)
_SCHEMAS: dict[type, Draft202012Validator] = {}


@settings(database=None, deadline=None, max_examples=150)
@given(st.one_of(holds, numbers, nodes, windows, layouts))
def test_round_trip_through_plain_and_decoder(obj: Any) -> None:
    cls = type(obj)
    wire = orjson.loads(orjson.dumps(to_plain(obj)))
    assert decoder(cls)(wire) == obj
    validator = _SCHEMAS.get(cls)
    if validator is None:
        validator = _SCHEMAS[cls] = Draft202012Validator(to_json_schema(cls))
    assert validator.is_valid(wire)
