"""PROTOCOL.md stays in step with the protocol package.

The document must name every request type in a section heading, every error code (with the
right ``temporary`` flag in the error-code table), every close code, every field of every
message class (requests, results, pushes and the objects inside them), and the subprotocol; and
every request shown in it, in a ``json`` block or on a ``> `` line of a ``text`` transcript,
must still be a request the server accepts. Each test fails with the full list of what is
missing or wrong.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import messages
from protocol.codec import DecodeError, decode_request
from protocol.errors import ERROR_CODES, CloseCode

DOC_PATH = Path(__file__).resolve().parents[1] / "PROTOCOL.md"


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC_PATH.is_file(), f"{DOC_PATH} is missing"
    return DOC_PATH.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> Iterator[tuple[str, str, int]]:
    """(info string, body, line number of the opening fence) of every fenced code block."""
    for match in re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        yield match.group(1).strip(), match.group(2), line


def _headings(text: str) -> list[str]:
    outside_code = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return [line for line in outside_code.splitlines() if re.match(r"#{1,6} ", line)]


def _nested_dataclasses(tp: object) -> Iterator[type]:
    """Dataclasses reachable from an annotation (through ``X | None`` and ``tuple[X, ...]``)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        yield tp
        return
    if typing.get_origin(tp) in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(tp):
            yield from _nested_dataclasses(arg)


def _classes_with_nested(roots: tuple[type, ...]) -> list[type]:
    seen: list[type] = []
    pending = list(roots)
    while pending:
        cls = pending.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        for hint in typing.get_type_hints(cls).values():
            pending.extend(_nested_dataclasses(hint))
    return seen


def _missing_fields(doc: str, classes: list[type]) -> list[str]:
    missing = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            if f"`{field.name}`" not in doc:
                missing.append(f"{cls.__name__}.{field.name}")
    return missing


def test_every_request_type_has_a_section(doc: str) -> None:
    headings = _headings(doc)
    missing = [
        name
        for name in messages.REQUEST_TYPES
        if not any(f"`{name}`" in heading for heading in headings)
    ]
    assert not missing, f"PROTOCOL.md has no section heading (like '### `x`') for: {missing}"


def test_every_error_code_is_documented_with_its_temporary_flag(doc: str) -> None:
    missing = [code for code in ERROR_CODES if f"`{code}`" not in doc]
    assert not missing, f"PROTOCOL.md does not mention these error codes (in backticks): {missing}"
    wrong = []
    for code, entry in ERROR_CODES.items():
        row = re.search(rf"^\|\s*`{re.escape(code)}`\s*\|\s*(yes|no)\s*\|", doc, re.MULTILINE)
        expected = "yes" if entry.temporary else "no"
        if row is None:
            wrong.append(f"{code}: no row '| `{code}` | {expected} |' in the error-code table")
        elif row.group(1) != expected:
            wrong.append(f"{code}: documented temporary={row.group(1)}, registry says {expected}")
    assert not wrong, "PROTOCOL.md's error-code table is out of step:\n" + "\n".join(wrong)


def test_every_close_code_is_documented(doc: str) -> None:
    missing = [
        f"{code.value} {code.name}"
        for code in CloseCode
        if not re.search(rf"^\|\s*{code.value}\s*\|\s*`{code.name}`\s*\|", doc, re.MULTILINE)
    ]
    assert not missing, (
        "PROTOCOL.md's close-code table has no row '| <value> | `<NAME>` |' for: " + str(missing)
    )


def test_every_request_field_is_documented(doc: str) -> None:
    classes = _classes_with_nested(tuple(messages.REQUEST_TYPES.values()))
    missing = _missing_fields(doc, classes)
    assert not missing, f"PROTOCOL.md does not name these request fields (in backticks): {missing}"


