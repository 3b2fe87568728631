"""Event leases between two instances sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from support.waiting import until

from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import RedisLeases, lease_key
from seatd.core import EventInfo, GetEvent, Policy, Seat
from seatd.errors import EventNotFound, OwnedElsewhere, ShuttingDown
from seatd.runtime import registry as registry_module
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


class _StopsAnotherDuringRenewal:
    """Leases that, while a renewal slice for ``first`` is on its way, stop ``second``'s actor
    (as passivation would) and wait until it has stopped; it records every claim."""

    def __init__(self, leases: RedisLeases, first: str, second: str) -> None:
        self.leases, self.first, self.second = leases, first, second
        self.registry: Registry | None = None
        self.claims: list[list[str]] = []

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        self.claims.append(list(event_ids))
        registry = self.registry
        if registry is not None and list(event_ids) == [self.first]:
            actor = registry.active(self.second)
            if actor is not None:
                actor.request_stop("idle")
                await until(lambda: _stopped(registry, self.second), 5, "the second actor stops")
        return await self.leases.claim(event_ids)

    async def release(self, event_ids: Sequence[str]) -> None:
        await self.leases.release(event_ids)


async def _stopped(registry: Registry, event_id: str) -> bool:
    return registry.active(event_id) is None


async def test_a_renewal_round_leaves_alone_an_event_that_stopped_during_it(
    store: PostgresStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claiming re-takes a lease Redis lost, so renewing the lease of an event passivated
    since the round began would take it again and keep it from other instances."""
    monkeypatch.setattr(registry_module, "_LEASE_SLICE", 1)
    first, second = await _event(store), await _event(store)
    leases = _StopsAnotherDuringRenewal(RedisLeases(redis, "me", ttl=0.6), first, second)
    registry = Registry(
        store, SystemClock(), POLICY, ActorSettings(), coordinator=leases, lease_ttl=0.6
    )
    leases.registry = registry
    try:
        await registry.ask(first, GetEvent())
        await registry.ask(second, GetEvent())
        await until(lambda: _stopped(registry, second), 5, "a renewal round")
        await asyncio.sleep(0.5)  # two more rounds, and the release of the second's lease
        assert not await redis.exists(lease_key(second))
        assert await redis.get(lease_key(first)) == b"me"
        renewals = leases.claims[2:]  # after the two activations
        assert [first] in renewals and [second] not in renewals
    finally:
        await registry.close()


async def test_an_expired_lease_of_another_instance_is_taken_over(
    store: PostgresStore, redis: Redis
) -> None:
    """Its owner died or stalled: the event is loaded here at once, so its holds keep
    expiring on time."""
    registry = _registry(store, redis, "survivor")
    try:
        event_id = await _event(store)
        await RedisLeases(redis, "gone", ttl=30).claim([event_id])
        await redis.delete(lease_key(event_id))  # as if it ran out
        registry.lease_expired(event_id)
        await until(lambda: _loaded(registry, event_id), 5, "the takeover")
        assert await redis.get(lease_key(event_id)) == b"survivor"
    finally:
        await registry.close()


async def test_an_expired_lease_of_an_event_let_go_here_is_left_alone(
    store: PostgresStore, redis: Redis
) -> None:
    """A lease that ran out moments after this instance passivated the event (its release
    lost a race with a renewal, or did not reach Redis) means nobody died: loading the event
    again would keep it for a whole idle timeout, for nothing."""
    registry = _registry(store, redis, "me", idle=0.2)
    try:
        event_id = await _event(store)
        await registry.ask(event_id, GetEvent())
        await until(lambda: _stopped(registry, event_id), 5, "passivation")
        registry.lease_expired(event_id)
        for _ in range(30):  # a takeover would load it for the idle timeout (0.2 s) at least
            await asyncio.sleep(0.01)
            assert registry.active(event_id) is None
        assert not await redis.exists(lease_key(event_id))
    finally:
        await registry.close()


async def _loaded(registry: Registry, event_id: str) -> bool:
    return registry.active(event_id) is not None


