"""Group commit across events: several events' batches in one transaction, each with its own
outcome, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from support.events import new_event

from seatd.adapters.postgres import PostgresStore, StoreConflict
from seatd.core import (
    Hold,
    HoldCreated,
    HoldEnded,
    HoldEndReason,
    HoldExtended,
    Reservation,
    ReservationCreated,
)
from seatd.runtime.ports import (
    BatchWrite,
    FencedOut,
    IdempotencyRecord,
    KeysAlreadyUsed,
    StaleVersion,
)
from seatd.runtime.writer import BatchWriter

# Hold times far in the future: see test_store.T (an overdue hold gets its event woken).
T = 4_000_000_000.0


async def _event(store: PostgresStore) -> tuple[str, int, int]:
    """A new event, loaded: (id, owner epoch, version)."""
    event_id = await new_event(store, "writer")
    loaded = await store.load_event(event_id)
    assert loaded is not None
    return event_id, loaded.epoch, loaded.version


def _hold(user: str, seat: str) -> Hold:
    return Hold(str(uuid.uuid4()), user, (seat,), T + 1000, T + 2000, T + 3000)


async def _holds(pool: asyncpg.Pool, event_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id)
    return count


async def test_each_event_of_a_shared_transaction_gets_its_own_outcome(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    written, fenced, stale, broken, keyed = [await _event(store) for _ in range(5)]
    await store.load_event(fenced[0])  # another owner claimed it since
    record = IdempotencyRecord("u1", "k1", "hash", b'{"ok": true}')
    await store.persist(keyed[0], keyed[1], keyed[2], [], [record], previous=keyed[2])
    writes = [
        BatchWrite(written[0], written[1], written[2], written[2] + 1, [HoldCreated(_hold("u1", "S0"))]),
        BatchWrite(fenced[0], fenced[1], fenced[2], fenced[2] + 1, [HoldCreated(_hold("u1", "S0"))]),
        BatchWrite(stale[0], stale[1], stale[2] + 1, stale[2] + 2, [HoldCreated(_hold("u1", "S0"))]),
        # A refreshed hold that is not in the database: an error inside the transaction.
        BatchWrite(broken[0], broken[1], broken[2], broken[2] + 1, [
            HoldCreated(_hold("u2", "S1")),
            HoldExtended(_hold("u1", "S0")._replace(expires_at=T + 2500)),
        ]),
        BatchWrite(keyed[0], keyed[1], keyed[2], keyed[2] + 1, [HoldCreated(_hold("u1", "S0"))], [record]),
        BatchWrite(written[0].replace("writer", "nope"), 1, 0, 1, []),  # no such event
    ]  # fmt: skip
    outcomes = await store.persist_many(writes)
    assert [type(o) for o in outcomes] == [
        type(None), FencedOut, StaleVersion, StoreConflict, KeysAlreadyUsed, FencedOut
    ]  # fmt: skip
    assert [await _holds(pool, e[0]) for e in (written, fenced, stale, broken, keyed)] == [
        1, 0, 0, 0, 0
    ]  # fmt: skip
    versions = [
        await pool.fetchval("SELECT version FROM events WHERE id = $1", e[0])
        for e in (written, broken)
    ]
    assert versions == [written[2] + 1, broken[2]]


async def test_every_row_of_a_shared_transaction_lands_under_its_own_event(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Rows of all events travel in shared arrays, cut by per-event counts: each event must get
    exactly its own holds, seats, reservations, ends and retry keys, with its own version."""
    first, quiet, second = [await _event(store) for _ in range(3)]
    older = _hold("u1", "S3")
    await store.persist(
        second[0], second[1], second[2] + 1, [HoldCreated(older)], previous=second[2]
    )
    a1, a2 = (
        _hold("a1", "S0"),
        Hold(str(uuid.uuid4()), "a2", ("S1", "S2"), T + 1000, T + 2000, T + 3000),
    )
    b1 = _hold("b1", "S0")
    taken = Reservation(str(uuid.uuid4()), "u1", ("S3",), T + 1500)
    writes = [
        BatchWrite(first[0], first[1], first[2], first[2] + 1, [HoldCreated(a1), HoldCreated(a2)],
                   [IdempotencyRecord("a1", "ka", "h", b'{"ok": true}')]),
        BatchWrite(quiet[0], quiet[1], quiet[2], quiet[2], [],
                   [IdempotencyRecord("q", "kq", "h", b'{"ok": false}')]),
        BatchWrite(second[0], second[1], second[2] + 1, second[2] + 2, [
            HoldCreated(b1),
            HoldEnded(older, HoldEndReason.RESERVED),
            ReservationCreated(taken),
        ], [IdempotencyRecord("b1", "kb", "h", b'{"ok": true}')]),
    ]  # fmt: skip
    assert await store.persist_many(writes) == [None, None, None]
    seats = await pool.fetch(
        "SELECT event_id, seat_id, hold_id::text FROM hold_seats WHERE event_id = ANY($1)",
        [first[0], quiet[0], second[0]],
    )
    assert sorted(tuple(r) for r in seats) == sorted([
        (first[0], "S0", a1.hold_id),
        (first[0], "S1", a2.hold_id),
        (first[0], "S2", a2.hold_id),
        (second[0], "S0", b1.hold_id),
    ])  # fmt: skip
    reserved = await pool.fetch(
        "SELECT event_id, seat_id FROM reservations WHERE event_id = ANY($1)",
        [first[0], quiet[0], second[0]],
    )
    assert [tuple(r) for r in reserved] == [(second[0], "S3")]
    keys = await pool.fetch(
        "SELECT event_id, key FROM idempotency_keys WHERE event_id = ANY($1) ORDER BY 2",
        [first[0], quiet[0], second[0]],
    )
    assert [tuple(r) for r in keys] == [(first[0], "ka"), (second[0], "kb"), (quiet[0], "kq")]
    versions = await pool.fetch(
        "SELECT id, version FROM events WHERE id = ANY($1) ORDER BY id",
        [first[0], quiet[0], second[0]],
    )
    assert dict((r["id"], r["version"]) for r in versions) == {
        first[0]: first[2] + 1, quiet[0]: quiet[2], second[0]: second[2] + 2
    }  # fmt: skip


