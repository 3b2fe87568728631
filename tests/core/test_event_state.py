"""Example-based tests of ``EventState``, the pure seat rules engine of one event.

Every test drives the engine directly (no I/O): times are plain floats passed as ``now``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from support.tracking import tracked_objects, young_objects

from seatd.core.commands import (
    AvailableSeats,
    Command,
    Effect,
    EventSummary,
    Expire,
    GetEvent,
    GetSnapshot,
    HoldCreated,
    HoldEnded,
    HoldExtended,
    HoldReleased,
    ListAvailable,
    PlaceHold,
    RefreshHold,
    ReleaseHold,
    ReservationCreated,
    Reserve,
    SeatSnapshot,
)
from seatd.core.event_state import EventState
from seatd.core.model import (
    EventInfo,
    Hold,
    HoldEndReason,
    Policy,
    Reservation,
    Seat,
    SeatState,
)
from seatd.errors import (
    EventClosed,
    Forbidden,
    HoldExpired,
    HoldLifetimeExceeded,
    HoldNotFound,
    InvalidRequest,
    RequestError,
    SeatdError,
    SeatLimitExceeded,
    SeatUnavailable,
    UnknownSeat,
)

# --- fixtures and helpers ---------------------------------------------------------------------

INFO = EventInfo(event_id="ev1", name="Concert")
POLICY = Policy(hold_duration=60.0, max_seats_per_user=4, max_hold_lifetime=300.0)

# Sections A (A4 is vip), B (B1, B2 are vip) and C, in this order.
SEATS: tuple[Seat, ...] = (
    Seat("A1", section="A", row="1", number=1, category="std"),
    Seat("A2", section="A", row="1", number=2, category="std"),
    Seat("A3", section="A", row="1", number=3, category="std"),
    Seat("A4", section="A", row="1", number=4, category="vip"),
    Seat("B1", section="B", row="1", number=1, category="vip"),
    Seat("B2", section="B", row="1", number=2, category="vip"),
    Seat("B3", section="B", row="1", number=3, category="std"),
    Seat("B4", section="B", row="1", number=4, category="std"),
    Seat("C1", section="C", row="1", number=1, category="std"),
    Seat("C2", section="C", row="1", number=2, category="std"),
)
ALL_IDS = [seat.seat_id for seat in SEATS]
USERS = ("u1", "u2", "u3", "u4", "u5", "u9")

EXPIRED = HoldEndReason.EXPIRED
RELEASED = HoldEndReason.RELEASED
RESERVED = HoldEndReason.RESERVED


def make_state(
    *,
    info: EventInfo = INFO,
    policy: Policy = POLICY,
    holds: Sequence[Hold] = (),
    reservations: Sequence[Reservation] = (),
    version: int = 0,
) -> EventState:
    return EventState(info, policy, SEATS, holds, reservations, version)


def place(state: EventState, user: str, *seats: str, hold_id: str, now: float = 0.0) -> Hold:
    result = state.handle(PlaceHold(user, tuple(seats), hold_id), now)
    assert isinstance(result, Hold)
    return result


def refresh(state: EventState, user: str, hold_id: str, now: float) -> Hold:
    result = state.handle(RefreshHold(user, hold_id), now)
    assert isinstance(result, Hold)
    return result


def reserve(
    state: EventState, user: str, hold_id: str, reservation_id: str, now: float
) -> Reservation:
    result = state.handle(Reserve(user, hold_id, reservation_id), now)
    assert isinstance(result, Reservation)
    return result


def expire(state: EventState, now: float, hint: str | None = None) -> tuple[Hold, ...]:
    result = state.handle(Expire(hint), now)
    assert isinstance(result, tuple)
    return result


def states(state: EventState, *seat_ids: str) -> list[SeatState]:
    return [state.seat_state(sid) for sid in seat_ids]


def available_ids(state: EventState, now: float) -> list[str]:
    result = state.handle(ListAvailable(), now)
    assert isinstance(result, AvailableSeats)
    return [seat.seat_id for seat in result.seats]


def snapshot(state: EventState) -> dict[str, Any]:
    """Everything observable about a state without running a command (which could expire)."""
    return {
        "seats": {sid: state.seat_state(sid) for sid in state.seat_ids()},
        "holds": sorted(state.live_holds(), key=lambda hold: hold.hold_id),
        "held": {user: state.held_seat_count(user) for user in USERS},
        "next_expiry": state.next_expiry(),
        "version": state.version,
        "effects": list(state.effects),
    }


def outcome(state: EventState, command: Command, now: float) -> tuple[str, Any]:
    """A command's result, or the refusal's class and details, for comparing two states."""
    try:
        return ("ok", state.handle(command, now))
    except SeatdError as exc:
        return (type(exc).__name__, exc.details)


def standard_state() -> EventState:
    """u1 holds A1 (h1), u2 holds A2 (h2), u3 reserved A3 (h3 -> r3); all committed at t=0."""
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    place(state, "u2", "A2", hold_id="h2")
    place(state, "u3", "A3", hold_id="h3")
    state.handle(Reserve("u3", "h3", "r3"), 0.0)
    state.commit()
    return state


# --- PlaceHold --------------------------------------------------------------------------------


def test_place_hold_success() -> None:
    state = make_state()
    hold = place(state, "u1", "A1", "B2", hold_id="h1", now=10.0)

    assert hold == Hold(
        hold_id="h1",
        user_id="u1",
        seat_ids=("A1", "B2"),
        created_at=10.0,
        expires_at=70.0,
        max_expires_at=310.0,
    )
    assert states(state, "A1", "B2", "A2") == [SeatState.HELD, SeatState.HELD, SeatState.AVAILABLE]
    assert state.hold("h1") == hold
    assert state.live_holds() == [hold]
    assert state.held_seat_count("u1") == 2
    assert state.held_seat_count("u2") == 0
    assert state.next_expiry() == 70.0
    assert state.effects == [HoldCreated(hold)]
    assert "A1" not in available_ids(state, 11.0)
    assert "B2" not in available_ids(state, 11.0)


def test_place_hold_on_released_seats_succeeds() -> None:
    state = make_state()
    place(state, "u1", "A1", "A2", hold_id="h1")
    state.handle(ReleaseHold("u1", "h1"), 1.0)
    hold = place(state, "u2", "A1", "A2", hold_id="h2", now=2.0)
    assert hold.user_id == "u2"
    assert states(state, "A1", "A2") == [SeatState.HELD, SeatState.HELD]


CONFLICT_CASES = [
    pytest.param(
        PlaceHold("u1", ("B1", "A2"), "hx"),
        [{"seat_id": "A2", "state": "held", "yours": False}],
        id="held-by-another-user",
    ),
    pytest.param(
        PlaceHold("u1", ("A1", "B1"), "hx"),
        [{"seat_id": "A1", "state": "held", "yours": True}],
        id="held-by-self",
    ),
    pytest.param(
        PlaceHold("u1", ("B1", "A3"), "hx"),
        [{"seat_id": "A3", "state": "reserved"}],
        id="reserved-by-another-user",
    ),
    pytest.param(
        PlaceHold("u3", ("A3",), "hx"),
        [{"seat_id": "A3", "state": "reserved"}],
        id="reserved-by-self",
    ),
    pytest.param(
        PlaceHold("u1", ("A3", "B1", "A2", "A1"), "hx"),
        [
            {"seat_id": "A3", "state": "reserved"},
            {"seat_id": "A2", "state": "held", "yours": False},
            {"seat_id": "A1", "state": "held", "yours": True},
        ],
        id="several-conflicts-in-request-order",
    ),
]


@pytest.mark.parametrize(("command", "conflicts"), CONFLICT_CASES)
def test_place_hold_conflict_holds_nothing(
    command: PlaceHold, conflicts: list[dict[str, Any]]
) -> None:
    state = standard_state()
    before = snapshot(state)

    with pytest.raises(SeatUnavailable) as info:
        state.handle(command, 1.0)

    assert info.value.details == {"conflicts": conflicts}
    assert info.value.code == "seat_unavailable"
    assert snapshot(state) == before  # all-or-nothing: the free seats were not held either
    assert state.seat_state("B1") is SeatState.AVAILABLE
    assert state.hold("hx") is None
    assert state.effects == []


@pytest.mark.parametrize(
    ("seat_ids", "unknown"),
    [
        (("Z9",), ["Z9"]),
        (("B1", "Z9", "C2"), ["Z9"]),
        (("B1", "Z9", "A2", "Q1"), ["Z9", "Q1"]),  # unknown seats are reported before conflicts
        (("a1",), ["a1"]),  # seat ids are case-sensitive
    ],
)
def test_place_hold_unknown_seat_holds_nothing(
    seat_ids: tuple[str, ...], unknown: list[str]
) -> None:
    state = standard_state()
    before = snapshot(state)

    with pytest.raises(UnknownSeat) as info:
        state.handle(PlaceHold("u1", seat_ids, "hx"), 1.0)

    assert info.value.details == {"seat_ids": unknown}
    assert snapshot(state) == before
    assert state.seat_state("B1") is SeatState.AVAILABLE


@pytest.mark.parametrize(
    ("user", "seat_ids", "current"),
    [
        pytest.param("u9", ("A4", "B1", "B2", "B3", "B4"), 0, id="fresh-user-asks-five"),
        pytest.param("u1", ("A4", "B1", "B2", "B3"), 1, id="one-held-plus-four"),
        pytest.param("u3", ("A4", "B1", "B2", "B3"), 1, id="one-reserved-plus-four"),
        pytest.param("u3", ("A4", "B1", "B2", "B3", "B4"), 1, id="one-reserved-plus-five"),
    ],
)
def test_place_hold_seat_limit(user: str, seat_ids: tuple[str, ...], current: int) -> None:
    state = standard_state()
    before = snapshot(state)

    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold(user, seat_ids, "hx"), 1.0)

    assert info.value.details == {"limit": 4, "current": current, "requested": len(seat_ids)}
    assert snapshot(state) == before


@pytest.mark.parametrize(
    ("user", "seat_ids"),
    [
        pytest.param("u9", ("A4", "B1", "B2", "B3"), id="fresh-user-exactly-four"),
        pytest.param("u1", ("A4", "B1", "B2"), id="one-held-plus-three"),
        pytest.param("u3", ("A4", "B1", "B2"), id="one-reserved-plus-three"),
    ],
)
def test_place_hold_up_to_the_limit_is_allowed(user: str, seat_ids: tuple[str, ...]) -> None:
    state = standard_state()
    place(state, user, *seat_ids, hold_id="hx", now=1.0)
    assert all(s is SeatState.HELD for s in states(state, *seat_ids))


def test_seat_limit_counts_several_holds_and_reservations() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    place(state, "u1", "A2", hold_id="h2")
    state.handle(Reserve("u1", "h2", "r2"), 1.0)
    place(state, "u1", "A3", hold_id="h3", now=2.0)
    # 2 held (h1, h3) + 1 reserved (r2) = 3: one more seat fits, two do not.
    assert state.held_seat_count("u1") == 2
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u1", ("B1", "B2"), "h4"), 3.0)
    assert info.value.details == {"limit": 4, "current": 3, "requested": 2}
    # Other users are not affected by u1's count.
    place(state, "u2", "B1", "B2", "B3", "B4", hold_id="h5", now=3.0)
    place(state, "u1", "C1", hold_id="h4", now=3.0)


def test_reserved_seats_count_toward_the_limit() -> None:
    state = make_state()
    place(state, "u1", "A1", "A2", "A3", "A4", hold_id="h1")
    state.handle(Reserve("u1", "h1", "r1"), 1.0)
    assert state.held_seat_count("u1") == 0
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u1", ("B1",), "h2"), 2.0)
    assert info.value.details == {"limit": 4, "current": 4, "requested": 1}
    place(state, "u2", "B1", "B2", "B3", "B4", hold_id="h3", now=2.0)  # others unaffected


def test_reserve_counts_the_seats_once() -> None:
    state = make_state()
    place(state, "u1", "A1", "A2", hold_id="h1")
    state.handle(Reserve("u1", "h1", "r1"), 1.0)
    # 2 reserved: two more seats fit, and the refusal for three reports current == 2.
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u1", ("B1", "B2", "B3"), "h2"), 2.0)
    assert info.value.details == {"limit": 4, "current": 2, "requested": 3}
    place(state, "u1", "B1", "B2", hold_id="h2", now=2.0)


def test_releasing_frees_the_limit_but_reserving_does_not() -> None:
    state = make_state()
    place(state, "u1", "A1", "A2", hold_id="h1")
    place(state, "u1", "A3", "A4", hold_id="h2")
    with pytest.raises(SeatLimitExceeded):
        state.handle(PlaceHold("u1", ("B1",), "h3"), 1.0)

    state.handle(Reserve("u1", "h1", "r1"), 1.0)  # still 4 counted: 2 reserved + 2 held
    assert state.held_seat_count("u1") == 2
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u1", ("B1",), "h3"), 1.0)
    assert info.value.details == {"limit": 4, "current": 4, "requested": 1}

    state.handle(ReleaseHold("u1", "h2"), 2.0)  # 2 reserved
    assert state.held_seat_count("u1") == 0
    place(state, "u1", "B1", "B2", hold_id="h3", now=3.0)


def test_expiry_frees_the_limit() -> None:
    state = make_state()
    place(state, "u1", "A1", "A2", "A3", "A4", hold_id="h1")
    with pytest.raises(SeatLimitExceeded):
        state.handle(PlaceHold("u1", ("B1",), "h2"), 59.0)
    hold = place(state, "u1", "B1", "B2", "B3", "B4", hold_id="h2", now=60.0)
    assert hold.seat_ids == ("B1", "B2", "B3", "B4")
    assert state.held_seat_count("u1") == 4


@pytest.mark.parametrize("status", ["closed", "cancelled", "sold_out", "draft", "", "OPEN"])
def test_place_hold_refused_when_event_not_open(status: str) -> None:
    info = EventInfo(event_id="ev1", name="Concert", status=status)
    state = make_state(info=info)

    with pytest.raises(EventClosed) as exc:
        state.handle(PlaceHold("u1", ("A1",), "h1"), 0.0)

    assert exc.value.code == "event_closed"
    assert state.seat_state("A1") is SeatState.AVAILABLE
    assert state.live_holds() == []
    assert state.effects == []


def test_place_hold_closed_check_comes_before_seat_checks() -> None:
    state = make_state(info=EventInfo(event_id="ev1", name="Concert", status="closed"))
    with pytest.raises(EventClosed):
        state.handle(PlaceHold("u1", ("Z9",), "h1"), 0.0)


def test_closing_stops_new_holds_and_keeps_the_ones_made() -> None:
    """An operator's close (``seatd close-event``): holds made before it can still be
    refreshed and reserved; reopening takes holds again. It is no effect of a batch."""
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.commit()
    state.change_status("closed")
    assert state.info.status == "closed" and state.effects == []
    with pytest.raises(EventClosed):
        state.handle(PlaceHold("u2", ("A2",), "h2"), 1.0)
    state.handle(RefreshHold("u1", "h1"), 2.0)
    state.handle(Reserve("u1", "h1", "r1"), 3.0)
    assert state.seat_state("A1") is SeatState.RESERVED
    state.change_status("open")
    assert place(state, "u2", "A2", hold_id="h2", now=4.0).seat_ids == ("A2",)


def test_a_status_is_open_or_closed() -> None:
    with pytest.raises(ValueError, match="open or closed"):
        make_state().change_status("paused")


# --- RefreshHold ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refresh_at", "expires_at"),
    [
        (1.0, 61.0),
        (30.0, 90.0),
        (59.5, 119.5),
        (240.0, 300.0),  # exactly reaches the cap
        (250.0, 300.0),  # capped at max_expires_at (created 0 + lifetime 300)
    ],
)
def test_refresh_extends_to_now_plus_duration_capped(refresh_at: float, expires_at: float) -> None:
    state = make_state()
    hold = place(state, "u1", "A1", hold_id="h1")
    # Keep the hold alive up to refresh_at in steps shorter than the hold duration.
    t = 50.0
    while t < refresh_at:
        state.handle(RefreshHold("u1", "h1"), t)
        t += 50.0
    state.commit()

    refreshed = state.handle(RefreshHold("u1", "h1"), refresh_at)

    assert refreshed == Hold("h1", "u1", ("A1",), 0.0, expires_at, 300.0)
    assert state.hold("h1") == refreshed
    assert state.next_expiry() == expires_at
    assert state.effects == [HoldExtended(refreshed)]
    assert refreshed.created_at == hold.created_at
    assert refreshed.max_expires_at == hold.max_expires_at


def test_refresh_chain_until_lifetime_exceeded() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    expiries = []
    for t in (50.0, 100.0, 150.0, 200.0, 250.0):
        result = state.handle(RefreshHold("u1", "h1"), t)
        assert isinstance(result, Hold)
        expiries.append(result.expires_at)
    assert expiries == [110.0, 160.0, 210.0, 260.0, 300.0]
    state.commit()
    before = snapshot(state)

    with pytest.raises(HoldLifetimeExceeded) as info:
        state.handle(RefreshHold("u1", "h1"), 280.0)

    assert info.value.details == {"max_expires_at": 300.0}
    assert snapshot(state) == before
    # The hold keeps its capped expiry and then expires.
    assert state.handle(Expire(), 299.9) == ()
    expired = state.handle(Expire(), 300.0)
    assert expired == (Hold("h1", "u1", ("A1",), 0.0, 300.0, 300.0),)
    assert state.seat_state("A1") is SeatState.AVAILABLE


def test_refresh_respects_max_expires_at_of_the_hold_not_now() -> None:
    # A hold created at t=100 may live until 400, whatever the current time.
    state = make_state()
    place(state, "u1", "A1", hold_id="h1", now=100.0)
    for t in (150.0, 200.0, 250.0, 300.0):
        state.handle(RefreshHold("u1", "h1"), t)
    result = state.handle(RefreshHold("u1", "h1"), 350.0)
    assert isinstance(result, Hold)
    assert result.expires_at == 400.0
    with pytest.raises(HoldLifetimeExceeded):
        state.handle(RefreshHold("u1", "h1"), 390.0)


def test_refresh_moves_expiry_later() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.handle(RefreshHold("u1", "h1"), 50.0)
    state.commit()

    assert state.handle(Expire(), 60.0) == ()  # the original expiry no longer applies
    assert state.seat_state("A1") is SeatState.HELD
    assert state.effects == []
    assert [h.hold_id for h in expire(state, 110.0)] == ["h1"]


# --- refusals shared by RefreshHold, ReleaseHold and Reserve ----------------------------------

OWNED_COMMANDS = [
    pytest.param(lambda user, hold_id: RefreshHold(user, hold_id), id="refresh"),
    pytest.param(lambda user, hold_id: ReleaseHold(user, hold_id), id="release"),
    pytest.param(lambda user, hold_id: Reserve(user, hold_id, "r-new"), id="reserve"),
]


@pytest.mark.parametrize("make_command", OWNED_COMMANDS)
def test_another_users_hold_is_forbidden(make_command: Any) -> None:
    state = standard_state()
    before = snapshot(state)

    with pytest.raises(Forbidden) as info:
        state.handle(make_command("u2", "h1"), 1.0)

    assert info.value.code == "forbidden"
    assert snapshot(state) == before
    assert state.seat_state("A1") is SeatState.HELD


@pytest.mark.parametrize("make_command", OWNED_COMMANDS)
@pytest.mark.parametrize("now", [60.0, 60.5, 1000.0])
def test_hold_past_expiry_is_expired_without_an_expire_command(
    make_command: Any, now: float
) -> None:
    state = make_state()
    hold = place(state, "u1", "A1", "A2", hold_id="h1")
    state.commit()

    with pytest.raises(HoldExpired) as info:
        state.handle(make_command("u1", "h1"), now)

    assert info.value.details == {"hold_id": "h1"}
    assert info.value.code == "hold_expired"
    assert state.hold("h1") is None
    assert states(state, "A1", "A2") == [SeatState.AVAILABLE, SeatState.AVAILABLE]
    assert state.held_seat_count("u1") == 0
    assert state.effects == [HoldEnded(hold, EXPIRED)]
    # Asking again still says "expired" (the hold is remembered as expired, not just absent).
    with pytest.raises(HoldExpired):
        state.handle(make_command("u1", "h1"), now + 1.0)


@pytest.mark.parametrize("make_command", OWNED_COMMANDS)
def test_expired_by_an_expire_command_then_hold_expired(make_command: Any) -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.handle(Expire(), 61.0)
    state.commit()
    with pytest.raises(HoldExpired):
        state.handle(make_command("u1", "h1"), 62.0)
    # A stranger naming the expired hold gets the same answer (no Forbidden leak).
    with pytest.raises(HoldExpired):
        state.handle(make_command("u2", "h1"), 62.0)


@pytest.mark.parametrize("make_command", OWNED_COMMANDS)
def test_unknown_hold_is_not_found(make_command: Any) -> None:
    state = standard_state()
    before = snapshot(state)

    with pytest.raises(HoldNotFound) as info:
        state.handle(make_command("u1", "nope"), 1.0)

    assert info.value.details == {"hold_id": "nope"}
    assert info.value.code == "hold_not_found"
    assert snapshot(state) == before


@pytest.mark.parametrize("make_command", OWNED_COMMANDS)
@pytest.mark.parametrize(
    ("end_command", "reason"),
    [
        pytest.param(ReleaseHold("u1", "h1"), "released", id="released"),
        pytest.param(Reserve("u1", "h1", "r1"), "reserved", id="reserved"),
    ],
)
def test_ended_hold_is_not_found_with_reason(
    make_command: Any, end_command: Command, reason: str
) -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.handle(end_command, 1.0)
    state.commit()
    before = snapshot(state)

    with pytest.raises(HoldNotFound) as info:
        state.handle(make_command("u1", "h1"), 2.0)

    assert info.value.details == {"hold_id": "h1", "reason": reason}
    assert snapshot(state) == before


# --- ReleaseHold ------------------------------------------------------------------------------


def test_release_hold_success() -> None:
    state = make_state()
    hold = place(state, "u1", "A1", "B1", hold_id="h1")
    other = place(state, "u1", "C1", hold_id="h2", now=5.0)
    state.commit()

    result = state.handle(ReleaseHold("u1", "h1"), 10.0)

    assert result == HoldReleased("h1", ("A1", "B1"))
    assert state.effects == [HoldEnded(hold, RELEASED)]
    assert states(state, "A1", "B1", "C1") == [
        SeatState.AVAILABLE,
        SeatState.AVAILABLE,
        SeatState.HELD,
    ]
    assert state.hold("h1") is None
    assert state.live_holds() == [other]
    assert state.held_seat_count("u1") == 1
    assert state.next_expiry() == 65.0
    assert {"A1", "B1"} <= set(available_ids(state, 11.0))


def test_release_of_refreshed_hold_reports_the_refreshed_hold() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    refreshed = refresh(state, "u1", "h1", 30.0)
    state.commit()
    state.handle(ReleaseHold("u1", "h1"), 40.0)
    assert state.effects == [HoldEnded(refreshed, RELEASED)]
    assert state.next_expiry() is None


# --- Reserve ----------------------------------------------------------------------------------


def test_reserve_success() -> None:
    state = make_state()
    hold = place(state, "u1", "A1", "A2", "B4", hold_id="h1")
    state.commit()

    reservation = reserve(state, "u1", "h1", "r1", 59.5)

    assert reservation == Reservation("r1", "u1", ("A1", "A2", "B4"), 59.5)
    assert state.effects == [HoldEnded(hold, RESERVED), ReservationCreated(reservation)]
    assert states(state, "A1", "A2", "B4") == [SeatState.RESERVED] * 3
    assert state.hold("h1") is None
    assert state.live_holds() == []
    assert state.held_seat_count("u1") == 0
    assert state.next_expiry() is None
    available = available_ids(state, 60.0)
    assert not {"A1", "A2", "B4"} & set(available)
    assert len(available) == len(SEATS) - 3


def test_reserved_seats_are_permanent() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.handle(Reserve("u1", "h1", "r1"), 1.0)
    # Time passing, expiry and other users never free a reserved seat.
    assert state.handle(Expire(), 10_000.0) == ()
    assert state.seat_state("A1") is SeatState.RESERVED
    with pytest.raises(SeatUnavailable) as info:
        state.handle(PlaceHold("u2", ("A1",), "h2"), 10_001.0)
    assert info.value.details == {"conflicts": [{"seat_id": "A1", "state": "reserved"}]}


def test_reserve_only_the_named_hold() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    place(state, "u1", "A2", hold_id="h2")
    state.handle(Reserve("u1", "h1", "r1"), 1.0)
    assert states(state, "A1", "A2") == [SeatState.RESERVED, SeatState.HELD]
    assert state.held_seat_count("u1") == 1
    assert state.hold("h2") is not None


def test_reserve_just_before_expiry_succeeds_and_at_expiry_fails() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    place(state, "u1", "A2", hold_id="h2")
    state.handle(Reserve("u1", "h1", "r1"), 59.999)
    assert state.seat_state("A1") is SeatState.RESERVED
    with pytest.raises(HoldExpired):
        state.handle(Reserve("u1", "h2", "r2"), 60.0)
    assert state.seat_state("A2") is SeatState.AVAILABLE


# --- ListAvailable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "category", "expected"),
    [
        (None, None, ALL_IDS),
        ("A", None, ["A1", "A2", "A3", "A4"]),
        ("B", None, ["B1", "B2", "B3", "B4"]),
        (None, "vip", ["A4", "B1", "B2"]),
        (None, "std", ["A1", "A2", "A3", "B3", "B4", "C1", "C2"]),
        ("B", "std", ["B3", "B4"]),
        ("C", "vip", []),
        ("Z", None, []),
        (None, "", []),
    ],
)
def test_list_available_filters(
    section: str | None, category: str | None, expected: list[str]
) -> None:
    state = make_state()
    result = state.handle(ListAvailable(section=section, category=category), 0.0)
    assert isinstance(result, AvailableSeats)
    assert [seat.seat_id for seat in result.seats] == expected
    assert result.total_available == len(expected)
    assert result.next_after is None


@pytest.mark.parametrize(
    ("section", "category", "expected"),
    [
        (None, None, ["A4", "B1", "B3", "C1", "C2"]),
        ("A", None, ["A4"]),
        (None, "vip", ["A4", "B1"]),
        ("B", "std", ["B3"]),
    ],
)
def test_list_available_skips_held_and_reserved(
    section: str | None, category: str | None, expected: list[str]
) -> None:
    state = standard_state()  # A1, A2 held; A3 reserved
    place(state, "u4", "B2", "B4", hold_id="h4", now=1.0)
    result = state.handle(ListAvailable(section=section, category=category), 2.0)
    assert isinstance(result, AvailableSeats)
    assert [seat.seat_id for seat in result.seats] == expected
    assert result.total_available == len(expected)


def test_list_available_returns_seat_objects() -> None:
    result = make_state().handle(ListAvailable(section="B", limit=1), 0.0)
    assert isinstance(result, AvailableSeats)
    assert result.seats == (SEATS[4],)


@pytest.mark.parametrize(
    ("limit", "section", "pages"),
    [
        (3, None, [["A1", "A2", "A3"], ["A4", "B1", "B2"], ["B3", "B4", "C1"], ["C2"]]),
        (5, None, [["A1", "A2", "A3", "A4", "B1"], ["B2", "B3", "B4", "C1", "C2"]]),
        (10, None, [ALL_IDS]),
        (11, None, [ALL_IDS]),
        (1, "C", [["C1"], ["C2"]]),
        (2, "B", [["B1", "B2"], ["B3", "B4"]]),
    ],
)
def test_list_available_pagination(limit: int, section: str | None, pages: list[list[str]]) -> None:
    state = make_state()
    after: str | None = None
    seen: list[list[str]] = []
    for _ in range(20):
        result = state.handle(ListAvailable(section=section, limit=limit, after=after), 0.0)
        assert isinstance(result, AvailableSeats)
        assert result.total_available == sum(len(page) for page in pages)
        page = [seat.seat_id for seat in result.seats]
        seen.append(page)
        if result.next_after is None:
            break
        assert result.next_after == page[-1]
        after = result.next_after
    assert seen == pages


def test_list_available_pagination_with_filter_and_taken_seats() -> None:
    state = standard_state()  # A1, A2 held; A3 reserved
    first = state.handle(ListAvailable(category="std", limit=2), 1.0)
    assert isinstance(first, AvailableSeats)
    assert [s.seat_id for s in first.seats] == ["B3", "B4"]
    assert first.next_after == "B4"
    assert first.total_available == 4
    second = state.handle(ListAvailable(category="std", limit=2, after="B4"), 1.0)
    assert isinstance(second, AvailableSeats)
    assert [s.seat_id for s in second.seats] == ["C1", "C2"]
    assert second.next_after is None
    assert second.total_available == 4


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("A2", ["A4", "B1", "B2", "B3", "B4", "C1", "C2"]),  # a held seat is a valid cursor
        ("A3", ["A4", "B1", "B2", "B3", "B4", "C1", "C2"]),  # so is a reserved one
        ("B4", ["C1", "C2"]),
        ("C2", []),
    ],
)
def test_list_available_after_any_seat(after: str, expected: list[str]) -> None:
    state = standard_state()
    result = state.handle(ListAvailable(after=after), 1.0)
    assert isinstance(result, AvailableSeats)
    assert [s.seat_id for s in result.seats] == expected
    assert result.next_after is None
    assert result.total_available == 7  # counts every available seat, not just this page


def test_list_available_cursor_survives_the_cursor_seat_being_taken() -> None:
    state = make_state()
    first = state.handle(ListAvailable(limit=2), 0.0)
    assert isinstance(first, AvailableSeats)
    assert first.next_after == "A2"
    place(state, "u1", "A2", "A3", hold_id="h1", now=1.0)
    second = state.handle(ListAvailable(limit=2, after=first.next_after), 1.0)
    assert isinstance(second, AvailableSeats)
    assert [s.seat_id for s in second.seats] == ["A4", "B1"]
    assert second.total_available == len(SEATS) - 2


@pytest.mark.parametrize("after", ["Z9", "", "a1"])
def test_list_available_bad_after_is_unknown_seat(after: str) -> None:
    state = make_state()
    with pytest.raises(UnknownSeat) as info:
        state.handle(ListAvailable(after=after), 0.0)
    assert info.value.details == {"seat_ids": [after]}


def test_list_available_expires_due_holds() -> None:
    state = make_state()
    hold = place(state, "u1", "A1", hold_id="h1")
    state.commit()
    assert "A1" not in available_ids(state, 59.0)
    assert "A1" in available_ids(state, 60.0)
    assert state.effects == [HoldEnded(hold, EXPIRED)]


# --- GetEvent ---------------------------------------------------------------------------------


def test_get_event_summary() -> None:
    state = standard_state()  # version 1 after the commit
    summary = state.handle(GetEvent(), 1.0)
    assert summary == EventSummary(
        info=INFO,
        total_seats=10,
        available=7,
        held=2,
        reserved=1,
        version=1,
        hold_duration=60.0,
        max_seats_per_user=4,
    )


def test_get_event_counts_follow_changes_and_version_includes_pending_batch() -> None:
    state = make_state(version=5)
    summary = state.handle(GetEvent(), 0.0)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held, summary.reserved, summary.version) == (10, 0, 0, 5)

    place(state, "u1", "A1", "A2", hold_id="h1")
    summary = state.handle(GetEvent(), 0.0)
    assert isinstance(summary, EventSummary)
    # The batch has effects: the version the client will see once it is committed.
    assert (summary.available, summary.held, summary.reserved, summary.version) == (8, 2, 0, 6)

    state.handle(Reserve("u1", "h1", "r1"), 1.0)
    place(state, "u2", "B1", hold_id="h2", now=1.0)
    summary = state.handle(GetEvent(), 1.0)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held, summary.reserved, summary.version) == (7, 1, 2, 6)

    state.commit()
    summary = state.handle(GetEvent(), 61.0)  # h2 expires (due at 61)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held, summary.reserved, summary.version) == (8, 0, 2, 7)
    state.commit()
    assert state.version == 7


def test_get_event_uses_the_policy() -> None:
    policy = Policy(hold_duration=30.0, max_seats_per_user=2, max_hold_lifetime=90.0)
    summary = make_state(policy=policy).handle(GetEvent(), 0.0)
    assert isinstance(summary, EventSummary)
    assert (summary.hold_duration, summary.max_seats_per_user) == (30.0, 2)


# --- GetSnapshot ------------------------------------------------------------------------------


def snapshot_of(state: EventState, now: float) -> SeatSnapshot:
    result = state.handle(GetSnapshot(), now)
    assert isinstance(result, SeatSnapshot)
    return result


def test_get_snapshot_of_a_fresh_event() -> None:
    assert snapshot_of(make_state(version=2), 0.0) == SeatSnapshot(2, 10, (), ())


def test_get_snapshot_lists_every_unavailable_seat() -> None:
    state = standard_state()  # A1 (h1), A2 (h2) held until 60; A3 reserved; version 1
    place(state, "u4", "B2", "C1", hold_id="h4", now=5.0)
    refresh(state, "u1", "h1", 30.0)
    state.commit()
    snap = snapshot_of(state, 31.0)
    assert snap.version == 2
    assert snap.total_seats == 10
    assert sorted(snap.held) == [("A1", 90.0), ("A2", 60.0), ("B2", 65.0), ("C1", 65.0)]
    assert sorted(snap.reserved) == ["A3"]
    assert state.effects == []


def test_get_snapshot_version_includes_the_pending_batch() -> None:
    state = make_state(version=4)
    place(state, "u1", "A1", hold_id="h1")
    snap = snapshot_of(state, 0.0)
    assert (snap.version, snap.held) == (5, (("A1", 60.0),))
    state.commit()
    assert snapshot_of(state, 1.0).version == 5


def test_get_snapshot_expires_due_holds_first() -> None:
    state = standard_state()
    snap = snapshot_of(state, 60.0)
    assert snap.held == ()
    assert snap.reserved == ("A3",)
    assert [type(e) for e in state.effects] == [HoldEnded, HoldEnded]
    assert snap.version == 2


# --- Expire and next_expiry -------------------------------------------------------------------


def three_holds() -> tuple[EventState, Hold, Hold, Hold]:
    state = make_state()
    h1 = place(state, "u1", "A1", hold_id="h1", now=0.0)  # expires 60
    h2 = place(state, "u2", "A2", "A3", hold_id="h2", now=10.0)  # expires 70
    h3 = place(state, "u3", "B1", hold_id="h3", now=20.0)  # expires 80
    state.commit()
    return state, h1, h2, h3


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (20.0, []),
        (59.999, []),
        (60.0, ["h1"]),
        (69.5, ["h1"]),
        (70.0, ["h1", "h2"]),
        (79.999, ["h1", "h2"]),
        (80.0, ["h1", "h2", "h3"]),
        (1e9, ["h1", "h2", "h3"]),
    ],
)
def test_expire_expires_exactly_the_due_holds(now: float, expected: list[str]) -> None:
    state, h1, h2, h3 = three_holds()
    by_id = {"h1": h1, "h2": h2, "h3": h3}

    expired = state.handle(Expire(), now)

    assert isinstance(expired, tuple)
    assert [h.hold_id for h in expired] == expected
    assert state.effects == [HoldEnded(by_id[hid], EXPIRED) for hid in expected]
    for hid, hold in by_id.items():
        live = hid not in expected
        assert (state.hold(hid) == hold) is live
        for sid in hold.seat_ids:
            assert state.seat_state(sid) is (SeatState.HELD if live else SeatState.AVAILABLE)
        assert state.held_seat_count(hold.user_id) == (len(hold.seat_ids) if live else 0)
    remaining = [by_id[hid].expires_at for hid in by_id if hid not in expected]
    assert state.next_expiry() == (min(remaining) if remaining else None)


def test_expire_is_idempotent() -> None:
    state, h1, _, _ = three_holds()
    assert state.handle(Expire(), 65.0) == (h1,)
    assert state.handle(Expire(), 65.0) == ()
    assert state.handle(Expire("h1"), 66.0) == ()
    assert state.effects == [HoldEnded(h1, EXPIRED)]


def test_expire_hint_for_a_refreshed_hold_does_nothing() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    refreshed = state.handle(RefreshHold("u1", "h1"), 50.0)  # now expires at 110
    state.commit()

    # The timer/notice for the original expiry (60) arrives.
    assert state.handle(Expire("h1"), 60.0) == ()
    assert state.hold("h1") == refreshed
    assert state.seat_state("A1") is SeatState.HELD
    assert state.effects == []
    assert state.commit() == []
    assert state.version == 1

    assert state.handle(Expire("h1"), 110.0) == (refreshed,)


def test_late_or_duplicate_hint_never_touches_a_newer_hold_on_the_same_seat() -> None:
    state = make_state()
    old = place(state, "u1", "A1", hold_id="h1")
    assert state.handle(Expire("h1"), 60.0) == (old,)
    state.commit()
    newer = place(state, "u2", "A1", hold_id="h2", now=61.0)  # expires 121
    state.commit()

    for t in (61.0, 62.0, 100.0, 120.999):
        assert state.handle(Expire("h1"), t) == ()
        assert state.hold("h2") == newer
        assert state.seat_state("A1") is SeatState.HELD
    assert state.effects == []
    # The newer hold expires by its own time only.
    assert state.handle(Expire("h1"), 121.0) == (newer,)


def test_expire_hint_naming_a_different_hold_expires_only_what_is_due() -> None:
    state, h1, _, _ = three_holds()
    assert state.handle(Expire("h3"), 60.0) == (h1,)  # h3 (due at 80) is untouched
    assert state.hold("h3") is not None
    assert state.handle(Expire("no-such-hold"), 61.0) == ()


def test_next_expiry_tracks_the_earliest_live_hold() -> None:
    state = make_state()
    assert state.next_expiry() is None
    place(state, "u1", "A1", hold_id="h1", now=0.0)  # 60
    place(state, "u2", "A2", hold_id="h2", now=5.0)  # 65
    assert state.next_expiry() == 60.0
    state.handle(RefreshHold("u1", "h1"), 10.0)  # 70
    assert state.next_expiry() == 65.0
    state.handle(ReleaseHold("u2", "h2"), 11.0)
    assert state.next_expiry() == 70.0
    place(state, "u3", "A3", hold_id="h3", now=12.0)  # 72
    state.handle(Reserve("u1", "h1", "r1"), 13.0)
    assert state.next_expiry() == 72.0
    state.handle(Expire(), 72.0)
    assert state.next_expiry() is None


# --- batches: effects, commit, rollback -------------------------------------------------------


def test_batch_effects_in_order_and_commit_bumps_version_once() -> None:
    state = make_state(version=3)
    h1 = place(state, "u1", "A1", hold_id="h1", now=0.0)
    h2 = place(state, "u2", "A2", hold_id="h2", now=0.0)
    h1b = refresh(state, "u1", "h1", 10.0)
    r2 = reserve(state, "u2", "h2", "r2", 20.0)
    state.handle(ReleaseHold("u1", "h1"), 30.0)
    expected: list[Effect] = [
        HoldCreated(h1),
        HoldCreated(h2),
        HoldExtended(h1b),
        HoldEnded(h2, RESERVED),
        ReservationCreated(r2),
        HoldEnded(h1b, RELEASED),
    ]
    assert state.effects == expected
    assert state.version == 3  # not before commit

    assert state.commit() == expected
    assert state.version == 4
    assert state.effects == []

    # A batch without changes does not move the version.
    assert state.commit() == []
    assert state.version == 4
    state.handle(ListAvailable(), 31.0)
    state.handle(GetEvent(), 31.0)
    state.handle(Expire(), 31.0)
    with pytest.raises(HoldNotFound):
        state.handle(ReleaseHold("u1", "h1"), 31.0)
    with pytest.raises(SeatUnavailable):
        state.handle(PlaceHold("u1", ("A2",), "h3"), 31.0)
    assert state.effects == []
    assert state.commit() == []
    assert state.version == 4


def test_expiry_effects_come_before_the_commands_own_effect() -> None:
    state = make_state()
    old = place(state, "u1", "A1", hold_id="h1")
    state.commit()
    new = place(state, "u2", "A1", hold_id="h2", now=60.0)
    assert state.effects == [HoldEnded(old, EXPIRED), HoldCreated(new)]


def test_refused_command_after_due_expiry_keeps_the_expiry() -> None:
    # Expiry is a consequence of time: a refused command still records the holds it expired.
    state = make_state()
    old = place(state, "u1", "A1", hold_id="h1")
    place(state, "u2", "B1", hold_id="h2", now=30.0)  # expires 90
    state.commit()
    with pytest.raises(SeatUnavailable):
        state.handle(PlaceHold("u3", ("A1", "B1"), "h3"), 60.0)
    assert state.effects == [HoldEnded(old, EXPIRED)]
    assert state.seat_state("A1") is SeatState.AVAILABLE
    assert state.seat_state("B1") is SeatState.HELD


def test_refused_command_in_a_batch_keeps_earlier_effects() -> None:
    state = make_state()
    h1 = place(state, "u1", "A1", hold_id="h1")
    with pytest.raises(SeatUnavailable):
        state.handle(PlaceHold("u2", ("A2", "A1"), "h2"), 1.0)
    assert state.effects == [HoldCreated(h1)]
    assert state.seat_state("A2") is SeatState.AVAILABLE
    assert state.commit() == [HoldCreated(h1)]
    assert state.version == 1


def test_commit_makes_changes_survive_a_later_rollback() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.commit()
    committed = snapshot(state)
    place(state, "u2", "A2", hold_id="h2", now=1.0)
    state.rollback()
    assert snapshot(state) == committed
    assert state.seat_state("A1") is SeatState.HELD


def loaded_scenario() -> EventState:
    """Loaded reservation for u4 (C1, C2), then committed holds h1 (u1, 60), h2 (u2, 70),
    h3 (u3, 80); version 8 afterwards."""
    state = make_state(reservations=[Reservation("r0", "u4", ("C1", "C2"), 0.0)], version=7)
    place(state, "u1", "A1", "A2", hold_id="h1", now=0.0)
    place(state, "u2", "B1", hold_id="h2", now=10.0)
    place(state, "u3", "B2", "B3", hold_id="h3", now=20.0)
    assert len(state.commit()) == 3
    return state


SINGLE_COMMAND_BATCHES = [
    pytest.param([(PlaceHold("u5", ("A3", "A4"), "h9"), 30.0)], id="place"),
    pytest.param([(RefreshHold("u2", "h2"), 30.0)], id="refresh"),
    pytest.param([(ReleaseHold("u1", "h1"), 30.0)], id="release"),
    pytest.param([(Reserve("u3", "h3", "r3"), 30.0)], id="reserve"),
    pytest.param([(Expire(), 75.0)], id="expire"),
    pytest.param([(GetEvent(), 65.0)], id="query-that-expires"),
    pytest.param([(PlaceHold("u9", ("B1",), "h9"), 75.0)], id="refused-after-expiring"),
]


@pytest.mark.parametrize("batch", SINGLE_COMMAND_BATCHES)
def test_rollback_of_single_command_batch(batch: list[tuple[Command, float]]) -> None:
    state = loaded_scenario()
    before = snapshot(state)
    for command, now in batch:
        with contextlib.suppress(SeatdError):
            state.handle(command, now)
    assert state.effects  # the batch changed something
    state.rollback()
    assert snapshot(state) == before
    assert snapshot(state) == snapshot(loaded_scenario())


def run_mixed_batch(state: EventState) -> None:
    """A batch that expires, refreshes, reserves, places and releases."""
    expired = expire(state, 65.0)  # expires h1 (due 60)
    assert [h.hold_id for h in expired] == ["h1"]
    state.handle(RefreshHold("u2", "h2"), 65.0)  # h2 -> 125
    state.handle(Reserve("u3", "h3", "r3"), 66.0)  # B2, B3 reserved
    place(state, "u1", "A1", "A2", "A3", hold_id="h4", now=66.0)
    place(state, "u2", "B4", hold_id="h5", now=66.0)
    state.handle(ReleaseHold("u2", "h5"), 67.0)
    with pytest.raises(SeatLimitExceeded):
        state.handle(PlaceHold("u1", ("A4", "B4"), "h6"), 67.0)
    assert len(state.effects) == 7


def test_rollback_restores_the_exact_previous_state() -> None:
    state = loaded_scenario()
    before = snapshot(state)
    run_mixed_batch(state)
    assert snapshot(state) != before

    state.rollback()

    assert snapshot(state) == before
    assert state.effects == []
    assert state.version == 8
    assert states(state, "A1", "A2", "B1", "B2", "B3", "C1", "A3", "B4") == [
        SeatState.HELD,
        SeatState.HELD,
        SeatState.HELD,
        SeatState.HELD,
        SeatState.HELD,
        SeatState.RESERVED,
        SeatState.AVAILABLE,
        SeatState.AVAILABLE,
    ]
    assert state.next_expiry() == 60.0
    assert state.hold("h2") == Hold("h2", "u2", ("B1",), 10.0, 70.0, 310.0)
    assert state.hold("h4") is None
    assert state.held_seat_count("u1") == 2
    assert state.held_seat_count("u3") == 2


PROBES: list[tuple[Command, float]] = [
    (GetEvent(), 62.0),  # h1 is restored, and expires here in both
    (ListAvailable(), 62.0),
    (PlaceHold("u9", ("B1",), "p1"), 62.0),  # h2 holds B1
    (PlaceHold("u9", ("B2",), "p2"), 62.0),  # h3 holds B2 (held, not reserved)
    (PlaceHold("u3", ("A3", "A4", "B4"), "p3"), 62.0),  # u3: 2 held + 3 > 4
    (PlaceHold("u4", ("A3", "A4", "B4"), "p4"), 62.0),  # u4: 2 reserved + 3 > 4
    (PlaceHold("u1", ("A1", "A2", "A3", "A4"), "p5"), 62.0),  # u1: 0 seats after h1 expired
    (RefreshHold("u1", "h1"), 63.0),  # expired
    (RefreshHold("u2", "h2"), 63.0),  # 70 -> 123
    (ReleaseHold("u2", "h3"), 63.0),  # forbidden
    (Reserve("u3", "h3", "r9"), 64.0),
    (ReleaseHold("u1", "h4"), 64.0),  # never existed
    (GetEvent(), 64.0),
    (Expire(), 124.0),  # expires p5 (122) and h2 (123)
    (ListAvailable(section="B"), 125.0),
]


def test_after_rollback_commands_behave_as_before_the_batch() -> None:
    reference = loaded_scenario()
    state = loaded_scenario()
    run_mixed_batch(state)
    state.rollback()

    for command, now in PROBES:
        assert outcome(state, command, now) == outcome(reference, command, now), command
    assert state.effects == reference.effects
    assert state.commit() == reference.commit()
    assert snapshot(state) == snapshot(reference)
    assert state.version == 9


def committed_view(state: EventState) -> tuple[list[Hold], dict[str, int]]:
    holds, held = state.committed_holds()
    return sorted(holds, key=lambda hold: hold.hold_id), held


def test_committed_holds_leave_out_the_batch_in_progress() -> None:
    """What the Redis mirror may publish while a batch is being written: the state as of the
    last commit, which is also the state after a rollback."""
    state = loaded_scenario()
    before = committed_view(state)
    assert before == (
        sorted(state.live_holds(), key=lambda hold: hold.hold_id),
        {"u1": 2, "u2": 1, "u3": 2},
    )
    run_mixed_batch(state)
    assert committed_view(state) == before
    state.rollback()
    assert committed_view(state) == before
    run_mixed_batch(state)
    state.commit()
    assert committed_view(state) == (
        sorted(state.live_holds(), key=lambda hold: hold.hold_id),
        {"u1": 3, "u2": 1},
    )


def test_rollback_then_commit_bumps_version_once() -> None:
    state = loaded_scenario()
    run_mixed_batch(state)
    state.rollback()
    hold = place(state, "u9", "A4", hold_id="h7", now=30.0)
    assert state.commit() == [HoldCreated(hold)]
    assert state.version == 9


def test_rollback_of_several_refreshes_restores_next_expiry() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")  # 60
    place(state, "u2", "A2", hold_id="h2", now=1.0)  # 61
    state.commit()
    state.handle(RefreshHold("u1", "h1"), 20.0)  # 80
    state.handle(RefreshHold("u1", "h1"), 30.0)  # 90
    state.handle(RefreshHold("u2", "h2"), 40.0)  # 100
    assert state.next_expiry() == 90.0
    state.rollback()
    assert state.next_expiry() == 60.0
    assert state.handle(Expire(), 60.0) == (Hold("h1", "u1", ("A1",), 0.0, 60.0, 300.0),)
    assert state.handle(Expire(), 61.0) == (Hold("h2", "u2", ("A2",), 1.0, 61.0, 301.0),)


def test_rollback_of_an_empty_batch_changes_nothing() -> None:
    state = loaded_scenario()
    before = snapshot(state)
    state.handle(GetEvent(), 1.0)
    with pytest.raises(Forbidden):
        state.handle(ReleaseHold("u2", "h1"), 1.0)
    state.rollback()
    assert snapshot(state) == before


# --- Policy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hold_duration_s", "max_seats", "expected"),
    [
        (None, None, Policy(60.0, 4, 300.0)),
        (30, None, Policy(30.0, 4, 300.0)),
        (600, None, Policy(600.0, 4, 600.0)),  # the lifetime is never shorter than one hold
        (300, None, Policy(300.0, 4, 300.0)),
        (None, 2, Policy(60.0, 2, 300.0)),
        (None, 10, Policy(60.0, 10, 300.0)),
        (90, 1, Policy(90.0, 1, 300.0)),
    ],
)
def test_policy_for_event_applies_overrides(
    hold_duration_s: int | None, max_seats: int | None, expected: Policy
) -> None:
    info = EventInfo(
        event_id="ev1", name="x", hold_duration_s=hold_duration_s, max_seats_per_user=max_seats
    )
    policy = POLICY.for_event(info)
    assert policy == expected
    assert isinstance(policy.hold_duration, float)


def test_event_state_runs_with_the_event_policy() -> None:
    info = EventInfo(event_id="ev1", name="x", hold_duration_s=30, max_seats_per_user=2)
    state = make_state(info=info, policy=POLICY.for_event(info))
    hold = place(state, "u1", "A1", hold_id="h1", now=100.0)
    assert (hold.expires_at, hold.max_expires_at) == (130.0, 400.0)
    with pytest.raises(SeatLimitExceeded) as exc:
        state.handle(PlaceHold("u1", ("A2", "A3"), "h2"), 100.0)
    assert exc.value.details == {"limit": 2, "current": 1, "requested": 2}
    assert state.handle(Expire(), 130.0) == (hold,)


# --- construction from loaded holds and reservations ------------------------------------------

LOADED_H1 = Hold("h1", "u1", ("A1", "A2"), 0.0, 60.0, 300.0)
LOADED_H2 = Hold("h2", "u2", ("B1",), 10.0, 70.0, 310.0)
LOADED_R1 = Reservation("r1", "u1", ("C1",), 5.0)
LOADED_R2 = Reservation("r2", "u3", ("C2", "B4"), 6.0)


def loaded_state() -> EventState:
    return make_state(holds=[LOADED_H1, LOADED_H2], reservations=[LOADED_R1, LOADED_R2], version=3)


def test_construction_from_loaded_holds_and_reservations() -> None:
    state = loaded_state()
    assert state.version == 3
    assert state.effects == []
    assert states(state, "A1", "A2", "B1", "C1", "C2", "B4", "A3") == [
        SeatState.HELD,
        SeatState.HELD,
        SeatState.HELD,
        SeatState.RESERVED,
        SeatState.RESERVED,
        SeatState.RESERVED,
        SeatState.AVAILABLE,
    ]
    assert sorted(state.live_holds(), key=lambda h: h.hold_id) == [LOADED_H1, LOADED_H2]
    assert state.held_seat_count("u1") == 2
    assert state.held_seat_count("u3") == 0
    assert state.next_expiry() == 60.0
    assert state.seat_ids() == ALL_IDS
    summary = state.handle(GetEvent(), 1.0)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held, summary.reserved, summary.version) == (4, 3, 3, 3)


def test_construction_is_not_part_of_a_batch() -> None:
    state = loaded_state()
    before = snapshot(state)
    assert state.commit() == []
    assert state.version == 3
    state.rollback()  # must not undo the loading
    assert snapshot(state) == before


def test_loaded_holds_and_reservations_obey_the_rules() -> None:
    state = loaded_state()
    # u1: 2 held + 1 reserved = 3.
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u1", ("A3", "A4"), "h3"), 1.0)
    assert info.value.details == {"limit": 4, "current": 3, "requested": 2}
    # u3: 2 reserved.
    with pytest.raises(SeatLimitExceeded) as info:
        state.handle(PlaceHold("u3", ("A3", "A4", "B2"), "h3"), 1.0)
    assert info.value.details == {"limit": 4, "current": 2, "requested": 3}
    with pytest.raises(SeatUnavailable) as unavailable:
        state.handle(PlaceHold("u2", ("A1", "B1", "C1"), "h3"), 1.0)
    assert unavailable.value.details == {
        "conflicts": [
            {"seat_id": "A1", "state": "held", "yours": False},
            {"seat_id": "B1", "state": "held", "yours": True},
            {"seat_id": "C1", "state": "reserved"},
        ]
    }
    with pytest.raises(Forbidden):
        state.handle(RefreshHold("u2", "h1"), 1.0)
    refreshed = state.handle(RefreshHold("u1", "h1"), 30.0)
    assert refreshed == Hold("h1", "u1", ("A1", "A2"), 0.0, 90.0, 300.0)
    assert state.handle(Reserve("u2", "h2", "r3"), 31.0) == Reservation("r3", "u2", ("B1",), 31.0)


ALREADY_EXPIRED = Hold("old", "u1", ("A1", "A2"), 0.0, 60.0, 300.0)


def expired_probe_getevent(state: EventState) -> None:
    summary = state.handle(GetEvent(), 100.0)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held) == (10, 0)


def expired_probe_list(state: EventState) -> None:
    assert available_ids(state, 100.0) == ALL_IDS


def expired_probe_place(state: EventState) -> None:
    hold = place(state, "u2", "A1", "A2", hold_id="new", now=100.0)
    assert state.effects[1:] == [HoldCreated(hold)]


def expired_probe_expire(state: EventState) -> None:
    assert state.handle(Expire("old"), 100.0) == (ALREADY_EXPIRED,)


def expired_probe_refresh(state: EventState) -> None:
    with pytest.raises(HoldExpired):
        state.handle(RefreshHold("u1", "old"), 100.0)


def expired_probe_limit(state: EventState) -> None:
    place(state, "u1", "B1", "B2", "B3", "B4", hold_id="new", now=100.0)


@pytest.mark.parametrize(
    "probe",
    [
        expired_probe_getevent,
        expired_probe_list,
        expired_probe_place,
        expired_probe_expire,
        expired_probe_refresh,
        expired_probe_limit,
    ],
)
def test_already_expired_loaded_hold_is_expired_by_the_next_command(probe: Any) -> None:
    state = make_state(holds=[ALREADY_EXPIRED])
    assert state.seat_state("A1") is SeatState.HELD  # nothing ran yet
    assert state.next_expiry() == 60.0

    probe(state)

    assert state.effects[0] == HoldEnded(ALREADY_EXPIRED, EXPIRED)
    assert state.hold("old") is None
    assert state.seat_state("A1") is not SeatState.HELD or state.hold("new") is not None
    assert state.commit()[0] == HoldEnded(ALREADY_EXPIRED, EXPIRED)
    assert state.version == 1


# --- errors carry their wire metadata ---------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest, "invalid_request"),
        (EventClosed, "event_closed"),
        (Forbidden, "forbidden"),
        (HoldExpired, "hold_expired"),
        (HoldLifetimeExceeded, "hold_lifetime_exceeded"),
        (HoldNotFound, "hold_not_found"),
        (SeatLimitExceeded, "seat_limit_exceeded"),
        (SeatUnavailable, "seat_unavailable"),
        (UnknownSeat, "unknown_seat"),
    ],
)
def test_core_refusals_are_permanent_request_errors(error: type[RequestError], code: str) -> None:
    assert issubclass(error, RequestError)
    assert error.code == code
    assert error.temporary is False


# --- fixed defects (regression tests) ---------------------------------------------------------


@pytest.mark.parametrize(
    "end",
    [
        pytest.param((Expire(), 60.0), id="expired"),
        pytest.param((ReleaseHold("u1", "h9"), 1.0), id="released"),
        pytest.param((Reserve("u1", "h9", "r9"), 1.0), id="reserved"),
    ],
)
def test_rollback_forgets_holds_that_ended_in_the_batch(end: tuple[Command, float]) -> None:
    # The ended-hold tombstone is part of the batch too: after the rollback the hold id is
    # simply unknown again, as it was before the batch.
    reference = make_state()
    state = make_state()
    place(state, "u1", "A1", hold_id="h9")
    state.handle(*end)
    state.rollback()
    for command in (RefreshHold("u1", "h9"), ReleaseHold("u1", "h9"), Reserve("u1", "h9", "r")):
        assert outcome(state, command, 61.0) == outcome(reference, command, 61.0)
        assert outcome(state, command, 61.0) == ("HoldNotFound", {"hold_id": "h9"})


@pytest.mark.parametrize(
    ("end", "error", "details"),
    [
        pytest.param(
            (Expire(), 60.0), HoldExpired, {"hold_id": "h1"}, id="expired-before-the-batch"
        ),
        pytest.param(
            (ReleaseHold("u1", "h1"), 1.0),
            HoldNotFound,
            {"hold_id": "h1", "reason": "released"},
            id="released-before-the-batch",
        ),
    ],
)
def test_rollback_keeps_tombstones_of_committed_batches(
    end: tuple[Command, float], error: type[SeatdError], details: dict[str, Any]
) -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    state.handle(*end)
    state.commit()
    place(state, "u2", "A1", hold_id="h2", now=61.0)
    state.rollback()
    with pytest.raises(error) as info:
        state.handle(RefreshHold("u1", "h1"), 62.0)
    assert info.value.details == details


def test_hold_ended_in_a_rolled_back_batch_is_live_again() -> None:
    state = make_state()
    hold = place(state, "u1", "A1", hold_id="h1")
    state.commit()
    state.handle(ReleaseHold("u1", "h1"), 1.0)
    state.rollback()
    assert state.hold("h1") == hold
    assert refresh(state, "u1", "h1", 2.0).expires_at == 62.0
    assert reserve(state, "u1", "h1", "r1", 3.0).seat_ids == ("A1",)


@pytest.mark.parametrize("created_at", [0.0, 10.0])
def test_refresh_at_the_same_instant_returns_the_hold_unchanged(created_at: float) -> None:
    # E.g. place + refresh in one batch: nothing to extend, and not "lifetime exceeded".
    state = make_state()
    hold = place(state, "u1", "A1", hold_id="h1", now=created_at)
    assert refresh(state, "u1", "h1", created_at) == hold
    assert state.effects == [HoldCreated(hold)]
    state.commit()
    later = refresh(state, "u1", "h1", created_at + 5.0)
    assert refresh(state, "u1", "h1", created_at + 5.0) == later
    assert state.effects == [HoldExtended(later)]
    assert state.hold("h1") == later


def test_refresh_at_the_same_instant_at_the_cap_is_lifetime_exceeded() -> None:
    state = make_state()
    place(state, "u1", "A1", hold_id="h1")
    for t in (50.0, 100.0, 150.0, 200.0):
        refresh(state, "u1", "h1", t)
    capped = refresh(state, "u1", "h1", 240.0)
    assert capped.expires_at == capped.max_expires_at == 300.0
    with pytest.raises(HoldLifetimeExceeded):
        state.handle(RefreshHold("u1", "h1"), 240.0)


@pytest.mark.parametrize(
    "seat_ids",
    [
        pytest.param((), id="no-seats"),
        pytest.param(("A1", "A1"), id="same-seat-twice"),
        pytest.param(("B1", "A1", "C1", "A1"), id="repeat-among-others"),
    ],
)
@pytest.mark.parametrize("user", ["u1", "u9"])  # u9 has no seats, u1 holds A1
def test_place_hold_with_no_or_repeated_seats_is_invalid(
    seat_ids: tuple[str, ...], user: str
) -> None:
    state = standard_state()
    before = snapshot(state)
    with pytest.raises(InvalidRequest) as info:
        state.handle(PlaceHold(user, seat_ids, "hx"), 1.0)
    assert info.value.details == {"path": "$.seat_ids"}
    assert snapshot(state) == before
    assert state.hold("hx") is None


# --- regressions -------------------------------------------------------------------------------


def test_commit_returns_a_list_the_next_batch_does_not_change() -> None:
    state = make_state()
    committed = state.commit()
    assert committed == []
    place(state, "u1", "A1", hold_id="h1")
    assert committed == []


def test_list_available_refuses_a_limit_below_one() -> None:
    from seatd.core import EventInfo, ListAvailable, Policy, Seat
    from seatd.core.event_state import EventState
    from seatd.errors import InvalidRequest

    state = EventState(EventInfo("e", "E"), Policy(10, 4, 30), [Seat("A1")])
    with pytest.raises(InvalidRequest):
        state.handle(ListAvailable(limit=0), 0.0)


def test_a_live_hold_id_cannot_be_placed_again() -> None:
    from seatd.core import EventInfo, PlaceHold, Policy, Seat
    from seatd.core.event_state import EventState
    from seatd.errors import InvalidRequest

    state = EventState(EventInfo("e", "E"), Policy(10, 4, 30), [Seat("A1"), Seat("A2")])
    state.handle(PlaceHold("u1", ("A1",), "h1"), 0.0)
    with pytest.raises(InvalidRequest):
        state.handle(PlaceHold("u2", ("A2",), "h1"), 0.0)
    assert state.seat_state("A2").value == "available"


def test_live_holds_leave_the_garbage_collector_after_a_pass() -> None:
    """Live holds (placed, refreshed) add no object the collector keeps walking."""
    seats = [Seat(f"S{i}") for i in range(2000)]
    state = EventState(INFO, Policy(300.0, 2000, 1800.0), seats)
    before = tracked_objects()
    for i in range(2000):
        state.handle(PlaceHold(f"u{i % 7}", (f"S{i}",), f"h{i}"), 1000.0)
    state.commit()
    for i in range(0, 2000, 2):
        state.handle(RefreshHold(f"u{i % 7}", f"h{i}"), 1010.0)
    state.commit()
    assert len(state.live_holds()) == 2000
    assert tracked_objects() - before < 50


def test_live_holds_leave_nothing_for_the_next_young_pass() -> None:
    """Placed and refreshed, one seat or several, a live hold is a string and a float in two
    dicts of strings (see event_state._pack), and its expiry is queued in core.Deadlines: no
    object the next young pass has to walk. The flat tuples before left one per hold."""
    seats = [Seat(f"S{i}") for i in range(4000)]
    state = EventState(INFO, Policy(300.0, 4000, 1800.0), seats)
    places = [
        PlaceHold(f"u{i % 7}", (f"S{2 * i}", f"S{2 * i + 1}")[: 1 + i % 2], f"h{i}")
        for i in range(2000)
    ]
    refreshes = [RefreshHold(f"u{i % 7}", f"h{i}") for i in range(0, 2000, 2)]

    def place_all() -> None:
        for command in places:
            state.handle(command, 1000.0)
        state.commit()

    def refresh_half() -> None:
        for command in refreshes:
            state.handle(command, 1010.0)
        state.commit()

    assert young_objects(place_all) < 20
    assert young_objects(refresh_half) < 20
    assert len(state.live_holds()) == 2000


def test_holding_and_reserving_every_seat_grows_no_per_seat_table() -> None:
    """A dict growing with a sale's holds stalls the whole process each time it doubles (at
    87,382 entries: 5-18 ms per dict, BENCHMARKS.md round 16). A large event's per-seat tables
    are made full size when it loads, so no seat held, freed or reserved makes them grow."""
    count = 8192  # _PRESIZED_FROM: the smallest event whose tables are made full size
    seats = [Seat(f"S{i}") for i in range(count)]
    state = EventState(INFO, Policy(300.0, count, 1800.0), seats)
    tables = (state._seat_hold, state._seat_reservation)
    sizes = [sys.getsizeof(table) for table in tables]
    for i in range(count):
        state.handle(PlaceHold(f"u{i % 7}", (f"S{i}",), f"h{i}"), 1000.0)
    state.commit()
    for i in range(0, count, 2):
        state.handle(Reserve(f"u{i % 7}", f"h{i}", f"r{i}"), 1010.0)
    state.handle(Expire(), 1400.0)  # the other half expire
    state.commit()
    assert [sys.getsizeof(table) for table in tables] == sizes
    summary = state.handle(GetEvent(), 1400.0)
    assert isinstance(summary, EventSummary)
    assert (summary.available, summary.held, summary.reserved) == (count // 2, 0, count // 2)


def test_a_live_hold_comes_back_exactly_as_placed_whatever_its_ids_and_times() -> None:
    """Live holds are kept packed (bytes: three doubles, then the ids in UTF-8): ids in any
    script and times that no short decimal writes come back unchanged, refreshed or not, and
    so does a reload of what was committed."""
    seat_ids = ("Ü-1", "🎫 2", "座席3", "A,B;C")
    seats = [Seat(sid) for sid in seat_ids]
    policy = Policy(300.1 / 3, 8, 1800.0 / 7)
    state = EventState(INFO, policy, seats)
    now = 1_700_000_000.123456789 / 3
    placed = state.handle(PlaceHold("josé 🎟", seat_ids[:3], "h-1"), now)
    other = state.handle(PlaceHold("ünïcødé", seat_ids[3:], "h-2"), now)
    state.commit()
    assert state.hold("h-1") == placed and state.hold("h-2") == other
    assert placed.seat_ids == seat_ids[:3] and placed.user_id == "josé 🎟"
    refreshed = state.handle(RefreshHold("josé 🎟", "h-1"), now + 1 / 3)
    state.commit()
    assert (
        state.hold("h-1") == refreshed
        and refreshed.expires_at == now + 1 / 3 + policy.hold_duration
    )
    assert refreshed.created_at == now and refreshed.max_expires_at == placed.max_expires_at
    assert sorted(state.live_holds()) == sorted([refreshed, other])
    again = EventState(INFO, policy, seats, holds=state.committed_holds()[0])
    assert sorted(again.live_holds()) == sorted([refreshed, other])
    assert again.next_expiry() == other.expires_at
