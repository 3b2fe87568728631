"""Who serves an event when the leases in Redis cannot say: PostgreSQL's record of which living
instance loaded it (``PostgresOwners``, ``seatd_served_elsewhere``), checked by every load and
asked through ``FailoverLeases`` while Redis is away.

Without it, an instance that could not check a lease took the event, fencing out its living
owner, which took it back a lease later; and a Redis that restarted empty handed every event to
whichever instance asked first (both found by fault injection)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from support.waiting import until

from seatd.adapters.owners import PostgresOwners
from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import RedisLeases, lease_key
from seatd.core import EventInfo, GetEvent, Policy, Seat
from seatd.devstack import RedisServer
from seatd.errors import OwnedElsewhere
from seatd.runtime.actor import ActorSettings
from seatd.runtime.leases import FailoverLeases
from seatd.runtime.ports import NewEvent, SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)
# Beats every TTL/6; judged dead after 2/3 TTL without one; judges only after beating for TTL.
TTL = 1.2

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


async def _judging() -> None:
    """Wait until the instances made now have been beating for a lease: they may judge
    others dead."""
    await asyncio.sleep(TTL + 0.1)


@pytest.fixture
async def instance(
    pool: asyncpg.Pool, redis: Redis, private_redis: RedisServer
) -> AsyncIterator[MakeInstance]:
    """Makes an instance: a registry whose leases live in the test's Redis and, while Redis
    is away, come from PostgreSQL; its heartbeat runs if ``beating``. All are closed at the
    end, and Redis runs again."""
    made: list[tuple[Registry, PostgresOwners, FailoverLeases]] = []

    async def make(name: str, *, beating: bool = True) -> Instance:
        owners = PostgresOwners(pool, name, TTL)
        if beating:
            await owners.start()
        leases = FailoverLeases(RedisLeases(redis, name, ttl=TTL), owners, redis.ping)
        registry = Registry(
            PostgresStore(pool, name, TTL),
            SystemClock(),
            POLICY,
            ActorSettings(idle_timeout=60),
            coordinator=leases,
            lease_ttl=TTL,
        )
        made.append((registry, owners, leases))
        return registry, owners

    try:
        yield make
    finally:
        for registry, owners, leases in made:
            await registry.close()
            await owners.close()
            await leases.close()
        if not private_redis.is_running():
            private_redis.resume()


async def _first_serving(
    pool: asyncpg.Pool, store: PostgresStore, instance: MakeInstance
) -> tuple[Registry, Registry, str, int]:
    """Instances "first" and "second", both able to judge, and an event that "first" serves:
    (first, second, the event, the epoch "first" loaded it with)."""
    first, _ = await instance("first")
    second, _ = await instance("second")
    await _judging()
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())
    owner, epoch = await _owner_row(pool, event_id)
    assert owner == "first"
    return first, second, event_id, epoch


async def test_without_redis_a_living_owner_keeps_its_event(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    first, second, event_id, epoch = await _first_serving(pool, store, instance)

    private_redis.halt()
    for _ in range(4):  # over several leases: the owner renews through PostgreSQL meanwhile
        with pytest.raises(OwnedElsewhere) as refused:
            await second.ask(event_id, GetEvent())
        assert refused.value.owner == "first"
        assert second.active(event_id) is None
        await asyncio.sleep(TTL / 2)
    assert first.active(event_id) is not None, "the owner lost its event while Redis was away"
    await first.ask(event_id, GetEvent())
    # Never taken over, so never fenced: the epoch it loaded the event with still stands.
    assert await _owner_row(pool, event_id) == ("first", epoch)


async def test_a_redis_that_restarted_empty_leaves_the_event_to_its_owner(
    pool: asyncpg.Pool, store: PostgresStore, redis: Redis, instance: MakeInstance
) -> None:
    """Every lease is gone; the first instance asked for the event takes its lease, but the
    load refuses: PostgreSQL knows the living owner. The lease goes again, later commands go
    to the owner, and the owner's renewal finds its lease free."""
    first, second, event_id, epoch = await _first_serving(pool, store, instance)

    await redis.flushall()
    with pytest.raises(OwnedElsewhere) as refused:
        await second.ask(event_id, GetEvent())
    assert refused.value.owner == "first"
    assert second.owner_hint(event_id) == "first"
    await asyncio.sleep(TTL)  # renewals
    assert first.active(event_id) is not None
    assert await redis.get(lease_key(event_id)) == b"first"
    assert await _owner_row(pool, event_id) == ("first", epoch)


