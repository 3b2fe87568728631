"""PostgreSQL array literals (``{"a","b"}``, ``{1.5,2}``) written by orjson in one call.

A batch write sends a dozen arrays of a hundred elements or more. Given as lists, asyncpg
checks every element against the collection ABCs before encoding it (``_get_array_shape``):
a tenth of a microsecond or more per element, 3-4% of the server's CPU in a sale, on the
actor's path between two commits. Given as one text each, cast to its array type in the
statement (``$5::text::uuid[]``), an array is one string that PostgreSQL parses in C.

orjson's JSON array is nearly the literal: strings come in double quotes with ``"`` and ``\\``
escaped by a backslash, as the array syntax wants, and numbers as the shortest text that reads
back to the same float. Only control characters differ (JSON writes ``\\n`` where the array
syntax would read ``n``), so a string holding one is quoted here by hand instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import orjson

__all__ = ["array_literal"]

# A JSON escape the array syntax reads differently: a backslash before one of these letters.
# It also matches an escaped backslash followed by such a letter: that only sends the array
# down the slower, always right path.
_JSON_ONLY_ESCAPE = re.compile(rb"\\[bfnrtu]")


def array_literal(values: Sequence[str | float]) -> str:
    """The literal of a one-dimensional array of strings or of finite numbers (no NULLs).
    orjson writes NaN and infinity as null: such a time would reach PostgreSQL as NULL, which
    every column these arrays are written to refuses (the batch fails whole, nothing half)."""
    dumped = orjson.dumps(values)
    if b"\\" in dumped and _JSON_ONLY_ESCAPE.search(dumped):
        return "{" + ",".join(_quoted(value) for value in values) + "}"
    text = dumped.decode()
    return "{" + text[1:-1] + "}"


def _quoted(value: str | float) -> str:
    if not isinstance(value, str):
        return orjson.dumps(value).decode()
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
