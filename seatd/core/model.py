"""Value types of the seat domain. Times are POSIX seconds (floats): the core never reads a clock."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "EVENT_STATUSES",
    "EventInfo",
    "Hold",
    "HoldEndReason",
    "Location",
    "Policy",
    "Reservation",
    "Seat",
    "SeatState",
]


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float


class Seat(NamedTuple):
    """A seat of an event; immutable once the event exists.

    A NamedTuple where the other records here are frozen dataclasses: an event's seats are
    built by the hundred thousand when it loads, and a frozen dataclass's ``__init__`` costs
    four times a tuple's (2 µs a seat on a 2-core machine: 0.2 s of a stadium's load)."""

    seat_id: str
    section: str = ""
    row: str = ""
    number: int | None = None
    category: str = ""
    x: float | None = None
    y: float | None = None


# "closed": no new holds (an operator's `seatd close-event`); what is held or reserved stays.
EVENT_STATUSES = ("open", "closed")


@dataclass(frozen=True, slots=True)
class EventInfo:
    """An event's descriptive data. ``None`` limits mean "use the service default"."""

    event_id: str
    name: str
    starts_at: float | None = None
    venue: str | None = None
    location: Location | None = None
    hold_duration_s: int | None = None
    max_seats_per_user: int | None = None
    status: str = "open"


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules in force for one event: the service defaults with the event's overrides applied."""

    hold_duration: float
    max_seats_per_user: int
    # A hold can never live longer than this in total, however often it is refreshed.
    max_hold_lifetime: float

    def for_event(self, info: EventInfo) -> Policy:
        duration = float(info.hold_duration_s or self.hold_duration)
        return Policy(
            hold_duration=duration,
            max_seats_per_user=info.max_seats_per_user or self.max_seats_per_user,
            max_hold_lifetime=max(self.max_hold_lifetime, duration),
        )


class Hold(NamedTuple):
    """A live hold: some seats kept for one user until ``expires_at``.

    A NamedTuple, like ``Seat``: ``EventState`` keeps its live holds as plain tuples of these
    fields, which the garbage collector stops walking after one pass (a Hold, a tuple
    subclass, it walks at every pass), and reads one back as a Hold without copying fields."""

    hold_id: str
    user_id: str
    seat_ids: tuple[str, ...]
    created_at: float
    expires_at: float
    max_expires_at: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """Seats confirmed for a user; permanent."""

    reservation_id: str
    user_id: str
    seat_ids: tuple[str, ...]
    reserved_at: float


class HoldEndReason(StrEnum):
    RELEASED = "released"
    EXPIRED = "expired"
    RESERVED = "reserved"


class SeatState(StrEnum):
    AVAILABLE = "available"
    HELD = "held"
    RESERVED = "reserved"
