"""The Redis mirror of live holds: what a flush writes and removes, on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from support.events import new_event
from support.waiting import until

from seatd.adapters import redis as redis_adapter
from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import RedisMirror, hold_key, user_counts_key
from seatd.app import mirror_events
from seatd.core import (
    EventInfo,
    EventState,
    Hold,
    PlaceHold,
    Policy,
    RefreshHold,
    ReleaseHold,
    Seat,
)
from seatd.errors import StoreUnavailable
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import SystemClock
from seatd.runtime.registry import Registry


@contextlib.asynccontextmanager
async def _mirroring(
    registry: Registry, redis: Redis, *, start: bool = True, **options: float
) -> AsyncIterator[RedisMirror]:
    """The app's mirror of ``registry``'s events; the registry and the mirror closed after."""
    mirror = mirror_events(registry, redis, **options)
    if start:
        mirror.start()
    try:
        yield mirror
    finally:
        await registry.close()
        await mirror.close()


def _registry(store: Any) -> Registry:
    return Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings())


async def test_a_flush_mirrors_each_hold_and_count_and_removes_ended_holds(
    store: PostgresStore, redis: Redis
) -> None:
    registry = _registry(store)
    async with _mirroring(registry, redis):
        event_id = await new_event(store, "mirror")
        kept = await registry.ask(event_id, PlaceHold("u1", ("S0", "S1"), str(uuid.uuid4())))
        ended = await registry.ask(event_id, PlaceHold("u2", ("S2",), str(uuid.uuid4())))
        assert isinstance(kept, Hold) and isinstance(ended, Hold)
        counts = user_counts_key(event_id)
        await until(lambda: _hget(redis, counts, "u2", b"1"), 5, "the second hold mirrored")
        value = orjson.loads(await redis.get(hold_key(event_id, kept.hold_id)) or b"null")
        assert value == {
            "user_id": "u1",
            "seat_ids": ["S0", "S1"],
            "expires_at": kept.expires_at,
        }
        expires_in_ms = kept.expires_at * 1000 - time.time() * 1000
        assert abs(await redis.pttl(hold_key(event_id, kept.hold_id)) - expires_in_ms) < 2000
        assert await redis.hget(counts, "u1") == b"2"
        await registry.ask(event_id, ReleaseHold("u2", ended.hold_id))
        await until(lambda: _hget(redis, counts, "u2", None), 5, "the release mirrored")
        assert not await redis.exists(hold_key(event_id, ended.hold_id))
        assert await redis.exists(hold_key(event_id, kept.hold_id))


async def _hget(redis: Redis, key: str, field: str, expected: bytes | None) -> bool:
    return bool(await redis.hget(key, field) == expected)


async def test_one_flush_mirrors_many_events_in_several_calls(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush of many events' holds goes out in script calls of a few keys each: every
    event's new holds, ended holds and counts land on that event's keys."""
    monkeypatch.setattr(redis_adapter, "_MIRROR_KEYS", 4)
    mirror = RedisMirror(redis, list)  # nothing to resync: only the flushes write
    now = time.time()
    events: dict[str, tuple[EventState, Hold, Hold]] = {}
    for n in range(5):
        event_id = f"many-{uuid.uuid4().hex[:8]}-{n}"
        state = EventState(EventInfo(event_id, "E"), Policy(300, 8, 1800), [Seat("A"), Seat("B")])
        kept = state.handle(PlaceHold("u1", ("A",), str(uuid.uuid4())), now)
        ended = state.handle(PlaceHold("u2", ("B",), str(uuid.uuid4())), now)
        assert isinstance(kept, Hold) and isinstance(ended, Hold)
        mirror.committed(event_id, 1, state.commit(), state)
        events[event_id] = (state, kept, ended)
    mirror.start()
    try:
        last = list(events)[-1]
        await until(lambda: _hget(redis, user_counts_key(last), "u2", b"1"), 5, "the first flush")
        for event_id, (state, kept, ended) in events.items():
            assert await redis.hget(user_counts_key(event_id), "u1") == b"1"
            assert (
                await redis.exists(
                    hold_key(event_id, kept.hold_id), hold_key(event_id, ended.hold_id)
                )
                == 2
            )
            state.handle(ReleaseHold("u2", ended.hold_id), now)
            mirror.committed(event_id, 2, state.commit(), state)
        await until(lambda: _hget(redis, user_counts_key(last), "u2", None), 5, "the second flush")
        for event_id, (_, kept, ended) in events.items():
            counts = user_counts_key(event_id)
            assert await redis.hget(counts, "u1") == b"1"
            assert await redis.hget(counts, "u2") is None
            assert await redis.exists(hold_key(event_id, kept.hold_id))
            assert not await redis.exists(hold_key(event_id, ended.hold_id))
    finally:
        await mirror.close()


