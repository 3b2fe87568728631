"""Commands an event's state accepts, their results, and the effects a batch must persist.

Identifiers a command creates (hold and reservation ids) are chosen by the caller, so that
handling a command is deterministic given the state and ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

from seatd.core.model import EventInfo, Hold, HoldEndReason, Reservation, Seat

__all__ = [
    "AvailableSeats",
    "Command",
    "Effect",
    "EventSummary",
    "Expire",
    "GetEvent",
    "GetSnapshot",
    "HoldCreated",
    "HoldEnded",
    "HoldExtended",
    "HoldReleased",
    "ListAvailable",
    "PlaceHold",
    "RefreshHold",
    "ReleaseHold",
    "ReservationCreated",
    "Reserve",
    "Result",
    "SeatSnapshot",
]


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaceHold:
    """Hold all of ``seat_ids`` for ``user_id``, or none of them."""

    user_id: str
    seat_ids: tuple[str, ...]
    hold_id: str


@dataclass(frozen=True, slots=True)
class RefreshHold:
    user_id: str
    hold_id: str


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    user_id: str
    hold_id: str


@dataclass(frozen=True, slots=True)
class Reserve:
    """Confirm every seat of a live hold."""

    user_id: str
    hold_id: str
    reservation_id: str


@dataclass(frozen=True, slots=True)
class ListAvailable:
    section: str | None = None
    category: str | None = None
    limit: int = 1000
    after: str | None = None


@dataclass(frozen=True, slots=True)
class GetEvent:
    pass


@dataclass(frozen=True, slots=True)
class GetSnapshot:
    """Every unavailable seat. The actor answers it after the batch commits, so the snapshot
    and its version describe committed state only."""


@dataclass(frozen=True, slots=True)
class Expire:
    """Expire every hold that is due. ``hold_id`` names the hold a notice was about (a hint only):
    a hold is expired by its ``expires_at``, never by the notice, so a late or duplicate notice
    can not touch a newer hold."""

    hold_id: str | None = None


Command = (
    PlaceHold
    | RefreshHold
    | ReleaseHold
    | Reserve
    | ListAvailable
    | GetEvent
    | GetSnapshot
    | Expire
)


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldReleased:
    hold_id: str
    seat_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AvailableSeats:
    seats: tuple[Seat, ...]
    # Seat id to pass as ``after`` for the next page; None on the last page.
    next_after: str | None
    total_available: int


@dataclass(frozen=True, slots=True)
class EventSummary:
    info: EventInfo
    total_seats: int
    available: int
    held: int
    reserved: int
    version: int
    hold_duration: float
    max_seats_per_user: int


@dataclass(frozen=True, slots=True)
class SeatSnapshot:
    version: int
    total_seats: int
    held: tuple[tuple[str, float], ...]  # (seat id, its hold's expires_at)
    reserved: tuple[str, ...]


Result = (
    Hold
    | HoldReleased
    | Reservation
    | AvailableSeats
    | EventSummary
    | SeatSnapshot
    | tuple[Hold, ...]
)


# --- effects: what a batch changed, in order ------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldCreated:
    hold: Hold


@dataclass(frozen=True, slots=True)
class HoldExtended:
    hold: Hold


@dataclass(frozen=True, slots=True)
class HoldEnded:
    hold: Hold
    reason: HoldEndReason


@dataclass(frozen=True, slots=True)
class ReservationCreated:
    reservation: Reservation


Effect = HoldCreated | HoldExtended | HoldEnded | ReservationCreated
