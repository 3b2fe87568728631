"""Event leases between two instances sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import RedisLeases, lease_key
from seatd.core import EventInfo, GetEvent, Policy, Seat
from seatd.errors import OwnedElsewhere
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import NewEvent, SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)


async def _event(store: PostgresStore) -> str:
    event_id = f"lease-{uuid.uuid4().hex[:10]}"
    await store.create_event(NewEvent(EventInfo(event_id, "Lease test"), (Seat("S1"),)))
    return event_id


def _registry(store: PostgresStore, redis: Redis, name: str, idle: float = 60) -> Registry:
    leases = RedisLeases(redis, name, ttl=0.6)
    return Registry(
        store,
        SystemClock(),
        POLICY,
        ActorSettings(idle_timeout=idle),
        coordinator=leases,
        lease_ttl=0.6,
    )


async def test_only_the_lease_holder_activates_an_event(store: PostgresStore, redis: Redis) -> None:
    first = _registry(store, redis, "first", idle=0.3)
    second = _registry(store, redis, "second")
    try:
        event_id = await _event(store)
        await first.ask(event_id, GetEvent())
        with pytest.raises(OwnedElsewhere):
            await second.ask(event_id, GetEvent())
        # The first instance lets the event go when idle; the second may then take it.
        for _ in range(40):
            if first.active(event_id) is None:
                break
            await asyncio.sleep(0.05)
        assert first.active(event_id) is None
        await asyncio.sleep(0.1)  # the release runs in the background
        await second.ask(event_id, GetEvent())
        assert second.active(event_id) is not None
    finally:
        await first.close()
        await second.close()


async def test_an_instance_whose_lease_was_taken_stops_the_actor(
    store: PostgresStore, redis: Redis
) -> None:
    first = _registry(store, redis, "first")
    try:
        event_id = await _event(store)
        await first.ask(event_id, GetEvent())
        await redis.set(lease_key(event_id), "usurper", px=60_000)
        for _ in range(40):
            if first.active(event_id) is None:
                break
            await asyncio.sleep(0.05)
        assert first.active(event_id) is None, "the actor kept running without its lease"
        assert await redis.get(lease_key(event_id)) == b"usurper"
    finally:
        await first.close()


@pytest.mark.parametrize("restarted", [False, True], ids=["lease_lost", "redis_restarted"])
async def test_a_lease_redis_forgot_is_taken_back_not_lost(
    store: PostgresStore, redis: Redis, restarted: bool
) -> None:
    """A restarted Redis has also forgotten the claim script that renewals call by its SHA."""
    first = _registry(store, redis, "first")
    try:
        event_id = await _event(store)
        await first.ask(event_id, GetEvent())
        if restarted:
            await redis.script_flush()
        await redis.delete(lease_key(event_id))
        await asyncio.sleep(0.5)  # more than one renewal period
        assert first.active(event_id) is not None
        assert await redis.get(lease_key(event_id)) == b"first"
    finally:
        await first.close()


async def test_a_claim_of_many_events_answers_for_each_one(redis: Redis) -> None:
    """A renewal round claims every loaded event, in several script calls: each event's answer
    is its own, across the calls' boundaries."""
    ours, theirs = RedisLeases(redis, "ours", ttl=30), RedisLeases(redis, "theirs", ttl=30)
    events = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(1_203)]
    taken_by_them = events[495:505] + events[-3:]  # around a chunk boundary, and the last
    assert await theirs.claim(taken_by_them) == {}
    assert await ours.claim(events[:600]) == dict.fromkeys(taken_by_them[:10], "theirs")
    # A renewal: the first 600 are ours (extended), the rest free (taken) or theirs.
    assert await ours.claim(events) == dict.fromkeys(taken_by_them, "theirs")
    for event_id in (events[0], events[700], events[-4]):
        assert await redis.get(lease_key(event_id)) == b"ours"
        assert 29_000 < await redis.pttl(lease_key(event_id)) <= 30_000
