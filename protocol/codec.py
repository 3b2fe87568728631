"""JSON frames <-> protocol messages. Pure functions; orjson does the JSON.

A request frame is ``{"id": <string or integer>, "type": "<type>", ...fields}``. Decoding checks
the envelope, then the fields against the request's dataclass; any problem becomes a
``DecodeError`` naming the error code, the offending field (``details.path``) and, when the
frame had a usable ``id``, that id, so the error reply can be matched to the request.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from protocol._validate import ValidationError, decoder, to_plain
from protocol.messages import REQUEST_TYPES, Request

__all__ = [
    "DecodeError",
    "RequestId",
    "decode_request",
    "encode_error",
    "encode_push",
    "encode_request",
    "encode_result",
    "encode_stored_reply",
    "error_object",
    "exact_bytes",
    "format_time",
    "parse_time",
]

RequestId = str | int
_ENVELOPE = frozenset({"id", "type"})
_DECODERS = {name: decoder(cls, ignore=_ENVELOPE) for name, cls in REQUEST_TYPES.items()}
_INT64 = 2**63


class DecodeError(ValueError):
    """A frame that cannot be served; carries what the error reply needs."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: RequestId | None = None,
        request_type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.request_type = request_type
        self.details = details

    def reply(self) -> bytes:
        """The error frame that answers the refused frame (PROTOCOL.md, frame checks)."""
        return encode_error(
            self.request_id,
            self.request_type,
            self.code,
            self.message,
            temporary=False,
            details=self.details,
        )


def _request_id(value: object) -> RequestId | None:
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
        return value
    return None


def decode_request(frame: str | bytes) -> tuple[RequestId, str, Request]:
    """Parse and validate one request frame."""
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as error:
        raise DecodeError("invalid_json", f"the frame is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DecodeError("invalid_json", "a request must be a JSON object")
    raw_id = data.get("id")
    request_id = _request_id(raw_id)
    raw_type = data.get("type")
    if request_id is None:
        if "id" not in data:
            problem = "is missing"
        elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
            problem = "must be an integer in the signed 64-bit range"
        else:
            problem = "must be a non-empty string (at most 64 characters) or an integer"
        raise DecodeError(
            "invalid_request",
            f"$.id {problem}",
            request_type=raw_type
            if isinstance(raw_type, str) and raw_type in REQUEST_TYPES
            else None,
            details={"path": "$.id"},
        )
    if not isinstance(raw_type, str):
        raise DecodeError(
            "invalid_request",
            "$.type must be a string naming the request",
            request_id=request_id,
            details={"path": "$.type", "types": sorted(REQUEST_TYPES)},
        )
    decode = _DECODERS.get(raw_type)
    if decode is None:
        raise DecodeError(
            "unknown_type",
            f"unknown request type {raw_type[:64]!r}",
            request_id=request_id,
            details={"types": sorted(REQUEST_TYPES)},
        )
    try:
        message = decode(data)
    except ValidationError as error:
        raise DecodeError(
            "invalid_request",
            str(error),
            request_id=request_id,
            request_type=raw_type,
            details={"path": error.path, "reason": error.reason},
        ) from None
    return request_id, raw_type, message


def encode_request(request_id: RequestId, request_type: str, message: object) -> bytes:
    """A request frame (the SDK's side)."""
    body = to_plain(message)
    assert isinstance(body, dict)
    return orjson.dumps({"id": request_id, "type": request_type, **body})


def encode_result(request_id: RequestId, request_type: str, result: object) -> bytes:
    return orjson.dumps(
        {"id": request_id, "type": request_type, "ok": True, "result": to_plain(result)}
    )


def error_object(
    code: str,
    message: str,
    *,
    temporary: bool,
    retry_after_ms: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``error`` member of a failed reply."""
    error: dict[str, Any] = {"code": code, "message": message, "temporary": temporary}
    if retry_after_ms is not None:
        error["retry_after_ms"] = retry_after_ms
    if details:
        error["details"] = details
    return error


def encode_error(
    request_id: RequestId | None,
    request_type: str | None,
    code: str,
    message: str,
    *,
    temporary: bool,
    retry_after_ms: int | None = None,
    details: dict[str, Any] | None = None,
) -> bytes:
    error = error_object(
        code, message, temporary=temporary, retry_after_ms=retry_after_ms, details=details
    )
    frame: dict[str, Any] = {"id": request_id, "ok": False, "error": error}
    if request_type is not None:
        frame["type"] = request_type
    return orjson.dumps(frame)


def encode_stored_reply(request_id: RequestId, request_type: str, response: bytes) -> bytes:
    """A reply frame around a stored ``{"ok": ..., ...}`` response (idempotent replays)."""
    return b"".join(
        (
            b'{"id":',
            orjson.dumps(request_id),
            b',"type":',
            orjson.dumps(request_type),
            b",",
            response[1:],
        )
    )


def exact_bytes(data: bytes) -> bytes:
    """A copy of ``data`` that occupies its length, for output that is kept (stored replies,
    push history). orjson's output keeps the buffer it was written into: ~4 KiB however short,
    so 20,000 remembered replies took 80 MB instead of 4."""
    return bytes(memoryview(data))


def encode_push(push_type: str, message: object) -> bytes:
    body = to_plain(message)
    assert isinstance(body, dict)
    return orjson.dumps({"type": push_type, **body})


def format_time(seconds: float) -> str:
    """POSIX seconds -> RFC 3339 UTC with milliseconds.

    Exactly ``datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")`` with
    ``Z`` (microseconds rounded half to even, then truncated to milliseconds). Every reply to a
    hold carries two times, and the holds of one batch share them (one clock reading per
    batch): the text of the last few hundred times is kept (formatting was ~2.6% of the
    server's CPU in a closed loop, a lookup is a tenth of that)."""
    text = _FORMATTED.get(seconds)
    if text is None:
        text = _format_time(seconds)
        if len(_FORMATTED) >= 512:
            _FORMATTED.clear()
        _FORMATTED[seconds] = text
    return text


def _format_time(seconds: float) -> str:
    """``format_time`` itself; the date and time of day are made once per second, as the
    times of one moment fall in a few seconds (a datetime each was ~2% of the server's CPU)."""
    frac, whole_float = math.modf(seconds)
    whole = int(whole_float)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1
        micros += 1_000_000
    prefix = _SECONDS.get(whole)
    if prefix is None:
        if len(_SECONDS) >= 256:  # a few seconds are in use at a time (now, now + a hold)
            _SECONDS.clear()
        prefix = _SECONDS[whole] = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[
            :-6
        ]
    return f"{prefix}.{micros // 1000:03d}Z"


_SECONDS: dict[int, str] = {}  # POSIX second -> "YYYY-MM-DDTHH:MM:SS"
_FORMATTED: dict[float, str] = {}  # POSIX seconds -> format_time(them), the last few hundred


# RFC 3339's date-time. datetime.fromisoformat also reads other ISO 8601 forms (basic format,
# week dates, no seconds, "+0100"), which the protocol does not accept.
_RFC_3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)


def parse_time(text: str) -> float:
    """RFC 3339 (with offset, or Z) -> POSIX seconds; ValueError otherwise."""
    if _RFC_3339.match(text) is None:
        raise ValueError("not an RFC 3339 time with an offset, e.g. 2026-12-01T19:30:00Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
