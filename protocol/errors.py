"""The error codes and close codes of the seatd wire protocol, and the client's exception tree.

Every error reply carries ``{code, message, temporary, retry_after_ms?, details?}``. ``temporary``
tells a client whether retrying the same request (with the same idempotency key) can succeed;
clients retry only temporary errors. The registry below is the single source of truth: the
server refuses to send a code that is not registered here, and PROTOCOL.md documents each one.

Client exception tree::

    RemoteError                      an error reply from the server
    ├── PermanentError               retrying the same request cannot help
    │   ├── InvalidRequestError      invalid_json, invalid_request, unknown_type
    │   ├── NotFoundError            event_not_found, unknown_seat, hold_not_found
    │   ├── ConflictError            seat_unavailable, event_exists, hold_expired, ...
    │   └── AccessError              unauthenticated, forbidden
    └── TemporaryError               retry later (honour retry_after_ms)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

__all__ = [
    "ERROR_CODES",
    "AccessError",
    "CloseCode",
    "ConflictError",
    "ErrorCode",
    "InvalidRequestError",
    "NotFoundError",
    "PermanentError",
    "RemoteError",
    "TemporaryError",
    "error_class_for",
]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One registered error code: its name, whether it is temporary, and what it means."""

    code: str
    temporary: bool
    meaning: str


_REGISTRY: tuple[ErrorCode, ...] = (
    # The frame or request itself is wrong.
    ErrorCode("invalid_json", False, "The frame is not a JSON object (or not UTF-8 text)."),
    ErrorCode(
        "invalid_request",
        False,
        "A field is missing, unknown, of the wrong type or out of range; details.path names it.",
    ),
    ErrorCode("unknown_type", False, "The request type is not one of the protocol's types."),
    # Identity and permission.
    ErrorCode("unauthenticated", False, "No valid token: connect again with a fresh token."),
    ErrorCode(
        "forbidden",
        False,
        "The token's role may not do this (or the hold belongs to someone else).",
    ),
    # Things that do not exist.
    ErrorCode("event_not_found", False, "No event has this id."),
    ErrorCode(
        "unknown_seat",
        False,
        "One or more seat ids do not exist in this event; details.seat_ids lists them.",
    ),
    ErrorCode(
        "hold_not_found",
        False,
        "No live hold has this id (it was released, reserved, or never existed).",
    ),
    # Conflicts with the current state.
    ErrorCode("event_exists", False, "An event with this id already exists."),
    ErrorCode("event_closed", False, "The event no longer accepts holds."),
    ErrorCode(
        "seat_unavailable",
        False,
        "Some requested seats are held or reserved; details.conflicts lists each seat and why. Nothing was held.",
    ),
    ErrorCode(
        "seat_limit_exceeded",
        False,
        "The hold would take the user past the per-user seat limit of the event; details says by how much.",
    ),
    ErrorCode(
        "hold_expired", False, "The hold expired before this request; its seats are free again."
    ),
    ErrorCode(
        "hold_lifetime_exceeded",
        False,
        "The hold already reached its maximum lifetime and cannot be extended further.",
    ),
    ErrorCode(
        "too_many_subscriptions",
        False,
        "The connection has the most subscriptions allowed; unsubscribe first or use another connection.",
    ),
    ErrorCode(
        "idempotency_mismatch",
        False,
        "The idempotency key was used before with different parameters.",
    ),
    # Temporary conditions: retry the same request later.
    ErrorCode(
        "unavailable",
        True,
        "The database is unavailable or did not confirm the change: it may or may not have been applied. Retry after retry_after_ms with the same idempotency_key, which makes the retry safe.",
    ),
    ErrorCode(
        "overloaded",
        True,
        "The server sheds load; nothing was changed. Retry after retry_after_ms.",
    ),
    ErrorCode("rate_limited", True, "Too many requests; retry after retry_after_ms."),
    ErrorCode(
        "too_many_connections",
        True,
        "This user has too many connections open; close one, or retry after retry_after_ms.",
    ),
    ErrorCode(
        "shutting_down",
        True,
        "The server is shutting down; reconnect (possibly to another instance) and retry.",
    ),
    ErrorCode(
        "internal_error",
        True,
        "An unexpected server fault; nothing acknowledged was lost. Retry with the same idempotency key.",
    ),
)

ERROR_CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _REGISTRY}


class CloseCode(IntEnum):
    """WebSocket close codes: 1xxx standard, 4000-4499 reconnect and resume, 4500-4999 terminal."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007  # a text frame that is not UTF-8
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # Reconnect and resume.
    SLOW_CONSUMER = 4000
    TOKEN_EXPIRED = 4001
    # Terminal: fix the client or its credentials before reconnecting.
    PROTOCOL_VIOLATION = 4500
    UNAUTHENTICATED = 4501
    FORBIDDEN = 4503


class RemoteError(Exception):
    """An error reply from the server, raised by the client SDK."""

    temporary = False

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after_ms: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.details = details or {}


class PermanentError(RemoteError):
    """Retrying the same request cannot succeed."""


class TemporaryError(RemoteError):
    """The request may succeed if retried later."""

    temporary = True


class InvalidRequestError(PermanentError):
    """The request was malformed; details.path names the offending field."""


class NotFoundError(PermanentError):
    """The event, seat or hold named does not exist."""


class ConflictError(PermanentError):
    """The request conflicts with the current state (seats taken, hold expired, ...)."""


class AccessError(PermanentError):
    """The connection's identity may not do this."""


_CLASS_BY_CODE: dict[str, type[RemoteError]] = {
    "invalid_json": InvalidRequestError,
    "invalid_request": InvalidRequestError,
    "unknown_type": InvalidRequestError,
    "unauthenticated": AccessError,
    "forbidden": AccessError,
    "event_not_found": NotFoundError,
    "unknown_seat": NotFoundError,
    "hold_not_found": NotFoundError,
}


def error_class_for(code: str) -> type[RemoteError]:
    """The exception class a client raises for an error code (unknown codes by their flag)."""
    cls = _CLASS_BY_CODE.get(code)
    if cls is not None:
        return cls
    entry = ERROR_CODES.get(code)
    if entry is not None and entry.temporary:
        return TemporaryError
    return ConflictError if entry is not None else PermanentError
