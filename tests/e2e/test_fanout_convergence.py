"""200 SDK watchers of one event while 20 writers hold, reserve, release and let holds expire:
every watcher's seat map ends equal to PostgreSQL, its versions strictly increasing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from support.server import ServerProcess, base_env, token

from protocol.client import ConflictError, NotFoundError, SeatBlock, SeatClient, Watch
from seatd.devstack import PostgresServer

WATCHERS = 200
WRITERS = 20
WRITE_SECONDS = 3.0
SEATS = [f"A-{n}" for n in range(1, 61)]


@pytest.fixture
def seatd_process(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(base_env(service_env), tmp_path / "seatd.log")
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def _writer(url: str, event_id: str, n: int, deadline: float) -> int:
    rng = random.Random(n)
    done = 0
    async with SeatClient(url, token=token(f"writer-{n}")) as c:
        while time.monotonic() < deadline:
            try:
                hold = await c.hold(event_id, rng.sample(SEATS, rng.randint(1, 2)))
                action = rng.random()
                if action < 0.3:
                    await c.reserve(event_id, hold.hold_id)
                elif action < 0.7:
                    await c.release(event_id, hold.hold_id)
                # else: leave it to expire (1 s)
                done += 1
            except (ConflictError, NotFoundError):
                pass  # seats taken, or the hold expired first: part of the game
            await asyncio.sleep(rng.uniform(0.02, 0.06))
    return done


async def _follow(watch: Watch, versions: list[int]) -> None:
    async for update in watch:
        versions.append(update.version)


async def _database_state(postgres: PostgresServer, event_id: str) -> tuple[int, dict[str, str]]:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        version = await conn.fetchval("SELECT version FROM events WHERE id = $1", event_id)
        held = await conn.fetch("SELECT seat_id FROM hold_seats WHERE event_id = $1", event_id)
        reserved = await conn.fetch(
            "SELECT seat_id FROM reservations WHERE event_id = $1", event_id
        )
    finally:
        await conn.close()
    seats = {r["seat_id"]: "held" for r in held} | {r["seat_id"]: "reserved" for r in reserved}
    return int(version), seats


async def test_two_hundred_watchers_converge_to_the_database(
    seatd_process: ServerProcess, postgres: PostgresServer
) -> None:
    url = seatd_process.url
    async with SeatClient(url, token=token("boss", "admin")) as admin:
        event = await admin.create_event(
            "Fan-out",
            blocks=[SeatBlock(rows=("A",), seats_per_row=len(SEATS))],
            hold_duration_s=1,
            max_seats_per_user=len(SEATS),
        )
    event_id = event.event_id
    async with contextlib.AsyncExitStack() as stack:
        clients = await asyncio.gather(
            *(
                stack.enter_async_context(SeatClient(url, token=token(f"fan-{i}")))
                for i in range(WATCHERS)
            )
        )
        watches = [await stack.enter_async_context(c.watch(event_id)) for c in clients]
        await asyncio.gather(*(w.synced() for w in watches))
        versions: list[list[int]] = [[] for _ in watches]
        followers = [
            asyncio.create_task(_follow(w, v)) for w, v in zip(watches, versions, strict=True)
        ]

        deadline = time.monotonic() + WRITE_SECONDS
        writes = await asyncio.gather(
            *(_writer(url, event_id, n, deadline) for n in range(WRITERS))
        )
        assert sum(writes) > 50, "the writers barely wrote: the test proves little"
        await asyncio.sleep(1.5)  # every hold left to expire has expired

        db_version, db_seats = await _database_state(postgres, event_id)
        settle = time.monotonic() + 10
        while any(w.version != db_version for w in watches) and time.monotonic() < settle:
            await asyncio.sleep(0.05)
            db_version, db_seats = await _database_state(postgres, event_id)
        for task in followers:
            task.cancel()

    assert db_version > 20
    assert any(state == "reserved" for state in db_seats.values())
    for index, watch in enumerate(watches):
        assert watch.version == db_version, f"watcher {index} stuck at {watch.version}"
        assert dict(watch.seats) == db_seats, f"watcher {index} disagrees with PostgreSQL"
        seen = versions[index]
        assert seen == sorted(set(seen)), f"watcher {index}: versions not strictly increasing"
