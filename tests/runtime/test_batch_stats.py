"""The registry's ``stats``: what every actor's batches and commits did (``/metrics``)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from support.events import new_event

from seatd.adapters.postgres import PostgresStore
from seatd.core import PlaceHold, Policy
from seatd.errors import OwnershipLost, SeatUnavailable
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import SystemClock
from seatd.runtime.registry import Registry


def _hold(user: str, seat: str) -> PlaceHold:
    return PlaceHold(user, (seat,), str(uuid.uuid4()))


async def test_batches_commands_commits_and_failed_commits_are_counted(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    event_id = await new_event(store, "stats")
    registry = Registry(store, SystemClock(), Policy(300, 8, 1800), ActorSettings())
    stats = registry.stats
    try:
        actor = await registry.activate(event_id)
        # One batch of three: two holds and a refusal; one commit.
        outcomes = await asyncio.gather(
            actor.submit(_hold("u1", "S0")),
            actor.submit(_hold("u2", "S1")),
            actor.submit(_hold("u3", "S0")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[2], SeatUnavailable)
        assert (stats.batches, stats.commands, stats.commits.count) == (1, 3, 1)
        assert stats.commit_failures == 0
        assert 0 < stats.commits.sum <= stats.busy_seconds

        # A batch that changes nothing (a refusal without a retry key) writes nothing.
        refused = await asyncio.gather(actor.submit(_hold("u4", "S1")), return_exceptions=True)
        assert isinstance(refused[0], SeatUnavailable)
        assert (stats.batches, stats.commands, stats.commits.count) == (2, 4, 1)

        # Another instance claims the event: the next write is fenced, a failed commit.
        await pool.execute(
            "UPDATE events SET owner_epoch = owner_epoch + 1 WHERE id = $1", event_id
        )
        fenced = await asyncio.gather(actor.submit(_hold("u5", "S2")), return_exceptions=True)
        assert isinstance(fenced[0], OwnershipLost)
        assert (stats.batches, stats.commands, stats.commits.count) == (3, 5, 2)
        assert stats.commit_failures == 1
    finally:
        await registry.close()
