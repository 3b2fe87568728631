"""Seat naming and pre-encoded request frames shared by the coordinator and the workers.

Why: the load generator must spend its CPU on sending and receiving, not on building JSON, so
requests are assembled from pre-encoded byte pieces; and the coordinator (event creation,
verification) and the workers (requests) must agree on which seat index is which seat id
without shipping seat lists between processes.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from protocol.messages import MAX_SEATS_PER_EVENT

__all__ = ["EventLayout", "Frames", "event_blocks"]

# Retry keys: a counter behind a prefix drawn once per process. A forked worker draws its own
# (register_at_fork): checking os.getpid() per key cost a system call per request.
_KEYS = itertools.count(1)
_key_prefix = b""


def _new_key_prefix() -> None:
    global _key_prefix
    _key_prefix = os.urandom(6).hex().encode() + b"-"


_new_key_prefix()
os.register_at_fork(after_in_child=_new_key_prefix)


def _next_key() -> bytes:
    return b"%s%d" % (_key_prefix, next(_KEYS))


@dataclass(frozen=True, slots=True)
class EventLayout:
    """An event whose seats are rows ``R0, R1, ...`` of ``per_row`` numbered seats.

    Seat index ``i`` is seat id ``R<i // per_row>-<i % per_row + 1>`` (blocks without a
    section, see PROTOCOL.md ``create_event``), so an index fully names a seat.
    """

    event_id: str
    seats: int
    per_row: int = 1000

    def seat_id(self, index: int) -> str:
        return f"R{index // self.per_row}-{index % self.per_row + 1}"

    def seat_index(self, seat_id: str) -> int:
        row, _, number = seat_id[1:].partition("-")
        return int(row) * self.per_row + int(number) - 1

    def row_of(self, index: int) -> int:
        return index // self.per_row

    def create_request(
        self, *, max_seats_per_user: int = 10_000, hold_duration_s: int | None = None
    ) -> dict[str, Any]:
        """The ``create_event`` fields for this layout."""
        fields: dict[str, Any] = {
            "event_id": self.event_id,
            "name": f"seatd bench {self.event_id}",
            "max_seats_per_user": max_seats_per_user,
            "blocks": event_blocks(self.seats, self.per_row),
        }
        if hold_duration_s is not None:
            fields["hold_duration_s"] = hold_duration_s
        return fields


def event_blocks(seats: int, per_row: int) -> list[dict[str, Any]]:
    """``create_event`` blocks giving exactly ``seats`` seats named as ``EventLayout`` says."""
    if not 1 <= seats <= MAX_SEATS_PER_EVENT:
        raise ValueError(f"an event has 1 to {MAX_SEATS_PER_EVENT} seats, not {seats}")
    full, rest = divmod(seats, per_row)
    blocks: list[dict[str, Any]] = []
    # A block holds at most 500 rows.
    for start in range(0, full, 500):
        rows = [f"R{r}" for r in range(start, min(full, start + 500))]
        blocks.append({"rows": rows, "seats_per_row": per_row})
    if rest:
        blocks.append({"rows": [f"R{full}"], "seats_per_row": rest})
    return blocks


class Frames:
    """Pre-encoded pieces of the requests the load generator sends about one event."""

    __slots__ = ("_get", "_hold", "_keyed", "_release", "_reserve", "_subscribe", "event_id")

    def __init__(self, event_id: str, keyed: bool = True) -> None:
        """``keyed``: holds, reserves and releases carry a fresh idempotency_key, as the SDK's
        calls do (the server then stores each outcome for retries)."""
        self.event_id = event_id
        self._keyed = keyed
        ev = event_id.encode()
        self._hold = b',"type":"hold","event_id":"' + ev + b'","seat_ids":['
        self._reserve = b',"type":"reserve","event_id":"' + ev + b'","hold_id":"'
        self._release = b',"type":"release","event_id":"' + ev + b'","hold_id":"'
        self._subscribe = b',"type":"subscribe","event_id":"' + ev + b'"}'
        self._get = b',"type":"get_event","event_id":"' + ev + b'"}'

    def hold(self, request_id: int, quoted_seats: bytes) -> bytes:
        """``quoted_seats``: the JSON strings of the seat ids, comma separated."""
        return b'{"id":%d%s%s%s]}' % (request_id, self._key(), self._hold, quoted_seats)

    def reserve(self, request_id: int, hold_id: bytes) -> bytes:
        return b'{"id":%d%s%s%s"}' % (request_id, self._key(), self._reserve, hold_id)

    def release(self, request_id: int, hold_id: bytes) -> bytes:
        return b'{"id":%d%s%s%s"}' % (request_id, self._key(), self._release, hold_id)

    def _key(self) -> bytes:
        return b',"idempotency_key":"%s"' % _next_key() if self._keyed else b""

    def subscribe(self, request_id: int) -> bytes:
        return b'{"id":%d%s' % (request_id, self._subscribe)

    def get_event(self, request_id: int) -> bytes:
        return b'{"id":%d%s' % (request_id, self._get)
