"""Runtime tests: the registry and actors on the real PostgreSQL (and Redis where it matters),
without the WebSocket gateway, so a test controls the clock and which expiry path exists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from seatd.adapters.postgres import PostgresStore
from seatd.devstack import PostgresServer


@pytest.fixture
async def pool(postgres: PostgresServer) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> PostgresStore:
    return PostgresStore(pool)
