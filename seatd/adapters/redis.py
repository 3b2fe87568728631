"""Redis: a live mirror of holds for operators and other services, and expiry notices.

Mirror. After each committed batch the owner writes, per event (all keys share the hash tag
``{event_id}`` so an event lives on one Redis Cluster slot):

- ``seatd:{E}:hold:<hold_id>``: JSON ``{user_id, seat_ids, expires_at}``, expiring at the hold's
  ``expires_at`` (``PXAT``), deleted when the hold ends;
- ``seatd:{E}:held_by_user``: hash ``user_id -> seats held now``.

Writes are queued and sent in pipelines by one background task, never on the actor's path; if
Redis is down they are dropped and the mirror is marked unhealthy. When Redis answers again the
mirror rewrites every active event's keys from memory (Redis may have come back empty). Only
committed state is ever written: an actor's memory also holds the batch it is writing, which
PostgreSQL may yet refuse. An event loaded from PostgreSQL has its holds and counts written as
loaded: the owner before may have committed changes its mirror never sent.

Notices. Redis publishes ``__keyevent@<db>__:expired`` when it evicts an expired key; a hold key's
eviction becomes an ``Expire(hold_id)`` hint for the event's actor. Eviction can lag the TTL by
minutes, and the hint only asks the actor to expire what is due by its own clock, so a late or
duplicate notice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from seatd.core import Effect, EventState, Expire, Hold, HoldCreated, HoldEnded, HoldExtended
from seatd.runtime.tasks import stop_tasks

__all__ = [
    "ExpiryListener",
    "RedisLeases",
    "RedisMirror",
    "hold_key",
    "lease_key",
    "parse_hold_key",
    "parse_lease_key",
    "user_counts_key",
]

log = structlog.get_logger("seatd.redis")

_PREFIX = "seatd:{"
_LEASE_SUFFIX = "}:owner"


def hold_key(event_id: str, hold_id: str) -> str:
    return f"seatd:{{{event_id}}}:hold:{hold_id}"


def user_counts_key(event_id: str) -> str:
    return f"seatd:{{{event_id}}}:held_by_user"


def parse_hold_key(key: str) -> tuple[str, str] | None:
    """``(event_id, hold_id)`` of a hold key, or None for any other key."""
    if not key.startswith(_PREFIX):
        return None
    event_id, sep, rest = key[len(_PREFIX) :].partition("}:hold:")
    if not sep or not event_id or not rest:
        return None
    return event_id, rest


def parse_lease_key(key: str) -> str | None:
    """The event id of a lease key, or None for any other key."""
    if key.startswith(_PREFIX) and key.endswith(_LEASE_SUFFIX):
        event_id = key[len(_PREFIX) : -len(_LEASE_SUFFIX)]
        return event_id or None
    return None


def _hold_value(hold: Hold) -> bytes:
    return orjson.dumps(
        {"user_id": hold.user_id, "seat_ids": hold.seat_ids, "expires_at": hold.expires_at}
    )


# Per event, what a flush writes: each dirty hold's committed value (None: ended, delete its
# key), and each dirty user's committed count of held seats.
_DirtyHolds = dict[str, dict[str, Hold | None]]
_DirtyUsers = dict[str, dict[str, int]]


def make_client(host: str, port: int, db: int, password: str | None) -> aioredis.Redis:
    """A client whose pool makes callers wait for a free connection: the default pool raises
    once its connections are all busy (a burst of activations each claiming a lease)."""
    pool = aioredis.BlockingConnectionPool(
        host=host,
        port=port,
        db=db,
        password=password,
        socket_timeout=3,
        socket_connect_timeout=3,
        max_connections=64,
        timeout=5,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class RedisMirror:
    """``CommitObserver`` that mirrors live holds into Redis, off the actor's path.

    A commit marks its holds and users *dirty* with their committed state (not the live state:
    by the time the writer task sends them, the actor may be writing its next batch, which can
    still fail and be undone). A later commit of the same hold or user replaces its entry, so
    writes can be merged and retried freely; a resync reads each event's committed state and
    drops that event's older entries, so it is never overtaken by an older write.
    Flushes are at least ``flush_interval`` apart: nothing waits for the mirror (its keys tell
    Redis when holds expire, minutes ahead), and a flush per commit of many busy events cost a
    tenth of the server's CPU, mostly in redis-py's per-call work.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        live_states: Callable[[], Iterable[tuple[str, EventState]]],
        *,
        retry_interval: float = 1.0,
        flush_interval: float = 0.02,
    ) -> None:
        self._client = client
        self._live_states = live_states
        self._retry_interval = retry_interval
        self._flush_interval = flush_interval
        self._next_flush = 0.0  # loop time
        self._dirty_holds: _DirtyHolds = {}
        self._dirty_users: _DirtyUsers = {}
        # Events whose counts hash is rewritten whole at the next flush (loaded here).
        self._reset_counts: set[str] = set()
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        self._needs_resync = True
        self._script_sha = ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis:mirror")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])

    def committed(
        self, event_id: str, version: int, effects: Sequence[Effect], state: object
    ) -> None:
        assert isinstance(state, EventState)
        holds: dict[str, Hold | None] | None = None
        users: dict[str, int] | None = None
        for effect in effects:
            if isinstance(effect, HoldCreated | HoldExtended | HoldEnded):
                if holds is None or users is None:
                    holds = self._dirty_holds.setdefault(event_id, {})
                    users = self._dirty_users.setdefault(event_id, {})
                hold = effect.hold
                # The batch's effects come in order, so a hold's last one says what was
                # committed: the hold as created or refreshed, or None once it ended.
                holds[hold.hold_id] = None if isinstance(effect, HoldEnded) else hold
                users[hold.user_id] = state.held_seat_count(hold.user_id)
        if self._dirty_holds:
            self._pending.set()

    def loaded(self, event_id: str, state: EventState) -> None:
        """An event was loaded from PostgreSQL: mirror its holds and counts as loaded.

        The owner before may have stopped before its mirror caught up (a crash, or a write
        whose outcome it never learned), and then no later commit need touch what it missed.
        The counts hash is rewritten whole; hold keys the lost flushes should have deleted
        are not known here and go at their own expiry."""
        holds, counts = state.committed_holds()
        earlier = self._dirty_holds.get(event_id, {})
        self._dirty_holds[event_id] = dict.fromkeys(earlier) | {h.hold_id: h for h in holds}
        self._dirty_users[event_id] = dict(counts)
        self._reset_counts.add(event_id)
        self._pending.set()

    async def _run(self) -> None:
        while True:
            if self._needs_resync:
                if not await self._try(self._resync()):
                    await asyncio.sleep(self._retry_interval)
                    continue
                self._needs_resync = False
            await self._pending.wait()
            loop = asyncio.get_running_loop()
            if (delay := self._next_flush - loop.time()) > 0:
                await asyncio.sleep(delay)  # more commits join this flush meanwhile
            self._next_flush = loop.time() + self._flush_interval
            self._pending.clear()
            holds, self._dirty_holds = self._dirty_holds, {}
            users, self._dirty_users = self._dirty_users, {}
            resets, self._reset_counts = self._reset_counts, set()
            if not await self._try(self._send(holds, users, resets)):
                # Keep them for after the resync (they may belong to events no longer active).
                self._requeue(holds, users)
                self._reset_counts |= resets
                self._needs_resync = True
                self._pending.set()

    def _requeue(self, holds: _DirtyHolds, users: _DirtyUsers) -> None:
        """Mark these unsent entries dirty again, under any newer ones."""
        for event_id, event_holds in holds.items():
            if event_holds:
                self._dirty_holds[event_id] = event_holds | self._dirty_holds.get(event_id, {})
        for event_id, event_users in users.items():
            if event_users:
                self._dirty_users[event_id] = event_users | self._dirty_users.get(event_id, {})

    async def _try(self, action: Awaitable[None]) -> bool:
        try:
            await action
        except (RedisError, OSError) as error:
            if self.healthy:
                log.warning("redis_unavailable", error=str(error))
            self.healthy = False
            return False
        if not self.healthy:
            log.info("redis_available")
        self.healthy = True
        return True

    async def _send(self, holds: _DirtyHolds, users: _DirtyUsers, resets: set[str]) -> None:
        """Few script calls per flush: a command per hold through redis-py costs more CPU than
        the rest of a hold's path together, and a call per event (one per event per flush with
        many events busy) was still a tenth of the server's CPU. Each call carries the writes
        to up to ``_MIRROR_KEYS`` keys in ONE JSON document, and the key names are built by the
        script: redis-py packs each argument in Python, orjson encodes the document in one
        call. Passing each key as an argument made packing half the flush's CPU."""
        pipe = self._client.pipeline(transaction=False)
        document: list[Any] = []
        keys = 0
        for event_id in dict.fromkeys(chain(holds, users, resets)):
            event_holds = holds.get(event_id, {})
            document.append(
                (
                    event_id,
                    {
                        hold_id: None if hold is None else _hold_entry(hold)
                        for hold_id, hold in event_holds.items()
                    },
                    users.get(event_id, {}),
                    event_id in resets,
                )
            )
            keys += 1 + len(event_holds)
            if keys >= _MIRROR_KEYS:
                pipe.evalsha(self._script_sha, 0, orjson.dumps(document), *_KEY_PARTS)
                document, keys = [], 0
        if document:
            pipe.evalsha(self._script_sha, 0, orjson.dumps(document), *_KEY_PARTS)
        try:
            await pipe.execute()
        except NoScriptError:  # Redis restarted and forgot the script: load it, send again
            self._script_sha = await self._client.script_load(_MIRROR)
            raise

    async def _resync(self) -> None:
        """Rewrite every active event's committed holds and counts from memory; drop keys of
        holds that ended."""
        self._script_sha = await self._client.script_load(_MIRROR)
        for event_id, state in list(self._live_states()):
            holds, counts = state.committed_holds()
            # Older than what was just read, which this rewrite sends instead.
            stale_holds = self._dirty_holds.pop(event_id, {})
            stale_users = self._dirty_users.pop(event_id, {})
            self._reset_counts.discard(event_id)
            try:
                await self._rewrite(event_id, holds, counts)
            except Exception:  # the next resync may no longer find the event active
                self._requeue({event_id: stale_holds}, {event_id: stale_users})
                raise

    async def _rewrite(self, event_id: str, holds: list[Hold], counts: dict[str, int]) -> None:
        """Make the event's keys these holds and counts."""
        live = {h.hold_id: h for h in holds}
        pipe = self._client.pipeline(transaction=False)
        async for raw in self._client.scan_iter(match=f"seatd:{{{event_id}}}:hold:*", count=500):
            parsed = parse_hold_key(raw.decode())
            if parsed is not None and parsed[1] not in live:
                pipe.delete(raw)
        counts_key = user_counts_key(event_id)
        pipe.delete(counts_key)
        for hold in holds:
            _set_hold(pipe, event_id, hold)
        for user, count in counts.items():
            _set_count(pipe, counts_key, user, count)
        await pipe.execute()


