"""An operator's close reaching the registry: applied by an active actor at once, and not lost
when it arrives while the event is loading (the load may have read the row before the change)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from support.events import new_event
from support.waiting import until

from seatd.adapters.postgres import PostgresStore
from seatd.core import PlaceHold, Policy
from seatd.errors import EventClosed
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)


class _PausedLoads(PostgresStore):
    """The real store, whose loads wait (after reading) until the test lets them finish."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.read = asyncio.Event()
        self.go_on = asyncio.Event()

    async def load_event(self, event_id: str) -> Any:
        loaded = await super().load_event(event_id)
        self.read.set()
        await self.go_on.wait()
        return loaded


async def _hold(registry: Registry, event_id: str, seat: str) -> object:
    return await registry.ask(event_id, PlaceHold("u1", (seat,), str(uuid.uuid4())))


async def test_an_active_actor_applies_a_status_at_once(store: PostgresStore) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        event_id = await new_event(store, "status")
        await _hold(registry, event_id, "S0")
        registry.status_changed(event_id, "closed")
        with pytest.raises(EventClosed):
            await _hold(registry, event_id, "S1")
        registry.status_changed(event_id, "open")
        await _hold(registry, event_id, "S1")
        registry.status_changed("not-loaded-here", "closed")  # nothing to do, nothing kept
    finally:
        await registry.close()


async def test_a_status_heard_while_loading_is_applied_once_loaded(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    paused = _PausedLoads(pool)
    registry = Registry(paused, SystemClock(), POLICY, ActorSettings())
    try:
        event_id = await new_event(store, "status")
        first = asyncio.ensure_future(_hold(registry, event_id, "S0"))
        await asyncio.wait_for(paused.read.wait(), 5)  # read as "open"; not active yet
        assert registry.active(event_id) is None
        registry.status_changed(event_id, "closed")
        paused.go_on.set()
        with pytest.raises(EventClosed):
            await first
        assert registry._statuses_heard == {}
    finally:
        paused.go_on.set()
        await registry.close()


async def test_a_recheck_applies_what_the_database_says_to_active_events(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """A notice lost while the bus was away from Redis: the status is read back instead."""
    registry = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        closed, untouched = await new_event(store, "status"), await new_event(store, "status")
        for event_id in (closed, untouched):
            await _hold(registry, event_id, "S0")
        await store.set_event_status(closed, "closed")  # as seatd close-event does
        registry.recheck_statuses()
        await until(lambda: registry.active(closed).state.info.status == "closed")  # type: ignore[union-attr]
        with pytest.raises(EventClosed):
            await _hold(registry, closed, "S1")
        await _hold(registry, untouched, "S1")
    finally:
        await registry.close()


class _SlowStatuses(PostgresStore):
    """The real store, whose status reads wait (after reading) until the test lets them go."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.read = asyncio.Event()
        self.go_on = asyncio.Event()

    async def event_statuses(self, event_ids: Any) -> dict[str, str]:
        stored = await super().event_statuses(event_ids)
        self.read.set()
        await self.go_on.wait()
        return stored


async def test_a_recheck_read_before_a_notice_does_not_undo_it(pool: asyncpg.Pool) -> None:
    slow = _SlowStatuses(pool)
    registry = Registry(slow, SystemClock(), POLICY, ActorSettings())
    try:
        event_id = await new_event(slow, "status")
        await _hold(registry, event_id, "S0")
        registry.recheck_statuses()
        await asyncio.wait_for(slow.read.wait(), 5)  # read "open"
        await slow.set_event_status(event_id, "closed")
        registry.status_changed(event_id, "closed")  # the notice, after the read
        slow.go_on.set()
        await asyncio.sleep(0.1)  # the recheck's answer is handled
        with pytest.raises(EventClosed):
            await _hold(registry, event_id, "S1")
    finally:
        slow.go_on.set()
        await registry.close()


async def test_notices_out_of_order_end_with_what_the_database_says(store: PostgresStore) -> None:
    """Two operators close and reopen at once: the notices may arrive in the other order
    than the commits. Each notice is applied, then the stored status is read back."""
    registry = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        event_id = await new_event(store, "status")
        await _hold(registry, event_id, "S0")
        await store.set_event_status(event_id, "closed")  # committed last
        registry.status_changed(event_id, "closed")
        registry.status_changed(event_id, "open")  # a stale notice, heard last
        await until(lambda: registry.active(event_id).state.info.status == "closed")  # type: ignore[union-attr]
        with pytest.raises(EventClosed):
            await _hold(registry, event_id, "S1")
    finally:
        await registry.close()
