"""When a connection goes, its session goes with it: nothing it asked for outlives it.

Work may still finish after the client left (an actor answers on its own time), but what it
would register (a subscription, a watched hold, a timer) is not registered for a connection
that is gone, and messages kept for later are not run for nobody. When the server sends the
connection away (a shutdown), every request still in progress is answered first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.client import RawClient, client, create_event, send_at_once
from support.server import RunningServer, base_env, in_process_server
from support.waiting import until
from websockets.exceptions import ConnectionClosed

from seatd.gateway.connection import Connection
from seatd.runtime.writer import BatchWriter


def _writer_of(server: RunningServer) -> BatchWriter:
    """Where the server's actors write their batches (patched here to slow them down)."""
    assert server.app is not None
    writer = server.app.registry._writer
    assert isinstance(writer, BatchWriter)
    return writer


def _hold_writes(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make the server's batch writes wait until the returned gate is set (a slow database)."""
    gate = asyncio.Event()
    writer = _writer_of(server)
    persist = writer.persist

    async def slow(*args: Any, **kwargs: Any) -> None:
        await gate.wait()
        await persist(*args, **kwargs)

    monkeypatch.setattr(writer, "persist", slow)
    return gate


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


async def test_a_hold_answered_after_the_client_left_is_not_followed(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold whose answer comes after its client left (the database was slow): the gone
    connection does not follow it, neither among the hold's watchers (which keep the event's
    hold news coming) nor with a warning timer."""
    assert narrow.app is not None
    async with client(narrow.url, "organiser-late", "admin") as admin:
        event_id = (await create_event(admin, seats=5))["event_id"]
        await admin.ok("get_event", event_id=event_id)  # loaded: the hold goes to its actor
    gate = _hold_writes(narrow, monkeypatch)
    try:
        async with client(narrow.url, "late-holder") as c:
            conn = await narrow.session("late-holder")
            await c.send({"id": 1, "type": "hold", "event_id": event_id, "seat_ids": ["A-1"]})
            await until(lambda: conn.inflight == 1, what="the hold in progress")
        await _gone(narrow, conn)
    finally:
        gate.set()
    await until(lambda: conn.inflight == 0, what="the hold's answer")
    assert not narrow.app.gateway.ctx.broadcaster.follows_holds(event_id)
    assert conn._holds.pending_warnings() == 0


async def test_waiting_for_a_connection_to_be_idle_waits_for_its_replies(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown first waits for each connection's requests in flight (``wait_idle``): it
    returns at once for an idle connection, and otherwise only once the last reply is sent."""
    async with client(narrow.url, "organiser-idle", "admin") as admin:
        event_id = (await create_event(admin, seats=5))["event_id"]
        await admin.ok("get_event", event_id=event_id)  # loaded: the holds go to its actor
    async with client(narrow.url, "idle-waiter") as c:
        conn = await narrow.session("idle-waiter")
        await asyncio.wait_for(conn.wait_idle(), 1)  # nothing in flight
        gate = _hold_writes(narrow, monkeypatch)
        for n, seat in enumerate(["A-1", "A-2"]):
            await c.send({"id": n, "type": "hold", "event_id": event_id, "seat_ids": [seat]})
        await until(lambda: conn.inflight == 2, what="two holds in progress")
        waiting = [asyncio.create_task(conn.wait_idle()) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiting)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert conn.inflight == 0
        replies = [await c.recv(timeout=5) for _ in range(2)]
        assert sorted((r["id"], r["ok"]) for r in replies) == [(0, True), (1, True)]


async def test_a_warned_hold_is_no_longer_followed_once_its_client_left(
    narrow: RunningServer,
) -> None:
    """A hold whose holder was already warned (``hold_expiring``) is still followed until it
    ends; once the holder's connection is gone it is not."""
    assert narrow.app is not None
    async with client(narrow.url, "organiser-warned", "admin") as admin:
        event = await create_event(admin, seats=5, hold_duration_s=6)  # warned 1.5 s before
    event_id = event["event_id"]
    async with client(narrow.url, "warned-holder") as c:
        conn = await narrow.session("warned-holder")
        await c.ok("hold", event_id=event_id, seat_ids=["A-1"])
        assert (await c.recv(timeout=10))["type"] == "hold_expiring"
    await _gone(narrow, conn)
    assert not narrow.app.gateway.ctx.broadcaster.follows_holds(event_id)  # before it expires


async def test_requests_unfinished_at_the_shutdown_timeout_are_answered_shutting_down(
    service_env: dict[str, str], catalog_gate: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROTOCOL.md, shutdown: requests still unfinished after SEATD_SHUTDOWN_TIMEOUT are
    answered ``shutting_down`` before the ``goaway`` and the close (1012), whether they wait
    on PostgreSQL directly (``list_events``) or on an event's actor (a ``hold``). The timeout
    bounds the whole wait, not each stage of it."""
    writing = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> None:
        writing.set()
        await asyncio.Event().wait()

    env = base_env(service_env, SEATD_SHUTDOWN_TIMEOUT="2")
    async with in_process_server(env) as running:
        assert running.app is not None
        async with client(running.url, "organiser-stop", "admin") as admin:
            event_id = (await create_event(admin, seats=5))["event_id"]
            await admin.ok("get_event", event_id=event_id)  # loaded: holds go to its actor
        monkeypatch.setattr(_writer_of(running), "persist", stuck)
        async with client(running.url, "stopped-midway") as c:
            conn = await running.session("stopped-midway")
            await c.send({"id": 1, "type": "list_events"})
            await c.send({"id": 2, "type": "hold", "event_id": event_id, "seat_ids": ["A-1"]})
            await asyncio.wait_for(writing.wait(), 5)
            await c.send({"id": 3, "type": "hold", "event_id": event_id, "seat_ids": ["A-2"]})
            await until(lambda: conn.inflight == 3, what="three requests in progress")
            stopped = time.monotonic()
            running.app.stop()
            frames = await _until_closed(c)
            closed_after = time.monotonic() - stopped
            assert c.ws.close_code == 1012
    # The connections' drain and the actors' stop share the 2 s (each took its own 2 s once).
    assert 2.0 <= closed_after < 3.5, closed_after
    answers = {f["id"]: f["error"]["code"] for f in frames if "id" in f}
    assert frames[-1]["type"] == "goaway" and len(answers) == 3, frames
    assert (answers[1], answers[3]) == ("shutting_down", "shutting_down"), frames
    # The hold whose write was under way may have committed: unavailable says so (retry it).
    assert answers[2] in {"shutting_down", "unavailable"}, frames


async def test_requests_read_but_not_yet_handled_are_answered_before_the_goaway(
    narrow: RunningServer,
) -> None:
    """A request the server has read waits for its turn in the loop's inbox; sending the
    connection away hands it over first, so it is answered rather than dropped."""
    async with client(narrow.url, "last-words") as c:
        conn = await narrow.session("last-words")
        conn.ws._message(b'{"id":7,"type":"ping"}', True, later=True)  # read, not yet handled
        await conn.go_away("server restart")
        frames = await _until_closed(c)
    assert [(f.get("id"), f.get("type")) for f in frames] == [(7, "ping"), (None, "goaway")], frames


async def _until_closed(c: RawClient) -> list[dict[str, Any]]:
    frames = []
    try:
        while True:
            frames.append(await c.recv(timeout=15))
    except ConnectionClosed:
        return frames
