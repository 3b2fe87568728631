"""The arrays of a shared transaction: each event's own rows, joined, with the counts that cut
them (``seatd_write_batches`` in init.sql reads them that way)."""

from __future__ import annotations

import random
import uuid

from seatd.adapters.pg_literal import array_literal
from seatd.adapters.postgres import _ROW_GROUPS, _many_rows, _rows
from seatd.core import (
    Effect,
    Hold,
    HoldCreated,
    HoldEnded,
    HoldEndReason,
    HoldExtended,
    Reservation,
    ReservationCreated,
)
from seatd.runtime.ports import BatchWrite


def _effects(rng: random.Random) -> list[Effect]:
    """A batch of one event: holds placed, refreshed, ended and reserved, in any mix."""
    effects: list[Effect] = []
    live: list[Hold] = []
    for _ in range(rng.randint(0, 6)):
        roll = rng.random()
        seats = tuple(f"S{rng.randint(1, 500)}" for _ in range(rng.randint(1, 3)))
        if roll < 0.4 or not live:
            hold = Hold(str(uuid.uuid4()), f"u{rng.randint(1, 9)}", seats, 1.0, 2.0, 3.0)
            effects.append(HoldCreated(hold))
            live.append(hold)
        elif roll < 0.6:
            hold = rng.choice(live)
            effects.append(HoldExtended(hold._replace(expires_at=rng.uniform(2.0, 3.0))))
        elif roll < 0.8:
            hold = live.pop(rng.randrange(len(live)))
            effects.append(HoldEnded(hold, HoldEndReason.RELEASED))
        else:  # a hold of an earlier batch, reserved
            earlier = Hold(str(uuid.uuid4()), "v", seats, 0.5, 1.5, 2.5)
            effects.append(HoldEnded(earlier, HoldEndReason.RESERVED))
            effects.append(
                ReservationCreated(Reservation(str(uuid.uuid4()), "v", seats, rng.random()))
            )
    return effects


def test_a_shared_transactions_arrays_are_each_events_own_rows_joined() -> None:
    rng = random.Random(20261128)
    for _ in range(500):
        writes = [
            BatchWrite(f"ev{n}", n, n + 1, n + 2, _effects(rng)) for n in range(rng.randint(1, 5))
        ]
        own = [_rows(w.effects) for w in writes]
        expected = [
            [w.event_id for w in writes],
            [w.epoch for w in writes],
            [w.previous for w in writes],
            [w.version for w in writes],
        ]
        for index, group in enumerate(_ROW_GROUPS):
            if _ROW_GROUPS.index(group) == index:  # a group's per-event row counts come first
                expected.append([len(rows[index]) for rows in own])
            expected.append([value for rows in own for value in rows[index]])
        assert _many_rows(writes) == [array_literal(values) for values in expected]
