"""Stateful property test of ``EventState`` against a small, independent reference model.

A hypothesis state machine drives one event (12 seats, 4 users, limit 4, short holds) with random
PlaceHold / RefreshHold / ReleaseHold / Reserve / Expire / queries, a monotonic fake clock and
random batch boundaries ending in commit or rollback. Every command's outcome (result or
refusal, and the effects it adds to the batch) is compared with the reference model, and the
seat invariants are checked after every step.
"""

from __future__ import annotations

import copy
import unittest.mock
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from seatd.core import event_state
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
    Forbidden,
    HoldExpired,
    HoldLifetimeExceeded,
    HoldNotFound,
    InvalidRequest,
    SeatdError,
    SeatLimitExceeded,
    SeatUnavailable,
    UnknownSeat,
)

SEATS: tuple[Seat, ...] = tuple(
    Seat(f"S{i:02d}", section="AB"[i // 6], category="vip" if i % 4 == 0 else "std")
    for i in range(12)
)
SEAT_IDS: tuple[str, ...] = tuple(seat.seat_id for seat in SEATS)
USERS = ("u1", "u2", "u3", "u4")
LIMIT = 4
DURATION = 4.0
LIFETIME = 7.0
INFO = EventInfo(event_id="ev-prop", name="Property test")
POLICY = Policy(hold_duration=DURATION, max_seats_per_user=LIMIT, max_hold_lifetime=LIFETIME)
GHOST = "never-created"

Outcome = tuple[str, Any]


@dataclass
class Model:
    """What the event should look like: plain dicts, no cleverness."""

    holds: dict[str, Hold] = field(default_factory=dict)
    reserved: dict[str, str] = field(default_factory=dict)  # seat id -> user id
    ended: dict[str, HoldEndReason] = field(default_factory=dict)
    version: int = 0

    def held_by(self, seat_id: str) -> Hold | None:
        for hold in self.holds.values():
            if seat_id in hold.seat_ids:
                return hold
        return None

    def seat_state(self, seat_id: str) -> SeatState:
        if seat_id in self.reserved:
            return SeatState.RESERVED
        if self.held_by(seat_id) is not None:
            return SeatState.HELD
        return SeatState.AVAILABLE

    def held_count(self, user: str) -> int:
        return sum(len(h.seat_ids) for h in self.holds.values() if h.user_id == user)

    def reserved_count(self, user: str) -> int:
        return sum(1 for owner in self.reserved.values() if owner == user)

    def limit_count(self, user: str) -> int:
        return self.held_count(user) + self.reserved_count(user)

    def expire_due(self, now: float) -> list[Hold]:
        due = [h for h in self.holds.values() if h.expires_at <= now]
        for hold in due:
            del self.holds[hold.hold_id]
            self.ended[hold.hold_id] = HoldEndReason.EXPIRED
        return due

    def lookup(self, user: str, hold_id: str) -> Hold | Outcome:
        """The live hold ``user`` may act on, or the refusal as (error name, details)."""
        hold = self.holds.get(hold_id)
        if hold is None:
            reason = self.ended.get(hold_id)
            if reason is HoldEndReason.EXPIRED:
                return (HoldExpired.__name__, {"hold_id": hold_id})
            if reason is not None:
                return (HoldNotFound.__name__, {"hold_id": hold_id, "reason": reason.value})
            return (HoldNotFound.__name__, {"hold_id": hold_id})
        if hold.user_id != user:
            return (Forbidden.__name__, None)
        return hold


def observe(state: EventState) -> dict[str, Any]:
    """The full observable state, read without running a command."""
    return {
        "seats": {sid: state.seat_state(sid) for sid in SEAT_IDS},
        "holds": {h.hold_id: h for h in state.live_holds()},
        "held": {user: state.held_seat_count(user) for user in USERS},
        "version": state.version,
        "next_expiry": state.next_expiry(),
        "effects": list(state.effects),
    }


def run(state: EventState, command: Command, now: float) -> Outcome:
    try:
        return ("ok", state.handle(command, now))
    except SeatdError as exc:
        return (type(exc).__name__, exc.details)


def expiry_key(hold: Hold) -> tuple[float, str]:
    return (hold.expires_at, hold.hold_id)


def assert_expired(effects: list[Effect], expired: list[Hold]) -> None:
    """``effects`` are exactly the expiries of ``expired``, in any order."""
    assert len(effects) == len(expired), (effects, expired)
    assert set(effects) == {HoldEnded(hold, HoldEndReason.EXPIRED) for hold in expired}


class EventStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = self.new_state()
        self.model = Model()
        self.now = 0.0
        self.counter = 0
        self.owner: dict[str, str] = {}
        self.known_ids: list[str] = [GHOST]
        self.start_counter = 0
        self.batch_effects: list[Effect] = []
        self.start_model = copy.deepcopy(self.model)
        self.start_observed = observe(self.state)
        # Time of the last command: no live hold may be due at that time (None after rollback,
        # which may restore holds that a rolled-back command had expired).
        self.command_now: float | None = None

    # --- set-up -------------------------------------------------------------------------------

    def new_state(
        self,
        holds: list[Hold] | None = None,
        reservations: list[Reservation] | None = None,
        version: int = 0,
    ) -> EventState:
        return EventState(INFO, POLICY, SEATS, holds or [], reservations or [], version)

    @initialize(preload=st.booleans())
    def load(self, preload: bool) -> None:
        """Optionally start from loaded data, including a hold that is already past due."""
        if not preload:
            return
        self.now = 10.0
        reservation = Reservation("r-pre", "u4", ("S10", "S11"), 0.0)
        holds = [
            Hold("pre-due", "u1", ("S00", "S01"), 2.0, 6.0, 9.0),  # already expired at t=10
            Hold("pre-live", "u2", ("S05",), 8.0, 12.0, 15.0),
        ]
        self.state = self.new_state(holds, [reservation], version=5)
        self.model = Model(
            holds={h.hold_id: h for h in holds},
            reserved={sid: reservation.user_id for sid in reservation.seat_ids},
            version=5,
        )
        for hold in holds:
            self.owner[hold.hold_id] = hold.user_id
            self.known_ids.append(hold.hold_id)
        self.start_model = copy.deepcopy(self.model)
        self.start_observed = observe(self.state)

    # --- helpers ------------------------------------------------------------------------------

    def new_hold_id(self) -> str:
        self.counter += 1
        return f"h{self.counter}"

    def choose_hold(self, data: st.DataObject) -> tuple[str, str]:
        """A hold id (mostly a live one) and a user (mostly its owner)."""
        ids: st.SearchStrategy[str] = st.sampled_from(self.known_ids)
        live = [h.hold_id for h in self.model.holds.values() if h.expires_at > self.now]
        if live:
            ids = st.sampled_from(live) | st.sampled_from(live) | st.sampled_from(live) | ids
        hold_id = data.draw(ids, label="hold_id")
        owner = self.owner.get(hold_id, "u1")
        user = data.draw(st.sampled_from((*[owner] * 5, *USERS)), label="user")
        return user, hold_id

    def execute(
        self,
        command: Command,
        expected: Outcome,
        expected_effects: list[Effect],
        expired: list[Hold],
    ) -> Outcome:
        """Run ``command`` and check its outcome and the effects it added to the batch."""
        before = len(self.state.effects)
        actual = run(self.state, command, self.now)
        self.command_now = self.now
        event(f"{type(command).__name__}: {actual[0]}")
        new_effects = self.state.effects[before:]
        assert actual == expected, (command, actual, expected)
        # Due holds are expired first (their relative order is not part of the contract).
        head, tail = new_effects[: len(expired)], new_effects[len(expired) :]
        assert_expired(head, expired)
        assert tail == expected_effects, (command, tail, expected_effects)
        self.batch_effects.extend(new_effects)
        for hold in expired:
            assert self.state.hold(hold.hold_id) is None
        return actual

    # --- time ---------------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 6.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    # --- commands -----------------------------------------------------------------------------

    @rule(
        user=st.sampled_from(USERS),
        seats=st.lists(st.sampled_from(SEAT_IDS), min_size=1, max_size=3, unique=True),
    )
    def place_hold(self, user: str, seats: list[str]) -> None:
        self.check_place_hold(user, seats)

    @rule(user=st.sampled_from(USERS), data=st.data())
    def place_hold_on_free_seats(self, user: str, data: st.DataObject) -> None:
        free = [sid for sid in SEAT_IDS if self.model.seat_state(sid) is SeatState.AVAILABLE]
        if not free:
            return
        seats = data.draw(
            st.lists(st.sampled_from(free), min_size=1, max_size=3, unique=True), label="seats"
        )
        self.check_place_hold(user, seats)

    @rule(
        user=st.sampled_from(USERS),
        seats=st.lists(st.sampled_from((*SEAT_IDS[:4], "ZZ")), min_size=0, max_size=3),
    )
    def place_hold_any(self, user: str, seats: list[str]) -> None:
        """Seat lists that may be empty, repeat a seat or name an unknown one."""
        self.check_place_hold(user, seats)

    def check_place_hold(self, user: str, seats: list[str]) -> None:
        hold_id = self.new_hold_id()
        model = self.model
        expired = model.expire_due(self.now)
        effects: list[Effect] = []
        expected: Outcome
        if not seats or len(set(seats)) != len(seats):
            expected = (InvalidRequest.__name__, {"path": "$.seat_ids"})
            self.execute(PlaceHold(user, tuple(seats), hold_id), expected, effects, expired)
            return
        unknown = [sid for sid in seats if sid not in SEAT_IDS]
        if unknown:
            expected = (UnknownSeat.__name__, {"seat_ids": unknown})
            self.execute(PlaceHold(user, tuple(seats), hold_id), expected, effects, expired)
            return
        conflicts: list[dict[str, Any]] = []
        for sid in seats:
            if sid in model.reserved:
                conflicts.append({"seat_id": sid, "state": "reserved"})
            else:
                holder = model.held_by(sid)
                if holder is not None:
                    conflicts.append(
                        {"seat_id": sid, "state": "held", "yours": holder.user_id == user}
                    )
        current = model.limit_count(user)
        if conflicts:
            expected = (SeatUnavailable.__name__, {"conflicts": conflicts})
        elif current + len(seats) > LIMIT:
            expected = (
                SeatLimitExceeded.__name__,
                {"limit": LIMIT, "current": current, "requested": len(seats)},
            )
        else:
            hold = Hold(
                hold_id, user, tuple(seats), self.now, self.now + DURATION, self.now + LIFETIME
            )
            expected = ("ok", hold)
            effects = [HoldCreated(hold)]
            model.holds[hold_id] = hold
            self.owner[hold_id] = user
            if hold_id not in self.known_ids:
                self.known_ids.append(hold_id)
        self.execute(PlaceHold(user, tuple(seats), hold_id), expected, effects, expired)

    @rule(data=st.data())
    def refresh_hold(self, data: st.DataObject) -> None:
        self.check_refresh(*self.choose_hold(data))

    def check_refresh(self, user: str, hold_id: str) -> None:
        model = self.model
        expired = model.expire_due(self.now)
        found = model.lookup(user, hold_id)
        effects: list[Effect] = []
        expected: Outcome
        target = (
            0.0 if not isinstance(found, Hold) else min(self.now + DURATION, found.max_expires_at)
        )
        if not isinstance(found, Hold):
            expected = found
        elif found.expires_at >= found.max_expires_at:
            expected = (HoldLifetimeExceeded.__name__, {"max_expires_at": found.max_expires_at})
        elif target <= found.expires_at:
            expected = ("ok", found)  # refreshed again at the same instant: nothing changes
        else:
            refreshed = Hold(
                found.hold_id,
                found.user_id,
                found.seat_ids,
                found.created_at,
                target,
                found.max_expires_at,
            )
            expected = ("ok", refreshed)
            effects = [HoldExtended(refreshed)]
            model.holds[hold_id] = refreshed
        self.execute(RefreshHold(user, hold_id), expected, effects, expired)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 3.0]), data=st.data())
    def keep_alive(self, dt: float, data: st.DataObject) -> None:
        """A little later, the owner refreshes a live hold: holds reach their maximum lifetime."""
        self.now += dt
        live = [h for h in self.model.holds.values() if h.expires_at > self.now]
        if live:
            hold = data.draw(st.sampled_from(live), label="hold")
            self.check_refresh(hold.user_id, hold.hold_id)

    @rule(data=st.data())
    def release_hold(self, data: st.DataObject) -> None:
        user, hold_id = self.choose_hold(data)
        model = self.model
        expired = model.expire_due(self.now)
        found = model.lookup(user, hold_id)
        effects: list[Effect] = []
        expected: Outcome
        if not isinstance(found, Hold):
            expected = found
        else:
            expected = ("ok", HoldReleased(hold_id, found.seat_ids))
            effects = [HoldEnded(found, HoldEndReason.RELEASED)]
            del model.holds[hold_id]
            model.ended[hold_id] = HoldEndReason.RELEASED
        self.execute(ReleaseHold(user, hold_id), expected, effects, expired)
        if expected[0] == "ok":
            for sid in expected[1].seat_ids:
                assert self.state.seat_state(sid) is SeatState.AVAILABLE

    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        user, hold_id = self.choose_hold(data)
        reservation_id = f"r-{hold_id}-{self.counter}"
        model = self.model
        expired = model.expire_due(self.now)
        found = model.lookup(user, hold_id)
        effects: list[Effect] = []
        expected: Outcome
        if not isinstance(found, Hold):
            expected = found
        else:
            reservation = Reservation(reservation_id, user, found.seat_ids, self.now)
            expected = ("ok", reservation)
            effects = [HoldEnded(found, HoldEndReason.RESERVED), ReservationCreated(reservation)]
            del model.holds[hold_id]
            model.ended[hold_id] = HoldEndReason.RESERVED
            for sid in found.seat_ids:
                model.reserved[sid] = user
        self.execute(Reserve(user, hold_id, reservation_id), expected, effects, expired)

    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        hint = data.draw(st.none() | st.sampled_from(self.known_ids), label="hint")
        due = self.model.expire_due(self.now)
        before = len(self.state.effects)
        result = self.state.handle(Expire(hint), self.now)
        self.command_now = self.now
        assert isinstance(result, tuple)
        assert sorted(result, key=expiry_key) == sorted(due, key=expiry_key)
        new_effects = self.state.effects[before:]
        assert new_effects == [HoldEnded(h, HoldEndReason.EXPIRED) for h in result]
        self.batch_effects.extend(new_effects)
        for hold in due:
            assert self.state.hold(hold.hold_id) is None
            for sid in hold.seat_ids:
                assert self.state.seat_state(sid) is SeatState.AVAILABLE

    @rule(
        section=st.sampled_from([None, "A", "B"]),
        category=st.sampled_from([None, "vip", "std"]),
        limit=st.integers(min_value=1, max_value=5),
    )
    def list_available(self, section: str | None, category: str | None, limit: int) -> None:
        model = self.model
        expired = model.expire_due(self.now)
        wanted = [
            seat.seat_id
            for seat in SEATS
            if model.seat_state(seat.seat_id) is SeatState.AVAILABLE
            and (section is None or seat.section == section)
            and (category is None or seat.category == category)
        ]
        before = len(self.state.effects)
        pages: list[str] = []
        after: str | None = None
        for _ in range(len(SEATS) + 1):
            result = self.state.handle(ListAvailable(section, category, limit, after), self.now)
            assert isinstance(result, AvailableSeats)
            assert result.total_available == len(wanted)
            assert len(result.seats) <= limit
            pages.extend(seat.seat_id for seat in result.seats)
            if result.next_after is None:
                break
            assert result.seats and result.next_after == result.seats[-1].seat_id
            after = result.next_after
        self.command_now = self.now
        assert pages == wanted
        new_effects = self.state.effects[before:]
        assert_expired(new_effects, expired)
        self.batch_effects.extend(new_effects)

    @rule()
    def get_event(self) -> None:
        model = self.model
        expired = model.expire_due(self.now)
        held = sum(len(h.seat_ids) for h in model.holds.values())
        reserved = len(model.reserved)
        pending = bool(self.batch_effects) or bool(expired)
        expected = EventSummary(
            info=INFO,
            total_seats=len(SEATS),
            available=len(SEATS) - held - reserved,
            held=held,
            reserved=reserved,
            version=model.version + (1 if pending else 0),
            hold_duration=DURATION,
            max_seats_per_user=LIMIT,
        )
        self.execute(GetEvent(), ("ok", expected), [], expired)

    @rule()
    def get_snapshot(self) -> None:
        model = self.model
        expired = model.expire_due(self.now)
        pending = bool(self.batch_effects) or bool(expired)
        before = len(self.state.effects)
        result = self.state.handle(GetSnapshot(), self.now)
        self.command_now = self.now
        assert isinstance(result, SeatSnapshot)
        assert result.version == model.version + (1 if pending else 0)
        assert result.total_seats == len(SEATS)
        assert sorted(result.held) == sorted(
            (sid, hold.expires_at) for hold in model.holds.values() for sid in hold.seat_ids
        )
        assert sorted(result.reserved) == sorted(model.reserved)
        new_effects = self.state.effects[before:]
        assert_expired(new_effects, expired)
        self.batch_effects.extend(new_effects)

    # --- batch boundaries ---------------------------------------------------------------------

    def start_batch(self) -> None:
        self.start_counter = self.counter
        self.batch_effects = []
        self.start_model = copy.deepcopy(self.model)
        self.start_observed = observe(self.state)

    @rule()
    def commit(self) -> None:
        assert self.state.effects == self.batch_effects
        effects = self.state.commit()
        assert effects == self.batch_effects
        event(f"commit: {'changes' if effects else 'empty'}")
        if effects:
            self.model.version += 1
        assert self.state.version == self.model.version
        assert self.state.effects == []
        self.start_batch()

    @rule()
    def rollback(self) -> None:
        event(f"rollback: {'changes' if self.state.effects else 'empty'}")
        self.state.rollback()
        assert observe(self.state) == {**self.start_observed, "effects": []}
        self.model = copy.deepcopy(self.start_model)
        # The ids the rolled-back batch created are unknown again: a retry may use them anew.
        self.counter = self.start_counter
        self.command_now = None
        self.start_batch()

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def seats_match_the_model(self) -> None:
        for sid in SEAT_IDS:
            assert self.state.seat_state(sid) is self.model.seat_state(sid), sid
        assert {h.hold_id: h for h in self.state.live_holds()} == self.model.holds

    @invariant()
    def a_seat_has_at_most_one_owner(self) -> None:
        taken: dict[str, str] = {}
        for hold in self.state.live_holds():
            for sid in hold.seat_ids:
                assert sid not in taken, f"{sid} in holds {taken[sid]} and {hold.hold_id}"
                taken[sid] = hold.hold_id
                assert self.state.seat_state(sid) is SeatState.HELD  # not also reserved
        for sid in SEAT_IDS:
            if self.state.seat_state(sid) is SeatState.HELD:
                assert sid in taken

    @invariant()
    def nobody_exceeds_the_limit(self) -> None:
        for user in USERS:
            held = sum(len(h.seat_ids) for h in self.state.live_holds() if h.user_id == user)
            assert self.state.held_seat_count(user) == held
            reserved = [
                sid
                for sid, owner in self.model.reserved.items()
                if owner == user and self.state.seat_state(sid) is SeatState.RESERVED
            ]
            assert held + len(reserved) <= LIMIT, user

    @invariant()
    def no_live_hold_is_past_due_after_a_command(self) -> None:
        if self.command_now is None:
            return
        for hold in self.state.live_holds():
            assert hold.expires_at > self.command_now, hold
            assert hold.created_at < hold.expires_at <= hold.max_expires_at

    @invariant()
    def version_and_next_expiry(self) -> None:
        assert self.state.version == self.model.version
        expiries = [h.expires_at for h in self.model.holds.values()]
        assert self.state.next_expiry() == (min(expiries) if expiries else None)


TestEventStateMachine = EventStateMachine.TestCase
TestEventStateMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class FullSizeTablesMachine(EventStateMachine):
    """The same rules on an event whose per-seat tables are made full size at load, as a
    large event's are (every seat present, None when free): the other way they are kept."""

    def new_state(self, *args: Any, **kwargs: Any) -> EventState:
        with unittest.mock.patch.object(event_state, "_PRESIZED_FROM", 1):
            return super().new_state(*args, **kwargs)


TestFullSizeTablesMachine = FullSizeTablesMachine.TestCase
TestFullSizeTablesMachine.settings = settings(TestEventStateMachine.settings, max_examples=60)
