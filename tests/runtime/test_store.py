"""The PostgreSQL store's batch write: one round trip, fenced, all or nothing."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest
from support.events import new_event

from seatd.adapters.postgres import (
    _PERSIST,
    _SEATS,
    PostgresStore,
    StoreConflict,
    _row_arguments,
)
from seatd.core import (
    Effect,
    Hold,
    HoldCreated,
    HoldEnded,
    HoldEndReason,
    HoldExtended,
    Reservation,
    ReservationCreated,
)
from seatd.runtime.ports import FencedOut, IdempotencyRecord, KeysAlreadyUsed, StaleVersion

# Hold times far in the future (2096): a hold past its expiry in the shared test database is
# one any running seatd's overdue sweep wakes and loads, bumping the epoch these tests write
# with (a batch written straight to the store was fenced once in a full run).
T = 4_000_000_000.0


async def _event(store: PostgresStore) -> str:
    return await new_event(store, "store")


def _hold(user: str, *seats: str) -> Hold:
    return Hold(str(uuid.uuid4()), user, seats, T + 1000, T + 2000, T + 3000)


async def test_a_batch_is_written_and_read_back(store: PostgresStore) -> None:
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    kept, gone, sold = _hold("u1", "S0"), _hold("u2", "S1"), _hold("u3", "S2", "S3")
    reservation = Reservation(str(uuid.uuid4()), "u3", ("S2", "S3"), T + 1500)
    key = IdempotencyRecord("u3", "k1", "hash", b'{"ok": true, "result": {}}')
    effects = [
        HoldCreated(kept), HoldCreated(gone), HoldCreated(sold),
        HoldEnded(gone, HoldEndReason.RELEASED), HoldExtended(kept._replace(expires_at=T + 2500)),
        HoldEnded(sold, HoldEndReason.RESERVED), ReservationCreated(reservation),
    ]  # fmt: skip
    await store.persist(
        event_id, loaded.epoch, loaded.version + 1, effects, [key], previous=loaded.version
    )
    again = await store.load_event(event_id)
    assert again is not None and again.version == loaded.version + 1
    assert [(h.hold_id, h.seat_ids, h.expires_at) for h in again.holds] == [
        (kept.hold_id, ("S0",), T + 2500)
    ]
    assert [(r.reservation_id, r.seat_ids) for r in again.reservations] == [
        (reservation.reservation_id, ("S2", "S3"))
    ]
    found = await store.find_idempotency(event_id, [("u3", "k1")])
    assert found[("u3", "k1")].request_hash == "hash"


async def test_retry_records_are_stored_exactly_as_given(store: PostgresStore) -> None:
    """The records travel as one JSON document: user ids (any text a token may carry), keys and
    hashes must come back exactly, and each stored reply as the same JSON, under its own user
    and key."""
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    odd = 'quote " back \\ slash \u00e9t\u00e9 \U0001f3ab tab\t nl\n'
    records = [
        IdempotencyRecord(odd, "k-1", "h1", b'{"ok":false,"error":{"message":"\\"x\\" \\u00e9"}}'),
        IdempotencyRecord("u2", odd, "h2", b'{"ok":true,"result":{"seats":["A-1","A-2"]}}'),
        IdempotencyRecord("u2", "k-1", "h3", b'{"ok":true,"result":{}}'),
    ]
    await store.persist(
        event_id, loaded.epoch, loaded.version, [], records, previous=loaded.version
    )
    found = await store.find_idempotency(event_id, [(r.user_id, r.key) for r in records])
    assert {scope: (f.request_hash, orjson.loads(f.response)) for scope, f in found.items()} == {
        (r.user_id, r.key): (r.request_hash, orjson.loads(r.response)) for r in records
    }


def _hold_id(hold: Hold) -> str:
    return hold.hold_id


def _previous_rows(holds: list[Hold]) -> list[list[object]]:
    """The row arrays of the previous release for a batch creating ``holds``: each hold's
    fields once per hold, then its seats beside its hold id (there was a ``holds`` table)."""
    return [
        [], [], [],
        [h.hold_id for h in holds], [h.user_id for h in holds], [h.created_at for h in holds],
        [h.expires_at for h in holds], [h.max_expires_at for h in holds],
        [s for h in holds for s in h.seat_ids], [h.hold_id for h in holds for _ in h.seat_ids],
        [], [], [], [],
    ]  # fmt: skip


async def test_the_previous_releases_calls_still_write_during_a_rolling_upgrade(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Instances of the previous release send each hold's fields once per hold; after init.sql
    is applied their calls must keep writing every seat with its hold's fields (and keep
    refusing a stale batch)."""
    one, many = await _event(store), await _event(store)
    first, second = await store.load_event(one), await store.load_event(many)
    assert first is not None and second is not None
    keys = '[["u1", "k1", "h1", {"ok": true}], ["u2", "k2", "h2", {"ok": false}]]'
    holds = {one: [_hold("u1", "S0"), _hold("u2", "S2", "S1")], many: [_hold("u3", "S3")]}
    single = (one, first.epoch, first.version, first.version + 1, *_previous_rows(holds[one]))
    rows = _previous_rows(holds[many])
    counts = [[len(column)] for column in rows]
    batches = [
        [many], [second.epoch], [second.version], [second.version + 1],
        counts[0], rows[0], counts[1], *rows[1:3], counts[3], *rows[3:8], counts[8], *rows[8:10],
        counts[10], *rows[10:14], [2], keys,
    ]  # fmt: skip
    async with pool.acquire() as conn:
        old_single = "SELECT seatd_persist_batch(" + ", ".join(f"${n}" for n in range(1, 20))
        assert await conn.fetchval(old_single + ")", *single, keys) == 0
        assert await conn.fetchval(old_single + ")", *single, keys) == -2  # that version is gone
        old_many = "SELECT seatd_persist_batches(" + ", ".join(f"${n}" for n in range(1, 26))
        assert await conn.fetchval(old_many + ")", *batches) == [0]
    for event_id in (one, many):
        found = await store.find_idempotency(event_id, [("u1", "k1"), ("u2", "k2")])
        assert {scope: record.request_hash for scope, record in found.items()} == {
            ("u1", "k1"): "h1",
            ("u2", "k2"): "h2",
        }
        loaded = await store.load_event(event_id)
        assert loaded is not None
        assert sorted(loaded.holds, key=_hold_id) == sorted(
            (h._replace(seat_ids=tuple(sorted(h.seat_ids))) for h in holds[event_id]), key=_hold_id
        )


