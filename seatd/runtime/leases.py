"""Event leases with a fallback: Redis's, and PostgreSQL's word while Redis cannot be asked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from seatd.logging import ThrottledWarning, detached
from seatd.runtime.ports import Coordinator

__all__ = ["FailoverLeases", "OwnerRecord"]


class OwnerRecord(Coordinator, Protocol):
    """The fallback: its releases may wait a moment; ``keep`` takes back those of events
    claimed again meanwhile."""

    def keep(self, event_ids: Sequence[str]) -> None: ...


class FailoverLeases:
    """``Coordinator``: the primary's leases (Redis) and, while the primary cannot be asked, the
    fallback's word (PostgreSQL's record of which living instance loaded each event).

    Once a claim fails on the primary, claims go to the fallback alone, and a background task
    ``probe``s the primary every ``retry_after`` seconds until it answers: a Redis that stopped
    answering costs its client's timeout (3 s), which every command for another instance's
    event paid while Redis was frozen (and, with a claim probing in their place, the commands
    of whichever event did it). When neither answers the claim fails; the registry then loads
    the event, and the load itself refuses an event that a living instance serves
    (seatd/adapters/owners.py)."""

    def __init__(
        self,
        primary: Coordinator,
        fallback: OwnerRecord,
        probe: Callable[[], Awaitable[object]],
        *,
        retry_after: float = 1.0,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._probe = probe
        self._retry_after = retry_after
        self._prober: asyncio.Task[None] | None = None  # runs while the primary is away
        self._unchecked = ThrottledWarning(
            "leases_from_postgres", interval=10, logger="seatd.leases"
        )

    @property
    def primary_away(self) -> bool:
        return self._prober is not None

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        self._fallback.keep(event_ids)
        if self._prober is None:
            try:
                return await self._primary.claim(event_ids)
            except Exception as error:
                self._unchecked.warn(error=repr(error))
                if self._prober is None:
                    self._prober = asyncio.get_running_loop().create_task(
                        self._probe_until_back(), name="leases:probe", context=detached()
                    )
        return await self._fallback.claim(event_ids)

    async def release(self, event_ids: Sequence[str]) -> None:
        """Both, at once (one that does not answer must not hold up the other): a fallback
        record left behind would keep other instances from the event for as long as this one
        lives, whenever the primary is away."""
        outcomes = await asyncio.gather(
            self._fallback.release(event_ids),
            self._primary.release(event_ids),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._retry_after)
            try:
                await self._probe()
            except Exception:
                continue
            self._prober = None
            return
