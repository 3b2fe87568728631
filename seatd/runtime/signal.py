"""A wake-up flag for one waiter, much smaller than ``asyncio.Event``.

Every loaded event's actor owns one. ``asyncio.Event`` allocates a deque of waiters up front
(about 0.8 KiB with the event), which with 100,000 loaded events is 80 MB for flags that are
almost always idle; a ``Signal`` makes a future only while someone waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["Signal"]


class Signal:
    """``set``/``clear``/``is_set``/``wait`` like ``asyncio.Event``, for ONE waiter at a time
    (the actor's loop): a cancelled wait cancels the shared future, so a second concurrent
    waiter would be woken by it."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def wait(self) -> Awaitable[None]:
        """Awaitable until ``set``; a future rather than a coroutine, one frame less to keep
        for every idle actor."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._flag:
                waiter.set_result(None)
                self._waiter = None
        return waiter
