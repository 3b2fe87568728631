"""PostgreSQL storage: the durable truth, written one transaction per actor batch.

``persist`` first locks the event's row and checks it *fenced by the owner epoch*: if another
instance has claimed the event since this actor loaded it, nothing is written and ``FencedOut``
is raised, so a paused or partitioned former owner can never write. The row lock also orders
competing writers of one event. It then checks that the stored version is the one the batch was
applied on (``previous``), else ``StaleVersion``: the actor's memory and the database disagree,
and the event must reload rather than write on top of a state it has not seen.

A batch's effects are netted first (a hold created and released in the same batch never touches
the database) and then written by one call of ``seatd_apply_batch`` (init.sql) with arrays:
one round trip and one implicit transaction per batch, however large, where one statement per
kind cost 6-8 round trips. Times travel as float seconds and are turned into timestamps by
``to_timestamp`` in SQL, which avoids building datetimes in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
import orjson
import structlog

from seatd.adapters.pg_literal import array_literal
from seatd.core import (
    Effect,
    EventInfo,
    Hold,
    HoldCreated,
    HoldEnded,
    HoldExtended,
    Location,
    Reservation,
    ReservationCreated,
    Seat,
    SeatSnapshot,
)
from seatd.errors import EventExists, OwnedElsewhere, StoreUnavailable
from seatd.logging import ThrottledWarning
from seatd.runtime.ports import (
    BatchWrite,
    EventPage,
    FencedOut,
    IdempotencyRecord,
    KeysAlreadyUsed,
    LoadedEvent,
    NewEvent,
    StaleVersion,
)

__all__ = ["PostgresStore", "close_pool", "connect_pool"]

log = structlog.get_logger("seatd.postgres")

# Failures that mean "the database is not reachable right now", as opposed to a refused query.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)

_EVENT_COLUMNS = """
    id, name, extract(epoch FROM starts_at)::float8 AS starts_at, venue,
    ST_Y(location::geometry) AS latitude, ST_X(location::geometry) AS longitude,
    hold_duration_s, max_seats_per_user, status
"""

# The load's claim: the next owner epoch, unless another living instance serves the event
# (seatd/adapters/owners.py). Checked under the row's lock, so of several instances loading
# the event at once only the first gets it.
_CLAIM = f"""
UPDATE events SET owner_epoch = owner_epoch + 1, owner_instance = $2
WHERE id = $1 AND NOT seatd_served_elsewhere(owner_instance, $2, $3)
RETURNING {_EVENT_COLUMNS}, version, owner_epoch
"""
_SERVED_BY = "SELECT owner_instance FROM events WHERE id = $1"
# Claims of one load: a claim that misses an event with no other owner tries again.
_CLAIM_ATTEMPTS = 3
_SEATS = """
SELECT seat_id, section, row, number, category, x, y FROM seats
WHERE event_id = $1 ORDER BY ordinal, seat_id
"""
_HOLDS = """
SELECT hold_id::text, user_id, extract(epoch FROM created_at)::float8,
       extract(epoch FROM expires_at)::float8, extract(epoch FROM max_expires_at)::float8,
       array_agg(seat_id ORDER BY seat_id)
FROM hold_seats WHERE event_id = $1
GROUP BY hold_id, user_id, created_at, expires_at, max_expires_at
"""
_RESERVATIONS = """
SELECT reservation_id::text, user_id, array_agg(seat_id ORDER BY seat_id),
       extract(epoch FROM min(reserved_at))::float8
FROM reservations WHERE event_id = $1 GROUP BY reservation_id, user_id
"""
# One statement, so one consistent snapshot of the event's committed state at its version.
_SNAPSHOT = """
SELECT e.version,
       (SELECT count(*) FROM seats s WHERE s.event_id = e.id)::int AS total_seats,
       (SELECT coalesce(array_agg(hs.seat_id ORDER BY hs.seat_id), '{}')
          FROM hold_seats hs WHERE hs.event_id = e.id) AS held_seats,
       (SELECT coalesce(array_agg(extract(epoch FROM hs.expires_at)::float8
                                  ORDER BY hs.seat_id), '{}')
          FROM hold_seats hs WHERE hs.event_id = e.id) AS held_until,
       (SELECT coalesce(array_agg(r.seat_id ORDER BY r.seat_id), '{}')
          FROM reservations r WHERE r.event_id = e.id) AS reserved
  FROM events e WHERE e.id = $1