async def test_an_event_twice_in_one_transaction_is_refused_whole(store: PostgresStore) -> None:
    event_id, epoch, version = await _event(store)
    write = BatchWrite(event_id, epoch, version, version + 1, [HoldCreated(_hold("u1", "S0"))])
    with pytest.raises(asyncpg.RaiseError, match="appears twice"):
        await store.persist_many([write, write])


class _GatedStore:
    """The real store, with single writes held until ``gate`` opens, and calls counted."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.rounds: list[int] = []

    async def persist(self, *args: Any, **kwargs: Any) -> None:
        await self.gate.wait()
        await self.store.persist(*args, **kwargs)

    async def persist_many(self, writes: Sequence[BatchWrite]) -> list[Exception | None]:
        self.rounds.append(len(writes))
        return await self.store.persist_many(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_batches_that_find_the_writer_busy_share_the_next_transaction(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    gated = _GatedStore(store)
    writer = BatchWriter(gated, concurrency=1)  # type: ignore[arg-type]
    events = [await _event(store) for _ in range(5)]

    def write(event: tuple[str, int, int], previous: int | None = None) -> Any:
        event_id, epoch, version = event
        start = version if previous is None else previous
        effects = [HoldCreated(_hold("u1", "S0"))]
        return writer.persist(event_id, epoch, start + 1, effects, previous=start)

    first = asyncio.ensure_future(write(events[0]))
    await asyncio.sleep(0.05)  # holds the only slot
    waiting = [asyncio.ensure_future(write(e)) for e in events[1:3]]
    refused = asyncio.ensure_future(write(events[3], previous=events[3][2] + 7))
    leaving = asyncio.ensure_future(write(events[4]))
    await asyncio.sleep(0.05)
    leaving.cancel()  # gone before its turn: never written
    gated.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    with pytest.raises(StaleVersion):
        await refused
    assert gated.rounds == [3]  # the three still waiting, in one transaction
    assert [await _holds(pool, e[0]) for e in events] == [1, 1, 1, 0, 0]
