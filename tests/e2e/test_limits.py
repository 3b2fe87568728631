"""Every limit answers clearly: request rates, connection counts, and the overload guard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from support.client import RawClient, client, create_event
from support.server import RunningServer, base_env, in_process_server, token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocol.errors import CloseCode


@pytest.fixture(scope="module")
async def limited(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    env = base_env(
        service_env,
        SEATD_RATE_PER_CONNECTION="5",
        SEATD_BURST_PER_CONNECTION="10",
        SEATD_RATE_PER_USER="5",
        SEATD_BURST_PER_USER="15",
        SEATD_MAX_CONNECTIONS_PER_ADDRESS="4",
        SEATD_MAX_CONNECTIONS_PER_USER="2",
        SEATD_MAX_PENDING="2",
    )
    async with in_process_server(env) as running:
        yield running


async def _burst(c: RawClient, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every request at once (pipelined), then collect the replies in request order."""
    for request in requests:
        await c.send(request)
    replies: dict[Any, dict[str, Any]] = {}
    while len(replies) < len(requests):  # replies may overtake each other
        frame = await c.recv()
        if "id" in frame:
            replies[frame["id"]] = frame
    return [replies[request["id"]] for request in requests]


def _codes(replies: list[dict[str, Any]]) -> list[str]:
    return ["ok" if r["ok"] else r["error"]["code"] for r in replies]


async def test_a_connection_over_its_rate_is_told_when_to_come_back(
    limited: RunningServer,
) -> None:
    async with client(limited.url, "rate-conn") as c:
        replies = await _burst(c, [{"id": n, "type": "ping"} for n in range(14)])
        codes = _codes(replies)
        assert codes[:10] == ["ok"] * 10, codes  # the burst
        assert set(codes[10:]) == {"rate_limited"}, codes
        refusal = replies[-1]["error"]
        assert refusal["temporary"] is True and 0 < refusal["retry_after_ms"] <= 1000
        # Garbage spends tokens too, and is refused the same way.
        assert (await c.request("no-such-type"))["error"]["code"] == "rate_limited"
        await asyncio.sleep(max(r["error"]["retry_after_ms"] for r in replies[10:]) / 1000)
        assert (await c.request("ping"))["ok"] is True


async def test_a_user_over_its_rate_on_several_connections_is_refused(
    limited: RunningServer,
) -> None:
    async with client(limited.url, "rate-user") as one, client(limited.url, "rate-user") as two:
        first = _codes(await _burst(one, [{"id": n, "type": "ping"} for n in range(10)]))
        second = _codes(await _burst(two, [{"id": n, "type": "ping"} for n in range(10)]))
        assert first == ["ok"] * 10  # within both buckets
        # The connection's own bucket has 10, but the user's shared one only 5 left.
        assert second.count("ok") in (5, 6) and "rate_limited" in second, second


async def test_connections_per_user_are_capped(limited: RunningServer) -> None:
    async with client(limited.url, "many"), client(limited.url, "many"):
        with pytest.raises(InvalidStatus) as refused:
            async with client(limited.url, "many"):
                pass
        assert refused.value.response.status_code == 429
        assert orjson.loads(refused.value.response.body)["error"] == "too_many_connections"
        # The same through an in-band first message: an error reply, then close 1013.
        async with connect(limited.url, subprotocols=["seatd.v1"]) as ws:  # type: ignore[list-item]
            await ws.send(
                orjson.dumps({"id": 1, "type": "authenticate", "token": token("many")}).decode()
            )
            reply = orjson.loads(await ws.recv())
            assert reply["error"]["code"] == "too_many_connections"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == CloseCode.TRY_AGAIN_LATER
    async with client(limited.url, "many"):  # a slot is free again once one closes
        pass


async def test_connections_per_address_are_capped(limited: RunningServer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for n in range(4):
            await stack.enter_async_context(client(limited.url, f"addr-{n}"))
        with pytest.raises(InvalidStatus) as refused:
            async with client(limited.url, "addr-5"):
                pass
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"]
    async with client(limited.url, "addr-6"):  # all closed: room again
        pass


async def test_the_overload_guard_sheds_instead_of_queueing(limited: RunningServer) -> None:
    async with client(limited.url, "admin-ol", "admin") as admin:
        event_id = (await create_event(admin, seats=4))["event_id"]
    async with client(limited.url, "shed") as c:
        requests = [{"id": n, "type": "list_available", "event_id": event_id} for n in range(8)]
        codes = _codes(await _burst(c, requests))
        assert codes.count("ok") >= 2 and "overloaded" in codes, codes
        assert set(codes) <= {"ok", "overloaded"}, codes
        await asyncio.sleep(1.5)  # tokens back
        assert (await c.request("list_available", event_id=event_id))["ok"] is True


@pytest.fixture
async def tiny(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    async with in_process_server(base_env(service_env, SEATD_MAX_CONNECTIONS="2")) as running:
        yield running


async def test_the_instance_caps_its_connections(tiny: RunningServer) -> None:
    async with client(tiny.url, "t1"), client(tiny.url, "t2"):
        with pytest.raises(InvalidStatus) as refused:
            async with client(tiny.url, "t3"):
                pass
        assert refused.value.response.status_code == 503
