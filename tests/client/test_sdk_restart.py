"""The SDK across restarts of a real seatd process: kill -9 and a graceful restart (goaway, 1012).

Requests made while the server is down complete once it is back, and a watch converges to what
PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sdk_support import until
from support.server import ServerProcess, base_env, token

from protocol.client import (
    Backoff,
    GoAway,
    Push,
    SeatBlock,
    SeatClient,
    SeatState,
    Watch,
)
from seatd.devstack import PostgresServer

# Reconnect attempts at most 100 ms apart while the server is down.
QUICK = Backoff(base=0.02, cap=0.1)


@pytest.fixture
async def seatd_process(
    service_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(base_env(service_env), tmp_path / "seatd.log")
    await asyncio.to_thread(process.start)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.kill)


async def database_view(postgres: PostgresServer, event_id: str) -> tuple[int, dict[str, str]]:
    """The event's version and its unavailable seats, as PostgreSQL has them."""
    conn = await asyncpg.connect(postgres.dsn)
    try:
        version = await conn.fetchval("SELECT version FROM events WHERE id = $1", event_id)
        held = await conn.fetch(
            "SELECT hs.seat_id FROM hold_seats hs JOIN holds h USING (event_id, hold_id)"
            " WHERE hs.event_id = $1 AND h.expires_at > now()",
            event_id,
        )
        reserved = await conn.fetch(
            "SELECT seat_id FROM reservations WHERE event_id = $1", event_id
        )
    finally:
        await conn.close()
    seats = {r["seat_id"]: "held" for r in held}
    seats.update({r["seat_id"]: "reserved" for r in reserved})
    return int(version), seats


async def converged(watch: Watch, postgres: PostgresServer, event_id: str) -> dict[str, SeatState]:
    """Wait until the watch is at the database's version, then return its seats."""
    async with asyncio.timeout(10):
        while True:
            version, seats = await database_view(postgres, event_id)
            if watch.version == version and dict(watch.seats) == seats:
                return dict(watch.seats)
            await asyncio.sleep(0.05)


async def test_kill_9_and_restart(seatd_process: ServerProcess, postgres: PostgresServer) -> None:
    url = seatd_process.url
    async with SeatClient(url, token=token("sdk-admin", "admin"), backoff=QUICK) as admin:
        event = await admin.create_event(
            "Restart", blocks=[SeatBlock(rows=("A",), seats_per_row=10)]
        )
    event_id = event.event_id
    async with (
        SeatClient(url, token=token("sdk-carol"), backoff=QUICK) as carol,
        SeatClient(url, token=token("sdk-dave"), backoff=QUICK) as dave,
    ):
        watch = dave.watch(event_id)
        await watch.synced()
        kept = await carol.hold(event_id, ["A-1", "A-2"])
        to_reserve = await carol.hold(event_id, ["A-3"])
        reservation = await carol.reserve(event_id, to_reserve.hold_id)
        assert await converged(watch, postgres, event_id) == {
            "A-1": "held",
            "A-2": "held",
            "A-3": "reserved",
        }

        await asyncio.to_thread(seatd_process.kill)
        # Made while the server is down: sent once it is back.
        during = asyncio.create_task(carol.hold(event_id, ["A-4"]))
        await asyncio.sleep(0.3)
        assert not during.done() and not carol.connected and not dave.connected
        await asyncio.to_thread(seatd_process.start)

        held = await asyncio.wait_for(during, 10)
        assert held.seat_ids == ("A-4",)
        refreshed = await carol.refresh(event_id, kept.hold_id)  # the hold survived the crash
        assert refreshed.seat_ids == ("A-1", "A-2")
        await carol.release(event_id, kept.hold_id)
        assert await converged(watch, postgres, event_id) == {"A-3": "reserved", "A-4": "held"}
        assert (carol.connections, dave.connections) == (2, 2)
    conn = await asyncpg.connect(postgres.dsn)
    try:
        stored = await conn.fetch(
            "SELECT reservation_id::text AS rid FROM reservations WHERE event_id = $1", event_id
        )
    finally:
        await conn.close()
    assert [r["rid"] for r in stored] == [reservation.reservation_id]


async def test_graceful_restart_sends_goaway_and_the_client_carries_on(
    seatd_process: ServerProcess, postgres: PostgresServer
) -> None:
    url = seatd_process.url
    async with SeatClient(url, token=token("sdk-admin", "admin"), backoff=QUICK) as admin:
        event = await admin.create_event("Drain", blocks=[SeatBlock(rows=("A",), seats_per_row=5)])
    pushes: list[Push] = []
    async with SeatClient(url, token=token("sdk-erin"), backoff=QUICK, on_push=pushes.append) as c:
        watch = c.watch(event.event_id)
        await watch.synced()
        await c.hold(event.event_id, ["A-1"])
        assert await asyncio.to_thread(seatd_process.terminate) == 0
        await until(lambda: bool(pushes))
        assert pushes == [GoAway("server restart", True)]
        await asyncio.to_thread(seatd_process.start)
        await c.hold(event.event_id, ["A-2"])
        assert await converged(watch, postgres, event.event_id) == {"A-1": "held", "A-2": "held"}
        assert c.connections == 2