async def test_an_event_let_go_long_ago_is_taken_over_again(
    store: PostgresStore, redis: Redis
) -> None:
    """Letting an event go is remembered for three lease lifetimes only: later, an expired
    lease of it is another owner's, and that owner is gone."""
    registry = _registry(store, redis, "me", idle=0.2)  # leases of 0.6 s
    try:
        event_id = await _event(store)
        await registry.ask(event_id, GetEvent())
        await until(lambda: _stopped(registry, event_id), 5, "passivation")
        await asyncio.sleep(2.2)  # past 3 x 0.6 s, and a renewal round forgets it
        assert event_id not in registry._let_go
        registry.lease_expired(event_id)
        await until(lambda: _loaded(registry, event_id), 5, "the takeover")
    finally:
        await registry.close()


async def test_a_release_of_many_events_deletes_only_this_instances_leases(
    redis: Redis,
) -> None:
    """Events that stop together let their leases go in a few calls; a lease another
    instance took meanwhile stays its own."""
    ours, theirs = RedisLeases(redis, "ours", ttl=30), RedisLeases(redis, "theirs", ttl=30)
    events = [f"gone-{uuid.uuid4().hex[:8]}-{i}" for i in range(1_101)]
    assert await ours.claim(events) == {}
    taken = [events[499], events[500], events[-1]]  # around a chunk boundary, and the last
    await redis.delete(*(lease_key(e) for e in taken))
    assert await theirs.claim(taken) == {}
    await ours.release(events)
    assert not await redis.exists(*(lease_key(e) for e in events if e not in taken))
    assert [await redis.get(lease_key(e)) for e in taken] == [b"theirs"] * 3


class _SlowRelease:
    """Leases whose releases wait for ``gate``, as behind a slow round trip."""

    def __init__(self, leases: RedisLeases) -> None:
        self.leases = leases
        self.gate = asyncio.Event()

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        return await self.leases.claim(event_ids)

    async def release(self, event_ids: Sequence[str]) -> None:
        await self.gate.wait()
        await self.leases.release(event_ids)


async def test_an_event_loaded_again_before_its_release_is_sent_keeps_its_lease(
    store: PostgresStore, redis: Redis
) -> None:
    """Releases queue behind the one on its way: an event stopped and loaded again while its
    release waits must not lose the lease its new actor holds."""
    leases = _SlowRelease(RedisLeases(redis, "me", ttl=30))
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(), coordinator=leases)
    try:
        first, second = await _event(store), await _event(store)
        for event_id in (first, second):
            await registry.ask(event_id, GetEvent())
        for event_id in (first, second):  # the first's release goes out and waits
            actor = registry.active(event_id)
            assert actor is not None
            actor.request_stop("idle")
            await until(lambda e=event_id: _stopped(registry, e), 5, "the stop")
            await asyncio.sleep(0.05)
        await registry.ask(second, GetEvent())  # loaded again, its release still queued
        leases.gate.set()
        await until(lambda: _released(redis, first), 5, "the first release")
        await asyncio.sleep(0.1)
        assert registry.active(second) is not None
        assert await redis.get(lease_key(second)) == b"me"
    finally:
        leases.gate.set()
        await registry.close()


async def _released(redis: Redis, event_id: str) -> bool:
    return not await redis.exists(lease_key(event_id))


async def test_the_lease_taken_to_look_for_a_missing_event_is_let_go(
    store: PostgresStore, redis: Redis
) -> None:
    """Activation takes the lease before it reads the event: when there is no such event the
    lease goes, even while the next look is under way and the instance shuts down, or another
    instance asking for the event would be sent to this one (gone) until the lease ran out."""
    registry = _registry(store, redis, "me")
    missing = f"missing-{uuid.uuid4().hex[:10]}"

    async def ask_after(delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(EventNotFound, ShuttingDown):
            await registry.ask(missing, GetEvent())

    # Asked again and again, as clients that retry would: a look is always under way.
    asking = asyncio.gather(*(ask_after(i * 0.002) for i in range(100)))
    await asyncio.sleep(0.1)
    await registry.close()
    await asking
    assert not await redis.exists(lease_key(missing))