def test_every_message_field_is_documented(doc: str) -> None:
    """Every dataclass of protocol.messages: results, pushes and the shapes inside them."""
    classes = [
        obj
        for obj in vars(messages).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == messages.__name__
    ]
    missing = _missing_fields(doc, _classes_with_nested(tuple(classes)))
    assert not missing, f"PROTOCOL.md does not name these message fields (in backticks): {missing}"


def test_subprotocol_is_named(doc: str) -> None:
    assert f"`{messages.PROTOCOL_VERSION}`" in doc, (
        f"PROTOCOL.md does not name the subprotocol `{messages.PROTOCOL_VERSION}`"
    )


def _example_requests(doc: str) -> Iterator[tuple[int, str, dict[str, object] | None]]:
    """(line, text, parsed object) of each request shown in a code block.

    JSON blocks hold one JSON value each; text blocks hold wire transcripts whose lines
    starting with '> ' are frames sent by the client. Unparseable JSON yields ``None``.
    """
    for info, body, line in _fenced_blocks(doc):
        if info == "json":
            try:
                value = json.loads(body)
            except json.JSONDecodeError:
                yield line, body, None
                continue
            yield line, body, value if isinstance(value, dict) else {}
        elif info == "text":
            for offset, text in enumerate(body.splitlines(), start=1):
                if text.startswith("> "):
                    try:
                        value = json.loads(text[2:])
                    except json.JSONDecodeError:
                        yield line + offset, text, None
                        continue
                    yield line + offset, text[2:], value if isinstance(value, dict) else {}


def test_json_examples_parse(doc: str) -> None:
    broken = [
        f"line {line}: {text[:80]!r}"
        for line, text, value in _example_requests(doc)
        if value is None
    ]
    assert not broken, "PROTOCOL.md has code blocks that are not valid JSON:\n" + "\n".join(broken)


def test_request_examples_are_accepted_by_the_decoder(doc: str) -> None:
    checked = 0
    rejected = []
    for line, text, value in _example_requests(doc):
        if not value or "type" not in value or "id" not in value or "ok" in value:
            continue  # not a request: a reply, a push or another JSON value
        checked += 1
        try:
            decode_request(text)
        except DecodeError as error:
            rejected.append(f"line {line}: {error.code}: {error.message}")
    assert checked >= len(messages.REQUEST_TYPES), (
        f"only {checked} request examples found in PROTOCOL.md; expected at least one per type"
    )
    assert not rejected, "PROTOCOL.md shows requests the server refuses:\n" + "\n".join(rejected)


def test_every_request_type_has_an_example(doc: str) -> None:
    shown = {
        value["type"]
        for _, _, value in _example_requests(doc)
        if value and "id" in value and "ok" not in value
    }
    missing = sorted(set(messages.REQUEST_TYPES) - shown)
    assert not missing, f"PROTOCOL.md shows no example request of type: {missing}"


def test_the_frame_check_examples_are_what_the_decoder_answers(doc: str) -> None:
    """The table of refused frames (How a frame is checked) was recorded from a server; the
    decoder alone produces those replies, so each row must still be exactly what it says."""
    start = doc.index("Frames and the replies the server sent to them:")
    table = doc[start : doc.index("\n\n", doc.index("| --- |", start))]
    checked, wrong = 0, []
    for row in table.splitlines():
        cells = re.fullmatch(r"\| `(.+)` \| `(.+)` \|", row)
        if cells is None:  # the header, its rule, and rows that describe a frame in words
            continue
        frame, shown = cells.groups()
        try:
            decode_request(frame)
        except DecodeError as error:
            reply = error.reply()
        else:
            continue  # refused later than the decoder (e.g. a hold id that is not a UUID)
        checked += 1
        if json.loads(reply) != json.loads(shown):
            wrong.append(f"{frame}\n  document: {shown}\n  decoder:  {reply.decode()}")
    assert checked >= 10, f"only {checked} rows of the frame-check table were checked"
    assert not wrong, "PROTOCOL.md's frame-check examples are out of date:\n" + "\n".join(wrong)
