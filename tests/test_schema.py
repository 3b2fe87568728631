"""init.sql against a real PostgreSQL: idempotence, the pg_cron safety net, the constraints that
make double booking impossible, and PostGIS.

Every test works on its own event id, so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from support.services import INIT_SQL, TEST_DB

from seatd.devstack import PostgresServer

CRON_JOB = "seatd-expire-holds"
INIT_SQL_TEXT = INIT_SQL.read_text()


@pytest.fixture
async def conn(postgres: PostgresServer) -> AsyncIterator[Any]:
    """A connection as the app role (the one the service uses)."""
    connection = await asyncpg.connect(postgres.dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def event_id(conn: Any) -> AsyncIterator[str]:
    """A fresh event with seats s1..s4; deleted afterwards (its rows cascade)."""
    eid = f"schema-{uuid.uuid4().hex[:12]}"
    await conn.execute("INSERT INTO events (id, name) VALUES ($1, 'schema test')", eid)
    await conn.execute(
        "INSERT INTO seats (event_id, seat_id, section, row, number) "
        "SELECT $1, 's' || n, 'A', '1', n FROM generate_series(1, 4) AS n",
        eid,
    )
    try:
        yield eid
    finally:
        await conn.execute("DELETE FROM events WHERE id = $1", eid)


async def add_hold(
    conn: Any, event_id: str, seats: list[str], *, expires_in: timedelta
) -> uuid.UUID:
    """Insert a hold over `seats` that expires `expires_in` from now (negative: already past):
    one hold_seats row per seat, each carrying the hold's fields."""
    hold_id = uuid.uuid4()
    await conn.executemany(
        "INSERT INTO hold_seats (event_id, seat_id, hold_id, user_id, created_at, expires_at,"
        " max_expires_at) VALUES ($1, $2, $3, 'u1', now() - interval '1 hour', now() + $4,"
        " now() + $4)",
        [(event_id, seat, hold_id, expires_in) for seat in seats],
    )
    return hold_id


async def add_reservation(conn: Any, event_id: str, seat: str) -> None:
    await conn.execute(
        "INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at) "
        "VALUES ($1, $2, $3, 'u2', now())",
        event_id,
        seat,
        uuid.uuid4(),
    )


async def count(conn: Any, table: str, event_id: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE event_id = $1", event_id))


async def test_init_sql_applies_twice(postgres: PostgresServer, conn: Any, event_id: str) -> None:
    await add_hold(conn, event_id, ["s1"], expires_in=timedelta(minutes=5))
    await add_reservation(conn, event_id, "s2")

    postgres.apply_sql(INIT_SQL)  # the way the suite and `make run` apply it
    await conn.execute(INIT_SQL_TEXT)  # the way `seatd init-db` does: as the app role

    assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id) == 1
    assert await count(conn, "seats", event_id) == 4
    assert await count(conn, "holds", event_id) == 1
    assert await count(conn, "hold_seats", event_id) == 1
    assert await count(conn, "reservations", event_id) == 1
    # Re-scheduling replaced the job instead of adding one (checked across all roles).
    jobs = postgres.psql(f"SELECT count(*) FROM cron.job WHERE jobname = '{CRON_JOB}'")
    assert jobs.strip() == "1"


# How an earlier release kept holds: a row per hold, its seats in hold_seats behind foreign keys.
EARLIER_HOLDS = """
CREATE TABLE holds (
    event_id        text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    hold_id         uuid NOT NULL,
    user_id         text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    max_expires_at  timestamptz NOT NULL,
    PRIMARY KEY (event_id, hold_id),
    CHECK (expires_at <= max_expires_at)
);
CREATE INDEX holds_expires_at_idx ON holds (expires_at);
CREATE TABLE hold_seats (
    event_id  text NOT NULL,
    seat_id   text NOT NULL,
    hold_id   uuid NOT NULL,
    PRIMARY KEY (event_id, seat_id),
    FOREIGN KEY (event_id, hold_id) REFERENCES holds (event_id, hold_id) ON DELETE CASCADE,
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id) ON DELETE CASCADE
);
CREATE INDEX hold_seats_hold_idx ON hold_seats (event_id, hold_id);
"""