"""
# The whole batch in one round trip: see seatd_apply_batch in init.sql. Its row arrays, in its
# argument order, each with its group and type: the arrays of one group are parallel (one entry
# per row), and seatd_write_batches takes each group's per-event row count before the group's
# first array. The retry records follow as one JSON document (``_keys_document``), after their
# per-event counts in seatd_write_batches. Each array goes as its text literal
# (seatd/adapters/pg_literal.py), cast in the statement to its type.
_ROW_ARRAYS = (
    ("deleted", "text[]"), ("deleted", "uuid[]"),
    ("extended", "text[]"), ("extended", "uuid[]"), ("extended", "float8[]"),
    ("held", "text[]"), ("held", "uuid[]"), ("held", "text[]"),
    ("held", "float8[]"), ("held", "float8[]"), ("held", "float8[]"),
    ("reserved", "text[]"), ("reserved", "uuid[]"), ("reserved", "text[]"),
    ("reserved", "float8[]"),
)  # fmt: skip
_ROW_GROUPS = tuple(group for group, _ in _ROW_ARRAYS)
_FIRST_OF_GROUP = frozenset(_ROW_GROUPS.index(group) for group in set(_ROW_GROUPS))
# The groups in their arrays' order: the order of ``_NetEffects.groups()``.
_GROUP_ORDER = tuple(dict.fromkeys(_ROW_GROUPS))


def _call(function: str, types: Sequence[str]) -> str:
    """``SELECT function($1, ...)``, an array argument given as text and cast to its type."""
    arguments = (
        f"${n}::text::{type_}" if type_.endswith("[]") else f"${n}"
        for n, type_ in enumerate(types, 1)
    )
    return f"SELECT {function}({', '.join(arguments)})"


def _many_types() -> list[str]:
    """seatd_write_batches' argument types: the events' columns, then each row group's counts
    before its arrays (as ``_many_rows`` lays them out), then the retry records'."""
    types = ["text[]", "bigint[]", "bigint[]", "bigint[]"]
    for index, (_, type_) in enumerate(_ROW_ARRAYS):
        if index in _FIRST_OF_GROUP:
            types.append("int[]")
        types.append(type_)
    return [*types, "int[]", "jsonb"]


_PERSIST = _call(
    "seatd_apply_batch",
    ("text", "bigint", "bigint", "bigint", *(type_ for _, type_ in _ROW_ARRAYS), "jsonb"),
)
_PERSIST_MANY = _call("seatd_write_batches", _many_types())
_KEYS_PRIMARY_KEY = "idempotency_keys_pkey"
# One index probe per key (LATERAL): a plain join may scan every key stored for the event.
_FIND_KEYS = """
SELECT k.user_id, k.key, k.request_hash, k.response::text
FROM unnest($2::text[], $3::text[]) AS u(user_id, key)
CROSS JOIN LATERAL (
    SELECT * FROM idempotency_keys i
    WHERE i.event_id = $1 AND i.user_id = u.user_id AND i.key = u.key
) AS k
"""
# create_event keys are not tied to an event yet: they live under the empty event id.
_CLAIM_CREATE_KEY = """
INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response)
VALUES ('', $1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING 1
"""
_BY_ID = f"""
SELECT {_EVENT_COLUMNS}, NULL::float8 AS distance FROM events
WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2
"""
_NEAR = f"""
WITH origin AS (SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS point),
ranked AS (
    SELECT e.*, ST_Distance(e.location, origin.point) AS distance
    FROM events e, origin
    WHERE e.location IS NOT NULL
      AND ($3::float8 IS NULL OR ST_DWithin(e.location, origin.point, $3))
)
SELECT {_EVENT_COLUMNS}, distance FROM ranked
WHERE $4::text IS NULL
   OR (distance, id) > (SELECT r.distance, r.id FROM ranked r WHERE r.id = $4)
ORDER BY distance, id
LIMIT $5
"""
_INSERT_EVENT = """
INSERT INTO events (id, name, starts_at, venue, location, hold_duration_s, max_seats_per_user, status)
VALUES ($1, $2, to_timestamp($3), $4,
        CASE WHEN $5::float8 IS NULL THEN NULL
             ELSE ST_SetSRID(ST_MakePoint($6::float8, $5::float8), 4326)::geography END,
        $7, $8, $9)
"""


