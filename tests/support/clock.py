"""A clock the test moves by hand: alarms ring only when the test says so."""

from __future__ import annotations

import time
from collections.abc import Callable


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._alarms: list[tuple[float, Callable[[], None]]] = []

    def now(self) -> float:
        return self._now

    def set(self, now: float, *, fire_timers: bool) -> None:
        """Move time; with ``fire_timers`` every alarm whose deadline passed rings."""
        self._now = now
        if fire_timers:
            due = [alarm for alarm in self._alarms if alarm[0] <= now]
            self._alarms = [alarm for alarm in self._alarms if alarm[0] > now]
            for _, ring in due:
                ring()

    def alarm(self, deadline: float, ring: Callable[[], None]) -> object:
        if deadline <= self._now:
            ring()
            return None
        alarm = (deadline, ring)
        self._alarms.append(alarm)
        return alarm

    def cancel(self, alarm: object) -> None:
        self._alarms = [a for a in self._alarms if a is not alarm]