async def test_without_redis_an_owner_that_stopped_beating_loses_its_events(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    """A dead or paused owner is known by its heartbeat: two thirds of a lease after its last
    one, another instance takes its events over, and of two trying at once only one loads it."""
    first, _ = await instance("first", beating=False)
    second, _ = await instance("second")
    third, _ = await instance("third")
    await pool.execute(
        "INSERT INTO instances (id, seen_at, beating_since) VALUES ('first', now(), now())"
    )
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())
    _, epoch = await _owner_row(pool, event_id)

    private_redis.halt()
    with pytest.raises(OwnedElsewhere):
        await second.ask(event_id, GetEvent())
    await _judging()  # longer than 2/3 TTL: first is dead by now
    outcomes = await asyncio.gather(
        second.ask(event_id, GetEvent()), third.ask(event_id, GetEvent()), return_exceptions=True
    )
    refusals = [o for o in outcomes if isinstance(o, OwnedElsewhere)]
    assert len(refusals) == 1, outcomes
    winner = "second" if second.active(event_id) else "third"
    assert refusals[0].owner == winner
    assert await _owner_row(pool, event_id) == (winner, epoch + 1)


async def test_a_stopped_instance_leaves_its_events_free_at_once(
    pool: asyncpg.Pool, store: PostgresStore, private_redis: RedisServer, instance: MakeInstance
) -> None:
    first, first_owners = await instance("first")
    second, _ = await instance("second")
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())

    private_redis.halt()
    await first.close()  # lets its events go in PostgreSQL although Redis is away

    async def released() -> bool:
        return (await _owner_row(pool, event_id))[0] is None

    await until(released, 3, "the release to reach PostgreSQL")
    await first_owners.close()
    assert await pool.fetchval("SELECT count(*) FROM instances WHERE id = 'first'") == 0
    await second.ask(event_id, GetEvent())
    assert second.active(event_id) is not None


async def test_an_instance_that_stops_at_once_leaves_no_event_marked(
    pool: asyncpg.Pool, store: PostgresStore, instance: MakeInstance
) -> None:
    """A stopping instance closes its record right after letting its events go, before their
    releases (which wait half a second together) went out. Its marks must go with its row:
    an instance that has just started counts every marked owner as alive, and refused such
    events for its first lease (found by the protocol fuzzer, whose server started just after
    another test's had stopped)."""
    first, first_owners = await instance("first")
    event_id = await _event(store)
    await first.ask(event_id, GetEvent())
    assert (await _owner_row(pool, event_id))[0] == "first"
    await first.close()
    await first_owners.close()
    assert (await _owner_row(pool, event_id))[0] is None
    newcomer, _ = await instance("newcomer")  # not beating for a lease yet
    await newcomer.ask(event_id, GetEvent())
    assert newcomer.active(event_id) is not None


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


# (owner's beat, age in seconds or None; my beat age; my beating for; me) -> served elsewhere
RULES = [
    pytest.param(5.0, 0.1, 20.0, "me", True, id="owner-alive"),
    pytest.param(9.0, 0.1, 20.0, "me", False, id="owner-dead"),
    pytest.param(None, 0.1, 20.0, "me", False, id="owner-never-seen"),
    pytest.param(9.0, 0.1, 3.0, "me", True, id="me-not-beating-for-a-lease"),
    pytest.param(9.0, 5.0, 20.0, "me", True, id="my-beat-is-late"),
    pytest.param(5.0, 0.1, 20.0, None, False, id="no-instance"),
]