async def connect_pool(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    max_size: int,
    min_size: int = 1,
    warm: bool = False,
    query_timeout: float = 15.0,
) -> asyncpg.Pool:
    """A connection pool; raises StoreUnavailable with the reason if the database is down.

    ``min_size`` connections stay open however long they idle (asyncpg closes the others after
    five idle minutes). ``warm``: each new connection prepares the batch write before it is
    used; see ``_warm``. ``query_timeout``: how long a statement may run before it fails
    (``dropped_on_timeout`` then drops its connection)."""
    try:
        pool = await asyncpg.create_pool(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            min_size=min(min_size, max_size),
            max_size=max_size,
            command_timeout=query_timeout,
            timeout=5,
            reset=_keep_session,
            init=_warm if warm else None,
        )
    except _UNAVAILABLE as error:
        raise StoreUnavailable(f"cannot reach PostgreSQL at {host}:{port}: {error}") from error
    assert pool is not None
    return pool


# Calls that change nothing (no event has the empty id, and no rows are given) but go through
# the statement cache as the real ones do.
_WARM_UP: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (_PERSIST, ("", 0, 0, 0, *(["{}"] * 15), "[]")),
    (_PERSIST_MANY, (*(["{}"] * 24), "[]")),
    (_FIND_KEYS, ("", [], [])),
)


async def close_pool(pool: asyncpg.Pool, timeout: float) -> None:
    """Close the pool's connections politely, or drop them: a PostgreSQL that stopped
    answering (paused, partitioned) would hold a polite close, and so the exit, for as long as
    the connections' timeouts allow, and then fail it."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        log.warning("postgres_close_abandoned", error=repr(error))
        pool.terminate()


@contextlib.asynccontextmanager
async def dropped_on_timeout(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Drop the connection when a query on it times out. asyncpg would cancel the query on the
    server and hold the connection's release until the cancel is answered: as long again as
    the query's own timeout when PostgreSQL has stopped answering (paused, partitioned), so a
    write failed after 30 s instead of 15 (found by fault injection). The pool opens another."""
    try:
        yield
    except TimeoutError:
        conn.terminate()
        raise


