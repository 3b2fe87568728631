"""One JSON Schema (draft 2020-12) for every frame of ``seatd.v1``, in both directions.

Why one generated document: client authors (and our own tests) need a machine-checkable
contract for whole frames, envelopes included, not just the field tables of PROTOCOL.md. It is
built from the same dataclasses the server decodes and encodes with, so it cannot drift from the
code; ``protocol/seatd.v1.schema.json`` is the committed copy, regenerated with::

    python -m protocol.schema           # rewrite the file
    python -m protocol.schema --check   # exit 1 if the file is stale

Server frames are described strictly (``additionalProperties: false``) so that a test can catch
the server sending anything undocumented; clients should still ignore unknown keys, as
PROTOCOL.md asks, so that the server may add fields within ``seatd.v1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from protocol import messages as wire
from protocol._validate import INT64_MAX, INT64_MIN, to_json_schema
from protocol.errors import ERROR_CODES

__all__ = [
    "PUSH_TYPES",
    "RESULT_TYPES",
    "SCHEMA_ID",
    "SCHEMA_PATH",
    "build_schema",
    "client_frame_schema",
    "main",
    "render",
    "server_frame_schema",
]

SCHEMA_ID: Final = "https://seatd.example/schemas/seatd.v1.json"
SCHEMA_PATH: Final = Path(__file__).resolve().with_name("seatd.v1.schema.json")
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# The result class that answers each request type (as the gateway encodes it).
RESULT_TYPES: Final[dict[str, type]] = {
    "ping": wire.Pong,
    "authenticate": wire.Authenticated,
    "create_event": wire.EventView,
    "get_event": wire.EventView,
    "list_events": wire.EventPage,
    "hold": wire.HoldView,
    "refresh": wire.HoldView,
    "release": wire.Released,
    "reserve": wire.ReservationView,
    "list_available": wire.AvailableSeats,
    "subscribe": wire.Subscribed,
    "unsubscribe": wire.Unsubscribed,
}

# Frames the server sends without a request: ``{"type": <key>, ...fields}``.
PUSH_TYPES: Final[dict[str, type]] = {
    "welcome": wire.Welcome,
    "goaway": wire.GoAway,
    "availability": wire.Availability,
    "hold_expiring": wire.HoldExpiring,
    "hold_expired": wire.HoldExpired,
    "token_expiring": wire.TokenExpiring,
}

_REQUEST_ID: Final[dict[str, Any]] = {
    "description": "Chosen by the client and copied into the reply.",
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64},
        {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
    ],
}

_DESCRIPTION: Final = (
    "Every frame of the seatd.v1 WebSocket protocol (subprotocol 'seatd.v1'). A frame is either "
    "a client frame (a request: {id, type, ...fields}) or a server frame (a reply to a request: "
    "{id, type, ok: true, result} or {id, type?, ok: false, error}; or a push: {type, ...fields} "
    "with no id). Generated from the protocol package's dataclasses by 'python -m "
    "protocol.schema'; PROTOCOL.md explains the meaning of each frame. Server frames are described "
    "exactly, but clients should ignore keys they do not know."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


class _Defs:
    """Collects named sub-schemas; a name defined twice must mean the same schema."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def put(self, name: str, schema: Mapping[str, Any]) -> dict[str, str]:
        earlier = self.defs.setdefault(name, dict(schema))
        if earlier != schema:
            raise ValueError(f"two different schemas are named {name!r}")
        return _ref(name)

    def put_class(
        self,
        name: str,
        cls: type,
        *,
        extra_properties: Mapping[str, Any] | None = None,
        extra_required: Sequence[str] = (),
        title: str | None = None,
    ) -> dict[str, str]:
        """The dataclass's schema as ``$defs[name]``, its nested classes beside it."""
        schema = to_json_schema(
            cls, extra_properties=extra_properties, extra_required=extra_required
        )
        del schema["$schema"]
        for nested, body in schema.pop("$defs", {}).items():
            self.put(nested, body)
        if title is not None:
            schema["title"] = title
        return self.put(name, schema)


