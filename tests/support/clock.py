"""A clock the test moves by hand: timers fire only when the test says so."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._advanced = asyncio.Event()
        self._alarms: list[list[Any]] = []  # [deadline, what to call]

    def now(self) -> float:
        return self._now

    def set(self, now: float, *, fire_timers: bool) -> None:
        """Move time; with ``fire_timers`` every sleeper whose deadline passed wakes up."""
        self._now = now
        if fire_timers:
            self._advanced.set()
            self._advanced = asyncio.Event()
            due = [alarm for alarm in self._alarms if alarm[0] <= now]
            self._alarms = [alarm for alarm in self._alarms if alarm[0] > now]
            for _, ring in due:
                ring()

    def alarm(self, deadline: float, ring: Any) -> object:
        if deadline <= self._now:
            ring()
            return None
        alarm = [deadline, ring]
        self._alarms.append(alarm)
        return alarm

    def cancel(self, alarm: object) -> None:
        self._alarms = [a for a in self._alarms if a is not alarm]

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        while not event.is_set():
            if deadline is not None and self._now >= deadline:
                return
            advanced = self._advanced
            waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(advanced.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