async def _warm(conn: asyncpg.Connection) -> None:
    """Prepare the hot statements on a new connection, before anything waits for it.

    A statement's first use on a connection costs round trips of its own (parse, then a query
    of the types it uses): at an on-sale's first batch, each waited ~0.1-0.3 s behind the
    thousands of requests the event loop was reading (BENCHMARKS.md, round 8). A failure here
    (an outdated schema, say) is left to the real call to report."""
    for query, arguments in _WARM_UP:
        try:
            await conn.fetchval(query, *arguments)
        except asyncpg.PostgresError as error:
            log.warning("statement_warm_up_failed", error=repr(error))
            return


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing to do.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` after
    every release, a second round trip for every batch write, on the event's critical path. The
    service keeps no session state (no SET, LISTEN, advisory lock or cursor), and asyncpg still
    rolls back an open transaction itself before this is called."""


class PostgresStore:
    """``SeatStore`` on an asyncpg pool."""

    def __init__(
        self, pool: asyncpg.Pool, instance_id: str | None = None, lease_ttl: float = 10.0
    ) -> None:
        self._pool = pool
        # Written as the owner of each event this store loads, which it refuses to load while
        # another living instance serves it (see seatd/adapters/owners.py).
        self._instance_id = instance_id
        self._lease_ttl = lease_ttl
        self._unavailable = ThrottledWarning("postgres_unavailable", logger="seatd.postgres")

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a transaction only where several statements need one (a single
        statement is its own transaction, and BEGIN/COMMIT would cost two more round trips)."""
        try:
            async with self._pool.acquire() as conn:
                if transaction:
                    async with conn.transaction(), dropped_on_timeout(conn):
                        yield conn
                else:
                    async with dropped_on_timeout(conn):
                        yield conn
        except _UNAVAILABLE as error:
            # The reason goes to the log; clients learn only that the database is unavailable.
            self._unavailable.warn(error=repr(error))
            raise StoreUnavailable("the database is unavailable; retry later") from error

    async def ping(self) -> bool:
        try:
            async with self._pool.acquire(timeout=2) as conn, dropped_on_timeout(conn):
                await conn.fetchval("SELECT 1", timeout=2)
        except Exception:
            return False
        return True

    # --- events ----------------------------------------------------------------------------

    async def find_idempotency(
        self, event_id: str, scopes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                _FIND_KEYS, event_id, [s[0] for s in scopes], [s[1] for s in scopes]
            )
        return {(r[0], r[1]): IdempotencyRecord(r[0], r[1], r[2], r[3].encode()) for r in rows}

    async def event_statuses(self, event_ids: Sequence[str]) -> dict[str, str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, status FROM events WHERE id = ANY ($1::text[])", list(event_ids)
            )
        return {row[0]: row[1] for row in rows}

    async def set_event_status(self, event_id: str, status: str) -> bool:
        """Open or close an event (``seatd close-event``); False when there is no such event."""
        async with self._connection() as conn:
            changed = await conn.fetchval(
                "UPDATE events SET status = $2 WHERE id = $1 RETURNING 1", event_id, status
            )
        return changed is not None

    async def create_event(
        self, event: NewEvent, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        info = event.info
        location = info.location
        try:
            async with self._connection(transaction=True) as conn:
                if idempotency is not None:
                    # Claiming the key first makes a concurrent retry wait for this transaction
                    # (unique index), then see the key and replay instead of creating twice.
                    claimed = await conn.fetchval(
                        _CLAIM_CREATE_KEY,
                        idempotency.user_id,
                        idempotency.key,
                        idempotency.request_hash,
                        idempotency.response.decode(),
                    )
                    if claimed is None:
                        rows = await conn.fetch(
                            _FIND_KEYS, "", [idempotency.user_id], [idempotency.key]
                        )
                        r = rows[0]
                        return IdempotencyRecord(r[0], r[1], r[2], r[3].encode())
                await conn.execute(
                    _INSERT_EVENT,
                    info.event_id,
                    info.name,
                    info.starts_at,
                    info.venue,
                    location.latitude if location else None,
                    location.longitude if location else None,
                    info.hold_duration_s,
                    info.max_seats_per_user,
                    info.status,
                )
                await conn.copy_records_to_table(
                    "seats",
                    records=[
                        (
                            info.event_id,
                            s.seat_id,
                            s.section,
                            s.row,
                            s.number,
                            s.category,
                            s.x,
                            s.y,
                            i,
                        )
                        for i, s in enumerate(event.seats)
                    ],
                    columns=[
                        "event_id",
                        "seat_id",
                        "section",
                        "row",
                        "number",
                        "category",
                        "x",
                        "y",
                        "ordinal",
                    ],
                )
        except asyncpg.UniqueViolationError as error:
            if error.table_name == "events" or error.constraint_name == "events_pkey":
                raise EventExists(
                    f"event {info.event_id} already exists", details={"event_id": info.event_id}
                ) from error
            raise
        return None

    async def earliest_expiries(self, overdue_by: float | None = None) -> list[tuple[str, float]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT event_id, extract(epoch FROM min(expires_at))::float8 FROM hold_seats"
                " WHERE $1::float8 IS NULL OR expires_at < now() - make_interval(secs => $1)"
                " GROUP BY event_id",
                overdue_by,
            )
        return [(r[0], r[1]) for r in rows]

    async def list_events(
        self,
        *,
        near: tuple[float, float] | None,
        radius_m: float | None,
        limit: int,
        after: str | None,
    ) -> EventPage:
        async with self._connection() as conn:
            if near is not None:
                # Keyset paging on (distance, id): 'after' names the last event of the previous
                # page, whose distance is recomputed, so pages never skip or repeat an event.
                rows = await conn.fetch(_NEAR, near[0], near[1], radius_m, after, limit + 1)
            else:
                rows = await conn.fetch(_BY_ID, after, limit + 1)
        page = rows[:limit]
        next_after = page[-1]["id"] if len(rows) > limit else None
        return EventPage(tuple((_event_info(r), r.get("distance")) for r in page), next_after)

    async def _claim(self, conn: asyncpg.Connection, event_id: str) -> asyncpg.Record | None:
        """The event's row, claimed for this instance; None if there is no such event. Each
        statement reads what was committed when it began, so an event created (or let go by
        its owner) just after the claim missed it is seen by the second read with no owner,
        or this one: claimed again then. Only another instance's mark refuses the event."""
        for _ in range(_CLAIM_ATTEMPTS):
            row = await conn.fetchrow(_CLAIM, event_id, self._instance_id, self._lease_ttl)
            if row is not None:
                return row
            served_by = await conn.fetchrow(_SERVED_BY, event_id)
            if served_by is None:
                return None
            owner = served_by[0]
            if owner is not None and owner != self._instance_id:
                raise OwnedElsewhere(
                    f"event {event_id} is served by another instance; retry", owner=owner
                )
        raise OwnedElsewhere(f"event {event_id} is changing hands; retry")

    async def load_event(self, event_id: str) -> LoadedEvent | None:
        async with self._connection(transaction=True) as conn:
            row = await self._claim(conn, event_id)
            if row is None:
                return None
            seats = tuple(map(Seat._make, await conn.fetch(_SEATS, event_id)))
            holds = tuple(
                Hold(r[0], r[1], tuple(r[5]), r[2], r[3], r[4])
                for r in await conn.fetch(_HOLDS, event_id)
            )
            if len({hold.hold_id for hold in holds}) != len(holds):
                # One hold's seats with different fields (written by hand): not a state to serve.
                raise StoreConflict(f"event {event_id}: the seats of a hold disagree about it")
            reservations = tuple(
                Reservation(r[0], r[1], tuple(r[2]), r[3])
                for r in await conn.fetch(_RESERVATIONS, event_id)
            )
        return LoadedEvent(
            _event_info(row), seats, holds, reservations, row["version"], row["owner_epoch"]
        )

    async def read_snapshot(self, event_id: str) -> SeatSnapshot | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_SNAPSHOT, event_id)
        if row is None:
            return None
        held = tuple(zip(row["held_seats"], row["held_until"], strict=True))
        return SeatSnapshot(row["version"], row["total_seats"], held, tuple(row["reserved"]))

    # --- the batch write -------------------------------------------------------------------

    async def persist(
        self,
        event_id: str,
        epoch: int,
        version: int,
        effects: Sequence[Effect],
        idempotency: Sequence[IdempotencyRecord] = (),
        *,
        previous: int,
    ) -> None:
        rows = _row_arguments(effects)
        keys = _keys_document(idempotency)
        try:
            async with self._connection() as conn:
                outcome = await conn.fetchval(
                    _PERSIST, event_id, epoch, previous, version, *rows, keys
                )
        except asyncpg.RaiseError as error:
            raise StoreConflict(f"event {event_id}: {error}") from error
        except asyncpg.UniqueViolationError as error:
            # seatd_apply_batch writes the retry records first, and one already stored fails
            # it: the refusal seatd_write_batches answers -3 for.
            if error.constraint_name != _KEYS_PRIMARY_KEY:
                raise
            outcome = -3
        refusal = _refusal(event_id, epoch, previous, outcome)
        if refusal is not None:
            raise refusal

    async def persist_many(self, writes: Sequence[BatchWrite]) -> list[Exception | None]:
        """Several events' batches in one transaction (``seatd_write_batches``); each gets
        its own outcome: None when written, else the exception ``persist`` would raise."""
        arguments = _many_rows(writes)
        arguments.append(array_literal([len(w.records) for w in writes]))
        arguments.append(_keys_document([r for w in writes for r in w.records]))
        async with self._connection() as conn:
            outcomes = await conn.fetchval(_PERSIST_MANY, *arguments)
        return [
            _refusal(w.event_id, w.epoch, w.previous, outcome)
            for w, outcome in zip(writes, outcomes, strict=True)
        ]


def _rows(effects: Sequence[Effect]) -> list[list[Any]]:
    """One batch's row arrays, in ``_ROW_ARRAYS`` order (see ``_group_rows``)."""
    return _group_rows(*_NetEffects(effects).groups())


def _group_rows(
    deleted: Sequence[Hold],
    extended: Sequence[Hold],
    held: Sequence[Hold],
    reserved: Sequence[Reservation],
) -> list[list[Any]]:
    """The row arrays of the groups, in ``_ROW_ARRAYS`` order, one entry per seat: each held
    seat is a row carrying its hold's fields (the ``hold_seats`` table), so an ended or
    refreshed hold is named by its seats (the rows' primary keys) beside its id; each reserved
    seat is a row of its reservation's. An empty group is not looked at: a batch of a quiet
    event holds a command or two, and fifteen comprehensions over nothing cost more than its
    one group."""
    rows: list[list[Any]] = []
    if deleted:
        rows += [
            [sid for h in deleted for sid in h.seat_ids],
            [h.hold_id for h in deleted for _ in h.seat_ids],
        ]
    else:
        rows += [[], []]
    if extended:
        rows += [
            [sid for h in extended for sid in h.seat_ids],
            [h.hold_id for h in extended for _ in h.seat_ids],
            [h.expires_at for h in extended for _ in h.seat_ids],
        ]
    else:
        rows += [[], [], []]
    if held:
        rows += [
            [sid for h in held for sid in h.seat_ids],
            [h.hold_id for h in held for _ in h.seat_ids],
            [h.user_id for h in held for _ in h.seat_ids],
            [h.created_at for h in held for _ in h.seat_ids],
            [h.expires_at for h in held for _ in h.seat_ids],
            [h.max_expires_at for h in held for _ in h.seat_ids],
        ]
    else:
        rows += [[], [], [], [], [], []]
    if reserved:
        rows += [
            [sid for r in reserved for sid in r.seat_ids],
            [r.reservation_id for r in reserved for _ in r.seat_ids],
            [r.user_id for r in reserved for _ in r.seat_ids],
            [r.reserved_at for r in reserved for _ in r.seat_ids],
        ]
    else:
        rows += [[], [], [], []]
    return rows


def _row_arguments(effects: Sequence[Effect]) -> list[str]:
    """seatd_apply_batch's row arrays for one batch, each as its literal."""
    return [array_literal(column) for column in _rows(effects)]


def _many_rows(writes: Sequence[BatchWrite]) -> list[str]:
    """seatd_write_batches' arguments up to its retry records: the events, their epochs and
    versions, then each row group's per-event counts and its arrays, all events' rows in one.
    The events' holds and reservations are gathered by group first and the arrays built once:
    built per event and joined, they cost a quiet event's batch twice as much."""
    groups: tuple[list[Any], ...] = tuple([] for _ in _GROUP_ORDER)
    counts: tuple[list[int], ...] = tuple([] for _ in _GROUP_ORDER)
    for write in writes:
        of_event: tuple[Sequence[Hold | Reservation], ...] = _NetEffects(write.effects).groups()
        for items, group, count in zip(of_event, groups, counts, strict=True):
            if items:
                group += items
                count.append(sum([len(item.seat_ids) for item in items]))
            else:
                count.append(0)
    arguments: list[Any] = [
        [w.event_id for w in writes],
        [w.epoch for w in writes],
        [w.previous for w in writes],
        [w.version for w in writes],
    ]
    for index, column in enumerate(_group_rows(*groups)):
        if index in _FIRST_OF_GROUP:
            arguments.append(counts[_GROUP_ORDER.index(_ROW_GROUPS[index])])
        arguments.append(column)
    return [array_literal(values) for values in arguments]


def _keys_document(records: Iterable[IdempotencyRecord]) -> str:
    """Retry records as one JSON array of ``[user_id, key, request_hash, response]``, each
    response embedded as the JSON it is. One argument that PostgreSQL parses once: asyncpg
    encoded four text arrays at ~0.7 us of the service's CPU per element (a check against the
    collection ABCs each), ~2.8 us per keyed request (BENCHMARKS.md, round 7)."""
    return orjson.dumps(
        [(r.user_id, r.key, r.request_hash, orjson.Fragment(r.response)) for r in records]
    ).decode()


def _refusal(event_id: str, epoch: int, previous: int, outcome: int) -> Exception | None:
    """What a batch write's outcome code means (see seatd_write_batches in init.sql)."""
    if outcome == 0:
        return None
    if outcome == -1:
        return FencedOut(f"event {event_id}: owner epoch {epoch} is no longer current")
    if outcome == -2:
        return StaleVersion(f"event {event_id}: the stored version is not {previous}")
    if outcome == -3:
        return KeysAlreadyUsed(f"event {event_id}: a retry key of the batch is already stored")
    return StoreConflict(f"event {event_id}: the batch failed in the database ({outcome})")


class StoreConflict(Exception):
    """The database disagrees with the actor's memory; the batch must not commit."""


class _NetEffects:
    """A batch's effects reduced to the rows to delete, update and insert.

    Deleting before inserting is safe: the core guarantees the batch's final state is
    consistent, so after the deletes no inserted seat row can collide with a live one.
    """

    __slots__ = ("created", "deleted", "extended", "reservations")

    def __init__(self, effects: Sequence[Effect]) -> None:
        self.created: dict[str, Hold] = {}
        self.extended: dict[str, Hold] = {}
        self.deleted: list[Hold] = []
        self.reservations: list[Reservation] = []
        for effect in effects:
            if isinstance(effect, HoldCreated):
                self.created[effect.hold.hold_id] = effect.hold
            elif isinstance(effect, HoldExtended):
                hold = effect.hold
                target = self.created if hold.hold_id in self.created else self.extended
                target[hold.hold_id] = hold
            elif isinstance(effect, HoldEnded):
                hold_id = effect.hold.hold_id
                if self.created.pop(hold_id, None) is None:
                    self.extended.pop(hold_id, None)
                    self.deleted.append(effect.hold)
            elif isinstance(effect, ReservationCreated):
                self.reservations.append(effect.reservation)

    def groups(self) -> tuple[list[Hold], list[Hold], list[Hold], list[Reservation]]:
        """The holds ended, refreshed and created, and the reservations: ``_GROUP_ORDER``."""
        extended, created = list(self.extended.values()), list(self.created.values())
        return self.deleted, extended, created, self.reservations


def _event_info(row: Any) -> EventInfo:
    latitude, longitude = row["latitude"], row["longitude"]
    return EventInfo(
        event_id=row["id"],
        name=row["name"],
        starts_at=row["starts_at"],
        venue=row["venue"],
        location=Location(latitude, longitude) if latitude is not None else None,
        hold_duration_s=row["hold_duration_s"],
        max_seats_per_user=row["max_seats_per_user"],
        status=row["status"],
    )