# ARGV[1] is JSON with one entry per event: [event_id, {hold_id: [value, expires_at] to set, or
# null to delete its key}, {user: count} (count 0: remove the user from the counts), reset]
# (reset true: the counts listed are all there are, so the hash is emptied first). ARGV[2..6]
# are ``_KEY_PARTS``, the fixed pieces of the key names: the script builds each name from them
# and the ids, so a call has six arguments however many keys it writes (redis-py packs each
# argument in Python), and hold_key() and user_counts_key() stay the one definition of the
# names.
# The script turns expires_at into PXAT as _pxat() does, to the millisecond (in Python it was
# a tenth of the flush's CPU): cjson reads back the very double orjson wrote (shortest
# round-trip digits), Lua's number is that double, the product is the same IEEE one, floor is
# int() for what is positive, and Redis writes an integral number below 2**53 exactly.
# Redis Cluster: the script declares no keys (KEYS is empty) and one call writes several
# events' keys, so several hash slots. Declaring the keys would not make it cluster-safe (it
# did not when they were declared): a cluster needs calls of one event (one slot) each, which
# declare at least one of that event's keys for routing.
_MIRROR = """
local doc = cjson.decode(ARGV[1])
local hold_before, hold_between, hold_after = ARGV[2], ARGV[3], ARGV[4]
local counts_before, counts_after = ARGV[5], ARGV[6]
local null = cjson.null
for e = 1, #doc do
    local event_id, holds, counts = doc[e][1], doc[e][2], doc[e][3]
    local hold_prefix = hold_before .. event_id .. hold_between
    for hold_id, set in pairs(holds) do
        if set == null then
            redis.call('DEL', hold_prefix .. hold_id .. hold_after)
        else
            local pxat = math.max(math.floor(set[2] * 1000), 1)
            redis.call('SET', hold_prefix .. hold_id .. hold_after, set[1], 'PXAT', pxat)
        end
    end
    local counts_key = counts_before .. event_id .. counts_after
    if doc[e][4] then
        redis.call('DEL', counts_key)
    end
    for user, count in pairs(counts) do
        if count == 0 then
            redis.call('HDEL', counts_key, user)
        else
            redis.call('HSET', counts_key, user, count)
        end
    end
end
return 1
"""
# Keys written per mirror script call (an event's hold keys and its counts hash; an event's
# writes are never split): Redis runs one call at a time, so a call must stay short.
_MIRROR_KEYS = 1_000


