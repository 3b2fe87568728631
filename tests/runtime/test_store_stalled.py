"""A PostgreSQL that stops answering (paused, partitioned): the store gives up on a query at
its timeout, not at twice it. Between the store and PostgreSQL sits a proxy that can freeze:
it keeps every connection open and forwards nothing, as a paused server's kernel would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from seatd.adapters.postgres import PostgresStore, connect_pool
from seatd.devstack import PostgresServer
from seatd.errors import StoreUnavailable


class _FreezingProxy:
    """TCP proxy to PostgreSQL; ``freeze`` stops forwarding in both directions."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:  # PostgreSQL's side too, or its backends would stay
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self._tasks.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            data = await source.read(65536)
            if not data:
                sink.close()
                return
            await self._flowing.wait()
            sink.write(data)
            await sink.drain()


@pytest.fixture
async def proxy(postgres: PostgresServer) -> AsyncIterator[tuple[_FreezingProxy, int]]:
    front = _FreezingProxy(postgres.port)
    port = await front.start()
    try:
        yield front, port
    finally:
        await front.close()


@contextlib.asynccontextmanager
async def _store_behind(
    postgres: PostgresServer, proxy: tuple[_FreezingProxy, int], **options: float
) -> AsyncIterator[PostgresStore]:
    """A store whose pool reaches PostgreSQL through the proxy; thawed and dropped after."""
    front, port = proxy
    pool = await connect_pool(
        host="127.0.0.1", port=port, user=postgres.user, password=postgres.password,
        database=postgres.dbname, max_size=2, **options,
    )  # fmt: skip
    try:
        yield PostgresStore(pool)
    finally:
        front.thaw()
        pool.terminate()


async def test_a_query_to_a_stalled_postgres_fails_at_its_timeout(
    postgres: PostgresServer, proxy: tuple[_FreezingProxy, int]
) -> None:
    front, _ = proxy
    async with _store_behind(postgres, proxy) as store:
        async with store._connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        front.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            async with store._connection() as conn:
                await conn.fetchval("SELECT 1", timeout=0.5)
        # asyncpg would wait for its cancel of the query to be answered before letting the
        # connection go: up to the pool's command timeout (15 s) more.
        assert time.monotonic() - started < 3.0
        assert await asyncio.wait_for(store.ping(), 5) is False


async def test_the_query_timeout_is_the_settings(
    postgres: PostgresServer, proxy: tuple[_FreezingProxy, int]
) -> None:
    """SEATD_PG_QUERY_TIMEOUT bounds every statement the store sends (here 1 s, not 15)."""
    front, _ = proxy
    async with _store_behind(postgres, proxy, query_timeout=1.0) as store:
        assert await store.event_statuses(["no-such-event"]) == {}
        front.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.event_statuses(["no-such-event"])
        assert 0.9 < time.monotonic() - started < 3.0