async def test_a_flush_names_keys_and_fields_as_the_key_functions_do_for_any_ids(
    redis: Redis,
) -> None:
    """The flush script builds the key names from ids it reads in a JSON document: ids with
    characters that JSON escapes or Lua patterns treat specially ('.', '-', '%') still land on
    exactly the keys hold_key() and user_counts_key() name, and nothing else is written."""
    mirror = RedisMirror(redis, list)  # nothing to resync: only the flushes write
    event_id = ("A.b-c_d" * 10)[:64]  # the longest event id, every punctuation mark allowed
    users = ['q"uo\\te', "ünï cødé ✓", "%d.-[^]$*+?()", "}:hold:{", "tab\tnew\nline", "7"]
    seats = [Seat(f'seat "{n}" \\ é') for n in range(len(users))]
    state = EventState(EventInfo(event_id, "E"), Policy(300, 8, 1800), seats)
    now = time.time()
    holds = []
    for user, seat in zip(users, seats, strict=True):
        hold = state.handle(PlaceHold(user, (seat.seat_id,), str(uuid.uuid4())), now)
        assert isinstance(hold, Hold)
        holds.append(hold)
    mirror.committed(event_id, 1, state.commit(), state)
    mirror.start()
    try:
        counts = user_counts_key(event_id)
        await until(lambda: _hget(redis, counts, users[-1], b"1"), 5, "the flush")
        assert await redis.hgetall(counts) == {user.encode(): b"1" for user in users}
        expected = {counts} | {hold_key(event_id, hold.hold_id) for hold in holds}
        assert {key.decode() for key in await redis.keys("*")} == expected
        for hold in holds:
            value = orjson.loads(await redis.get(hold_key(event_id, hold.hold_id)) or b"null")
            assert value == {
                "user_id": hold.user_id,
                "seat_ids": list(hold.seat_ids),
                "expires_at": hold.expires_at,
            }
        ended = holds[0]
        state.handle(ReleaseHold(ended.user_id, ended.hold_id), now)
        mirror.committed(event_id, 2, state.commit(), state)
        await until(lambda: _hget(redis, counts, ended.user_id, None), 5, "the release")
        assert {key.decode() for key in await redis.keys("*")} == expected - {
            hold_key(event_id, ended.hold_id)
        }
    finally:
        await mirror.close()


async def test_a_hold_key_expires_at_its_hold_s_expiry_to_the_millisecond(redis: Redis) -> None:
    """The flush script computes each key's PXAT from the hold's expires_at: it must be the
    whole milliseconds Python computes, also for times on or just beside a millisecond."""
    mirror = RedisMirror(redis, list)
    event_id = f"expiry-{uuid.uuid4().hex[:8]}"
    base = float(int(time.time()) + 60)
    exact = [base + ms / 1000 for ms in (1, 499, 500, 999)]
    beside = [math.nextafter(at, to) for at in exact for to in (0, math.inf)]
    wanted = sorted([*exact, *beside, base + 0.1234567, base + 0.9999999])
    state = EventState(
        EventInfo(event_id, "E"), Policy(300, 8, 1800), [Seat(f"S{n}") for n in range(14)]
    )
    holds = []
    for n, expires_at in enumerate(wanted):
        command = PlaceHold(f"u{n}", (f"S{n}",), str(uuid.uuid4()))
        hold = state.handle(command, expires_at - 300)  # exact: both differ by a whole 300
        assert isinstance(hold, Hold) and hold.expires_at == expires_at
        holds.append(hold)
    mirror.committed(event_id, 1, state.commit(), state)
    mirror.start()
    try:
        counts = user_counts_key(event_id)
        await until(lambda: _hget(redis, counts, holds[-1].user_id, b"1"), 5, "the flush")
        for hold in holds:
            key = hold_key(event_id, hold.hold_id)
            assert await redis.pexpiretime(key) == int(hold.expires_at * 1000), hold.expires_at
            value = orjson.loads(await redis.get(key) or b"null")
            assert value["expires_at"] == hold.expires_at
    finally:
        await mirror.close()


