"""Errors the service raises, each with a wire code and whether a retry can succeed.

Every user-caused failure is one of these, so the gateway can always answer with a clear error
reply; anything else is a bug and becomes ``internal_error``. The codes are registered in
``protocol.errors.ERROR_CODES`` (a test keeps the two in step).

    SeatdError
    ├── RequestError                 the request cannot succeed as sent (temporary = False)
    │   ├── InvalidRequest           invalid_request
    │   ├── Unauthenticated          unauthenticated
    │   ├── Forbidden                forbidden
    │   ├── EventNotFound            event_not_found
    │   ├── EventExists              event_exists
    │   ├── EventClosed              event_closed
    │   ├── UnknownSeat              unknown_seat
    │   ├── SeatUnavailable          seat_unavailable
    │   ├── SeatLimitExceeded        seat_limit_exceeded
    │   ├── HoldNotFound             hold_not_found
    │   ├── HoldExpired              hold_expired
    │   ├── HoldLifetimeExceeded     hold_lifetime_exceeded
    │   ├── IdempotencyMismatch      idempotency_mismatch
    │   └── TooManySubscriptions     too_many_subscriptions
    └── TemporaryError               retrying later can succeed (temporary = True)
        ├── InternalFault            internal_error (a caught bug; nothing was kept)
        ├── StoreUnavailable         unavailable
        ├── Overloaded               overloaded
        ├── RateLimited              rate_limited (retry_after_ms: when a token is free)
        ├── TooManyConnections       too_many_connections
        ├── ShuttingDown             shutting_down
        ├── OwnedElsewhere           unavailable (another instance serves the event)
        └── OwnershipLost            unavailable (this instance lost the event; retry)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "EventClosed",
    "EventExists",
    "EventNotFound",
    "Forbidden",
    "HoldExpired",
    "HoldLifetimeExceeded",
    "HoldNotFound",
    "IdempotencyMismatch",
    "InternalFault",
    "InvalidRequest",
    "Overloaded",
    "OwnedElsewhere",
    "OwnershipLost",
    "RateLimited",
    "RequestError",
    "SeatLimitExceeded",
    "SeatUnavailable",
    "SeatdError",
    "ShuttingDown",
    "StoreUnavailable",
    "TemporaryError",
    "TooManyConnections",
    "TooManySubscriptions",
    "Unauthenticated",
    "UnknownSeat",
]


class SeatdError(Exception):
    """Base of all expected failures: carries the wire code, a message and details."""

    code: ClassVar[str] = "internal_error"
    temporary: ClassVar[bool] = True
    default_retry_after_ms: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after_ms = (
            retry_after_ms if retry_after_ms is not None else self.default_retry_after_ms
        )


class RequestError(SeatdError):
    """The request cannot succeed as sent; retrying it unchanged is pointless."""

    temporary = False


class InvalidRequest(RequestError):
    code = "invalid_request"


class Unauthenticated(RequestError):
    code = "unauthenticated"


class Forbidden(RequestError):
    code = "forbidden"


class EventNotFound(RequestError):
    code = "event_not_found"


class EventExists(RequestError):
    code = "event_exists"


class EventClosed(RequestError):
    code = "event_closed"


class UnknownSeat(RequestError):
    code = "unknown_seat"


class SeatUnavailable(RequestError):
    code = "seat_unavailable"


class SeatLimitExceeded(RequestError):
    code = "seat_limit_exceeded"


class HoldNotFound(RequestError):
    code = "hold_not_found"


class HoldExpired(RequestError):
    code = "hold_expired"


class HoldLifetimeExceeded(RequestError):
    code = "hold_lifetime_exceeded"


class IdempotencyMismatch(RequestError):
    code = "idempotency_mismatch"


class TooManySubscriptions(RequestError):
    code = "too_many_subscriptions"


class TemporaryError(SeatdError):
    """Nothing was changed; the same request may succeed later."""

    temporary = True


class InternalFault(TemporaryError):
    """A server bug, caught: nothing of the failed batch was kept; a retry is safe."""

    code = "internal_error"
    default_retry_after_ms = 100


class StoreUnavailable(TemporaryError):
    code = "unavailable"
    default_retry_after_ms = 500


class Overloaded(TemporaryError):
    code = "overloaded"
    default_retry_after_ms = 200


class RateLimited(TemporaryError):
    code = "rate_limited"
    default_retry_after_ms = 100


class TooManyConnections(TemporaryError):
    code = "too_many_connections"
    default_retry_after_ms = 5000


class ShuttingDown(TemporaryError):
    code = "shutting_down"
    default_retry_after_ms = 1000


class OwnedElsewhere(TemporaryError):
    """Another instance serves this event (its lease is held elsewhere): ``owner`` names it,
    so the gateway can forward the command there."""

    code = "unavailable"
    default_retry_after_ms = 200

    def __init__(self, message: str, *, owner: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.owner = owner


class OwnershipLost(TemporaryError):
    """Another instance now owns the event; a retry is routed to the new owner."""

    code = "unavailable"
    default_retry_after_ms = 100
