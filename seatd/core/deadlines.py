"""Deadlines in time order, without an object per deadline.

A heap of ``(time, id)`` tuples makes one tuple per entry, and every live hold has one (its
expiry, and its connection's warning). The garbage collector tracks each such tuple until a
young pass walks it, and those passes come every 50,000 new tracked objects and hold the
event loop for their length (BENCHMARKS.md, round 12). Deadlines nearly always arrive in
time order (a hold expires its event's hold duration after it was placed or refreshed, and
the clock moves forward), so they go into two deques, of floats and of strings, which hold
no tracked object; the rare one that arrives earlier than the last (a refresh capped by the
hold's lifetime, a clock stepped back) goes into a small heap beside them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

__all__ = ["Deadlines"]


class Deadlines:
    """``(time, id)`` pairs, earliest first. An id may be queued more than once (a refreshed
    hold): the owner decides, when a pair comes up, whether it is still current.

    Empty, it holds nothing: a deque allocates 0.6 KiB up front, and every loaded event and
    every connection has a queue, most of them empty (BENCHMARKS.md, idle)."""

    __slots__ = ("_heap", "_ids", "_times")

    def __init__(self, pairs: Iterable[tuple[float, str]] = ()) -> None:
        self._times: deque[float] | None = None
        self._ids: deque[str] = _NO_IDS
        self._heap: list[tuple[float, str]] | None = None  # pushed out of order
        for when, item in sorted(pairs):
            self.push(when, item)

    def __len__(self) -> int:
        times, heap = self._times, self._heap
        return (len(times) if times else 0) + (len(heap) if heap else 0)

    def push(self, when: float, item: str) -> None:
        times = self._times
        if times is None:
            times = self._times = deque()
            self._ids = deque()
        if not times or when >= times[-1]:
            times.append(when)
            self._ids.append(item)
        else:
            if self._heap is None:
                self._heap = []
            heapq.heappush(self._heap, (when, item))

    def first(self) -> float | None:
        """The earliest time queued (None when empty)."""
        times, heap = self._times, self._heap
        if heap and (not times or heap[0][0] < times[0]):
            return heap[0][0]
        return times[0] if times else None

    def peek(self) -> tuple[float, str]:
        """The earliest pair (the queue must not be empty)."""
        times, heap = self._times, self._heap
        if heap and (not times or heap[0][0] < times[0]):
            return heap[0]
        assert times
        return times[0], self._ids[0]

    def pop(self) -> tuple[float, str]:
        """Take the earliest pair (the queue must not be empty)."""
        times, heap = self._times, self._heap
        if heap and (not times or heap[0][0] < times[0]):
            pair = heapq.heappop(heap)
        else:
            assert times
            pair = times.popleft(), self._ids.popleft()
        if not times and not heap:  # empty again: give the deques back
            self._times, self._ids, self._heap = None, _NO_IDS, None
        return pair


# The ids of an empty queue: never appended to (push makes a deque of its own first).
_NO_IDS: deque[str] = deque()
