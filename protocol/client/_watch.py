"""``Watch``: an async iterator over one event's seat updates, with a bounded buffer.

The seat map (``.seats``) is updated as frames arrive, whatever the consumer does; only the
stream of updates is buffered. When the buffer is full the newest updates are folded into one
(``SeatUpdate.coalesced``), so a slow consumer skips intermediate steps but never a net change
and never grows memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Literal, Self

from protocol.client._seatmap import SeatMap, SeatState, SeatUpdate

__all__ = ["Watch"]


class Watch:
    """Live availability of one event: ``async for update in watch`` and ``watch.seats``.

    ``seats`` maps each unavailable seat to ``"held"`` or ``"reserved"`` (absent: available)
    and is always current, even when the consumer lags; ``expires_at`` gives held seats'
    expiry times and ``version`` the event version the map reflects (None before the first
    snapshot). Iteration ends when the watch or the client is closed, and raises if the
    subscription fails for good (e.g. ``NotFoundError`` for an unknown event).
    """

    def __init__(
        self,
        seats: SeatMap,
        buffer: int,
        on_close: Callable[[Watch], Awaitable[None]],
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self._map = seats
        self._buffer = buffer
        self._on_close = on_close
        self._queue: deque[SeatUpdate] = deque()
        self._ready = asyncio.Event()  # an update is queued, or the watch ended
        self._settled = asyncio.Event()  # first snapshot applied, or the watch ended
        self._has_synced = False
        self._ended = False
        self._error: BaseException | None = None
        self.coalesced = 0  # updates folded into others because the consumer was slow

    # --- state ---------------------------------------------------------------------------

    @property
    def event_id(self) -> str:
        return self._map.event_id

    @property
    def seats(self) -> Mapping[str, SeatState]:
        return self._map.states

    @property
    def expires_at(self) -> Mapping[str, str]:
        return self._map.expires_at

    @property
    def version(self) -> int | None:
        return self._map.version

    @property
    def total_seats(self) -> int | None:
        return self._map.total_seats

    def state(self, seat_id: str) -> Literal["available", "held", "reserved"]:
        return self._map.state(seat_id)

    @property
    def closed(self) -> bool:
        return self._ended

    async def synced(self) -> None:
        """Wait for the first snapshot; raises the subscription's error if it failed."""
        await self._settled.wait()
        if not self._has_synced:
            raise self._error or RuntimeError("the watch ended before its first snapshot")

    # --- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SeatUpdate:
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Stop watching (the client unsubscribes once no watch of the event is left)."""
        if not self._ended:
            self._end(None)
            await self._on_close(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- fed by the client -----------------------------------------------------------------

    def _deliver(self, update: SeatUpdate) -> None:
        if self._ended:
            return
        self._has_synced = True
        self._settled.set()
        if len(self._queue) >= self._buffer:
            self._queue[-1] = self._queue[-1].merge(update)
            self.coalesced += 1
        else:
            self._queue.append(update)
        self._ready.set()

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._ready.set()
        self._settled.set()