async def test_the_previous_releases_calls_end_refresh_and_refuse_as_before(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Through the previous release's functions, holds named by id are ended and refreshed by
    index (never a scan of hold_seats), and refusals keep their codes: a fenced call is -1 even
    when a refreshed hold is gone, and in a call of several events such a hold makes its event
    -4 and leaves the others written."""
    one, two = await _event(store), await _event(store)
    ended, refreshed, fresh = _hold("u1", "S0", "S1"), _hold("u2", "S2"), _hold("u3", "S0")
    first = await store.load_event(one)
    assert first is not None
    await store.persist(
        one, first.epoch, first.version + 1, [HoldCreated(ended), HoldCreated(refreshed)],
        previous=first.version,
    )  # fmt: skip
    single = "SELECT seatd_persist_batch(" + ", ".join(f"${n}" for n in range(1, 20)) + ")"
    many = "SELECT seatd_persist_batches(" + ", ".join(f"${n}" for n in range(1, 26)) + ")"
    rows = _previous_rows([])
    rows[0], rows[1], rows[2] = [ended.hold_id], [refreshed.hold_id], [T + 2500]
    async with pool.acquire() as conn:
        scans = "SELECT pg_stat_get_xact_numscans('hold_seats'::regclass)"
        async with conn.transaction():
            before = await conn.fetchval(scans)
            args = (one, first.epoch, first.version + 1, first.version + 2, *rows, "[]")
            assert await conn.fetchval(single, *args) == 0
            assert await conn.fetchval(scans) == before  # no sequential scan
        loaded = await store.load_event(one)  # a new epoch: the calls below are fenced
        assert loaded is not None
        assert [(h.hold_id, h.expires_at) for h in loaded.holds] == [(refreshed.hold_id, T + 2500)]
        gone = [*rows]
        gone[0], gone[1], gone[2] = [], [ended.hold_id], [2600.0]  # ended above: gone
        stale = (one, first.epoch, loaded.version, loaded.version + 1, *gone, "[]")
        assert await conn.fetchval(single, *stale) == -1
        second = await store.load_event(two)
        assert second is not None
        creating = _previous_rows([fresh])
        columns = [[*a, *b] for a, b in zip(gone, creating, strict=True)]
        counts = [[len(a), len(b)] for a, b in zip(gone, creating, strict=True)]
        batches = [
            [one, two], [loaded.epoch, second.epoch], [loaded.version, second.version],
            [loaded.version + 1, second.version + 1],
            counts[0], columns[0], counts[1], *columns[1:3], counts[3], *columns[3:8],
            counts[8], *columns[8:10], counts[10], *columns[10:14], [0, 0], "[]",
        ]  # fmt: skip
        assert await conn.fetchval(many, *batches) == [-4, 0]
    written = await store.load_event(two)
    assert written is not None and [h.hold_id for h in written.holds] == [fresh.hold_id]
    untouched = await store.load_event(one)
    assert untouched is not None and untouched.version == loaded.version


async def test_a_stale_owner_writes_nothing(store: PostgresStore, pool: asyncpg.Pool) -> None:
    event_id = await _event(store)
    old = await store.load_event(event_id)
    new = await store.load_event(event_id)  # another owner claimed the event since
    assert old is not None and new is not None and new.epoch == old.epoch + 1
    with pytest.raises(FencedOut):
        await store.persist(
            event_id, old.epoch, old.version + 1, [HoldCreated(_hold("u1", "S0"))],
            previous=old.version,
        )  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id) == 0
    assert await pool.fetchval("SELECT version FROM events WHERE id = $1", event_id) == old.version


async def test_a_batch_applied_on_another_version_writes_nothing(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """The actor's memory must be the stored state: a batch that names another version as the
    one it was applied on is refused, so a drifted owner reloads instead of writing over it."""
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    with pytest.raises(StaleVersion):
        await store.persist(
            event_id, loaded.epoch, loaded.version + 2, [HoldCreated(_hold("u1", "S0"))],
            previous=loaded.version + 1,
        )  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id) == 0
    assert await pool.fetchval("SELECT version FROM events WHERE id = $1", event_id) == (
        loaded.version
    )


async def test_a_batch_with_a_stored_retry_key_writes_nothing(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """A retry key the owner did not remember is found by the write itself (its records go in
    first, on the primary key): the whole batch is refused, and so are the previous releases'
    calls, with -3 as before."""
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    key = IdempotencyRecord("u1", "k1", "h1", b'{"ok": true}')
    first = _hold("u1", "S0")
    await store.persist(
        event_id, loaded.epoch, loaded.version + 1, [HoldCreated(first)], [key],
        previous=loaded.version,
    )  # fmt: skip
    version = loaded.version + 1
    second = _hold("u2", "S1")
    fresh = IdempotencyRecord("u2", "k2", "h2", b'{"ok": true}')
    with pytest.raises(KeysAlreadyUsed):
        await store.persist(
            event_id, loaded.epoch, version + 1, [HoldCreated(second)], [fresh, key],
            previous=version,
        )  # fmt: skip
    keys = '[["u2", "k2", "h2", {"ok": true}], ["u1", "k1", "h1", {"ok": true}]]'
    async with pool.acquire() as conn:
        rows = _row_arguments([HoldCreated(second)])
        # What the previous release calls, with these arguments.
        call = _PERSIST.replace("seatd_apply_batch(", "seatd_write_batch(")
        args = (event_id, loaded.epoch, version, version + 1, *rows, keys)
        assert await conn.fetchval(call, *args) == -3
        old_single = "SELECT seatd_persist_batch(" + ", ".join(f"${n}" for n in range(1, 20))
        older = (event_id, loaded.epoch, version, version + 1, *_previous_rows([second]), keys)
        assert await conn.fetchval(old_single + ")", *older) == -3
    assert await pool.fetchval("SELECT version FROM events WHERE id = $1", event_id) == version
    stored = await pool.fetch("SELECT hold_id::text FROM hold_seats WHERE event_id = $1", event_id)
    assert [r[0] for r in stored] == [first.hold_id]
    assert await store.find_idempotency(event_id, [("u2", "k2")]) == {}


async def test_refreshing_a_hold_the_database_lost_fails_the_whole_batch(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    lost = _hold("u1", "S0")  # never written: as if the hourly clean-up had deleted it
    other = _hold("u2", "S1")
    with pytest.raises(StoreConflict):
        await store.persist(
            event_id, loaded.epoch, loaded.version + 1, [HoldCreated(other), HoldExtended(lost)],
            previous=loaded.version,
        )  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM holds WHERE event_id = $1", event_id) == 0


async def test_a_failing_command_fails_its_batch_and_hangs_nobody(store: PostgresStore) -> None:
    """A bug in the rules must not leave callers waiting or half a batch applied."""
    import asyncio

    from seatd.core import GetEvent, PlaceHold, Policy
    from seatd.errors import InternalFault
    from seatd.runtime.actor import ActorSettings
    from seatd.runtime.ports import SystemClock
    from seatd.runtime.registry import Registry

    registry = Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings())
    try:
        event_id = await _event(store)
        actor = await registry.activate(event_id)
        original = actor.state.handle

        def broken(command: object, now: float) -> object:
            if isinstance(command, GetEvent):
                raise RuntimeError("boom")
            return original(command, now)  # type: ignore[arg-type]

        actor.state.handle = broken  # type: ignore[method-assign]
        hold = actor.submit(PlaceHold("u1", ("S0",), str(uuid.uuid4())))
        summary = actor.submit(GetEvent())
        results = await asyncio.wait_for(asyncio.gather(hold, summary, return_exceptions=True), 5)
        assert all(isinstance(r, InternalFault) for r in results), results
        # The event reloads from PostgreSQL, where the half-applied hold never went.
        fresh = await registry.ask(event_id, GetEvent())
        assert fresh.held == 0  # type: ignore[union-attr]
    finally:
        await registry.close()


async def test_a_watched_idle_event_neither_passivates_nor_spins(store: PostgresStore) -> None:
    import asyncio
    import time

    from seatd.core import GetEvent, Policy
    from seatd.runtime.actor import ActorSettings
    from seatd.runtime.ports import SystemClock
    from seatd.runtime.registry import Registry

    watched = {"yes": True}
    registry = Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings(idle_timeout=0.1))
    registry.keep_alive = lambda _: watched["yes"]
    try:
        event_id = await _event(store)
        await registry.ask(event_id, GetEvent())
        # Well past the idle timeout, the loop must still run other tasks on time.
        for _ in range(10):
            started = time.monotonic()
            await asyncio.wait_for(asyncio.sleep(0.05), 1.0)
            assert time.monotonic() - started < 0.5, "the event loop is starved"
        assert registry.active(event_id) is not None
        watched["yes"] = False
        for _ in range(40):
            if registry.active(event_id) is None:
                break
            await asyncio.sleep(0.05)
        assert registry.active(event_id) is None, "an unwatched idle event stayed loaded"
    finally:
        await registry.close()


async def test_a_caller_leaving_does_not_cancel_the_load_others_wait_for(
    store: PostgresStore,
) -> None:
    """Found by the fuzzer: a client that disconnected while its event loaded made every other
    request waiting for that load fail."""
    import asyncio

    from seatd.core import Policy
    from seatd.runtime.actor import ActorSettings
    from seatd.runtime.ports import SystemClock
    from seatd.runtime.registry import Registry

    registry = Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings())
    try:
        event_id = await _event(store)
        leaving = asyncio.create_task(registry.activate(event_id))
        staying = asyncio.create_task(registry.activate(event_id))
        await asyncio.sleep(0)  # both wait for the one load
        leaving.cancel()
        actor = await staying
        assert registry.active(event_id) is actor
        assert leaving.cancelled()
    finally:
        await registry.close()


async def test_a_batch_reads_only_the_holds_it_changes(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Ending or refreshing holds probes each one by its key. A plan that scanned every hold
    row of the event would read the dead ones too (every hold a sale ended before the next
    vacuum), so each batch would cost more than the last: the row statistics are always
    stale for a table this busy, so the plan must not depend on them."""
    event_id = await _event(store)
    loaded = await store.load_event(event_id)
    assert loaded is not None
    ended, refreshed = _hold("u1", "S0"), _hold("u2", "S1")
    await store.persist(
        event_id,
        loaded.epoch,
        loaded.version + 1,
        [HoldCreated(ended), HoldCreated(refreshed)],
        previous=loaded.version,
    )
    effects: list[Effect] = [
        HoldEnded(ended, HoldEndReason.RELEASED),
        HoldExtended(refreshed._replace(expires_at=T + 2500)),
    ]
    async with pool.acquire() as conn, conn.transaction():
        # The plan the function keeps after its first calls, whatever the table holds now.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # Statistics that say an event has about one held seat, as early in a sale (rolled
        # back with the rest): a plan trusting them would walk the event's rows.
        await conn.execute(
            "INSERT INTO events (id, name) SELECT 'stats-' || n, 'stats'"
            " FROM generate_series(1, 2000) AS n;"
            "INSERT INTO seats (event_id, seat_id) SELECT 'stats-' || n, 'S0'"
            " FROM generate_series(1, 2000) AS n;"
            "INSERT INTO hold_seats SELECT 'stats-' || n, 'S0', gen_random_uuid(), 'u', now(),"
            " now() + interval '1 hour', now() + interval '1 hour'"
            " FROM generate_series(1, 2000) AS n;"
            "ANALYZE hold_seats"
        )
        # 3,000 dead held seats of the event: nothing can vacuum them while this transaction
        # runs (one seat held and let go over and over, as a sale does).
        await conn.execute(
            """
            DO $$
            BEGIN
                FOR i IN 1 .. 3000 LOOP
                    INSERT INTO hold_seats (event_id, seat_id, hold_id, user_id, created_at,
                                            expires_at, max_expires_at)
                    VALUES (current_setting('seatd.test_event'), 'S3', gen_random_uuid(),
                            'gone', now(), now(), now());
                    DELETE FROM hold_seats
                    WHERE event_id = current_setting('seatd.test_event') AND seat_id = 'S3';
                END LOOP;
            END
            $$
            """.replace("current_setting('seatd.test_event')", f"'{event_id}'")
        )
        before = await _holds_key_reads(conn)
        outcome = await conn.fetchval(
            _PERSIST, event_id, loaded.epoch, loaded.version + 1, loaded.version + 2,
            *_row_arguments(effects), "[]",
        )  # fmt: skip
        assert outcome == 0
        assert await _holds_key_reads(conn) - before <= 4  # one probe per seat, and slack


async def _holds_key_reads(conn: asyncpg.Connection) -> int:
    reads: int = await conn.fetchval(
        "SELECT pg_stat_get_xact_tuples_returned('hold_seats_pkey'::regclass)"
    )
    return reads


async def test_a_large_events_seats_load_in_order_without_a_sort(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """A stadium's seats are read in the organiser's order straight off an index: sorting
    100,000 of them spilled to disk at every activation."""
    event_id = f"big-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO events (id, name) VALUES ($1, 'Stadium')", event_id)
        # Inserted against the order: the listing must come from the ordinals, not the heap.
        await conn.execute(
            "INSERT INTO seats (event_id, seat_id, ordinal)"
            " SELECT $1, 'S' || n, 100000 - n FROM generate_series(1, 100000) AS n",
            event_id,
        )
    await pool.execute("ANALYZE seats")
    plan = "\n".join(
        row[0] for row in await pool.fetch(f"EXPLAIN {_SEATS}".replace("$1", f"'{event_id}'"))
    )
    assert "Sort" not in plan, plan
    loaded = await store.load_event(event_id)
    assert loaded is not None
    assert [s.seat_id for s in loaded.seats[:3]] == ["S100000", "S99999", "S99998"]
    await pool.execute("DELETE FROM events WHERE id = $1", event_id)
