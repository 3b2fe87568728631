"""Protocol messages <-> core commands and results, and service errors -> error frames.

The only place that knows both vocabularies: the core never sees the wire format, and the
protocol package never sees the core.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from protocol import messages as wire
from protocol._validate import to_plain
from protocol.codec import RequestId, error_object, exact_bytes, format_time, parse_time
from protocol.errors import ERROR_CODES
from seatd import core
from seatd.auth import Identity
from seatd.errors import InvalidRequest, SeatdError
from seatd.runtime.ports import IdempotencyKey, NewEvent

__all__ = [
    "error_frame",
    "event_view",
    "idempotency_key",
    "new_event",
    "response_body",
    "result_to_wire",
    "to_command",
]

ActorRequest = (
    wire.HoldRequest
    | wire.Refresh
    | wire.Release
    | wire.Reserve
    | wire.ListAvailable
    | wire.GetEvent
)


def to_command(request: ActorRequest, identity: Identity) -> core.Command:
    """The core command for a request that an event's actor serves."""
    if isinstance(request, wire.HoldRequest):
        user = identity.acting_for(request.on_behalf_of)
        return core.PlaceHold(user, request.seat_ids, new_uuid())
    if isinstance(request, wire.Reserve):
        user = identity.acting_for(request.on_behalf_of)
        return core.Reserve(user, _hold_id(request.hold_id), new_uuid())
    if isinstance(request, wire.Refresh):
        return core.RefreshHold(
            identity.acting_for(request.on_behalf_of), _hold_id(request.hold_id)
        )
    if isinstance(request, wire.Release):
        return core.ReleaseHold(
            identity.acting_for(request.on_behalf_of), _hold_id(request.hold_id)
        )
    if isinstance(request, wire.ListAvailable):
        return core.ListAvailable(request.section, request.category, request.limit, request.after)
    return core.GetEvent()


class _RandomPool:
    """Operating-system randomness fetched 4 KiB at a time: one system call per 256 ids
    instead of one per id (profiling showed ~9% of the server's CPU in os.urandom)."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take16(self) -> bytearray:
        if self._offset + 16 > len(self._buffer):
            self._buffer = os.urandom(4096)
            self._offset = 0
        start = self._offset
        self._offset = start + 16
        return bytearray(self._buffer[start : start + 16])


_random = _RandomPool()
# A forked child must not hand out the ids its parent's buffer still holds.
os.register_at_fork(after_in_child=_random.reset)


def new_uuid() -> str:
    """A random (version 4) UUID string, without building a UUID object: this runs per hold."""
    raw = _random.take16()
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _hold_id(text: str) -> str:
    """Hold ids are UUIDs; normalise them so any spelling of one finds the hold."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidRequest(
            f"$.hold_id: {text[:64]!r} is not a hold id (a UUID)", details={"path": "$.hold_id"}
        ) from None


def result_to_wire(event_id: str, command: core.Command, result: core.Result) -> object:
    """The wire result for what the actor answered to ``command``."""
    if isinstance(result, core.Hold):
        return wire.HoldView(
            hold_id=result.hold_id,
            event_id=event_id,
            user_id=result.user_id,
            seat_ids=result.seat_ids,
            expires_at=format_time(result.expires_at),
            max_expires_at=format_time(result.max_expires_at),
        )
    if isinstance(result, core.Reservation):
        assert isinstance(command, core.Reserve)
        return wire.ReservationView(
            reservation_id=result.reservation_id,
            hold_id=command.hold_id,
            event_id=event_id,
            user_id=result.user_id,
            seat_ids=result.seat_ids,
            reserved_at=format_time(result.reserved_at),
        )
    if isinstance(result, core.HoldReleased):
        return wire.Released(result.hold_id, event_id, result.seat_ids)
    if isinstance(result, core.AvailableSeats):
        return wire.AvailableSeats(
            event_id=event_id,
            seats=tuple(_seat_view(seat) for seat in result.seats),
            total_available=result.total_available,
            next_after=result.next_after,
        )
    if isinstance(result, core.EventSummary):
        return event_view(
            result.info,
            hold_duration=result.hold_duration,
            max_seats_per_user=result.max_seats_per_user,
            live=result,
        )
    raise TypeError(f"no wire form for {type(result).__name__}")


def _seat_view(seat: core.Seat) -> wire.SeatView:
    return wire.SeatView(
        seat.seat_id, seat.section, seat.row, seat.category, seat.number, seat.x, seat.y
    )


def event_view(
    info: core.EventInfo,
    *,
    hold_duration: float,
    max_seats_per_user: int,
    live: core.EventSummary | None = None,
    distance_m: float | None = None,
) -> wire.EventView:
    location = info.location
    return wire.EventView(
        event_id=info.event_id,
        name=info.name,
        status="closed" if info.status == "closed" else "open",
        hold_duration_s=hold_duration,
        max_seats_per_user=max_seats_per_user,
        starts_at=format_time(info.starts_at) if info.starts_at is not None else None,
        venue=info.venue,
        location=wire.Location(location.latitude, location.longitude) if location else None,
        total_seats=live.total_seats if live else None,
        available=live.available if live else None,
        held=live.held if live else None,
        reserved=live.reserved if live else None,
        version=live.version if live else None,
        distance_m=distance_m,
    )


