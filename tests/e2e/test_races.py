"""Many connections racing for the same seats: exactly one winner per seat, the database agrees."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import asyncpg
from support.client import RawClient, client, create_event
from support.server import RunningServer

from seatd.devstack import PostgresServer

SEATS = [f"A-{n}" for n in range(1, 11)]


async def _db_holders(postgres: PostgresServer, event_id: str) -> dict[str, str]:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        rows = await conn.fetch(
            "SELECT s.seat_id, h.user_id FROM hold_seats s JOIN holds h USING (event_id, hold_id) "
            "WHERE s.event_id = $1",
            event_id,
        )
    finally:
        await conn.close()
    return {r["seat_id"]: r["user_id"] for r in rows}


async def _connect_all(
    server: RunningServer, subs: list[str]
) -> tuple[contextlib.AsyncExitStack, list[RawClient]]:
    stack = contextlib.AsyncExitStack()
    clients = await asyncio.gather(
        *(stack.enter_async_context(client(server.url, s)) for s in subs)
    )
    return stack, list(clients)


async def test_hundred_connections_race_for_ten_seats(
    server: RunningServer, admin: RawClient, postgres: PostgresServer
) -> None:
    event = await create_event(admin, seats=10, max_seats_per_user=10)
    event_id = event["event_id"]
    rng = random.Random(7)
    wanted = {f"racer-{i}": sorted(rng.sample(SEATS, rng.randint(1, 3))) for i in range(100)}
    stack, clients = await _connect_all(server, list(wanted))
    async with stack:
        replies = await asyncio.gather(
            *(
                c.request("hold", event_id=event_id, seat_ids=wanted[sub])
                for c, sub in zip(clients, wanted, strict=True)
            )
        )
    winners: dict[str, str] = {}
    for sub, reply in zip(wanted, replies, strict=True):
        if reply["ok"]:
            for seat in reply["result"]["seat_ids"]:
                assert seat not in winners, f"{seat} acknowledged to {winners[seat]} and {sub}"
                winners[seat] = sub
        else:
            error: dict[str, Any] = reply["error"]
            assert error["code"] == "seat_unavailable", error
            conflicts = {c["seat_id"] for c in error["details"]["conflicts"]}
            assert conflicts and conflicts <= set(wanted[sub])
            assert all(seat in error["message"] for seat in conflicts)
    # Every seat somebody asked for is taken, and the database holds exactly the acknowledged holds.
    requested = {seat for seats in wanted.values() for seat in seats}
    assert set(winners) == requested
    assert await _db_holders(postgres, event_id) == winners


async def test_per_user_limit_holds_under_a_race(
    server: RunningServer, admin: RawClient, postgres: PostgresServer
) -> None:
    event = await create_event(admin, seats=50, max_seats_per_user=4)
    event_id = event["event_id"]
    stack, clients = await _connect_all(server, ["greedy"] * 30)
    async with stack:
        replies = await asyncio.gather(
            *(
                c.request("hold", event_id=event_id, seat_ids=[f"A-{i + 1}"])
                for i, c in enumerate(clients)
            )
        )
    ok = [r for r in replies if r["ok"]]
    refused = [r["error"] for r in replies if not r["ok"]]
    assert len(ok) == 4
    assert len(refused) == 26
    assert {e["code"] for e in refused} == {"seat_limit_exceeded"}
    assert all(e["details"]["limit"] == 4 for e in refused)
    holders = await _db_holders(postgres, event_id)
    assert len(holders) == 4 and set(holders.values()) == {"greedy"}
