"""Runtime tests: the registry and actors on the real PostgreSQL (and Redis where it matters),
without the WebSocket gateway, so a test controls the clock and which expiry path exists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from seatd.adapters.postgres import PostgresStore
from seatd.adapters.redis import make_client
from seatd.devstack import PostgresServer, RedisServer


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


@pytest.fixture
async def redis(private_redis: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own Redis (tests that stop it, or must not share its notices)."""
    client = make_client("127.0.0.1", private_redis.port, 0, None)
    try:
        yield client
    finally:
        await client.aclose()
