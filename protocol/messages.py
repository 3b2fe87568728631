"""Every message of the seatd.v1 protocol as a frozen, slotted dataclass.

Requests travel as ``{"id": ..., "type": "<type>", ...fields}``; the fields are the dataclass
fields below and are validated strictly (unknown fields are refused). Results and pushes are
encoded from the result classes, so the JSON Schema beside PROTOCOL.md is generated from the
same definitions the server and the SDK use.

Times on the wire are RFC 3339 UTC strings with milliseconds (``2026-11-27T18:00:00.000Z``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from protocol._validate import spec

__all__ = [
    "EVENT_ID_PATTERN",
    "MAX_SEATS_PER_EVENT",
    "MAX_SEATS_PER_HOLD",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "Authenticate",
    "Authenticated",
    "Availability",
    "AvailableSeats",
    "CreateEvent",
    "EventPage",
    "EventView",
    "GetEvent",
    "GoAway",
    "HoldExpired",
    "HoldExpiring",
    "HoldRequest",
    "HoldView",
    "ListAvailable",
    "ListEvents",
    "Location",
    "Ping",
    "Pong",
    "Refresh",
    "Release",
    "Released",
    "Request",
    "ReservationView",
    "Reserve",
    "SeatBlock",
    "SeatChange",
    "SeatSpec",
    "SeatView",
    "Subscribe",
    "Subscribed",
    "TokenExpiring",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
]

PROTOCOL_VERSION = "seatd.v1"
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_SEATS_PER_HOLD = 100
MAX_SEATS_PER_EVENT = 100_000
_LABEL = r"^[^\x00-\x1f\x7f]*$"  # printable: no control characters
_ID: dict[str, Any] = dict(min_len=1, max_len=64, pattern=r"^[^\x00-\x1f\x7f]+$")

# --- shared shapes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float = spec(ge=-90, le=90)
    longitude: float = spec(ge=-180, le=180)


@dataclass(frozen=True, slots=True)
class SeatSpec:
    """One seat as an organiser describes it."""

    seat_id: str = spec(**_ID, description="Label unique within the event, e.g. 'A-12'.")
    section: str = spec(default="", max_len=64, pattern=_LABEL)
    row: str = spec(default="", max_len=16, pattern=_LABEL)
    number: int | None = spec(default=None, ge=0, le=1_000_000)
    category: str = spec(default="", max_len=64, pattern=_LABEL)
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True, slots=True)
class SeatBlock:
    """Rows of numbered seats, expanded by the server to ids '<section>-<row>-<number>'."""

    rows: tuple[str, ...] = spec(
        min_items=1,
        max_items=500,
        unique=True,
        item=dict(min_len=1, max_len=16, pattern=r"^[A-Za-z0-9]+$"),
    )
    seats_per_row: int = spec(ge=1, le=1000)
    section: str = spec(default="", max_len=32, pattern=r"^[A-Za-z0-9]*$")
    category: str = spec(default="", max_len=64, pattern=_LABEL)
    first_number: int = spec(default=1, ge=0, le=100_000)


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Application-level keep-alive (browsers cannot see WebSocket pings)."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Present a token in band: the first message of a connection opened without one, or a
    fresh token for the same user and role before the current one expires."""

    token: str = spec(min_len=1, max_len=4096)


@dataclass(frozen=True, slots=True)
class CreateEvent:
    name: str = spec(min_len=1, max_len=200, pattern=_LABEL)
    event_id: str | None = spec(
        default=None, pattern=EVENT_ID_PATTERN, description="Chosen by the server when absent."
    )
    starts_at: str | None = spec(default=None, max_len=40, description="RFC 3339 time with offset.")
    venue: str | None = spec(default=None, max_len=200, pattern=_LABEL)
    location: Location | None = None
    hold_duration_s: int | None = spec(default=None, ge=1, le=86400)
    max_seats_per_user: int | None = spec(default=None, ge=1, le=10000)
    seats: tuple[SeatSpec, ...] = spec(default=(), max_items=MAX_SEATS_PER_EVENT)
    blocks: tuple[SeatBlock, ...] = spec(default=(), max_items=200)
    idempotency_key: str | None = spec(default=None, min_len=1, max_len=128, pattern=_LABEL)


