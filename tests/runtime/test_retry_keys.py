"""Retry keys the owner does not remember: stored by an earlier owner, found by the write.

The actor checks keys in memory only; the batch write refuses a batch whose new keys are
already stored, and the batch runs again with the stored outcomes. These tests make an
owner forget (a new registry, as after a restart or a takeover) and retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import asyncpg
import orjson
from support.events import new_event
from support.tracking import tracked_objects

from seatd.adapters.postgres import PostgresStore
from seatd.core import PlaceHold, Policy
from seatd.errors import IdempotencyMismatch
from seatd.runtime.actor import ActorSettings, Envelope
from seatd.runtime.ports import IdempotencyKey, StoredReply, SystemClock
from seatd.runtime.registry import Registry


def _registry(store: PostgresStore) -> Registry:
    return Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings())


def _keyed(user: str, key: str, seat: str) -> Envelope:
    """A hold with a retry key whose request hash names the seat (another seat: mismatch)."""

    def encode(outcome: object) -> bytes:
        hold_id = getattr(outcome, "hold_id", None)
        return orjson.dumps({"ok": hold_id is not None, "hold_id": hold_id})

    command = PlaceHold(user, (seat,), str(uuid.uuid4()))
    return Envelope(command, idempotency=IdempotencyKey(user, key, f"seat={seat}", encode))


async def _ask(registry: Registry, event_id: str, *envelopes: Envelope) -> list[Any]:
    """Submit together (one batch) and collect every outcome, errors included."""
    actor = await registry.activate(event_id)
    futures = [actor.submit(e.command, e) for e in envelopes]
    return await asyncio.gather(*futures, return_exceptions=True)


async def test_a_retry_the_owner_forgot_gets_the_stored_reply_and_changes_nothing(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    event_id = await new_event(store, "keys")
    first = _registry(store)
    try:
        [original] = await _ask(first, event_id, _keyed("u1", "k1", "S0"))
    finally:
        await first.close()
    assert isinstance(original, StoredReply)
    version = await pool.fetchval("SELECT version FROM events WHERE id = $1", event_id)

    second = _registry(store)  # remembers no key
    try:
        replay, fresh, mismatch = await _ask(
            second,
            event_id,
            _keyed("u1", "k1", "S0"),  # the same request again
            _keyed("u2", "k2", "S1"),  # a new one in the same batch
            _keyed("u1", "k1", "S2"),  # the same key for another request
        )
    finally:
        await second.close()
    assert isinstance(replay, StoredReply)
    assert orjson.loads(replay.response) == orjson.loads(original.response)
    assert replay.outcome is None  # replayed, not run again
    assert isinstance(fresh, StoredReply) and fresh.outcome is not None
    assert isinstance(mismatch, IdempotencyMismatch)
    holds = await pool.fetch(
        "SELECT user_id, count(*) AS n FROM holds WHERE event_id = $1 GROUP BY user_id ORDER BY 1",
        event_id,
    )
    assert [(r["user_id"], r["n"]) for r in holds] == [("u1", 1), ("u2", 1)]
    stored_version = await pool.fetchval("SELECT version FROM events WHERE id = $1", event_id)
    assert stored_version == version + 1  # one batch wrote, once


async def test_every_retry_gets_its_first_reply_however_many_keys_came_after(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """An owner remembers only its latest keys (here between 2 and 4 of them); older ones are
    found in PostgreSQL, so each retry, recent or not, replays its own first reply, and only
    the forgotten ones cost a lookup."""
    looked_up: list[list[tuple[str, str]]] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def find_idempotency(self, event_id: str, scopes: Any) -> Any:
            looked_up.append(list(scopes))
            return await store.find_idempotency(event_id, scopes)

    event_id = await new_event(store, "keys", seats=10)
    registry = Registry(
        cast(Any, Counting()), SystemClock(), Policy(300, 8, 1800), ActorSettings(remembered_keys=4)
    )
    try:
        firsts = []
        for n in range(10):
            [first] = await _ask(registry, event_id, _keyed(f"u{n}", f"k{n}", f"S{n}"))
            assert isinstance(first, StoredReply) and first.outcome is not None
            firsts.append(first)
        for n in (9, 8, 0, 5):
            [replay] = await _ask(registry, event_id, _keyed(f"u{n}", f"k{n}", f"S{n}"))
            assert isinstance(replay, StoredReply) and replay.outcome is None, n
            assert orjson.loads(replay.response) == orjson.loads(firsts[n].response), n
    finally:
        await registry.close()
    assert looked_up == [[("u0", "k0")], [("u5", "k5")]]  # 9 and 8 were remembered
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id) == 10


async def test_remembered_keys_and_live_holds_leave_the_garbage_collector(
    store: PostgresStore,
) -> None:
    """The actor keeps each keyed hold's outcome and the hold itself, for minutes: neither
    may stay an object the collector walks at every pass (tests/support/tracking.py)."""
    event_id = await new_event(store, "keys", seats=900)
    registry = _registry(store)
    try:
        await _ask(registry, event_id, *(_keyed(f"w{n}", f"w{n}", f"S{n}") for n in range(100)))
        before = tracked_objects()
        for start in range(100, 900, 100):
            replies = await _ask(
                registry,
                event_id,
                *(_keyed(f"u{n}", f"k{n}", f"S{n}") for n in range(start, start + 100)),
            )
            assert all(isinstance(r, StoredReply) and r.outcome is not None for r in replies)
        grown = tracked_objects() - before
    finally:
        await registry.close()
    assert grown < 100, grown  # 800 holds and 800 remembered outcomes


async def test_a_remembered_outcome_is_replayed_for_its_own_user_and_key_only(
    store: PostgresStore,
) -> None:
    """Users and keys whose letters run together alike ("1u" + "k", "u" + "k1") are different
    scopes: neither gets the other's remembered reply."""
    event_id = await new_event(store, "keys", seats=4)
    registry = _registry(store)
    try:
        [first] = await _ask(registry, event_id, _keyed("1u", "k", "S0"))
        [other] = await _ask(registry, event_id, _keyed("u", "k1", "S1"))
        [again] = await _ask(registry, event_id, _keyed("1u", "k", "S0"))
    finally:
        await registry.close()
    assert isinstance(first, StoredReply) and first.outcome is not None
    assert isinstance(other, StoredReply) and other.outcome is not None  # ran: not a replay
    assert isinstance(again, StoredReply) and again.outcome is None  # replayed from memory
    assert orjson.loads(again.response) == orjson.loads(first.response)
