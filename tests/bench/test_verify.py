"""The benchmark's once-per-seat checks, on the real PostgreSQL: they fail on duplicate rows and
on a table that no longer forbids them, and pass when the unique index keeps them out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from seatd.bench.verify import Verdict, _once_per_seat
from seatd.devstack import PostgresServer


@pytest.fixture
async def conn(postgres: PostgresServer) -> AsyncIterator[Any]:
    """A connection inside a transaction that is rolled back: the schema is changed here."""
    connection = await asyncpg.connect(postgres.dsn)
    tx = connection.transaction()
    await tx.start()
    try:
        yield connection
    finally:
        await tx.rollback()
        await connection.close()


async def _event(conn: Any) -> str:
    event_id = f"verify-{uuid.uuid4().hex[:10]}"
    await conn.execute("INSERT INTO events (id, name) VALUES ($1, 'verify')", event_id)
    await conn.execute("INSERT INTO seats (event_id, seat_id) VALUES ($1, 'S1')", event_id)
    return event_id


async def _reserve(conn: Any, event_id: str) -> None:
    await conn.execute(
        "INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at) "
        "VALUES ($1, 'S1', $2, 'u', now())",
        event_id,
        uuid.uuid4(),
    )


async def _verdict(conn: Any, event_id: str) -> Verdict:
    verdict = Verdict()
    await _once_per_seat(conn, verdict, "no seat reserved twice", "reservations", [event_id])
    return verdict


async def test_a_seat_reserved_once_under_the_unique_index_passes(conn: Any) -> None:
    event_id = await _event(conn)
    await _reserve(conn, event_id)
    verdict = await _verdict(conn, event_id)
    assert verdict.ok, verdict.as_json()
    assert "unique index" in verdict.checks[0].detail


async def test_without_the_unique_index_the_check_fails_even_with_no_duplicates(
    conn: Any,
) -> None:
    event_id = await _event(conn)
    await conn.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_pkey")
    await _reserve(conn, event_id)
    verdict = await _verdict(conn, event_id)
    assert not verdict.ok
    assert "no unique index on reservations" in verdict.checks[0].detail


async def test_a_seat_reserved_twice_fails_and_is_named(conn: Any) -> None:
    event_id = await _event(conn)
    await conn.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_pkey")
    await _reserve(conn, event_id)
    await _reserve(conn, event_id)
    verdict = await _verdict(conn, event_id)
    assert not verdict.ok
    assert f"{event_id}/S1 x2" in verdict.checks[0].detail
