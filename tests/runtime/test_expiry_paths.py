"""Each expiry path on its own: the actor's timer, and Redis key-expiry notices.

The timer test runs with no Redis at all. The notice test runs on a fake clock whose timers never
fire, so only the notice can make the actor look at the hold; a control run without the listener
shows the hold would otherwise stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from redis.asyncio import Redis
from support.clock import FakeClock
from support.events import new_event
from support.waiting import until

from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import ExpiryListener, RedisMirror, hold_key, make_client
from seatd.core import Expire, Hold, PlaceHold, Policy
from seatd.devstack import RedisServer
from seatd.errors import StoreUnavailable
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import LoadedEvent, SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)


async def _new_event(store: PostgresStore, hold_duration_s: int) -> str:
    return await new_event(store, "exp", hold_duration_s=hold_duration_s)


async def _hold_rows(pool: asyncpg.Pool, event_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id)
    return count


async def _eventually(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_actor_timer_expires_a_hold_on_time_without_redis(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(idle_timeout=60))
    try:
        event_id = await _new_event(store, hold_duration_s=1)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S0", "S1"), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        assert await _hold_rows(pool, event_id) == 1
        # No command is sent after the hold: only the actor's own timer can remove it.
        freed = await _eventually(lambda: _gone(pool, event_id), timeout=3.0)
        assert freed, "the actor timer did not expire the hold"
        freed_at = time.time()
        assert hold.expires_at <= freed_at < hold.expires_at + 1.0, "expired late or early"
        actor = registry.active(event_id)
        assert actor is not None and actor.state.live_holds() == []
    finally:
        await registry.close()


async def test_an_idle_actor_parks_without_a_task_until_a_command_or_a_deadline(
    store: PostgresStore,
) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(idle_timeout=1.5))
    try:
        event_id = await _new_event(store, hold_duration_s=1)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S0",), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        actor = registry.active(event_id)
        assert actor is not None
        await until(lambda: actor.task is None, what="the actor to park")
        # A command starts it again and is answered as usual; then it parks again.
        again = await registry.ask(event_id, PlaceHold("u1", ("S1",), str(uuid.uuid4())))
        assert isinstance(again, Hold)
        await until(lambda: actor.task is None, what="the actor to park again")
        # Its alarm wakes it for the expiry (1 s), then for the idle deadline: it passivates.
        await until(lambda: actor.stopped, timeout=5, what="the actor to passivate")
        assert actor.stop_reason == "idle" and actor.state.live_holds() == []
        assert time.time() >= again.expires_at
    finally:
        await registry.close()


async def _gone(pool: asyncpg.Pool, event_id: str) -> bool:
    return await _hold_rows(pool, event_id) == 0


@contextlib.asynccontextmanager
async def _notice_rig(
    store: PostgresStore, private_redis: RedisServer, *, listen: bool
) -> AsyncIterator[tuple[str, Hold]]:
    """A hold whose Redis key has expired while the service's (fake) timers slept."""
    clock = FakeClock()
    registry = Registry(store, clock, POLICY, ActorSettings(idle_timeout=3600))
    client = make_client("127.0.0.1", private_redis.port, 0, None)
    mirror = RedisMirror(client, lambda: [(a.event_id, a.state) for a in registry.actors()])
    registry.observers.append(mirror)
    listener = ExpiryListener(client, 0, registry.hint_expiry)
    mirror.start()
    try:
        if listen:
            listener.start()
            assert await _eventually(lambda: _value(listener.healthy), 5.0)
        event_id = await _new_event(store, hold_duration_s=1)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S2",), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        key = hold_key(event_id, hold.hold_id)
        assert await _eventually(lambda: _exists(client, key, True), 5.0), "hold not mirrored"
        # Time passes for the service, but its timers stay asleep.
        clock.set(hold.expires_at + 0.5, fire_timers=False)
        # Redis evicts the key on its own clock (~1 s after the hold was made) and announces it.
        assert await _eventually(lambda: _exists(client, key, False), 5.0)
        yield event_id, hold
    finally:
        await registry.close()
        await listener.close()
        await mirror.close()
        await client.aclose()