def _key_parts() -> tuple[str, str, str, str, str]:
    """The pieces of the key names around the ids, as the mirror script reads them: a hold key
    is ``[0] + event_id + [1] + hold_id + [2]``, a counts key ``[3] + event_id + [4]``."""
    hold_before, hold_between, hold_after = hold_key("\0", "\0").split("\0")
    counts_before, counts_after = user_counts_key("\0").split("\0")
    return hold_before, hold_between, hold_after, counts_before, counts_after


_KEY_PARTS = _key_parts()


def _hold_entry(hold: Hold) -> tuple[str, float]:
    """A hold key's value and its hold's expiry, for the mirror script's document."""
    return _hold_value(hold).decode(), hold.expires_at


def _pxat(hold: Hold) -> int:
    """When the hold's key expires, in ms since the epoch (the mirror script's math too)."""
    return max(int(hold.expires_at * 1000), 1)


def _set_hold(pipe: Any, event_id: str, hold: Hold) -> None:
    pipe.set(hold_key(event_id, hold.hold_id), _hold_value(hold), pxat=_pxat(hold))


def _set_count(pipe: Any, key: str, user_id: str, count: int) -> None:
    if count:
        pipe.hset(key, user_id, count)
    else:
        pipe.hdel(key, user_id)


# Take each lease if it is free or already ours (and extend it): '' for each one taken, else
# the holder's id. One call per chunk of events: a renewal round renews every loaded event.
_CLAIM = """
local owners = {}
for i, key in ipairs(KEYS) do
    local owner = redis.call('GET', key)
    if owner == ARGV[1] then
        redis.call('PEXPIRE', key, ARGV[2])
        owners[i] = ''
    elseif not owner then
        redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
        owners[i] = ''
    else
        owners[i] = owner
    end
end
return owners
"""
# Leases per script call: Redis runs one call at a time, so a call must stay short (~1 ms).
_LEASE_CHUNK = 500
# Delete each lease still held by ARGV[1].
_RELEASE = """
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def lease_key(event_id: str) -> str:
    return f"{_PREFIX}{event_id}{_LEASE_SUFFIX}"


class RedisLeases:
    """``Coordinator``: one lease per event, ``seatd:{E}:owner`` = instance id, with a TTL.

    Claiming also re-takes a lease Redis forgot (after a Redis restart) instead of treating it
    as lost, so a Redis restart never stops an instance's events.
    """

    def __init__(self, client: aioredis.Redis, instance_id: str, ttl: float) -> None:
        self._client = client
        self.instance_id = instance_id
        self._ttl_ms = max(int(ttl * 1000), 1)
        # Script SHAs, loaded on first use, and again after a Redis restart.
        self._shas: dict[str, str] = {}

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Take or renew these events' leases: the events held by another instance, with its id.

        One script call (by its SHA) per chunk of events, all in one round trip: a call per
        event cost ~13 us of this process's CPU each. Callers renewing many leases hand them
        over in slices (the registry does), so the event loop runs in between."""
        results = await self._per_lease(_CLAIM, event_ids, self.instance_id, self._ttl_ms)
        return {
            event_id: owner.decode() if isinstance(owner, bytes) else str(owner)
            for event_id, owner in zip(event_ids, results, strict=True)
            if owner
        }

    async def release(self, event_ids: Sequence[str]) -> None:
        """Delete these leases where this instance still holds them, in one round trip: a
        call (and a pooled connection) per event cost ~100 us each when thousands of events
        passivated together."""
        await self._per_lease(_RELEASE, event_ids, self.instance_id)

    async def _per_lease(self, script: str, event_ids: Sequence[str], *args: Any) -> list[Any]:
        """Run a lease script over these events' keys, one call per chunk, and join the
        answers (claim's: one per event)."""
        try:
            return await self._per_lease_once(script, event_ids, args)
        except NoScriptError:  # Redis restarted and forgot the script: load it, run again
            self._shas.pop(script, None)
            return await self._per_lease_once(script, event_ids, args)

    async def _per_lease_once(
        self, script: str, event_ids: Sequence[str], args: tuple[Any, ...]
    ) -> list[Any]:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = await self._client.script_load(script)
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(event_ids), _LEASE_CHUNK):
            keys = [lease_key(e) for e in event_ids[start : start + _LEASE_CHUNK]]
            pipe.evalsha(sha, len(keys), *keys, *args)
        replies = await pipe.execute()
        return [answer for reply in replies if isinstance(reply, list) for answer in reply]


