"""The seat rules of one event, in memory, pure and deterministic given ``now``.

The actor applies a whole batch of commands to an ``EventState``, persists the effects the batch
produced, and then calls ``commit()``; if persisting fails it calls ``rollback()``, which undoes
every change of the batch. Each command is all-or-nothing: a handler checks everything first and
only then mutates, so a refused command leaves no trace.

Invariants (checked by the property tests):
- a seat is in at most one live hold and is never both held and reserved;
- nobody holds plus reserves more than the event's per-user limit;
- a hold past its ``expires_at`` is never observed by a command: every command first expires
  what is due, so expiry is exact whatever the timers or Redis notices do.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

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
    Result,
    SeatSnapshot,
)
from seatd.core.deadlines import Deadlines
from seatd.core.model import (
    EVENT_STATUSES,
    EventInfo,
    Hold,
    HoldEndReason,
    Policy,
    Reservation,
    Seat,
    SeatState,
)
from seatd.core.shards import ShardedDict, shards_for
from seatd.errors import (
    EventClosed,
    Forbidden,
    HoldExpired,
    HoldLifetimeExceeded,
    HoldNotFound,
    InvalidRequest,
    SeatLimitExceeded,
    SeatUnavailable,
    UnknownSeat,
)

__all__ = ["EventState"]

_MISSING: Any = object()
# How many ended holds to remember, so a late request gets "hold_expired" rather than a bare
# "hold_not_found". Memory only: after a restart such a hold is simply not found.
_TOMBSTONES = 4096
# Seats from which an event's per-seat tables are made full size at load (see _per_seat).
_PRESIZED_FROM = 8192


class _Journal:
    """Undo log of dict writes made during a batch."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[tuple[dict[Any, Any], Any, Any]] = []

    def set(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        self._entries.append((mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def delete(self, mapping: dict[Any, Any], key: Any) -> None:
        self._entries.append((mapping, key, mapping.pop(key)))

    def add(self, counts: dict[str, int], key: str, delta: int) -> None:
        value = counts.get(key, 0) + delta
        if value:
            self.set(counts, key, value)
        else:
            self.delete(counts, key)

    def before(self, mapping: dict[Any, Any]) -> dict[Any, Any]:
        """A copy of ``mapping`` as it was before the batch's writes."""
        copy = dict(mapping)
        for written, key, previous in reversed(self._entries):
            if written is mapping:
                if previous is _MISSING:
                    copy.pop(key, None)
                else:
                    copy[key] = previous
        return copy

    def rollback(self) -> None:
        for mapping, key, previous in reversed(self._entries):
            if previous is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = previous
        self._entries.clear()

    def clear(self) -> None:
        self._entries.clear()


class EventState:
    """Seats, live holds and reservations of one event, and the rules that change them."""

    def __init__(
        self,
        info: EventInfo,
        policy: Policy,
        seats: Sequence[Seat],
        holds: Iterable[Hold] = (),
        reservations: Iterable[Reservation] = (),
        version: int = 0,
    ) -> None:
        self.info = info
        self.policy = policy
        self.version = version
        self._seats: dict[str, Seat] = {seat.seat_id: seat for seat in seats}
        self._order: list[str] = [seat.seat_id for seat in seats]
        self._position: dict[str, int] = {sid: i for i, sid in enumerate(self._order)}
        # Live holds by id, each packed in bytes (see _pack); sharded, like the per-seat ids
        # below made full size, so that no table of a sale's holds grows all at once.
        self._holds: ShardedDict[str, bytes] = ShardedDict(shards_for(len(self._seats)))
        # Each seat's live hold id and reservation id; None (or no entry) when it has none.
        # A large event's are made with every seat at once, so they never grow: a dict
        # growing with a sale's holds stalls the whole process each time it doubles
        # (BENCHMARKS.md, round 16). A small one's start empty (most events are small and
        # stay loaded, and such a dict regrows in no time).
        self._seat_hold: dict[str, str | None] = _per_seat(self._seats)
        self._seat_reservation: dict[str, str | None] = _per_seat(self._seats)
        self._held_seats = 0
        self._reserved_seats = 0
        self._user_seats: dict[str, int] = {}  # held + reserved, what the limit counts
        self._user_held: dict[str, int] = {}
        self._deadlines = Deadlines()  # (expires_at, hold id), stale ones skipped
        self._ended: OrderedDict[str, HoldEndReason] | None = None  # made when a hold ends
        self._effects: list[Effect] = []
        self._journal = _Journal()
        for reservation in reservations:
            for sid in reservation.seat_ids:
                self._seat_reservation[sid] = reservation.reservation_id
            self._reserved_seats += len(reservation.seat_ids)
            self._journal.add(self._user_seats, reservation.user_id, len(reservation.seat_ids))
        for hold in holds:
            self._add_hold(hold)
        self._journal.clear()
        self._queue_expiries()  # at once, in time order: loaded holds come in any order

    # --- batch lifecycle ------------------------------------------------------------------

    def handle(self, command: Command, now: float) -> Result:
        """Apply one command; raise a ``RequestError`` (and change nothing) if it is refused."""
        return _HANDLERS[type(command)](self, command, now)

    def change_status(self, status: str) -> None:
        """An operator opened or closed the event (already stored: not an effect). A closed
        event refuses new holds from the next command on; what it holds or reserved stays."""
        if status not in EVENT_STATUSES:
            raise ValueError(f"an event is {' or '.join(EVENT_STATUSES)}, not {status!r}")
        self.info = dataclasses.replace(self.info, status=status)

    @property
    def effects(self) -> list[Effect]:
        """What the current batch changed, in order (empty when it changed nothing)."""
        return self._effects

    def commit(self) -> list[Effect]:
        """The batch is durable: keep its changes and advance the version if it changed seats."""
        effects, self._effects = self._effects, []
        if effects:
            self.version += 1
        self._journal.clear()
        ended = self._ended
        while ended is not None and len(ended) > _TOMBSTONES:
            ended.popitem(last=False)
        return effects

    def rollback(self) -> None:
        """The batch could not be persisted: forget every change it made."""
        self._journal.rollback()
        self._effects = []
        self._queue_expiries()
        self._held_seats = _count_set(self._seat_hold)
        self._reserved_seats = _count_set(self._seat_reservation)

    # --- queries --------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        """When the earliest live hold expires (stale entries are dropped on the way)."""
        deadlines = self._deadlines
        holds = self._holds
        while deadlines:
            expires_at, hold_id = deadlines.peek()
            packed = holds.get(hold_id)
            if packed is not None and _expiry(packed) == expires_at:
                return expires_at
            deadlines.pop()
        return None

    def seat_state(self, seat_id: str) -> SeatState:
        if self._seat_reservation.get(seat_id) is not None:
            return SeatState.RESERVED
        if self._seat_hold.get(seat_id) is not None:
            return SeatState.HELD
        return SeatState.AVAILABLE

    def hold(self, hold_id: str) -> Hold | None:
        packed = self._holds.get(hold_id)
        return None if packed is None else _unpack(hold_id, packed)

    def live_holds(self) -> list[Hold]:
        return [_unpack(hold_id, packed) for hold_id, packed in self._holds.items()]

    def held_seat_count(self, user_id: str) -> int:
        return self._user_held.get(user_id, 0)

    def committed_holds(self) -> tuple[list[Hold], dict[str, int]]:
        """The live holds and the seats each user holds as of the last commit: while a batch
        is being written, what PostgreSQL has until that write commits."""
        journal = self._journal
        holds = [
            _unpack(hold_id, packed)
            for shard in self._holds.shards
            for hold_id, packed in journal.before(shard).items()
        ]
        return holds, journal.before(self._user_held)

    def seat_ids(self) -> list[str]:
        return list(self._order)

    # --- command handlers -----------------------------------------------------------------

    def _place_hold(self, cmd: PlaceHold, now: float) -> Hold:
        self._expire_due(now)
        if self.info.status != "open":
            raise EventClosed(f"event {self.info.event_id} is {self.info.status}")
        if cmd.hold_id in self._holds:
            raise InvalidRequest(f"hold id {cmd.hold_id} is already in use")
        if not cmd.seat_ids or len(set(cmd.seat_ids)) != len(cmd.seat_ids):
            raise InvalidRequest(
                "seat_ids must name at least one seat, each once", details={"path": "$.seat_ids"}
            )
        unknown = [sid for sid in cmd.seat_ids if sid not in self._seats]
        if unknown:
            raise UnknownSeat(
                f"no such seat in event {self.info.event_id}: {', '.join(unknown)}",
                details={"seat_ids": unknown},
            )
        conflicts = self._conflicts(cmd.seat_ids, cmd.user_id)
        if conflicts:
            names = ", ".join(f"{c['seat_id']} ({c['state']})" for c in conflicts)
            raise SeatUnavailable(f"not available: {names}", details={"conflicts": conflicts})
        limit = self.policy.max_seats_per_user
        current = self._user_seats.get(cmd.user_id, 0)
        if current + len(cmd.seat_ids) > limit:
            raise SeatLimitExceeded(
                f"at most {limit} seats per user in this event: {current} already held or "
                f"reserved, {len(cmd.seat_ids)} requested",
                details={"limit": limit, "current": current, "requested": len(cmd.seat_ids)},
            )
        hold = Hold(
            hold_id=cmd.hold_id,
            user_id=cmd.user_id,
            seat_ids=cmd.seat_ids,
            created_at=now,
            expires_at=now + self.policy.hold_duration,
            max_expires_at=now + self.policy.max_hold_lifetime,
        )
        self._add_hold(hold)
        self._deadlines.push(hold.expires_at, hold.hold_id)
        self._effects.append(HoldCreated(hold))
        return hold

    def _refresh(self, cmd: RefreshHold, now: float) -> Hold:
        self._expire_due(now)
        hold = self._owned_live_hold(cmd.user_id, cmd.hold_id)
        expires_at = min(now + self.policy.hold_duration, hold.max_expires_at)
        if expires_at <= hold.expires_at:
            if hold.expires_at >= hold.max_expires_at:
                raise HoldLifetimeExceeded(
                    f"hold {hold.hold_id} cannot be extended past its maximum lifetime",
                    details={"max_expires_at": hold.max_expires_at},
                )
            return hold  # refreshed again at the same instant: nothing to extend
        refreshed = Hold(
            hold.hold_id,
            hold.user_id,
            hold.seat_ids,
            hold.created_at,
            expires_at,
            hold.max_expires_at,
        )
        self._journal.set(self._holds.shard(hold.hold_id), hold.hold_id, _pack(refreshed))
        self._deadlines.push(expires_at, hold.hold_id)
        self._effects.append(HoldExtended(refreshed))
        return refreshed

    def _release(self, cmd: ReleaseHold, now: float) -> HoldReleased:
        self._expire_due(now)
        hold = self._owned_live_hold(cmd.user_id, cmd.hold_id)
        self._end_hold(hold, HoldEndReason.RELEASED)
        return HoldReleased(hold.hold_id, hold.seat_ids)

    def _reserve(self, cmd: Reserve, now: float) -> Reservation:
        self._expire_due(now)
        hold = self._owned_live_hold(cmd.user_id, cmd.hold_id)
        self._end_hold(hold, HoldEndReason.RESERVED)
        reservation = Reservation(cmd.reservation_id, hold.user_id, hold.seat_ids, now)
        for sid in hold.seat_ids:
            self._journal.set(self._seat_reservation, sid, reservation.reservation_id)
        self._reserved_seats += len(hold.seat_ids)
        self._effects.append(ReservationCreated(reservation))
        return reservation

    def _list_available(self, cmd: ListAvailable, now: float) -> AvailableSeats:
        self._expire_due(now)
        if cmd.limit < 1:
            raise InvalidRequest("limit must be at least 1", details={"path": "$.limit"})
        start = 0
        if cmd.after is not None:
            position = self._position.get(cmd.after)
            if position is None:
                raise UnknownSeat(f"no such seat: {cmd.after}", details={"seat_ids": [cmd.after]})
            start = position + 1
        page: list[Seat] = []
        next_after: str | None = None
        total = 0
        held, reserved = self._seat_hold.get, self._seat_reservation.get
        for index, sid in enumerate(self._order):
            if held(sid) is not None or reserved(sid) is not None:
                continue
            seat = self._seats[sid]
            if cmd.section is not None and seat.section != cmd.section:
                continue
            if cmd.category is not None and seat.category != cmd.category:
                continue
            total += 1
            if index < start:
                continue
            if len(page) < cmd.limit:
                page.append(seat)
            elif next_after is None:
                next_after = page[-1].seat_id
        return AvailableSeats(tuple(page), next_after, total)

    def _summary(self, cmd: GetEvent, now: float) -> EventSummary:
        self._expire_due(now)
        held, reserved = self._held_seats, self._reserved_seats
        return EventSummary(
            info=self.info,
            total_seats=len(self._seats),
            available=len(self._seats) - held - reserved,
            held=held,
            reserved=reserved,
            version=self.version + (1 if self._effects else 0),
            hold_duration=self.policy.hold_duration,
            max_seats_per_user=self.policy.max_seats_per_user,
        )

    def _snapshot(self, cmd: GetSnapshot, now: float) -> SeatSnapshot:
        self._expire_due(now)
        holds = self._holds
        held = tuple(
            (sid, _expiry(holds[hold_id]))
            for sid, hold_id in self._seat_hold.items()
            if hold_id is not None
        )
        reserved = tuple(sid for sid, rid in self._seat_reservation.items() if rid is not None)
        return SeatSnapshot(
            self.version + (1 if self._effects else 0), len(self._seats), held, reserved
        )

    def _expire(self, cmd: Expire, now: float) -> tuple[Hold, ...]:
        return self._expire_due(now)

    # --- helpers --------------------------------------------------------------------------

    def _conflicts(self, seat_ids: tuple[str, ...], user_id: str) -> list[dict[str, Any]]:
        conflicts: list[dict[str, Any]] = []
        for sid in seat_ids:
            if self._seat_reservation.get(sid) is not None:
                conflicts.append({"seat_id": sid, "state": "reserved"})
            else:
                hold_id = self._seat_hold.get(sid)
                if hold_id is not None:
                    mine = _user_of(self._holds[hold_id]) == user_id
                    conflicts.append({"seat_id": sid, "state": "held", "yours": mine})
        return conflicts

    def _owned_live_hold(self, user_id: str, hold_id: str) -> Hold:
        packed = self._holds.get(hold_id)
        if packed is None:
            reason = self._ended.get(hold_id) if self._ended is not None else None
            if reason is HoldEndReason.EXPIRED:
                raise HoldExpired(f"hold {hold_id} expired", details={"hold_id": hold_id})
            if reason is not None:
                raise HoldNotFound(
                    f"hold {hold_id} was already {reason.value}",
                    details={"hold_id": hold_id, "reason": reason.value},
                )
            raise HoldNotFound(
                f"no live hold {hold_id} in this event", details={"hold_id": hold_id}
            )
        hold = _unpack(hold_id, packed)
        if hold.user_id != user_id:
            raise Forbidden(f"hold {hold_id} belongs to another user")
        return hold

    def _queue_expiries(self) -> None:
        """Queue every live hold's expiry afresh (after a load or a rollback)."""
        self._deadlines = Deadlines(
            (_expiry(packed), hold_id) for hold_id, packed in self._holds.items()
        )

    def _add_hold(self, hold: Hold) -> None:
        journal = self._journal
        journal.set(self._holds.shard(hold.hold_id), hold.hold_id, _pack(hold))
        for sid in hold.seat_ids:
            journal.set(self._seat_hold, sid, hold.hold_id)
        self._held_seats += len(hold.seat_ids)
        journal.add(self._user_seats, hold.user_id, len(hold.seat_ids))
        journal.add(self._user_held, hold.user_id, len(hold.seat_ids))

    def _end_hold(self, hold: Hold, reason: HoldEndReason) -> None:
        journal = self._journal
        journal.delete(self._holds.shard(hold.hold_id), hold.hold_id)
        for sid in hold.seat_ids:
            journal.set(self._seat_hold, sid, None)
        self._held_seats -= len(hold.seat_ids)
        journal.add(self._user_held, hold.user_id, -len(hold.seat_ids))
        if reason is not HoldEndReason.RESERVED:
            journal.add(self._user_seats, hold.user_id, -len(hold.seat_ids))
        if self._ended is None:
            self._ended = OrderedDict()
        journal.set(self._ended, hold.hold_id, reason)
        self._effects.append(HoldEnded(hold, reason))

    def _expire_due(self, now: float) -> tuple[Hold, ...]:
        deadlines = self._deadlines
        first = deadlines.first()
        if first is None or first > now:
            return ()
        expired: list[Hold] = []
        holds = self._holds
        while first is not None and first <= now:
            expires_at, hold_id = deadlines.pop()
            first = deadlines.first()
            packed = holds.get(hold_id)
            if packed is not None and _expiry(packed) == expires_at:
                hold = _unpack(hold_id, packed)
                self._end_hold(hold, HoldEndReason.EXPIRED)
                expired.append(hold)
        return tuple(expired)


def _per_seat(seats: dict[str, Seat]) -> dict[str, str | None]:
    """An empty per-seat table, made full size (every seat: None) for a large event."""
    return dict.fromkeys(seats) if len(seats) >= _PRESIZED_FROM else {}


def _count_set(ids: dict[str, str | None]) -> int:
    """How many seats of a per-seat dict have an id."""
    return sum(1 for value in ids.values() if value is not None)


# A live hold as kept in EventState: bytes, not an object. Its three times as doubles
# (created_at, expires_at, max_expires_at), then "user_id NUL seat_id [NUL seat_id ...]" in
# UTF-8. Bytes are not a container, so an on-sale's live holds leave the cyclic garbage
# collector nothing to walk but their dict (one object; CPython before 3.14 does not even track
# a dict of strings and bytes). As objects (Hold, then flat tuples) every hold was walked by the
# next young pass at least: at 7,500 holds/s that was a pass every ~3 s stalling every reply by
# 15-20 ms (BENCHMARKS.md, rounds 12 and 13). struct gives the doubles back bit for bit, which
# matters: a refresh is capped at max_expires_at, and PostgreSQL checks expires_at <=
# max_expires_at. It packs them in a fifth of the time of repr().
# The protocol refuses control characters in ids, so no user or seat id holds the separator.
_TIMES: Final = struct.Struct("ddd")
_EXPIRY: Final = struct.Struct("8xd")  # expires_at alone
_SEP: Final = "\0"


def _pack(hold: Hold) -> bytes:
    times = _TIMES.pack(hold.created_at, hold.expires_at, hold.max_expires_at)
    return times + _SEP.join((hold.user_id, *hold.seat_ids)).encode("utf-8", "surrogatepass")


def _expiry(packed: bytes) -> float:
    expires_at: float = _EXPIRY.unpack_from(packed)[0]
    return expires_at


def _user_of(packed: bytes) -> str:
    return packed[_TIMES.size :].decode("utf-8", "surrogatepass").partition(_SEP)[0]


def _unpack(hold_id: str, packed: bytes) -> Hold:
    created_at, expires_at, max_expires_at = _TIMES.unpack_from(packed)
    user_id, *seat_ids = packed[_TIMES.size :].decode("utf-8", "surrogatepass").split(_SEP)
    return Hold(hold_id, user_id, tuple(seat_ids), created_at, expires_at, max_expires_at)


# One table for every event (a dict of bound methods per event cost 0.9 KiB each).
_HANDLERS: dict[type[Any], Callable[[EventState, Any, float], Result]] = {
    PlaceHold: EventState._place_hold,
    RefreshHold: EventState._refresh,
    ReleaseHold: EventState._release,
    Reserve: EventState._reserve,
    ListAvailable: EventState._list_available,
    GetEvent: EventState._summary,
    GetSnapshot: EventState._snapshot,
    Expire: EventState._expire,
}