async def _value(value: bool) -> bool:
    return value


async def _exists(client: Redis, key: str, expected: bool) -> bool:
    return bool(await client.exists(key)) is expected


async def test_redis_expiry_notice_expires_a_hold(
    store: PostgresStore, pool: asyncpg.Pool, private_redis: RedisServer
) -> None:
    async with _notice_rig(store, private_redis, listen=True) as (event_id, _):
        assert await _eventually(lambda: _gone(pool, event_id), 5.0), (
            "notice did not expire the hold"
        )


async def test_without_the_notice_the_fake_clock_keeps_the_hold(
    store: PostgresStore, pool: asyncpg.Pool, private_redis: RedisServer
) -> None:
    """Control for the test above: same set-up, no listener, and the hold stays."""
    async with _notice_rig(store, private_redis, listen=False) as (event_id, _):
        await asyncio.sleep(1.0)
        assert await _hold_rows(pool, event_id) == 1


async def test_late_notice_never_touches_a_newer_hold_on_the_same_seat(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    clock = FakeClock()
    registry = Registry(store, clock, POLICY, ActorSettings(idle_timeout=3600))
    try:
        event_id = await _new_event(store, hold_duration_s=10)
        old = await registry.ask(event_id, PlaceHold("u1", ("S3",), str(uuid.uuid4())))
        assert isinstance(old, Hold)
        clock.set(old.expires_at + 1, fire_timers=True)  # the old hold expires by the timer
        assert await _eventually(lambda: _gone(pool, event_id), 5.0)
        new = await registry.ask(event_id, PlaceHold("u2", ("S3",), str(uuid.uuid4())))
        assert isinstance(new, Hold)
        # Redis announces the old hold's key only now, minutes late, twice.
        registry.tell(event_id, Expire(old.hold_id))
        registry.tell(event_id, Expire(old.hold_id))
        await asyncio.sleep(0.3)
        holders = await pool.fetch(
            "SELECT h.hold_id::text, h.user_id FROM holds h WHERE h.event_id = $1", event_id
        )
        assert [(r["hold_id"], r["user_id"]) for r in holders] == [(new.hold_id, "u2")]
    finally:
        await registry.close()


async def test_a_passivated_event_still_expires_its_holds_on_time(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Idle events leave memory, but their holds' expiry is kept by the registry's timer."""
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(idle_timeout=0.1))
    try:
        event_id = await _new_event(store, hold_duration_s=1)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S1",), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        await _eventually(lambda: _value(registry.active(event_id) is None), 2.0)
        assert registry.active(event_id) is None, "the idle actor did not passivate"
        assert await _hold_rows(pool, event_id) == 1
        assert await _eventually(lambda: _gone(pool, event_id), 3.0), "dormant expiry missed"
        assert time.time() < hold.expires_at + 1.0
    finally:
        await registry.close()


class _StoreThatGoesDown:
    """The real store, whose loads fail while ``down`` (PostgreSQL out of reach)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.down = False
        self.failed_loads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def load_event(self, event_id: str) -> LoadedEvent | None:
        if self.down:
            self.failed_loads += 1
            raise StoreUnavailable("PostgreSQL is unreachable")
        return await self._store.load_event(event_id)


async def test_holds_due_while_postgres_is_down_expire_once_it_is_back(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """A dormant event woken for its holds while PostgreSQL is out of reach is woken again,
    backing off, until it loads: no command may ever come for it, and its seats must free."""
    flaky = _StoreThatGoesDown(store)
    registry = Registry(flaky, SystemClock(), POLICY, ActorSettings(idle_timeout=0.1))  # type: ignore[arg-type]
    try:
        event_id = await _new_event(store, hold_duration_s=1)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S1",), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        await until(lambda: event_id in registry._dormant, what="the event to go dormant")
        flaky.down = True
        await until(lambda: flaky.failed_loads >= 2, timeout=5.0, what="two failed wake-ups")
        assert await _hold_rows(pool, event_id) == 1
        flaky.down = False
        assert await _eventually(lambda: _gone(pool, event_id), 5.0), "the hold never expired"
        assert event_id not in registry._wake_retries
    finally:
        await registry.close()


async def test_a_dormant_event_loaded_again_or_closed_keeps_no_alarm(store: PostgresStore) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(idle_timeout=0.1))
    try:
        event_id = await _new_event(store, hold_duration_s=60)
        hold = await registry.ask(event_id, PlaceHold("u1", ("S1",), str(uuid.uuid4())))
        assert isinstance(hold, Hold)
        await until(lambda: event_id in registry._dormant, what="the event to go dormant")
        assert registry._dormant[event_id][0] == hold.expires_at
        again = await registry.ask(event_id, PlaceHold("u2", ("S2",), str(uuid.uuid4())))
        assert isinstance(again, Hold)  # loaded again: the actor times its holds itself
        assert event_id not in registry._dormant
        await until(lambda: event_id in registry._dormant, what="the event to go dormant again")
    finally:
        await registry.close()
    assert registry._dormant == {}


async def test_holds_left_by_a_previous_run_expire_on_time_after_a_restart(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    before = Registry(store, SystemClock(), POLICY, ActorSettings())
    event_id = await _new_event(store, hold_duration_s=1)
    hold = await before.ask(event_id, PlaceHold("u1", ("S0",), str(uuid.uuid4())))
    assert isinstance(hold, Hold)
    await before.close()  # the instance stops; its hold is still in PostgreSQL
    after = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        after.wake_at([e for e in await store.earliest_expiries() if e[0] == event_id])
        assert await _hold_rows(pool, event_id) == 1
        assert await _eventually(lambda: _gone(pool, event_id), 3.0), "left-over hold not expired"
        assert time.time() < hold.expires_at + 1.0
    finally:
        await after.close()


async def test_notices_for_events_this_instance_does_not_hold_are_ignored(
    store: PostgresStore,
) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        event_id = await _new_event(store, hold_duration_s=60)
        registry.hint_expiry(event_id, Expire("some-hold"))
        await asyncio.sleep(0.2)
        assert registry.active(event_id) is None, "a stray notice activated the event"
    finally:
        await registry.close()


async def test_the_sweep_expires_holds_that_nobody_times(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """An owner that died with the event passivated (or while Redis was away) left nobody
    timing its holds: another instance's sweep finds them overdue and wakes the event. A hold
    not yet overdue by the sweep's margin is left to whoever times it."""
    orphan = await _new_event(store, hold_duration_s=60)
    recent = await _new_event(store, hold_duration_s=60)
    for event_id, expired_ago in ((orphan, 5.0), (recent, 0.0)):
        await pool.execute(
            "INSERT INTO hold_seats (event_id, seat_id, hold_id, user_id, created_at,"
            " expires_at, max_expires_at) VALUES ($1, 'S0', gen_random_uuid(), 'u1',"
            " now() - interval '1 minute', now() - make_interval(secs => $2),"
            " now() + interval '1 hour')",
            event_id,
            expired_ago,
        )
    registry = Registry(store, SystemClock(), POLICY, ActorSettings())
    try:
        registry.start_sweeping(interval=0.2, overdue_by=2.0)
        assert await _eventually(lambda: _no_holds(pool, orphan), 3)
        assert registry.active(orphan) is not None
        assert registry.active(recent) is None
        assert await _hold_rows(pool, recent) == 1
    finally:
        await registry.close()


async def _no_holds(pool: asyncpg.Pool, event_id: str) -> bool:
    return await _hold_rows(pool, event_id) == 0
