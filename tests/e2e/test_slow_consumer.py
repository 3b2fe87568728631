"""A subscriber that stops reading is cut off (4000) instead of growing server memory.

The server queues at most ``SEATD_SEND_QUEUE`` frames per connection. A client that never reads
fills the TCP buffers, then that queue, and must be closed with 4000 (slow consumer: reconnect
and resume), while a subscriber reading normally alongside still gets every delta in order and
the writers' requests keep succeeding. To fill buffers quickly, the slow client connects with a
4 KiB receive buffer and lets websockets queue only one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.client import RawClient, client, create_event
from support.server import RunningServer, base_env, in_process_server
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from protocol.errors import CloseCode

SEND_QUEUE = 32
SEATS = 100  # one hold of every seat: ~7 KB availability frames fill buffers quickly
MAX_CYCLES = 2000  # hold/release cycles; the slow client is cut off long before
CYCLES_AFTER_CUT = 10  # keep writing after the cut: nobody else may notice it


@pytest.fixture
async def small_queue(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    # Deltas unmerged (one push per commit), so the slow client's buffers fill in seconds.
    env = base_env(service_env, SEATD_SEND_QUEUE=str(SEND_QUEUE), SEATD_DELTA_INTERVAL="0")
    async with in_process_server(env) as running:
        yield running


async def _tiny_receive_buffer(port: int) -> socket.socket:
    """A connected socket whose kernel receive buffer is as small as Linux allows."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _follow(c: RawClient, versions: list[int], last_id: str) -> None:
    """Read everything as it comes, noting availability versions, up to the reply ``last_id``.

    The server sends one connection's frames in order, so a ping sent after the last write
    is answered after every delta that write caused: no cancellation (which could lose a frame)
    is needed to stop.
    """
    while True:
        frame = await c.recv(timeout=30)
        if frame.get("type") == "availability":
            versions.append(frame["version"])
        elif frame.get("id") == last_id:
            return
        else:
            c.pushes.append(frame)


async def _drain(c: RawClient) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Everything the server managed to send before closing, and how it closed."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(await c.recv(timeout=10))
        except ConnectionClosed as closed:
            return frames, closed


async def test_a_subscriber_that_never_reads_is_closed_and_nobody_else_notices(
    small_queue: RunningServer,
) -> None:
    app = small_queue.app
    assert app is not None
    url = small_queue.url
    async with client(url, "slow-admin", "admin") as admin:
        event = await create_event(admin, seats=SEATS, max_seats_per_user=SEATS)
    event_id = event["event_id"]
    seat_ids = [f"A-{n}" for n in range(1, SEATS + 1)]
    slow_user = f"slow-{uuid.uuid4().hex[:8]}"
    sock = await _tiny_receive_buffer(small_queue.port)

    async with (
        client(url, slow_user, sock=sock, max_queue=1) as slow,
        client(url, "steady") as steady,
        client(url, "writer") as writer,
    ):
        slow_snapshot = await slow.ok("subscribe", event_id=event_id)
        snapshot = await steady.ok("subscribe", event_id=event_id)
        (slow_conn,) = [c for c in app.gateway.connections if c.identity.user_id == slow_user]

        # Memory stays bounded: no connection's outbound queue ever exceeds the setting.
        peak: dict[str, int] = {}

        def sample() -> None:
            for c in app.gateway.connections:
                peak[c.identity.user_id] = max(
                    peak.get(c.identity.user_id, 0), len(c._outbound or ())
                )

        async def cycle() -> None:
            hold = await writer.ok("hold", event_id=event_id, seat_ids=seat_ids)
            sample()
            await writer.ok("release", event_id=event_id, hold_id=hold["hold_id"])
            sample()

        versions = [snapshot["version"]]
        follower = asyncio.get_running_loop().create_task(_follow(steady, versions, "last"))
        try:
            cycles = 0
            while slow_conn.ws.state is State.OPEN and cycles < MAX_CYCLES:
                await cycle()
                cycles += 1
            assert slow_conn.ws.state is not State.OPEN, f"still open after {cycles} cycles"
            for _ in range(CYCLES_AFTER_CUT):
                await cycle()
            final = (await writer.ok("get_event", event_id=event_id))["version"]
            assert final == snapshot["version"] + 2 * (cycles + CYCLES_AFTER_CUT)
            await steady.send({"id": "last", "type": "ping"})
            await asyncio.wait_for(follower, 10)
        finally:
            follower.cancel()  # a no-op unless something above failed
            with contextlib.suppress(asyncio.CancelledError):
                await follower

        # The steady subscriber saw every change, in order, with no gap.
        assert versions == list(range(snapshot["version"], final + 1))
        assert not steady.pushes, steady.pushes

        assert max(peak.values()) <= SEND_QUEUE, peak
        # The slow connection's queue really filled up (else the bound above proves nothing).
        assert peak[slow_user] > SEND_QUEUE // 2, peak

        # Reading at last, the slow client finds a gapless prefix of the stream, then 4000.
        frames, closed = await _drain(slow)
        assert closed.rcvd is not None, f"no close frame from the server: {closed!r}"
        assert closed.rcvd.code == CloseCode.SLOW_CONSUMER, closed
        got = [f["version"] for f in frames if f.get("type") == "availability"]
        first = slow_snapshot["version"] + 1
        assert got == list(range(first, first + len(got)))
        assert got and got[-1] < final  # frames were dropped: it must reconnect and resume
