"""Redis down: seats keep working, holds expire on time, /readyz says degraded; Redis back:
the mirror is rewritten from memory and readiness recovers by itself."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from support.client import client, create_event
from support.server import RunningServer, base_env, in_process_server
from support.waiting import until

from seatd.adapters.redis import hold_key
from seatd.devstack import PostgresServer, RedisServer


@pytest.fixture
async def isolated(
    service_env: dict[str, str], private_redis: RedisServer
) -> AsyncIterator[RunningServer]:
    env = base_env({**service_env, **private_redis.env()})
    async with in_process_server(env) as running:
        yield running


def _readyz(server: RunningServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.http_url("/readyz"), timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def test_redis_outage_degrades_but_never_stops_the_service(
    isolated: RunningServer, private_redis: RedisServer, postgres: PostgresServer
) -> None:
    async def status() -> str:
        _, body = await asyncio.to_thread(_readyz, isolated)
        return str(body["status"])

    await until(lambda: _eq(status(), "ready"), 10, "ready")
    async with client(isolated.url, "admin", "admin") as admin, client(isolated.url, "fay") as fay:
        event_id = (await create_event(admin, seats=6, hold_duration_s=1))["event_id"]
        long_event_id = (await create_event(admin, seats=6))["event_id"]
        private_redis.halt()
        short = await fay.ok("hold", event_id=event_id, seat_ids=["A-1"])
        await until(lambda: _eq(status(), "degraded"), 10, "degraded readiness")
        code, body = await asyncio.to_thread(_readyz, isolated)
        assert code == 200 and body["checks"]["redis"] == "unavailable"

        # Expiry does not need Redis: the actor's timer removes the hold from PostgreSQL.
        conn = await asyncpg.connect(postgres.dsn)
        try:

            async def short_hold_gone() -> bool:
                rows = await conn.fetch(
                    "SELECT 1 FROM holds WHERE event_id = $1 AND hold_id = $2::uuid",
                    event_id,
                    short["hold_id"],
                )
                return not rows

            await until(short_hold_gone, 3, "the hold to expire without Redis")
        finally:
            await conn.close()

        # A hold made while Redis is down is mirrored once Redis is back (it comes back empty).
        live = await fay.ok("hold", event_id=long_event_id, seat_ids=["A-2"])
        private_redis.resume()
        await until(lambda: _eq(status(), "ready"), 15, "ready again")
        redis = aioredis.Redis(port=private_redis.port)
        try:
            key = hold_key(long_event_id, live["hold_id"])
            await until(lambda: _exists(redis, key), 10, "the mirror to be rewritten")
            value = orjson.loads(await redis.get(key))
            assert value["user_id"] == "fay" and value["seat_ids"] == ["A-2"]
            ttl_ms = await redis.pttl(key)
            assert 290_000 < ttl_ms <= 300_000
        finally:
            await redis.aclose()


async def _eq(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def _exists(redis: aioredis.Redis, key: str) -> bool:
    return bool(await redis.exists(key))
