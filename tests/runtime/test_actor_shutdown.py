"""An actor stopped by force (shutdown after its timeout) in the middle of a batch: every caller
of the batch is answered, and only with what is known about its change."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import asyncpg
import orjson
from support.events import new_event

from seatd.adapters.postgres import PostgresStore
from seatd.core import PlaceHold, Policy
from seatd.errors import ShuttingDown, StoreUnavailable
from seatd.runtime.actor import ActorSettings, Envelope
from seatd.runtime.ports import (
    IdempotencyKey,
    IdempotencyRecord,
    KeysAlreadyUsed,
    SystemClock,
)
from seatd.runtime.registry import Registry
from seatd.runtime.writer import BatchWriter


class _Store:
    """The real store, but for the methods a test replaces (``persist=...``)."""

    def __init__(self, store: PostgresStore, **replaced: Callable[..., Any]) -> None:
        self.__dict__.update(replaced)
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _registry(store: _Store) -> Registry:
    return Registry(cast(Any, store), SystemClock(), Policy(300, 8, 1800), ActorSettings())


async def test_a_batch_stopped_while_its_retry_keys_are_looked_up_is_answered(
    store: PostgresStore,
) -> None:
    """The write refused the batch (a retry key already stored), so nothing changed: its
    callers hear ``shutting_down`` instead of waiting forever for the lookup that never ends."""
    looking = asyncio.Event()

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise KeysAlreadyUsed("a retry key of the batch is already stored")

    async def slow_lookup(
        event_id: str, scopes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        looking.set()
        await asyncio.sleep(3600)
        return {}

    registry = _registry(_Store(store, persist=refuse, find_idempotency=slow_lookup))
    actor = await registry.activate(await new_event(store, "stop"))
    command = PlaceHold("u1", ("S0",), str(uuid.uuid4()))
    key = IdempotencyKey("u1", "k1", "h", lambda _: orjson.dumps({"ok": True}))
    answer = actor.submit(command, Envelope(command, idempotency=key))
    await asyncio.wait_for(looking.wait(), 5)
    await registry.close(timeout=0.2)  # the actor's task is cancelled mid-lookup
    assert actor.stopped
    assert isinstance(answer.exception(), ShuttingDown)


async def test_a_batch_stopped_while_its_write_is_in_flight_is_answered_as_unconfirmed(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """The write may have committed before its answer came back: the callers hear
    ``unavailable`` (may or may not have been applied), never that nothing was committed."""
    committed = asyncio.Event()

    async def commit_then_stall(*args: Any, **kwargs: Any) -> None:
        await store.persist(*args, **kwargs)
        committed.set()
        await asyncio.sleep(3600)  # the answer is slow to come back

    registry = _registry(_Store(store, persist=commit_then_stall))
    event_id = await new_event(store, "stop")
    actor = await registry.activate(event_id)
    answer = actor.submit(PlaceHold("u1", ("S0",), str(uuid.uuid4())))
    await asyncio.wait_for(committed.wait(), 5)
    await registry.close(timeout=0.2)  # the actor's task is cancelled mid-write
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id) == 1
    error = answer.exception()
    assert isinstance(error, StoreUnavailable), repr(error)
    assert "same idempotency_key" in str(error)


async def test_a_batch_stopped_while_queued_for_a_write_slot_is_answered_shutting_down(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """A batch still waiting for the group-commit writer was never sent, so it provably changed
    nothing: its callers hear ``shutting_down``, not that it may have been applied."""
    writing = asyncio.Event()

    async def stall_first(*args: Any, **kwargs: Any) -> None:
        writing.set()
        await asyncio.sleep(3600)  # holds the writer's only slot

    writer = BatchWriter(cast(Any, _Store(store, persist=stall_first)), concurrency=1)
    registry = Registry(
        cast(Any, store), SystemClock(), Policy(300, 8, 1800), ActorSettings(), writer=writer
    )
    stalled_event, queued_event = await new_event(store, "stop"), await new_event(store, "stop")
    stalled = (await registry.activate(stalled_event)).submit(PlaceHold("u1", ("S0",), "h1"))
    await asyncio.wait_for(writing.wait(), 5)
    queued = (await registry.activate(queued_event)).submit(PlaceHold("u2", ("S0",), "h2"))
    await asyncio.sleep(0.05)  # its batch waits for the slot
    await registry.close(timeout=0.2)
    error = queued.exception()
    assert isinstance(error, ShuttingDown), repr(error)
    assert isinstance(stalled.exception(), StoreUnavailable)  # sent: it may have committed
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", queued_event) == 0


async def test_commands_queued_behind_a_failed_write_hear_unavailable(
    store: PostgresStore,
) -> None:
    """PostgreSQL failed the write of the batch before them: the commands queued behind it
    never ran, and may be sent again on the same connection (``unavailable``), rather than
    told the event was stopping (``shutting_down``, which sends clients to reconnect)."""
    writing, fail = asyncio.Event(), asyncio.Event()

    async def fail_later(*args: Any, **kwargs: Any) -> None:
        writing.set()
        await fail.wait()
        raise OSError("connection reset by PostgreSQL")

    registry = _registry(_Store(store, persist=fail_later))
    actor = await registry.activate(await new_event(store, "stop"))
    try:
        first = actor.submit(PlaceHold("u1", ("S0",), str(uuid.uuid4())))
        await asyncio.wait_for(writing.wait(), 5)
        queued = actor.submit(PlaceHold("u2", ("S1",), str(uuid.uuid4())))
        fail.set()
        await asyncio.wait_for(asyncio.wait([first, queued]), 5)
        assert isinstance(first.exception(), StoreUnavailable)  # it may have committed
        error = queued.exception()
        assert isinstance(error, StoreUnavailable), repr(error)
        assert "failed before this command ran" in str(error)
    finally:
        await registry.close(timeout=0.2)