async def test_init_sql_moves_an_earlier_releases_holds_onto_their_seats(
    conn: Any, event_id: str
) -> None:
    """Applied to a database of an earlier release, init.sql gives each held seat its hold's
    fields, drops the holds table and its keys, and reads holds back through the view."""
    hold_id = uuid.uuid4()
    # Rolled back afterwards: the tables are the whole suite's.
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(
            "DROP VIEW holds; ALTER TABLE hold_seats RENAME TO hold_seats_now;"
            " ALTER INDEX hold_seats_pkey RENAME TO hold_seats_now_pkey;"
            " ALTER INDEX hold_seats_hold_idx RENAME TO hold_seats_now_hold_idx;" + EARLIER_HOLDS
        )
        await conn.execute(
            "INSERT INTO holds VALUES ($1, $2, 'u1', now() - interval '1 minute',"
            " now() + interval '5 minutes', now() + interval '1 hour')",
            event_id,
            hold_id,
        )
        await conn.executemany(
            "INSERT INTO hold_seats VALUES ($1, $2, $3)",
            [(event_id, seat, hold_id) for seat in ("s1", "s3")],
        )

        await conn.execute(INIT_SQL_TEXT)
        await conn.execute(INIT_SQL_TEXT)  # and again: nothing left to move

        kinds = await conn.fetch(
            "SELECT relname, relkind::text FROM pg_class WHERE relname IN ('holds', 'hold_seats')"
        )
        assert {row["relname"]: row["relkind"] for row in kinds} == {
            "holds": "v",
            "hold_seats": "r",
        }
        seats = await conn.fetch(
            "SELECT seat_id, hold_id, user_id, expires_at > now() AS live,"
            " max_expires_at > expires_at AS capped FROM hold_seats WHERE event_id = $1"
            " ORDER BY seat_id",
            event_id,
        )
        assert [tuple(row) for row in seats] == [
            ("s1", hold_id, "u1", True, True),
            ("s3", hold_id, "u1", True, True),
        ]
        holds = await conn.fetch("SELECT hold_id, user_id FROM holds WHERE event_id = $1", event_id)
        assert [tuple(row) for row in holds] == [(hold_id, "u1")]
        keys = await conn.fetch(
            "SELECT confrelid::regclass::text AS target FROM pg_constraint"
            " WHERE conrelid = 'hold_seats'::regclass AND contype = 'f'"
        )
        assert [row["target"] for row in keys] == ["seats"]
        indexes = await conn.fetch(
            "SELECT indexrelid::regclass::text AS name FROM pg_index"
            " WHERE indrelid = 'hold_seats'::regclass"
        )
        assert sorted(row["name"] for row in indexes) == ["hold_seats_hold_idx", "hold_seats_pkey"]
    finally:
        await tx.rollback()


async def test_cron_job_is_scheduled_hourly(conn: Any) -> None:
    job = await conn.fetchrow(
        "SELECT schedule, database, active FROM cron.job WHERE jobname = $1", CRON_JOB
    )
    assert job is not None
    assert job["schedule"] == "0 * * * *"
    assert job["database"] == TEST_DB
    assert job["active"]


async def test_cron_job_deletes_only_expired_holds(conn: Any, event_id: str) -> None:
    command = await conn.fetchval("SELECT command FROM cron.job WHERE jobname = $1", CRON_JOB)
    expired = await add_hold(conn, event_id, ["s1", "s2"], expires_in=timedelta(minutes=-1))
    live = await add_hold(conn, event_id, ["s3"], expires_in=timedelta(hours=1))
    await add_reservation(conn, event_id, "s4")

    # Rolled back afterwards: the job deletes expired holds of every event, and other tests'
    # rows are none of this test's business.
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(command)
        holds = await conn.fetch("SELECT hold_id FROM holds WHERE event_id = $1", event_id)
        assert [row["hold_id"] for row in holds] == [live]
        held = await conn.fetch(
            "SELECT seat_id, hold_id FROM hold_seats WHERE event_id = $1", event_id
        )
        assert [(row["seat_id"], row["hold_id"]) for row in held] == [("s3", live)]
        assert expired not in {row["hold_id"] for row in held}
        assert await count(conn, "seats", event_id) == 4
        assert await count(conn, "reservations", event_id) == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id) == 1
    finally:
        await tx.rollback()


