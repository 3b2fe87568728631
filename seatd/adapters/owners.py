"""Which instance serves which event, as PostgreSQL knows it: checked by every load, and the
word on ownership while Redis, where the leases live, cannot be asked.

Without it, an instance that could not check a lease took the event anyway (PostgreSQL's epoch
fence keeps the data safe), and two instances took the same event from each other in turn,
each fencing the other's writes: for as long as Redis was away, the event's owner of the
moment answered nothing but ``unavailable``; and when Redis came back empty, the first
instance asked for an event took its lease and fenced the living owner (both found by fault
injection). PostgreSQL keeps just enough to decide instead:

- ``events.owner_instance``: the instance that loaded the event last, written by the load's
  epoch claim and cleared when that instance lets the event go (``release``);
- ``instances``: each running instance's latest heartbeat (``seen_at``), sent every sixth of a
  lease's lifetime, and since when they have come without a gap (``beating_since``); a
  stopping instance clears its marks and deletes its row.

``seatd_served_elsewhere`` (init.sql) decides: the event's instance is another one that beat
within two thirds of a lease (so a dead owner is dead here by the time its Redis lease runs
out, and a takeover then is not refused). An instance that has not been beating for a whole lease itself (just started,
or cut off from PostgreSQL, as the others may have been) counts every recorded owner as alive:
after a PostgreSQL outage longer than a lease every heartbeat is old, and it would take every
event. The load's claim applies the rule under the event row's lock (``PostgresStore``), so of
instances loading an event at once only one gets it; ``claim`` here applies it without writing,
while Redis is away. One row per instance is written per beat, not one per event (100,000
active events would be 30,000 row updates a second).

A release that fails (PostgreSQL out of reach as the event stops) leaves the event marked as
this instance's; it is cleared when this instance restarts (``start``) or loads and lets the
event go again. Until then other instances refuse that event and forward its commands here,
where it loads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

import asyncpg
import structlog

from seatd.adapters.postgres import dropped_on_timeout
from seatd.logging import ThrottledWarning, detached

__all__ = ["PostgresOwners"]

log = structlog.get_logger("seatd.owners")

_SERVED_ELSEWHERE = """
SELECT id, owner_instance FROM events
WHERE id = ANY($1::text[]) AND seatd_served_elsewhere(owner_instance, $2, $3)
"""
_RELEASE = """
UPDATE events SET owner_instance = NULL WHERE id = ANY($1::text[]) AND owner_instance = $2
"""
_DISOWN_ALL = "UPDATE events SET owner_instance = NULL WHERE owner_instance = $1"
# A beat more than a third of a lease after the last one (a missed beat) ends the run of
# beats: the others may have missed theirs for the same reason (see the module).
_BEAT = """
INSERT INTO instances AS i (id, seen_at, beating_since) VALUES ($1, now(), now())
ON CONFLICT (id) DO UPDATE SET
    seen_at = now(),
    beating_since = CASE WHEN i.seen_at < now() - make_interval(secs => $2)
                         THEN now() ELSE i.beating_since END
"""
_RETIRE = "DELETE FROM instances WHERE id = $1"
_RELEASE_SLICE = 2_000
# Rows of instances not seen for a day: gone for good (renamed or scaled down).
_FORGET_GONE = "DELETE FROM instances WHERE seen_at < now() - interval '1 day'"


class PostgresOwners:
    """``Coordinator`` from PostgreSQL's records (see the module docstring), and this
    instance's heartbeat there."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        instance_id: str,
        ttl: float,
        *,
        timeout: float = 2.0,
        release_delay: float = 0.5,
    ) -> None:
        self._pool = pool
        self.instance_id = instance_id
        self._ttl = ttl
        # Short: a lease check stands between a client and its answer.
        self._timeout = timeout
        self._beating: asyncio.Task[None] | None = None
        self._release_delay = release_delay
        self._to_release: dict[str, None] = {}  # in order
        self._releasing: asyncio.Task[None] | None = None
        self._release_failed = ThrottledWarning("owner_release_failed", logger="seatd.owners")
        self._beat_failed = ThrottledWarning("heartbeat_failed", interval=30, logger="seatd.owners")

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        """The events a living other instance owns, with its id. Nothing is written: the load
        that follows records this instance as the owner."""
        rows = await self._fetch(_SERVED_ELSEWHERE, list(event_ids), self.instance_id, self._ttl)
        return {row[0]: row[1] for row in rows}

    async def release(self, event_ids: Sequence[str]) -> None:
        """Forget this instance as the owner of these events (where it still is), soon: events
        passivate a few at a time (2.4 per release in ``seatd bench idle``), and a statement
        each cost PostgreSQL a fifth more CPU there. Gathered for ``release_delay`` seconds."""
        pending = self._to_release
        for event_id in event_ids:
            pending[event_id] = None
        if self._releasing is None and pending:
            self._releasing = asyncio.get_running_loop().create_task(
                self._release_later(), name="owners:release", context=detached()
            )

    def keep(self, event_ids: Sequence[str]) -> None:
        """These events are (being) loaded here again: their pending release must not clear
        the new record."""
        pending = self._to_release
        if pending:
            for event_id in event_ids:
                pending.pop(event_id, None)

    async def _release_later(self) -> None:
        try:
            await asyncio.sleep(self._release_delay)
            while self._to_release:
                due = list(itertools.islice(self._to_release, _RELEASE_SLICE))
                for event_id in due:
                    del self._to_release[event_id]
                try:
                    await self._fetch(_RELEASE, due, self.instance_id)
                except Exception as error:  # they stay marked: see the module
                    self._release_failed.warn(events=len(due), error=repr(error))
        finally:
            self._releasing = None

    async def start(self) -> None:
        """Before serving: no event is this instance's yet (a crash left its marks behind),
        then the first heartbeat, and one every sixth of a lease's lifetime from now on."""
        try:
            await self._fetch(_DISOWN_ALL, self.instance_id, timeout=30.0)
            await self._fetch(_FORGET_GONE)
            await self.beat()
        except Exception as error:  # the heartbeat loop tries again
            log.warning("owners_start_failed", error=repr(error))
        self._beating = asyncio.get_running_loop().create_task(
            self._beat_forever(), name="owners:heartbeat"
        )

    async def close(self) -> None:
        """Stop beating, clear this instance's marks and delete its row: its events are free
        at once (call it after the events were let go). The marks go too, releases still
        waiting among them: an instance that has just started counts every marked owner as
        alive, row or not, and would refuse those events for its first lease."""
        for task in (self._beating, self._releasing):  # releases left: cleared below
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self._fetch(_DISOWN_ALL, self.instance_id)
            await self._fetch(_RETIRE, self.instance_id)
        except Exception as error:  # the row then just ages past a lease
            log.warning("owners_retire_failed", error=repr(error))

    async def beat(self) -> None:
        """Say this instance is alive (the loop does, every sixth of a lease)."""
        await self._fetch(_BEAT, self.instance_id, self._ttl / 3)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 6)
            try:
                await self.beat()
            except Exception as error:
                self._beat_failed.warn(error=repr(error))

    async def _fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        limit = timeout or self._timeout
        async with self._pool.acquire(timeout=limit) as conn, dropped_on_timeout(conn):
            rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=limit)
            return rows