class _FailingLater:
    """The real store, but every write after the first ``good`` ones waits for ``gate`` and
    then fails (a commit whose connection broke): the actor undoes that batch."""

    def __init__(self, store: PostgresStore, good: int) -> None:
        self._store = store
        self._good = good
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def persist(self, *args: Any, **kwargs: Any) -> None:
        if self._good > 0:
            self._good -= 1
            await self._store.persist(*args, **kwargs)
            return
        self.waiting.set()
        await self.gate.wait()
        raise StoreUnavailable("connection lost")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def _mirrored(
    redis: Redis, pool: asyncpg.Pool, event_id: str, hold: Hold
) -> tuple[int, bool, bytes | None]:
    """The hold in PostgreSQL (rows), in Redis (a key), and its user's count in Redis."""
    rows = await pool.fetchval(
        "SELECT count(*) FROM holds WHERE event_id = $1 AND hold_id = $2::uuid",
        event_id,
        hold.hold_id,
    )
    key = bool(await redis.exists(hold_key(event_id, hold.hold_id)))
    return rows, key, await redis.hget(user_counts_key(event_id), hold.user_id)


async def test_a_flush_writes_what_was_committed_not_the_batch_being_written(
    store: PostgresStore, redis: Redis, pool: asyncpg.Pool
) -> None:
    """A flush that comes while the actor writes its next batch mirrors the state as committed:
    that batch may fail and be undone, and then nothing would correct Redis."""
    failing = _FailingLater(store, good=2)
    registry = _registry(cast(Any, failing))
    async with _mirroring(registry, redis, flush_interval=0.5) as mirror:
        try:
            event_id = await new_event(store, "mirror")
            await until(lambda: mirror.healthy, 5, "the first resync")
            first = await registry.ask(event_id, PlaceHold("u0", ("S3",), str(uuid.uuid4())))
            assert isinstance(first, Hold)
            await until(lambda: _hget(redis, user_counts_key(event_id), "u0", b"1"), 5, "a flush")
            # The next flush is flush_interval away: by then the release is being written.
            hold = await registry.ask(event_id, PlaceHold("u1", ("S0", "S1"), str(uuid.uuid4())))
            assert isinstance(hold, Hold)
            release = asyncio.ensure_future(registry.ask(event_id, ReleaseHold("u1", hold.hold_id)))
            await asyncio.wait_for(failing.waiting.wait(), 5)
            counts = user_counts_key(event_id)
            await until(lambda: _hget(redis, counts, "u1", b"2"), 5, "the hold's flush")
            assert await redis.exists(hold_key(event_id, hold.hold_id))
            failing.gate.set()
            with pytest.raises(StoreUnavailable):
                await release
            await asyncio.sleep(0.6)  # a flush still due has run
            assert await _mirrored(redis, pool, event_id, hold) == (1, True, b"2")
        finally:
            failing.gate.set()


