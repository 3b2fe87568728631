"""Keep-alive for every connection from one task, instead of one task per connection.

websockets' own keep-alive runs a task per connection (its coroutine, a sleep and a pong
future): about 2 KiB of an idle connection's 18.5 (BENCHMARKS.md, round 5). Here one sweep,
every quarter of the shorter setting, pings each connection that has received nothing for
``interval`` seconds, and closes one that has received nothing in the ``timeout`` seconds since
its ping (code 1011, as websockets does). Any frame proves the peer alive: a pong, a request,
a ping of its own. A busy connection is never pinged; a quiet one, a subscriber say, is pinged
every ``interval``, which also keeps proxies' idle timers from closing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Literal

from websockets.protocol import State

from protocol.errors import CloseCode
from seatd.gateway.inbound import MessageConnection
from seatd.runtime.tasks import stop_tasks

__all__ = ["Keepalive", "keepalive_action"]

Action = Literal["ping", "close"] | None
# Connections looked at between two returns to the event loop: a sweep of 20,000 connections
# never holds the loop for more than a few milliseconds.
_SLICE = 2000


def keepalive_action(
    now: float, last_seen: float, ping_sent: float, interval: float, timeout: float
) -> Action:
    """What a connection needs at ``now``: ``"close"`` (its ping went unanswered for
    ``timeout``), ``"ping"`` (nothing received for ``interval``, no ping out) or nothing."""
    if ping_sent > last_seen:  # a ping is out and nothing has arrived since
        return "close" if now - ping_sent >= timeout else None
    if now - last_seen >= interval:
        return "ping"
    return None


class Keepalive:
    """Sweeps ``connections()`` for as long as it runs (``start``, ``close``)."""

    def __init__(
        self,
        connections: Callable[[], Iterable[MessageConnection]],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._period = min(interval, timeout) / 4
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keepalive")

    async def close(self) -> None:
        await stop_tasks([t for t in (self._task, *self._closing) if t is not None])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            await self.sweep()

    async def sweep(self) -> None:
        """Ping or close what needs it, a slice at a time."""
        loop = asyncio.get_running_loop()
        every = list(self._connections())
        for start in range(0, len(every), _SLICE):
            if start:
                await asyncio.sleep(0)
            now = loop.time()
            for ws in every[start : start + _SLICE]:
                self._check(ws, now)

    def _check(self, ws: MessageConnection, now: float) -> None:
        if ws.protocol.state is not State.OPEN:
            return  # closing already: websockets finishes it
        action = keepalive_action(now, ws.last_seen, ws.ping_sent, self._interval, self._timeout)
        if action == "ping":
            ws.send_keepalive_ping(now)
        elif action == "close":
            task = asyncio.get_running_loop().create_task(
                ws.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
