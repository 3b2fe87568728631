"""Keep-alive end to end: a client that stops answering is closed with 1011; one that answers
pings, or keeps talking, stays connected (server pinging after 0.4 s of quiet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from support.client import client
from support.rawsocket import RawSocket, request
from support.server import RunningServer, base_env, in_process_server

INTERVAL = TIMEOUT = 0.4


@pytest.fixture(scope="module")
async def lively(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    env = base_env(service_env, SEATD_PING_INTERVAL=str(INTERVAL), SEATD_PING_TIMEOUT=str(TIMEOUT))
    async with in_process_server(env) as running:
        yield running


async def test_a_client_that_stops_answering_is_closed_with_1011(lively: RunningServer) -> None:
    # The client's own keep-alive is off, so only the server's pings can reveal it is gone.
    async with client(lively.url, "mute", ping_interval=None) as c:
        c.ws.transport.pause_reading()  # it reads nothing more: no pong goes back
        await asyncio.sleep(3 * (INTERVAL + TIMEOUT))
        c.ws.transport.resume_reading()  # and finds the server's close frame waiting
        await asyncio.wait_for(c.ws.wait_closed(), 10)
    assert c.ws.close_code == 1011, (c.ws.close_code, c.ws.close_reason)
    assert c.ws.close_reason == "keepalive ping timeout"


async def test_quiet_clients_that_answer_pings_stay_connected(lively: RunningServer) -> None:
    async with (
        client(lively.url, "listener", ping_interval=None) as quiet,
        client(lively.url, "talker", ping_interval=None) as talker,
    ):
        deadline = time.monotonic() + 6 * (INTERVAL + TIMEOUT)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await talker.send({"id": n, "type": "ping"})
            assert (await talker.recv())["id"] == n
            await asyncio.sleep(0.1)
        # The quiet one answered every ping on its own (websockets answers pings).
        await quiet.send({"id": "still-here", "type": "ping"})
        reply = await quiet.recv()
        assert reply["id"] == "still-here" and reply["ok"] is True


async def test_a_client_that_never_answers_pings_but_keeps_talking_stays_connected(
    lively: RunningServer,
) -> None:
    """Every frame that arrives counts, requests too: this client ignores the server's pings."""
    s = await RawSocket.connect(lively.port, "chatterbox")
    try:
        deadline = time.monotonic() + 6 * (INTERVAL + TIMEOUT)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s.write(request(n))
            assert (await s.message())["id"] == n  # a close frame would fail here
            await asyncio.sleep(0.1)
    finally:
        await s.aclose()