@pytest.mark.parametrize(("owner_age", "my_age", "my_run", "me", "expected"), RULES)
async def test_who_counts_as_serving_an_event(
    pool: asyncpg.Pool,
    owner_age: float | None,
    my_age: float,
    my_run: float,
    me: str | None,
    expected: bool,
) -> None:
    """With a lease of 10 s: alive within 6.7 s of a beat; judged by an instance whose own
    beat is under 3.3 s old and who has been beating for 10 s."""
    async with pool.acquire() as conn:
        tx = conn.transaction()  # rolled back: nothing of it stays
        await tx.start()
        try:
            await conn.execute("DELETE FROM instances WHERE id IN ('owner', 'me')")
            await conn.execute(
                "INSERT INTO instances VALUES ('me', now() - make_interval(secs => $1),"
                " now() - make_interval(secs => $2))",
                my_age,
                my_run,
            )
            if owner_age is not None:
                await conn.execute(
                    "INSERT INTO instances VALUES ('owner', now() - make_interval(secs => $1),"
                    " now() - interval '1 hour')",
                    owner_age,
                )
            served = await conn.fetchval("SELECT seatd_served_elsewhere('owner', $1, 10)", me)
            assert served is expected
            assert await conn.fetchval("SELECT seatd_served_elsewhere('me', 'me', 10)") is False
            assert await conn.fetchval("SELECT seatd_served_elsewhere(NULL, 'me', 10)") is False
        finally:
            await tx.rollback()


async def test_a_gap_in_the_beats_starts_a_new_run(pool: asyncpg.Pool) -> None:
    owners = PostgresOwners(pool, "gappy", 10.0)
    await owners.start()  # one beat: a run starts now
    try:
        await pool.execute(
            "UPDATE instances SET beating_since = now() - interval '1 minute',"
            " seen_at = now() - interval '1 second' WHERE id = 'gappy'"
        )
        await owners.beat()  # 1 s after the last: the same run
        run = await pool.fetchval(
            "SELECT extract(epoch FROM now() - beating_since) FROM instances WHERE id = 'gappy'"
        )
        assert run > 50
        await pool.execute(
            "UPDATE instances SET seen_at = now() - interval '4 seconds' WHERE id = 'gappy'"
        )
        await owners.beat()  # over a third of a lease since the last: cut off meanwhile
        run = await pool.fetchval(
            "SELECT extract(epoch FROM now() - beating_since) FROM instances WHERE id = 'gappy'"
        )
        assert run < 1
    finally:
        await owners.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers, as a frozen Redis does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_a_frozen_redis_costs_one_timeout_not_one_per_claim(
    pool: asyncpg.Pool, store: PostgresStore, silent_port: int
) -> None:
    """Once Redis failed, claims ask PostgreSQL alone while a background task keeps trying
    Redis: no client waits for Redis's timeout again (one claim a second did, when claims took
    turns trying it)."""
    frozen = Redis(host="127.0.0.1", port=silent_port, socket_timeout=0.5)
    owners = PostgresOwners(pool, "me", TTL)
    leases = FailoverLeases(
        RedisLeases(frozen, "me", ttl=TTL), owners, frozen.ping, retry_after=0.2
    )
    event_id = await _event(store)
    try:
        started = time.monotonic()
        assert await leases.claim([event_id]) == {}
        assert time.monotonic() - started >= 0.5  # the first waits for Redis's timeout
        slowest = 0.0
        until_then = time.monotonic() + 2.0  # the probe fails (and tries again) meanwhile
        while time.monotonic() < until_then:
            started = time.monotonic()
            assert await leases.claim([event_id]) == {}
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.05)
        assert slowest < 0.3
        assert leases.primary_away
    finally:
        await leases.close()
        await frozen.aclose()


async def test_redis_is_asked_again_once_it_answers(
    pool: asyncpg.Pool, store: PostgresStore, redis: Redis, private_redis: RedisServer
) -> None:
    owners = PostgresOwners(pool, "me", TTL)
    leases = FailoverLeases(RedisLeases(redis, "me", ttl=TTL), owners, redis.ping, retry_after=0.2)
    event_id = await _event(store)
    try:
        private_redis.halt()
        assert await leases.claim([event_id]) == {}
        assert leases.primary_away
        private_redis.resume()
        await until(lambda: not leases.primary_away, 5, "the probe to find Redis back")
        assert await leases.claim([event_id]) == {}
        assert await redis.get(lease_key(event_id)) == b"me"
    finally:
        await leases.close()
        if not private_redis.is_running():
            private_redis.resume()


