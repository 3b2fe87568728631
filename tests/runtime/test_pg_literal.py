"""Array literals read back by PostgreSQL as the values they were made from."""

from __future__ import annotations

import math
import uuid

import asyncpg
import orjson
import pytest

from seatd.adapters.pg_literal import _JSON_ONLY_ESCAPE, array_literal

# Everything the array syntax treats specially, and what JSON escapes differently.
AWKWARD_TEXT = [
    "",
    "plain",
    "with space",
    " padded ",
    'a "quoted" seat',
    "back\\slash",
    "\\n is two characters",
    "\\",
    '\\"',
    "{braces}",
    "a,b",
    "NULL",
    "null",
    "line\nbreak",
    "tab\there",
    "bell\x07and\x1f",
    "\r",
    "é Ж 席 🎟",
    "\u2028",
    "/slash/",
]
# The same without control characters, nor a backslash before a letter JSON escapes with (the
# fallback's trigger): orjson's own output carries these.
QUOTED_BY_JSON = [
    v
    for v in AWKWARD_TEXT
    if (v.isprintable() or v == "\u2028") and not _JSON_ONLY_ESCAPE.search(orjson.dumps(v))
]


@pytest.mark.parametrize(
    "values", [AWKWARD_TEXT, QUOTED_BY_JSON, [], ["only"], [f"S-{n}" for n in range(500)]]
)
async def test_text_arrays_round_trip(pool: asyncpg.Pool, values: list[str]) -> None:
    back = await pool.fetchval("SELECT $1::text::text[]", array_literal(values))
    assert back == values


def test_strings_without_control_characters_take_orjson_literal_as_is() -> None:
    dumped = orjson.dumps(QUOTED_BY_JSON)
    assert b"\\" in dumped and b'\\"' in dumped  # backslashes and quotes to carry
    assert _JSON_ONLY_ESCAPE.search(dumped) is None  # so the fast path writes the literal
    assert array_literal(QUOTED_BY_JSON) == "{" + dumped.decode()[1:-1] + "}"


async def test_one_awkward_string_among_plain_ones_round_trips(pool: asyncpg.Pool) -> None:
    values = [f"S-{n}" for n in range(50)] + ["row\nA"] + [f"T-{n}" for n in range(50)]
    assert await pool.fetchval("SELECT $1::text::text[]", array_literal(values)) == values


async def test_floats_round_trip_exactly(pool: asyncpg.Pool) -> None:
    values = [
        0.0,
        -0.0,
        1.5,
        -2.25,
        1_764_341_234.123456,
        1_764_341_234.1234567,
        math.pi,
        1e16,
        1e-7,
        5e-324,
        1.7976931348623157e308,
        0.1 + 0.2,
    ]
    back = await pool.fetchval("SELECT $1::text::float8[]", array_literal(values))
    assert back == values
    assert [math.copysign(1, v) for v in back] == [math.copysign(1, v) for v in values]


async def test_uuids_and_integers(pool: asyncpg.Pool) -> None:
    ids = [str(uuid.uuid4()) for _ in range(20)]
    back = await pool.fetchval("SELECT $1::text::uuid[]", array_literal(ids))
    assert [str(u) for u in back] == ids
    numbers = [0, 1, -7, 2**62]
    assert await pool.fetchval("SELECT $1::text::bigint[]", array_literal(numbers)) == numbers
