"""The real clock, whose sleepers share one timer.

Every loaded event's parked actor sleeps until its next hold expiry or its idle deadline, and
every passivated event with holds until its earliest expiry. A timer of
the event loop per sleeper (``call_later``) costs about half a KiB with what it holds, 50 MB for
100,000 loaded events, and what a loaded event costs stays in the process after it passivates
(BENCHMARKS.md, idle). Here sleepers wait in one heap of deadlines behind one timer, armed for
the earliest: an entry is a short list. An alarm cancelled early (a command arrived) is marked
dead; dead entries leave the heap when their deadline comes or when they outnumber the
live ones.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, cast

__all__ = ["SystemClock"]

# Dead entries tolerated before the heap is rebuilt without them (and at least half the heap).
_COMPACT_AT = 64
# An entry: [deadline, tie-breaker, what to call, or None once called or abandoned].
_Entry = list[Any]


class SystemClock:
    """Wall time for hold expiry, which must agree across instances."""

    __slots__ = ("_dead", "_heap", "_loop", "_order", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._dead = 0
        self._timer = None
        self._timer_at = math.inf

    def now(self) -> float:
        return time.time()

    def alarm(self, deadline: float, ring: Callable[[], None]) -> object:
        """Call ``ring`` at ``deadline`` (at once if it has passed) unless ``cancel``led first:
        for a sleeper that keeps no task or frame while it sleeps (an idle event's actor)."""
        if deadline <= time.time():
            ring()
            return None
        return self._add(deadline, ring)

    def cancel(self, alarm: object) -> None:
        """Forget an alarm (its sleeper woke otherwise); nothing if it already went off."""
        if alarm is None:
            return
        entry = cast(_Entry, alarm)
        if entry[2] is not None:  # woken otherwise before the deadline: abandon the entry
            entry[2] = None
            self._dead += 1
            if self._dead > _COMPACT_AT and 2 * self._dead > len(self._heap):
                self._compact()

    def _add(self, deadline: float, ring: Callable[[], None]) -> _Entry:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a clock used again in a new loop starts afresh
            self._reset()
            self._loop = loop
        entry: _Entry = [deadline, next(self._order), ring]
        heapq.heappush(self._heap, entry)
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        return entry

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - time.time()), self._fire)

    def _fire(self) -> None:
        """Wake every sleeper whose deadline has come; arm the timer for the next one."""
        self._timer, self._timer_at = None, math.inf
        heap, now = self._heap, time.time()
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            ring = entry[2]
            if ring is None:
                self._dead -= 1
            else:
                entry[2] = None
                ring()
        while heap and heap[0][2] is None:  # no timer for an abandoned entry
            heapq.heappop(heap)
            self._dead -= 1
        if heap and self._loop is not None:
            self._arm(self._loop, heap[0][0])

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2] is not None]
        heapq.heapify(self._heap)
        self._dead = 0
        if not self._heap and self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