async def test_a_resync_writes_what_was_committed_not_the_batch_being_written(
    store: PostgresStore, redis: Redis, pool: asyncpg.Pool
) -> None:
    """A resync (after Redis came back) that reads an actor writing a batch mirrors its state
    as committed: that batch may fail and be undone, and then nothing would correct Redis."""
    failing = _FailingLater(store, good=1)
    registry = _registry(cast(Any, failing))
    async with _mirroring(registry, redis, start=False) as mirror:
        try:
            event_id = await new_event(store, "mirror")
            hold = await registry.ask(event_id, PlaceHold("u1", ("S0", "S1"), str(uuid.uuid4())))
            assert isinstance(hold, Hold)
            release = asyncio.ensure_future(registry.ask(event_id, ReleaseHold("u1", hold.hold_id)))
            await asyncio.wait_for(failing.waiting.wait(), 5)
            mirror.start()  # its first resync reads the actor while the release is being written
            await until(lambda: mirror.healthy, 5, "the resync")
            assert await _mirrored(redis, pool, event_id, hold) == (1, True, b"2")
            failing.gate.set()
            with pytest.raises(StoreUnavailable):
                await release
            await asyncio.sleep(0.1)  # a flush still due has run
            assert await _mirrored(redis, pool, event_id, hold) == (1, True, b"2")
        finally:
            failing.gate.set()


async def test_loading_an_event_mirrors_its_committed_holds_and_only_their_counts(
    store: PostgresStore, redis: Redis
) -> None:
    """An owner that stopped before its mirror caught up (a crash, or a write whose outcome it
    never learned) leaves Redis behind PostgreSQL. The next owner to load the event writes the
    event's holds and counts as PostgreSQL has them, so no later commit is needed to fix them."""
    event_id = await new_event(store, "mirror")
    behind = _registry(store)
    try:  # committed, but no mirror ever flushed it
        first = await behind.ask(event_id, PlaceHold("u1", ("S0", "S1"), str(uuid.uuid4())))
        second = await behind.ask(event_id, PlaceHold("u2", ("S2",), str(uuid.uuid4())))
        assert isinstance(first, Hold) and isinstance(second, Hold)
    finally:
        await behind.close()
    counts = user_counts_key(event_id)
    await redis.hset(counts, mapping={"u1": 1, "gone": 3})  # what the lost flushes left

    registry = _registry(store)
    async with _mirroring(registry, redis) as mirror:
        await until(lambda: mirror.healthy, 5, "the first resync")
        await registry.activate(event_id)
        await until(lambda: _hget(redis, counts, "u2", b"1"), 5, "the loaded event mirrored")
        assert await redis.hgetall(counts) == {b"u1": b"2", b"u2": b"1"}
        for hold in (first, second):
            value = orjson.loads(await redis.get(hold_key(event_id, hold.hold_id)) or b"null")
            assert value == {
                "user_id": hold.user_id,
                "seat_ids": list(hold.seat_ids),
                # PostgreSQL keeps microseconds: the loaded time is the stored one.
                "expires_at": pytest.approx(hold.expires_at, abs=1e-5),
            }


async def test_a_batch_with_several_changes_to_one_hold_mirrors_its_last(redis: Redis) -> None:
    """The mirror takes each hold as the batch's last effect on it left it: placed then
    refreshed, the refreshed hold; placed then released, no key at all."""
    mirror = RedisMirror(redis, list)  # nothing to resync: only the flushes write
    event_id = f"last-{uuid.uuid4().hex[:8]}"
    state = EventState(EventInfo(event_id, "E"), Policy(300, 8, 1800), [Seat("A"), Seat("B")])
    now = time.time()
    kept = state.handle(PlaceHold("u1", ("A",), str(uuid.uuid4())), now)
    assert isinstance(kept, Hold)
    refreshed = state.handle(RefreshHold("u1", kept.hold_id), now + 5)
    gone = state.handle(PlaceHold("u2", ("B",), str(uuid.uuid4())), now)
    assert isinstance(refreshed, Hold) and isinstance(gone, Hold)
    state.handle(ReleaseHold("u2", gone.hold_id), now + 5)
    mirror.committed(event_id, 1, state.commit(), state)
    mirror.start()
    try:
        counts = user_counts_key(event_id)
        await until(lambda: _hget(redis, counts, "u1", b"1"), 5, "the flush")
        value = orjson.loads(await redis.get(hold_key(event_id, kept.hold_id)) or b"null")
        assert value["expires_at"] == refreshed.expires_at == kept.expires_at + 5
        assert not await redis.exists(hold_key(event_id, gone.hold_id))
        assert await redis.hget(counts, "u2") is None
    finally:
        await mirror.close()