async def test_cron_job_never_waits_for_a_batch(
    postgres: PostgresServer, conn: Any, event_id: str
) -> None:
    """A batch ending an expired hold has its rows locked: the job leaves them to it rather
    than wait (waiting, it deadlocked with a batch ending a multi-seat hold in another
    order) and deletes the rest."""
    command = await conn.fetchval("SELECT command FROM cron.job WHERE jobname = $1", CRON_JOB)
    await add_hold(conn, event_id, ["s1", "s2"], expires_in=timedelta(minutes=-1))
    batch = await asyncpg.connect(postgres.dsn)
    tx = conn.transaction()
    try:
        async with batch.transaction():
            await batch.execute(
                "SELECT 1 FROM hold_seats WHERE event_id = $1 AND seat_id = 's1' FOR UPDATE",
                event_id,
            )
            await tx.start()
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute(command)  # a wait would fail here after 2 s
            held = await conn.fetch("SELECT seat_id FROM hold_seats WHERE event_id = $1", event_id)
            assert [row["seat_id"] for row in held] == ["s1"]
    finally:
        await tx.rollback()
        await batch.close()


async def test_seat_cannot_be_in_two_live_holds(conn: Any, event_id: str) -> None:
    await add_hold(conn, event_id, ["s1"], expires_in=timedelta(minutes=5))
    with pytest.raises(asyncpg.UniqueViolationError):
        async with conn.transaction():
            await add_hold(conn, event_id, ["s2", "s1"], expires_in=timedelta(minutes=5))
    assert await count(conn, "hold_seats", event_id) == 1


async def test_seat_cannot_be_reserved_twice(conn: Any, event_id: str) -> None:
    await add_reservation(conn, event_id, "s1")
    with pytest.raises(asyncpg.UniqueViolationError):
        await add_reservation(conn, event_id, "s1")
    assert await count(conn, "reservations", event_id) == 1


async def test_postgis_finds_events_near_a_point(conn: Any, event_id: str) -> None:
    # Roughly Zurich main station; the query points are ~300 m and ~100 km away.
    await conn.execute(
        "UPDATE events SET location = ST_SetSRID(ST_MakePoint(8.5402, 47.3782), 4326)::geography "
        "WHERE id = $1",
        event_id,
    )
    within = (
        "SELECT id FROM events WHERE ST_DWithin(location, "
        "ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, $3)"
    )
    near = await conn.fetch(within, 8.5440, 47.3770, 1000.0)
    far = await conn.fetch(within, 7.4474, 46.9480, 1000.0)
    assert event_id in {row["id"] for row in near}
    assert event_id not in {row["id"] for row in far}
    distance = await conn.fetchval(
        "SELECT ST_Distance(location, ST_SetSRID(ST_MakePoint(7.4474, 46.9480), 4326)::geography)"
        " FROM events WHERE id = $1",
        event_id,
    )
    assert 90_000 < distance < 110_000


PRUNE_JOB = "seatd-prune-idempotency-keys"


async def test_idempotency_keys_are_pruned_after_a_day(conn: Any, event_id: str) -> None:
    job = await conn.fetchrow(
        "SELECT schedule, command FROM cron.job WHERE jobname = $1", PRUNE_JOB
    )
    assert job is not None and job["schedule"] == "30 * * * *"
    insert = (
        "INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response, created_at) "
        "VALUES ($1, 'u1', $2, 'h', '{}'::jsonb, now() - $3::interval)"
    )
    await conn.execute(insert, event_id, "old", timedelta(hours=25))
    await conn.execute(insert, event_id, "recent", timedelta(hours=23))
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(job["command"])
        keys = await conn.fetch("SELECT key FROM idempotency_keys WHERE event_id = $1", event_id)
        assert [row["key"] for row in keys] == ["recent"]
    finally:
        await tx.rollback()
    await conn.execute("DELETE FROM idempotency_keys WHERE event_id = $1", event_id)
