"""Events for tests that talk to the store directly (no server in between)."""

from __future__ import annotations

import uuid

from seatd.adapters.postgres import PostgresStore
from seatd.core import EventInfo, Seat
from seatd.runtime.ports import NewEvent


async def new_event(
    store: PostgresStore, prefix: str, *, seats: int = 4, hold_duration_s: int | None = None
) -> str:
    """A new event with seats S0, S1, ...; its id starts with ``prefix`` and is unique."""
    event_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    info = EventInfo(event_id, f"{prefix} test", hold_duration_s=hold_duration_s)
    await store.create_event(NewEvent(info, tuple(Seat(f"S{i}") for i in range(seats))))
    return event_id