async def test_a_woken_event_refused_while_unsure_is_woken_again(
    pool: asyncpg.Pool, store: PostgresStore, instance: MakeInstance
) -> None:
    """An instance that just started cannot tell a crashed owner from a living one for a
    lease, and refuses to load its events; holds that came due then are still expired: the
    wake-up looks once more a lease later."""
    fresh, _ = await instance("fresh")
    event_id = await _event(store)
    await pool.execute(
        "UPDATE events SET owner_instance = 'crashed-long-ago' WHERE id = $1;", event_id
    )
    await pool.execute(
        "INSERT INTO hold_seats (event_id, seat_id, hold_id, user_id, created_at, expires_at,"
        " max_expires_at) VALUES ($1, 'S1', gen_random_uuid(), 'u1', now() - interval '1 minute',"
        " now() - interval '1 second', now() + interval '1 hour')",
        event_id,
    )
    fresh.wake_at([(event_id, time.time())])
    await asyncio.sleep(0.3)
    assert fresh.active(event_id) is None  # refused: this instance cannot judge yet
    deadline = time.monotonic() + TTL + 3
    while time.monotonic() < deadline:
        if await pool.fetchval("SELECT count(*) FROM hold_seats WHERE event_id = $1", event_id):
            await asyncio.sleep(0.1)
            continue
        break
    assert fresh.active(event_id) is not None
    assert await pool.fetchval("SELECT count(*) FROM hold_seats WHERE event_id = $1", event_id) == 0


async def test_releases_wait_together_and_a_new_claim_keeps_its_event(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    owners = PostgresOwners(pool, "me", TTL, release_delay=0.2)
    gone, back = await _event(store), await _event(store)
    await pool.execute(
        "UPDATE events SET owner_instance = 'me' WHERE id = ANY($1::text[])", [gone, back]
    )
    try:
        await owners.release([gone])
        await owners.release([back])
        assert (await _owner_row(pool, gone))[0] == "me"  # not yet: gathered for a moment
        owners.keep([back])  # loaded here again before the release went out

        async def released() -> bool:
            return (await _owner_row(pool, gone))[0] is None

        await until(released, 3, "the gathered release")
        assert (await _owner_row(pool, back))[0] == "me"
    finally:
        await owners.close()


class _CreatedAfterTheClaim(PostgresStore):
    """A store whose load's first claim finds no event, which another connection then
    creates before the load reads who serves it (as when a client sends a hold for an event
    right behind the ``create_event`` that makes it, and the two meet in PostgreSQL)."""

    def __init__(
        self, pool: asyncpg.Pool, instance_id: str, create: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(pool, instance_id, TTL)
        self._create: Callable[[], Awaitable[None]] | None = create

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        async with super()._connection(transaction=transaction) as conn:
            yield _ThenCreate(conn, self)


class _ThenCreate:
    def __init__(self, conn: asyncpg.Connection, store: _CreatedAfterTheClaim) -> None:
        self._conn, self._store = conn, store

    async def fetchrow(self, query: str, *args: Any) -> Any:
        row = await self._conn.fetchrow(query, *args)
        create, self._store._create = self._store._create, None
        if create is not None:
            assert row is None  # the claim found no event: it did not exist yet
            await create()
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_an_event_created_just_after_the_claim_missed_it_is_loaded(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    event_id = f"own-{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await store.create_event(NewEvent(EventInfo(event_id, "Owner test"), (Seat("S1"),)))

    racing = _CreatedAfterTheClaim(pool, "me", create)
    loaded = await racing.load_event(event_id)  # was: unavailable, "served by another instance"
    assert loaded is not None and [seat.seat_id for seat in loaded.seats] == ["S1"]
    assert await _owner_row(pool, event_id) == ("me", loaded.epoch)
