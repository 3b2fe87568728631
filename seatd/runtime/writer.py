"""Group commit across events: the batches of many events in one transaction.

Each event's actor already commits its queued commands together. With many quiet events every
batch is small, and the commit itself (a round trip, a WAL flush, ~0.2 ms of PostgreSQL's CPU)
costs more than its rows: 100 events with a command each were 100 commits. The writer lets a
batch go at once, alone, while fewer than ``concurrency`` writes are running; a batch that finds
them all busy waits for the next free one and goes in the same transaction as every other batch
waiting by then (``persist_many``, at most ``max_events`` per transaction). Each batch keeps its
own outcome: a refusal (fenced, stale, a stored retry key, a refreshed hold that is gone)
writes nothing for that event only; an error nobody foresaw fails the whole transaction, and
every batch in it is answered as not written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from seatd.core import Effect
from seatd.errors import StoreUnavailable
from seatd.runtime.ports import BatchWrite, IdempotencyRecord, SeatStore, WriteNotSent

__all__ = ["BatchWriter"]


class _Queued:
    """A batch waiting for a write slot; ``sent`` once a round has taken it."""

    __slots__ = ("done", "sent", "write")

    def __init__(self, write: BatchWrite, done: asyncio.Future[None]) -> None:
        self.write = write
        self.done = done
        self.sent = False


class BatchWriter:
    """The actors' ``persist``; see the module docstring."""

    def __init__(self, store: SeatStore, *, concurrency: int = 2, max_events: int = 60) -> None:
        self._store = store
        self._concurrency = max(1, concurrency)
        self._max_events = max_events  # bounds a transaction: its row locks and its time
        self._running = 0
        self._queue: list[_Queued] = []  # non-empty only while every write slot is busy
        self._rounds: set[asyncio.Task[None]] = set()

    async def find_idempotency(
        self, event_id: str, scopes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        return await self._store.find_idempotency(event_id, scopes)

    async def persist(
        self,
        event_id: str,
        epoch: int,
        version: int,
        effects: Sequence[Effect],
        idempotency: Sequence[IdempotencyRecord] = (),
        *,
        previous: int,
    ) -> None:
        """Write one event's batch, alone or with others; raises like ``SeatStore.persist``."""
        if self._running < self._concurrency:
            self._running += 1
            try:
                await self._store.persist(
                    event_id, epoch, version, effects, idempotency, previous=previous
                )
            finally:
                self._slot_freed()
            return
        write = BatchWrite(event_id, epoch, previous, version, effects, idempotency)
        queued = _Queued(write, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        try:
            await queued.done
        except asyncio.CancelledError:
            if not queued.sent:  # and never will be: rounds skip cancelled batches
                if queued in self._queue:
                    self._queue.remove(queued)
                raise WriteNotSent("cancelled before it was sent") from None
            raise

    def _slot_freed(self) -> None:
        self._running -= 1
        # A batch whose actor was cancelled while it waited is not sent (say, at shutdown, when
        # every actor is cancelled at once and the first to go frees a slot for the others).
        self._queue = [queued for queued in self._queue if not queued.done.done()]
        if self._queue:
            self._running += 1
            batch, self._queue = self._queue[: self._max_events], self._queue[self._max_events :]
            for queued in batch:
                queued.sent = True
            task = asyncio.get_running_loop().create_task(self._round(batch))
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)

    async def _round(self, batch: list[_Queued]) -> None:
        try:
            try:
                outcomes = await self._store.persist_many([queued.write for queued in batch])
            except Exception as error:  # the transaction's outcome is unknown: for all of them
                outcomes = [error] * len(batch)
            for queued, outcome in zip(batch, outcomes, strict=True):
                if queued.done.done():
                    continue
                if outcome is None:
                    queued.done.set_result(None)
                else:
                    queued.done.set_exception(outcome)
        finally:
            for queued in batch:  # cancelled: nobody may wait for an outcome forever
                if not queued.done.done():
                    queued.done.set_exception(StoreUnavailable("the write was interrupted"))
            self._slot_freed()
