"""Who owns an event while Redis is out of reach: PostgreSQL's record of which living instance
loaded it (``PostgresOwners``), asked through ``FailoverLeases``.

Without it, an instance that could not check a lease took the event, fencing out its living
owner, which took it back a lease later: each answered ``unavailable`` in turn for as long as
Redis was away (found by fault injection)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from redis.asyncio import Redis

from seatd.adapters.owners import PostgresOwners
from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import RedisLeases
from seatd.core import EventInfo, GetEvent, Policy, Seat
from seatd.devstack import RedisServer
from seatd.errors import OwnedElsewhere
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import FailoverLeases, NewEvent, SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)
TTL = 0.6

Instance = tuple[Registry, PostgresOwners]
MakeInstance = Callable[..., Awaitable[Instance]]


async def _event(store: PostgresStore) -> str:
    event_id = f"own-{uuid.uuid4().hex[:10]}"
    await store.create_event(NewEvent(EventInfo(event_id, "Owner test"), (Seat("S1"),)))
    return event_id


async def _owner_row(pool: asyncpg.Pool, event_id: str) -> tuple[str | None, int]:
    row = await pool.fetchrow(
        "SELECT owner_instance, owner_epoch FROM events WHERE id = $1", event_id
    )
    assert row is not None
    return row["owner_instance"], row["owner_epoch"]


@pytest.fixture
async def instance(
    pool: asyncpg.Pool, redis: Redis, private_redis: RedisServer
) -> AsyncIterator[MakeInstance]:
    """Makes an instance: a registry whose leases live in the test's Redis and, while Redis
    is away, come from PostgreSQL; its heartbeat runs if ``beating``. All are closed at the
    end, and Redis runs again."""
    made: list[Instance] = []

    async def make(name: str, *, beating: bool = True) -> Instance:
        owners = PostgresOwners(pool, name, TTL)
        if beating:
            await owners.start()
        registry = Registry(
            PostgresStore(pool, name),
            SystemClock(),
            POLICY,
            ActorSettings(idle_timeout=60),
            coordinator=FailoverLeases(RedisLeases(redis, name, ttl=TTL), owners),
            lease_ttl=TTL,
        )
        made.append((registry, owners))
        return registry, owners

    try:
        yield make
    finally:
        for registry, owners in made:
            await registry.close()
            await owners.close()
        if not private_redis.is_running():
            private_redis.resume()


async def test_without_redis_a_living_owner_keeps_its_event(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    first, _ = await instance("first")
    second, _ = await instance("second")
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())
    owner, epoch = await _owner_row(pool, event_id)
    assert owner == "first"

    private_redis.halt()
    for _ in range(4):  # over several leases: the owner renews through PostgreSQL meanwhile
        with pytest.raises(OwnedElsewhere) as refused:
            await second.ask(event_id, GetEvent())
        assert refused.value.owner == "first"
        assert second.active(event_id) is None
        await asyncio.sleep(TTL)
    assert first.active(event_id) is not None, "the owner lost its event while Redis was away"
    await first.ask(event_id, GetEvent())
    # Never taken over, so never fenced: the epoch it loaded the event with still stands.
    assert await _owner_row(pool, event_id) == ("first", epoch)


async def test_without_redis_an_owner_that_stopped_beating_loses_its_events(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    """A dead or paused owner is known by its heartbeat: a lease's time after its last one,
    another instance takes its events over."""
    first, _ = await instance("first", beating=False)
    second, _ = await instance("second")
    await pool.execute("INSERT INTO instances (id, seen_at) VALUES ('first', now())")
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())
    _, epoch = await _owner_row(pool, event_id)

    private_redis.halt()
    with pytest.raises(OwnedElsewhere):
        await second.ask(event_id, GetEvent())
    await asyncio.sleep(TTL * 1.5)
    await second.ask(event_id, GetEvent())
    assert second.active(event_id) is not None
    assert await _owner_row(pool, event_id) == ("second", epoch + 1)


async def test_a_stopped_instance_leaves_its_events_free_at_once(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    first, first_owners = await instance("first")
    second, _ = await instance("second")
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())

    private_redis.halt()
    await first.close()  # lets its events go in PostgreSQL although Redis is away
    assert (await _owner_row(pool, event_id))[0] is None
    await first_owners.close()
    assert await pool.fetchval("SELECT count(*) FROM instances WHERE id = 'first'") == 0
    await second.ask(event_id, GetEvent())
    assert second.active(event_id) is not None


async def test_a_restarted_instance_disowns_what_its_crash_left(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    event_id = await _event(store)
    await pool.execute("UPDATE events SET owner_instance = 'crashed' WHERE id = $1", event_id)
    owners = PostgresOwners(pool, "crashed", TTL)
    await owners.start()
    try:
        assert (await _owner_row(pool, event_id))[0] is None
        seen = await pool.fetchval("SELECT now() - seen_at FROM instances WHERE id = 'crashed'")
        assert seen.total_seconds() < TTL
    finally:
        await owners.close()


async def test_only_a_living_other_instance_owns_an_event(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    live, stale, mine, free = [await _event(store) for _ in range(4)]
    await pool.execute(
        "INSERT INTO instances (id, seen_at) VALUES ('live', now()), "
        "('stale', now() - interval '5 seconds') "
        "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
    )
    for event_id, owner in ((live, "live"), (stale, "stale"), (mine, "me")):
        await pool.execute("UPDATE events SET owner_instance = $2 WHERE id = $1", event_id, owner)
    owners = PostgresOwners(pool, "me", TTL)
    assert await owners.claim([live, stale, mine, free, "no-such-event"]) == {live: "live"}
    # Releasing clears this instance's marks only.
    await owners.release([live, mine])
    assert (await _owner_row(pool, live))[0] == "live"
    assert (await _owner_row(pool, mine))[0] is None
    with contextlib.suppress(Exception):
        await pool.execute("DELETE FROM instances WHERE id IN ('live', 'stale')")