class ExpiryListener:
    """Turns Redis key-expiry notices for hold keys into ``Expire`` hints for the actors, and
    notices for lease keys (an owner died or stalled) into ``lease_expired(event_id)``."""

    def __init__(
        self,
        client: aioredis.Redis,
        db: int,
        deliver: Callable[[str, Expire], None],
        *,
        lease_expired: Callable[[str], None] | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._channel = f"__keyevent@{db}__:expired"
        self._deliver = deliver
        self._lease_expired = lease_expired
        self._retry_interval = retry_interval
        self._task: asyncio.Task[None] | None = None
        self.healthy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis:expiry")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as error:
                if self.healthy:
                    log.warning("redis_notices_lost", error=str(error))
                self.healthy = False
            await asyncio.sleep(self._retry_interval)

    async def _listen(self) -> None:
        await self._enable_notifications()
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.healthy = True
            log.info("redis_notices_subscribed", channel=self._channel)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    await self._client.ping()  # notice a dead connection while idle
                    continue
                data = message.get("data")
                key = data.decode() if isinstance(data, bytes) else str(data)
                parsed = parse_hold_key(key)
                if parsed is not None:
                    event_id, hold_id = parsed
                    self._deliver(event_id, Expire(hold_id))
                elif self._lease_expired is not None:
                    leased = parse_lease_key(key)
                    if leased is not None:
                        self._lease_expired(leased)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _enable_notifications(self) -> None:
        """Make sure expired-key events are on, keeping any flags the operator set."""
        try:
            config: dict[Any, Any] = await self._client.config_get("notify-keyspace-events")
            current = config.get(b"notify-keyspace-events", b"")
            flags = current.decode() if isinstance(current, bytes) else str(current)
            has_expired = "x" in flags or "A" in flags
            if not ("E" in flags and has_expired):
                wanted = "".join(sorted(set(flags) | {"E", "x"}))
                await self._client.config_set("notify-keyspace-events", wanted)
        except ResponseError as error:  # CONFIG may be disabled on managed Redis
            log.warning(
                "redis_config_refused",
                error=str(error),
                hint="set notify-keyspace-events to include 'Ex' on the Redis server",
            )