def _error_schema() -> dict[str, Any]:
    codes = list(ERROR_CODES)
    return {
        "title": "Error",
        "description": (
            "The error member of a failed reply. 'temporary' is fixed by the code: true means "
            "the same request may succeed if retried later (after retry_after_ms when given)."
        ),
        "type": "object",
        "properties": {
            "code": {"type": "string", "enum": codes},
            "message": {"type": "string", "description": "For people; do not parse it."},
            "temporary": {"type": "boolean"},
            "retry_after_ms": {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
            "details": {"type": "object", "description": "Code-specific data (PROTOCOL.md)."},
        },
        "required": ["code", "message", "temporary"],
        "additionalProperties": False,
        # Each registered code comes with its own 'temporary' flag.
        "oneOf": [
            {
                "properties": {
                    "code": {"const": entry.code},
                    "temporary": {"const": entry.temporary},
                }
            }
            for entry in ERROR_CODES.values()
        ],
    }


def build_schema() -> dict[str, Any]:
    """The whole protocol as one schema document: ``oneOf`` client frame / server frame."""
    if RESULT_TYPES.keys() != wire.REQUEST_TYPES.keys():
        raise ValueError("RESULT_TYPES must name a result for every request type")
    defs = _Defs()
    defs.put("RequestId", _REQUEST_ID)

    requests = []
    for name, cls in wire.REQUEST_TYPES.items():
        envelope = {"id": _ref("RequestId"), "type": {"const": name}}
        requests.append(
            defs.put_class(
                f"request.{name}",
                cls,
                extra_properties=envelope,
                extra_required=("id", "type"),
                title=f"{name} request",
            )
        )

    replies = []
    for name, cls in RESULT_TYPES.items():
        result = defs.put_class(cls.__name__, cls)
        reply = {
            "title": f"{name} reply",
            "type": "object",
            "properties": {
                "id": _ref("RequestId"),
                "type": {"const": name},
                "ok": {"const": True},
                "result": result,
            },
            "required": ["id", "type", "ok", "result"],
            "additionalProperties": False,
        }
        replies.append(defs.put(f"reply.{name}", reply))

    defs.put("Error", _error_schema())
    error_reply = defs.put(
        "reply.error",
        {
            "title": "error reply",
            "description": (
                "id is null when the frame had no usable id; type is the frame's type when it "
                "was a string (absent otherwise, and for unknown_type)."
            ),
            "type": "object",
            "properties": {
                "id": {"anyOf": [_ref("RequestId"), {"type": "null"}]},
                "type": {"type": "string"},
                "ok": {"const": False},
                "error": _ref("Error"),
            },
            "required": ["id", "ok", "error"],
            "additionalProperties": False,
        },
    )

    pushes = [
        defs.put_class(
            f"push.{name}",
            cls,
            extra_properties={"type": {"const": name}},
            extra_required=("type",),
            title=f"{name} push",
        )
        for name, cls in PUSH_TYPES.items()
    ]

    defs.put(
        "ClientFrame",
        {
            "title": "client frame",
            "description": "A request, discriminated by type.",
            "oneOf": requests,
        },
    )
    defs.put(
        "ServerFrame",
        {
            "title": "server frame",
            "description": "A reply (ok true, per request type; or ok false) or a push (no id).",
            "oneOf": [*replies, error_reply, *pushes],
        },
    )
    return {
        "$schema": _DIALECT,
        "$id": SCHEMA_ID,
        "title": f"{wire.PROTOCOL_VERSION} frames",
        "description": _DESCRIPTION,
        "oneOf": [_ref("ClientFrame"), _ref("ServerFrame")],
        "$defs": dict(sorted(defs.defs.items())),
    }


def _frame_schema(root: str) -> dict[str, Any]:
    full = build_schema()
    return {
        "$schema": _DIALECT,
        "title": full["$defs"][root]["title"],
        "$ref": f"#/$defs/{root}",
        "$defs": full["$defs"],
    }


def client_frame_schema() -> dict[str, Any]:
    """A standalone schema for what a client may send (any one request frame)."""
    return _frame_schema("ClientFrame")


def server_frame_schema() -> dict[str, Any]:
    """A standalone schema for what the server sends (any reply or push)."""
    return _frame_schema("ServerFrame")


def render() -> str:
    """The committed file's exact text: sorted keys, indent 2, trailing newline."""
    return json.dumps(build_schema(), sort_keys=True, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, verify) ``protocol/seatd.v1.schema.json``."""
    parser = argparse.ArgumentParser(prog="python -m protocol.schema", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH, help="where to write")
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            print(f"{output} is stale: run python -m protocol.schema", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
