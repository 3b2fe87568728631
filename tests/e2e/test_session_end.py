"""When a connection goes, its session goes with it: nothing it asked for outlives it.

Work may still finish after the client left (an actor answers on its own time), but what it
would register (a subscription, a watched hold, a timer) is not registered for a connection
that is gone, and messages kept for later are not run for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.client import client, create_event, send_at_once
from support.server import RunningServer, base_env, in_process_server
from support.waiting import until

from seatd.gateway.connection import Connection

MAX_INFLIGHT = 3


@pytest.fixture(scope="module")
async def narrow(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    env = base_env(service_env, SEATD_MAX_INFLIGHT=str(MAX_INFLIGHT))
    async with in_process_server(env) as running:
        yield running


async def _gone(server: RunningServer, conn: Connection) -> None:
    assert server.app is not None
    connections = server.app.gateway.connections
    await until(lambda: conn not in connections, what="the end of the session")


async def test_messages_kept_at_the_limit_die_with_the_connection(
    narrow: RunningServer, catalog_gate: asyncio.Event
) -> None:
    """Messages kept while at the in-flight limit are dropped when the connection drops: a
    subscribe among them does not subscribe the gone connection (its event could never be
    unloaded), a hold among them is not placed for a client that is not there."""
    assert narrow.app is not None
    async with client(narrow.url, "organiser-kept", "admin") as admin:
        event_id = (await create_event(admin, seats=5))["event_id"]
    async with client(narrow.url, "dropped") as c:
        conn = await narrow.session("dropped")
        frames: list[dict[str, Any]] = [{"id": n, "type": "list_events"} for n in range(3)]
        frames.append({"id": 3, "type": "subscribe", "event_id": event_id})
        frames.append({"id": 4, "type": "hold", "event_id": event_id, "seat_ids": ["A-1"]})
        send_at_once(c.ws, frames)
        await until(lambda: len(conn._backlog or ()) == 2, what="two messages kept")
        conn.ws.transport.abort()  # the connection drops while list_events are in progress
        await _gone(narrow, conn)
    await asyncio.sleep(0.3)  # what the gone session would still start, it starts by now
    assert not narrow.app.gateway.ctx.broadcaster.has_subscribers(event_id)
    async with client(narrow.url, "organiser-kept", "admin") as admin:
        assert (await admin.ok("get_event", event_id=event_id))["available"] == 5
