"""An event's seats as the availability stream describes them, and the updates it yields.

Only unavailable seats are stored (seat id -> ``held``/``reserved``; absent means available),
so memory follows what is taken, not the size of the venue. Pure data: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from protocol.messages import Availability, SeatChange, Subscribed

__all__ = ["SeatMap", "SeatState", "SeatUpdate", "UpdateKind"]

SeatState = Literal["held", "reserved"]
UpdateKind = Literal["snapshot", "resume", "delta"]
_KIND_RANK: dict[str, int] = {"delta": 0, "resume": 1, "snapshot": 2}


@dataclass(frozen=True, slots=True)
class SeatUpdate:
    """How an event's seats changed, up to ``version``.

    ``changes`` are net changes (each seat at most once, in its final state). ``kind`` says where
    they came from: a live ``delta``, a ``resume`` (deltas missed while disconnected) or a
    ``snapshot`` (the map was replaced; seats that became available are listed as such).
    ``coalesced`` > 1 means a slow consumer got several updates folded into this one.
    """

    event_id: str
    version: int
    changes: tuple[SeatChange, ...]
    kind: UpdateKind
    coalesced: int = 1

    def merge(self, newer: SeatUpdate) -> SeatUpdate:
        """This update followed by ``newer``, as one (what a bounded queue keeps)."""
        by_seat = {change.seat_id: change for change in self.changes}
        for change in newer.changes:
            by_seat.pop(change.seat_id, None)  # re-insert: keep the order of last change
            by_seat[change.seat_id] = change
        kind = self.kind if _KIND_RANK[self.kind] > _KIND_RANK[newer.kind] else newer.kind
        return SeatUpdate(
            newer.event_id,
            newer.version,
            tuple(by_seat.values()),
            kind,
            self.coalesced + newer.coalesced,
        )


class SeatMap:
    """The unavailable seats of one event at ``version`` (None until the first snapshot)."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        self.version: int | None = None
        self.total_seats: int | None = None
        self._states: dict[str, SeatState] = {}
        self._expires: dict[str, str] = {}
        self.states: Mapping[str, SeatState] = MappingProxyType(self._states)
        self.expires_at: Mapping[str, str] = MappingProxyType(self._expires)

    def state(self, seat_id: str) -> Literal["available", "held", "reserved"]:
        return self._states.get(seat_id, "available")

    def current(self) -> SeatUpdate | None:
        """The whole map as a snapshot update (for a watcher that joins late)."""
        if self.version is None:
            return None
        changes = tuple(
            SeatChange(seat_id, state, self._expires.get(seat_id))
            for seat_id, state in self._states.items()
        )
        return SeatUpdate(self.event_id, self.version, changes, "snapshot")

    def apply_snapshot(self, snapshot: Subscribed) -> SeatUpdate:
        """Replace the map; the update lists every seat whose state differs from before."""
        new_states: dict[str, SeatState] = {seat_id: "reserved" for seat_id in snapshot.reserved}
        new_expires: dict[str, str] = {}
        for held in snapshot.held:
            new_states[held.seat_id] = "held"
            if held.expires_at is not None:
                new_expires[held.seat_id] = held.expires_at
        changes = [
            SeatChange(seat_id, state, new_expires.get(seat_id))
            for seat_id, state in new_states.items()
            if self._states.get(seat_id) != state
            or self._expires.get(seat_id) != new_expires.get(seat_id)
        ]
        changes.extend(
            SeatChange(seat_id, "available")
            for seat_id in self._states
            if seat_id not in new_states
        )
        self._states.clear()
        self._states.update(new_states)
        self._expires.clear()
        self._expires.update(new_expires)
        self.version = snapshot.version
        self.total_seats = snapshot.total_seats
        return SeatUpdate(self.event_id, snapshot.version, tuple(changes), "snapshot")

    def apply_deltas(
        self, deltas: Iterable[Availability], kind: UpdateKind, version: int
    ) -> SeatUpdate:
        """Apply consecutive deltas (the caller checked their versions) and end at ``version``."""
        net: dict[str, SeatChange] = {}
        for delta in deltas:
            for change in delta.changes:
                self._set(change)
                net.pop(change.seat_id, None)
                net[change.seat_id] = change
        self.version = version
        return SeatUpdate(self.event_id, version, tuple(net.values()), kind)

    def _set(self, change: SeatChange) -> None:
        seat_id = change.seat_id
        if change.state == "available":
            self._states.pop(seat_id, None)
            self._expires.pop(seat_id, None)
            return
        self._states[seat_id] = change.state
        if change.state == "held" and change.expires_at is not None:
            self._expires[seat_id] = change.expires_at
        else:
            self._expires.pop(seat_id, None)