@dataclass(frozen=True, slots=True)
class GetEvent:
    event_id: str = spec(pattern=EVENT_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class ListEvents:
    near: Location | None = None
    radius_m: float | None = spec(default=None, ge=1, le=20_037_509)
    limit: int = spec(default=50, ge=1, le=200)
    after: str | None = spec(default=None, pattern=EVENT_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    event_id: str = spec(pattern=EVENT_ID_PATTERN)
    seat_ids: tuple[str, ...] = spec(
        min_items=1, max_items=MAX_SEATS_PER_HOLD, unique=True, item=_ID
    )
    on_behalf_of: str | None = spec(default=None, min_len=1, max_len=128, pattern=_LABEL)
    idempotency_key: str | None = spec(default=None, min_len=1, max_len=128, pattern=_LABEL)


@dataclass(frozen=True, slots=True)
class _HoldCommand:
    event_id: str = spec(pattern=EVENT_ID_PATTERN)
    hold_id: str = spec(min_len=1, max_len=64)
    on_behalf_of: str | None = spec(default=None, min_len=1, max_len=128, pattern=_LABEL)
    idempotency_key: str | None = spec(default=None, min_len=1, max_len=128, pattern=_LABEL)


@dataclass(frozen=True, slots=True)
class Refresh(_HoldCommand):
    """Extend a live hold by the event's hold duration (up to its maximum lifetime)."""


@dataclass(frozen=True, slots=True)
class Release(_HoldCommand):
    """Give a hold's seats back."""


@dataclass(frozen=True, slots=True)
class Reserve(_HoldCommand):
    """Confirm every seat of a live hold."""


@dataclass(frozen=True, slots=True)
class ListAvailable:
    event_id: str = spec(pattern=EVENT_ID_PATTERN)
    section: str | None = spec(default=None, max_len=64)
    category: str | None = spec(default=None, max_len=64)
    limit: int = spec(default=1000, ge=1, le=5000)
    after: str | None = spec(default=None, min_len=1, max_len=64)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Watch an event's availability: a snapshot (or the missed changes) now, then deltas."""

    event_id: str = spec(pattern=EVENT_ID_PATTERN)
    since_version: int | None = spec(
        default=None, ge=0, description="Last version seen, to resume."
    )


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    event_id: str = spec(pattern=EVENT_ID_PATTERN)


Request = (
    Ping
    | Authenticate
    | CreateEvent
    | GetEvent
    | ListEvents
    | HoldRequest
    | Refresh
    | Release
    | Reserve
    | ListAvailable
    | Subscribe
    | Unsubscribe
)

REQUEST_TYPES: dict[str, type[Request]] = {
    "ping": Ping,
    "authenticate": Authenticate,
    "create_event": CreateEvent,
    "get_event": GetEvent,
    "list_events": ListEvents,
    "hold": HoldRequest,
    "refresh": Refresh,
    "release": Release,
    "reserve": Reserve,
    "list_available": ListAvailable,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
}

# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong:
    server_time: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    user_id: str
    role: Literal["admin", "agent", "user"]
    token_expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class SeatView:
    seat_id: str
    section: str
    row: str
    category: str
    number: int | None = None
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True, slots=True)
class EventView:
    event_id: str
    name: str
    status: Literal["open", "closed"]
    hold_duration_s: float
    max_seats_per_user: int
    starts_at: str | None = None
    venue: str | None = None
    location: Location | None = None
    # Live figures, present when the event's state was consulted (get_event, create_event).
    total_seats: int | None = None
    available: int | None = None
    held: int | None = None
    reserved: int | None = None
    version: int | None = None
    # Present in list_events results near a point.
    distance_m: float | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: tuple[EventView, ...]
    next_after: str | None = None


@dataclass(frozen=True, slots=True)
class HoldView:
    hold_id: str
    event_id: str
    user_id: str
    seat_ids: tuple[str, ...]
    expires_at: str
    max_expires_at: str


@dataclass(frozen=True, slots=True)
class Released:
    hold_id: str
    event_id: str
    seat_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReservationView:
    reservation_id: str
    hold_id: str
    event_id: str
    user_id: str
    seat_ids: tuple[str, ...]
    reserved_at: str


@dataclass(frozen=True, slots=True)
class AvailableSeats:
    event_id: str
    seats: tuple[SeatView, ...]
    total_available: int
    next_after: str | None = None


@dataclass(frozen=True, slots=True)
class SeatChange:
    """A seat's new state; ``expires_at`` is the hold's expiry when the state is held."""

    seat_id: str
    state: Literal["available", "held", "reserved"]
    expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    """Committed changes of an event's seats, versions ``from_version`` to ``version``: each
    seat changed in that range appears once, in its state at ``version``. A client at version
    ``v`` applies a delta whose ``from_version <= v + 1`` and is then at ``version``; a delta
    starting later means something was missed: resubscribe with ``since_version = v``."""

    event_id: str
    from_version: int
    version: int
    changes: tuple[SeatChange, ...]


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The subscribe result. ``mode`` snapshot: ``held`` and ``reserved`` list every unavailable
    seat at ``version`` (all other seats are available). ``mode`` resume: ``deltas`` are the
    changes after ``since_version`` up to ``version``, in order. Live deltas follow."""

    event_id: str
    version: int
    mode: Literal["snapshot", "resume"]
    total_seats: int
    held: tuple[SeatChange, ...] = ()
    reserved: tuple[str, ...] = ()
    deltas: tuple[Availability, ...] = ()


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    event_id: str


# --- pushes (no id) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldExpiring:
    """Sent to the connection that made (or last refreshed) a hold, shortly before it expires."""

    event_id: str
    hold_id: str
    seat_ids: tuple[str, ...]
    expires_at: str


@dataclass(frozen=True, slots=True)
class HoldExpired:
    """Sent to the connection that made (or last refreshed) a hold when it expired."""

    event_id: str
    hold_id: str
    seat_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Welcome:
    """First frame on every connection."""

    protocol: str
    session_id: str
    user_id: str
    role: Literal["admin", "agent", "user"]
    server_time: str
    max_frame_bytes: int
    max_inflight: int
    max_seats_per_hold: int
    token_expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class TokenExpiring:
    """Sent before the connection's token expires: send ``authenticate`` with a fresh token,
    or the connection is closed with 4001 at ``expires_at``."""

    expires_at: str


@dataclass(frozen=True, slots=True)
class GoAway:
    """Sent before the server closes the connection on purpose (shutdown, restart)."""

    reason: str
    reconnect: bool
