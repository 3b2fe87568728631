"""What the server acknowledged to the load generator, in a compact form for verification.

Why: "nothing acknowledged is ever lost" can only be checked against what clients were told.
A big run acknowledges hundreds of thousands of holds, so instead of lists of objects each
worker keeps flat arrays (16-byte UUIDs, seat indices, float expiry times) that pickle in one
piece and cost a few dozen bytes per hold.
"""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["AckLog", "AckedHold", "parse_time"]

HELD = ord("H")  # acknowledged, still live as far as the client knows
RESERVED = ord("R")  # its reserve was acknowledged
RELEASED = ord("X")  # its release was acknowledged
UNKNOWN = ord("U")  # a reserve or release was sent and never answered: either outcome is fine
_NO_ID = bytes(16)


def parse_time(text: str) -> float:
    """A protocol time (``2026-11-27T02:50:25.149Z``) as POSIX seconds."""
    return datetime.fromisoformat(text).timestamp()


def _uuid_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("-", ""))


@dataclass(frozen=True, slots=True)
class AckedHold:
    """One acknowledged hold, decoded (coordinator side)."""

    hold_id: uuid.UUID
    event: int
    seats: tuple[int, ...]
    expires_at: float
    status: int
    reservation_id: uuid.UUID | None


class AckLog:
    """Acknowledged holds of one worker and what became of them. Picklable."""

    __slots__ = ("_ends", "_events", "_expires", "_hold_ids", "_res_ids", "_seats", "_status")

    def __init__(self) -> None:
        self._hold_ids = bytearray()
        self._events = array("I")
        self._ends = array("I")  # end offset of each hold's seats in _seats
        self._seats = array("I")
        self._expires = array("d")
        self._status = bytearray()
        self._res_ids = bytearray()

    def __len__(self) -> int:
        return len(self._status)

    def add(self, event: int, seats: Sequence[int], hold_id: str, expires_at: str) -> int:
        """Record an acknowledged hold; returns its index for the follow-up calls."""
        self._hold_ids += _uuid_bytes(hold_id)
        self._events.append(event)
        self._seats.extend(seats)
        self._ends.append(len(self._seats))
        self._expires.append(parse_time(expires_at))
        self._status.append(HELD)
        self._res_ids += _NO_ID
        return len(self._status) - 1

    def reserved(self, index: int, reservation_id: str) -> None:
        self._status[index] = RESERVED
        self._res_ids[index * 16 : index * 16 + 16] = _uuid_bytes(reservation_id)

    def released(self, index: int) -> None:
        self._status[index] = RELEASED

    def unknown(self, index: int) -> None:
        """A reserve or release of this hold got no answer."""
        self._status[index] = UNKNOWN

    def status(self, index: int) -> int:
        return self._status[index]

    def __iter__(self) -> Iterator[AckedHold]:
        start = 0
        for i, end in enumerate(self._ends):
            res = bytes(self._res_ids[i * 16 : i * 16 + 16])
            yield AckedHold(
                hold_id=uuid.UUID(bytes=bytes(self._hold_ids[i * 16 : i * 16 + 16])),
                event=self._events[i],
                seats=tuple(self._seats[start:end]),
                expires_at=self._expires[i],
                status=self._status[i],
                reservation_id=None if res == _NO_ID else uuid.UUID(bytes=res),
            )
            start = end

    def count(self, status: int) -> int:
        return self._status.count(status)