def new_event(request: wire.CreateEvent) -> NewEvent:
    """Validate an event description (beyond field types) and expand its seat blocks."""
    starts_at: float | None = None
    if request.starts_at is not None:
        try:
            starts_at = parse_time(request.starts_at)
            format_time(starts_at)  # must also be a time in UTC years 1-9999, as it is sent back
        except (ValueError, OverflowError) as error:
            raise InvalidRequest(f"$.starts_at: {error}", details={"path": "$.starts_at"}) from None
    # Count before building anything: a few bytes of blocks can describe millions of seats.
    total = len(request.seats) + sum(len(b.rows) * b.seats_per_row for b in request.blocks)
    if total > wire.MAX_SEATS_PER_EVENT:
        raise InvalidRequest(
            f"an event has at most {wire.MAX_SEATS_PER_EVENT} seats, this one {total}",
            details={"path": "$.blocks" if request.blocks else "$.seats"},
        )
    seats = [
        core.Seat(s.seat_id, s.section, s.row, s.number, s.category, s.x, s.y)
        for s in request.seats
    ]
    for block in request.blocks:
        for row in block.rows:
            for offset in range(block.seats_per_row):
                number = block.first_number + offset
                label = f"{block.section}-{row}-{number}" if block.section else f"{row}-{number}"
                seats.append(core.Seat(label, block.section, row, number, block.category))
    if not seats:
        raise InvalidRequest(
            "an event needs seats: give seats or blocks", details={"path": "$.seats"}
        )
    seen: set[str] = set()
    duplicates: dict[str, None] = {}  # each repeated id once, in the order first repeated
    for seat in seats:
        if seat.seat_id in seen:
            duplicates[seat.seat_id] = None
        seen.add(seat.seat_id)
    if duplicates:
        raise InvalidRequest(
            f"seat ids must be unique; repeated: {', '.join(list(duplicates)[:10])}",
            details={"path": "$.seats", "seat_ids": list(duplicates)[:100]},
        )
    location = request.location
    info = core.EventInfo(
        event_id=request.event_id or f"ev-{uuid.uuid4().hex[:16]}",
        name=request.name,
        starts_at=starts_at,
        venue=request.venue,
        location=core.Location(location.latitude, location.longitude) if location else None,
        hold_duration_s=request.hold_duration_s,
        max_seats_per_user=request.max_seats_per_user,
    )
    return NewEvent(info, tuple(seats))


def _error_object(error: SeatdError) -> dict[str, Any]:
    """The wire ``error`` object; its code must be registered in the protocol."""
    entry = ERROR_CODES[error.code]
    details: dict[str, Any] | None = error.details
    # Times travel as RFC 3339 everywhere on the wire, details included (most details have
    # none: then the dict goes as it is).
    if details and any(key.endswith("_at") for key in details):
        details = {
            key: format_time(value) if key.endswith("_at") and isinstance(value, float) else value
            for key, value in details.items()
        }
    return error_object(
        entry.code,
        error.message,
        temporary=entry.temporary,
        retry_after_ms=error.retry_after_ms,
        details=details,
    )


def error_frame(request_id: RequestId | None, request_type: str | None, error: SeatdError) -> bytes:
    """The error reply for a service error."""
    frame: dict[str, Any] = {"id": request_id, "ok": False, "error": _error_object(error)}
    if request_type is not None:
        frame["type"] = request_type
    return orjson.dumps(frame)


def idempotency_key(
    identity: Identity,
    request_type: str,
    request: Any,
    to_wire: Callable[[Any], object],
) -> IdempotencyKey | None:
    """The retry key of a mutation that carries one, scoped to the authenticated principal.

    The request hash covers every field but the key itself, so reusing a key for a different
    request is detected (``idempotency_mismatch``).
    """
    key: str | None = getattr(request, "idempotency_key", None)
    if key is None:
        return None
    fields = to_plain(request)
    assert isinstance(fields, dict)
    fields.pop("idempotency_key", None)
    digest = hashlib.blake2b(
        request_type.encode() + b"\0" + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS),
        digest_size=16,
    ).hexdigest()

    return IdempotencyKey(identity.user_id, key, digest, partial(response_body, to_wire))


def response_body(to_wire: Callable[[Any], object], outcome: object) -> bytes:
    """A reply without its ``id`` and ``type``: ``{"ok": true, "result": ...}`` or
    ``{"ok": false, "error": ...}``; stored for retries and carried back by forwarding.
    Compact (``exact_bytes``): an owner remembers thousands of them."""
    if isinstance(outcome, SeatdError):
        return exact_bytes(orjson.dumps({"ok": False, "error": _error_object(outcome)}))
    return exact_bytes(orjson.dumps({"ok": True, "result": to_plain(to_wire(outcome))}))
