"""Acknowledged means durable: restarts and kill -9 of a real seatd process lose nothing acked,
and a graceful shutdown answers everything in flight before saying goodbye (1012)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from support.client import RawClient, client, create_event
from support.server import ServerProcess, base_env
from websockets.exceptions import ConnectionClosed

from seatd.devstack import PostgresServer


@pytest.fixture
def seatd_process(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(base_env(service_env, LOG_LEVEL="info"), tmp_path / "seatd.log")
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def _db(postgres: PostgresServer, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_holds_and_reservations_survive_a_restart(
    seatd_process: ServerProcess, postgres: PostgresServer
) -> None:
    async with client(seatd_process.url, "admin", "admin") as admin:
        event_id = (await create_event(admin, seats=10))["event_id"]
    async with client(seatd_process.url, "carol") as carol:
        held = await carol.ok("hold", event_id=event_id, seat_ids=["A-1", "A-2"])
        to_reserve = await carol.ok("hold", event_id=event_id, seat_ids=["A-3"])
        reserved = await carol.ok("reserve", event_id=event_id, hold_id=to_reserve["hold_id"])
    seatd_process.kill()  # no graceful anything
    seatd_process.start()
    async with (
        client(seatd_process.url, "carol") as carol,
        client(seatd_process.url, "dave") as dave,
    ):
        summary = await carol.ok("get_event", event_id=event_id)
        assert (summary["held"], summary["reserved"], summary["available"]) == (2, 1, 7)
        conflict = await dave.error("hold", event_id=event_id, seat_ids=["A-1", "A-3"])
        assert conflict["code"] == "seat_unavailable"
        assert {c["seat_id"]: c["state"] for c in conflict["details"]["conflicts"]} == {
            "A-1": "held",
            "A-3": "reserved",
        }
        # The hold is still the same, usable hold.
        refreshed = await carol.ok("refresh", event_id=event_id, hold_id=held["hold_id"])
        assert refreshed["seat_ids"] == ["A-1", "A-2"]
    rows = await _db(
        postgres, "SELECT reservation_id::text FROM reservations WHERE event_id = $1", event_id
    )
    assert [r["reservation_id"] for r in rows] == [reserved["reservation_id"]]


async def _hammer(
    c: RawClient, event_id: str, seats: list[str], acked: list[str], first: asyncio.Event
) -> None:
    """Pipeline single-seat holds as fast as possible until the connection dies."""
    ids = itertools.count(1)
    pending: dict[int, str] = {}
    with contextlib.suppress(ConnectionClosed, OSError, asyncio.TimeoutError):
        for seat in seats:
            request_id = next(ids)
            pending[request_id] = seat
            await c.send(
                {"id": request_id, "type": "hold", "event_id": event_id, "seat_ids": [seat]}
            )
        while pending:
            frame = await c.recv(timeout=10)
            request_id = frame.get("id")
            if request_id in pending:
                pending.pop(request_id)
                if frame["ok"]:
                    acked.append(frame["result"]["hold_id"])
                    first.set()


# Killed once the first holds were acknowledged (so the test always proves something, however
# slow the machine), then right away or a little later: batches are in flight either way.
@pytest.mark.parametrize("kill_after", [0.0, 0.05])
async def test_kill_mid_batch_never_acknowledges_an_uncommitted_write(
    seatd_process: ServerProcess, postgres: PostgresServer, kill_after: float
) -> None:
    async with client(seatd_process.url, "admin", "admin") as admin:
        event_id = (await create_event(admin, seats=200, rows=5, max_seats_per_user=1000))[
            "event_id"
        ]
    acked: list[str] = []
    first_ack = asyncio.Event()
    rows = "ABCDE"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(client(seatd_process.url, f"k{i}")) for i in range(5)
        ]
        workers = [
            asyncio.create_task(
                _hammer(c, event_id, [f"{rows[i]}-{n}" for n in range(1, 201)], acked, first_ack)
            )
            for i, c in enumerate(clients)
        ]
        await asyncio.wait_for(first_ack.wait(), 10)
        await asyncio.sleep(kill_after)
        seatd_process.kill()
        await asyncio.gather(*workers)
    assert acked, "nothing was acknowledged before the kill: the test proves nothing"
    stored = {
        r["hold_id"]
        for r in await _db(
            postgres, "SELECT hold_id::text FROM holds WHERE event_id = $1", event_id
        )
    }
    missing = [hold_id for hold_id in acked if hold_id not in stored]
    assert not missing, f"{len(missing)} acknowledged holds are not in PostgreSQL"


async def test_sigterm_answers_everything_in_flight_then_closes_with_1012(
    seatd_process: ServerProcess, postgres: PostgresServer
) -> None:
    async with client(seatd_process.url, "admin", "admin") as admin:
        event = await create_event(admin, seats=200, rows=5, max_seats_per_user=1000)
    event_id, total = event["event_id"], 1000
    replies: dict[int, dict[str, Any]] = {}
    goaway: dict[str, Any] | None = None
    async with client(seatd_process.url, "erin", max_queue=None) as erin:
        for n in range(total):
            seat = f"{'ABCDE'[n // 200]}-{n % 200 + 1}"
            await erin.send({"id": n, "type": "hold", "event_id": event_id, "seat_ids": [seat]})
        first = await erin.recv()
        replies[first["id"]] = first
        stopping = asyncio.create_task(asyncio.to_thread(seatd_process.terminate))
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = orjson.loads(await asyncio.wait_for(erin.ws.recv(), 10))
                if frame.get("type") == "goaway":
                    goaway = frame
                elif "id" in frame:
                    replies[frame["id"]] = frame
        assert erin.ws.close_code == 1012
        assert await stopping == 0
    assert goaway is not None and goaway["reconnect"] is True
    assert set(replies) == set(range(total)), "some requests were never answered"
    acked = {f["result"]["hold_id"] for f in replies.values() if f["ok"]}
    refused = [f["error"]["code"] for f in replies.values() if not f["ok"]]
    assert acked, "nothing was in flight at SIGTERM: the test proves nothing"
    assert set(refused) <= {"shutting_down"}
    stored = await _db(postgres, "SELECT hold_id::text FROM holds WHERE event_id = $1", event_id)
    assert {r["hold_id"] for r in stored} == acked
