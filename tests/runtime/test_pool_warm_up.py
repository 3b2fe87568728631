"""The service's pool: its floor connections stay open with the batch write already prepared."""

from __future__ import annotations

import asyncpg

from seatd.adapters.postgres import _warm, connect_pool
from seatd.devstack import LOCALHOST, PostgresServer


async def _prepared(conn: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await conn.fetch("SELECT statement FROM pg_prepared_statements")]


async def test_every_floor_connection_has_the_hot_statements_prepared_and_nothing_written(
    postgres: PostgresServer,
) -> None:
    """The first batch of an on-sale must not wait for a parse and a type lookup of its own."""
    superuser = await asyncpg.connect(postgres.superuser_dsn)
    try:
        keys_before = await superuser.fetchval("SELECT count(*) FROM idempotency_keys")
        pool = await connect_pool(
            host=LOCALHOST,
            port=postgres.port,
            user=postgres.user,
            password=postgres.password,
            database=postgres.dbname,
            max_size=4,
            min_size=2,
            warm=True,
        )
        try:
            assert pool.get_size() == 2
            async with pool.acquire() as first, pool.acquire() as second:
                for conn in (first, second):
                    statements = " ".join(await _prepared(conn))
                    assert "seatd_apply_batch(" in statements
                    assert "seatd_write_batches(" in statements
                    assert "FROM idempotency_keys" in statements
        finally:
            await pool.close()
        assert await superuser.fetchval("SELECT count(*) FROM idempotency_keys") == keys_before
    finally:
        await superuser.close()


async def test_a_failed_warm_up_leaves_a_usable_connection(postgres: PostgresServer) -> None:
    """Without the functions (here: hidden from the search path), the warm-up gives up quietly
    and the connection still answers; the real call reports the missing schema."""
    conn = await asyncpg.connect(postgres.dsn, server_settings={"search_path": "pg_catalog"})
    try:
        await _warm(conn)
        assert await conn.fetchval("SELECT 1") == 1
        assert not any("seatd_persist" in s for s in await _prepared(conn))
    finally:
        await conn.close()
