"""How a connection reads its requests: in order, never more than ``max_inflight`` at once, and
nothing lost while it waits (messages sent before the welcome, or while at the limit)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from support.client import RawClient, client, create_event, send_at_once
from support.server import NARROW_INFLIGHT, RunningServer, token
from support.waiting import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from seatd.gateway.connection import Connection


async def _replies(c: RawClient, count: int) -> dict[Any, dict[str, Any]]:
    replies: dict[Any, dict[str, Any]] = {}
    while len(replies) < count:
        frame = await c.recv()
        if "id" in frame:
            replies[frame["id"]] = frame
    return replies


async def test_pipelined_requests_past_the_limit_wait_and_run_in_order(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    most = 0
    track = Connection._track

    def counting_track(self: Connection, future: Any, pending: Any) -> None:
        nonlocal most
        track(self, future, pending)
        most = max(most, self.inflight)

    async with client(narrow.url, "organiser", "admin") as admin:
        event = await create_event(admin, seats=40, max_seats_per_user=10)
    monkeypatch.setattr(Connection, "_track", counting_track)
    async with client(narrow.url, "queue-buyer") as buyer:
        # One seat per hold, all sent before any reply is read: in order, the first ten fit
        # the per-user limit and the other thirty are refused.
        for n in range(40):
            await buyer.send(
                {
                    "id": n,
                    "type": "hold",
                    "event_id": event["event_id"],
                    "seat_ids": [f"A-{n + 1}"],
                }
            )
        replies = await _replies(buyer, 40)
    codes = ["ok" if replies[n]["ok"] else replies[n]["error"]["code"] for n in range(40)]
    assert codes == ["ok"] * 10 + ["seat_limit_exceeded"] * 30, codes
    assert most == NARROW_INFLIGHT  # reached, never passed


async def test_messages_sent_before_the_welcome_are_all_answered(
    narrow: RunningServer,
) -> None:
    async with connect(narrow.url, subprotocols=["seatd.v1"]) as ws:  # type: ignore[list-item]
        frames = [{"id": 0, "type": "authenticate", "token": token("early-bird")}]
        frames += [{"id": n, "type": "ping"} for n in range(1, 30)]
        for frame in frames:  # without waiting for the authentication's answer
            await ws.send(orjson.dumps(frame).decode())
        seen: list[Any] = []
        async with asyncio.timeout(10):
            while len(seen) < len(frames):
                message = orjson.loads(await ws.recv())
                if "id" in message:
                    assert message["ok"] is True, message
                    seen.append(message["id"])
        assert seen == list(range(30))


async def test_messages_sent_before_the_welcome_leave_back_pressure_on(
    narrow: RunningServer, catalog_gate: asyncio.Event
) -> None:
    """Messages queued before the welcome that take the connection to its in-flight limit
    leave the socket unread: what the client sends next waits in TCP, not in server memory,
    and every request is still answered once the work moves on."""
    async with connect(narrow.url, subprotocols=["seatd.v1"]) as ws:  # type: ignore[list-item]
        first = [{"id": 0, "type": "authenticate", "token": token("early-flood")}]
        send_at_once(ws, first + [{"id": n, "type": "list_events"} for n in range(1, 21)])
        conn = await narrow.session("early-flood")
        await until(lambda: conn.inflight == NARROW_INFLIGHT, what="the in-flight limit")
        assert conn._backlog is not None
        kept = len(conn._backlog)
        send_at_once(ws, [{"id": n, "type": "list_events"} for n in range(21, 421)])
        await asyncio.sleep(0.3)
        assert not conn.ws.transport.is_reading()
        assert len(conn._backlog) == kept, "read past the in-flight limit"
        catalog_gate.set()
        replies: dict[Any, bool] = {}
        async with asyncio.timeout(20):
            while len(replies) < 421:
                message = orjson.loads(await ws.recv())
                if "id" in message:
                    replies[message["id"]] = message["ok"]
        assert replies == dict.fromkeys(range(421), True)


async def test_a_bug_handling_a_message_closes_the_connection_with_1011(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Connection, frame: Any) -> None:
        raise RuntimeError("a bug")

    async with client(narrow.url, "unlucky") as c:
        monkeypatch.setattr(Connection, "_on_frame", broken)
        await c.send({"id": 1, "type": "ping"})
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1011
    monkeypatch.undo()
    async with client(narrow.url, "lucky") as c:  # the server itself is fine
        assert (await c.request("ping"))["ok"] is True
