"""What the runtime needs from the outside world, as Protocols. Adapters implement them; tests
may pass real adapters or small fakes (only the clock is ever faked)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from seatd.core import Effect, EventInfo, Hold, Reservation, Seat, SeatSnapshot
from seatd.runtime.clock import SystemClock

__all__ = [
    "BatchStore",
    "BatchWrite",
    "BusError",
    "BusUnavailable",
    "Clock",
    "CommitObserver",
    "Coordinator",
    "EventPage",
    "FencedOut",
    "IdempotencyKey",
    "IdempotencyRecord",
    "KeysAlreadyUsed",
    "LoadedEvent",
    "MessageBus",
    "NewEvent",
    "PeerGone",
    "PeerLost",
    "PeerTimeout",
    "SeatStore",
    "SoleInstance",
    "StaleVersion",
    "StoredReply",
    "SystemClock",
    "WriteNotSent",
]


class FencedOut(Exception):
    """A write was refused because another instance took the event over (newer owner epoch)."""


class WriteNotSent(asyncio.CancelledError):
    """A batch write cancelled before it was sent to the database: it provably changed nothing
    (a write cancelled later may have committed)."""


class KeysAlreadyUsed(Exception):
    """Some of a batch's new retry keys are already stored: nothing was written. The batch must
    run again with those keys' stored outcomes."""


class StaleVersion(Exception):
    """The stored version is not the one the batch was applied on: the database no longer holds
    the state the actor has in memory, so nothing was written and the event must reload."""


class BusError(Exception):
    """A message to another instance could not be delivered or answered."""


class BusUnavailable(BusError):
    """The bus itself (Redis) is out of reach: nothing was sent."""


class PeerGone(BusError):
    """Nobody listens at that instance's inbox: it stopped or died (its leases run out)."""


class PeerTimeout(BusError):
    """The instance did not answer in time (paused, overloaded, or the message was lost)."""


class PeerLost(BusError):
    """The instance lost its events while a request to it waited for the answer: the request
    may have reached it and run, so its outcome is unknown (unlike ``PeerGone``)."""


@dataclass(frozen=True, slots=True)
class LoadedEvent:
    """Everything an actor needs to own an event, read in one transaction that also claimed it."""

    info: EventInfo
    seats: tuple[Seat, ...]
    holds: tuple[Hold, ...]
    reservations: tuple[Reservation, ...]
    version: int
    epoch: int


@dataclass(frozen=True, slots=True)
class NewEvent:
    info: EventInfo
    seats: tuple[Seat, ...]


@dataclass(frozen=True, slots=True)
class EventPage:
    events: tuple[tuple[EventInfo, float | None], ...]  # (event, distance in metres if near)
    next_after: str | None


class IdempotencyRecord(NamedTuple):
    """The first outcome of a keyed mutation, stored in the same transaction as its effects.

    A NamedTuple: one is made per keyed request, and a frozen dataclass sets each field
    through ``object.__setattr__`` (0.8 vs 0.3 us for these four). The actor remembers
    thousands, not as records but as strings and bytes (``actor._Outcomes``)."""

    user_id: str
    key: str
    request_hash: str
    response: bytes  # a JSON object: {"ok": true, "result": ...} or {"ok": false, "error": ...}


@dataclass(slots=True)
class IdempotencyKey:
    """A client's retry key for one mutation, and how to store the mutation's outcome.

    Keys are scoped by event and by the authenticated principal. ``encode`` turns the outcome
    (a result or a ``RequestError``) into the response JSON that is stored and replayed.
    Not frozen, though never changed, for the reason given at ``IdempotencyRecord``.
    """

    user_id: str
    key: str
    request_hash: str
    encode: Callable[[object], bytes]

    @property
    def scope(self) -> tuple[str, str]:
        return (self.user_id, self.key)

    def record(self, outcome: object) -> IdempotencyRecord:
        return IdempotencyRecord(self.user_id, self.key, self.request_hash, self.encode(outcome))


@dataclass(frozen=True, slots=True)
class StoredReply:
    """The answer to a keyed mutation: its stored response, the same bytes on every retry.
    ``outcome`` is the command's own result when it ran just now (None on a replay)."""

    response: bytes
    outcome: object = None


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """One event's batch, to be written with others (``SeatStore.persist_many``)."""

    event_id: str
    epoch: int
    previous: int
    version: int
    effects: Sequence[Effect]
    records: Sequence[IdempotencyRecord] = ()


class BatchStore(Protocol):
    """What an event's actor needs of storage: its batch write, and stored retry outcomes."""

    async def find_idempotency(
        self, event_id: str, scopes: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], IdempotencyRecord]:
        """Stored outcomes of these (user, key) pairs in this event, where they exist."""
        ...

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
        """Write a batch's effects and retry records in one transaction, taking the stored
        version from ``previous`` to ``version``; or raise (nothing written): FencedOut when no
        longer the owner, StaleVersion when the stored version is not ``previous``,
        KeysAlreadyUsed when a record's key is already stored."""
        ...


class SeatStore(BatchStore, Protocol):
    """Durable storage (PostgreSQL). Every write is fenced by the caller's owner epoch."""

    async def create_event(
        self, event: NewEvent, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        """Create the event; with a key already used, create nothing and return its record."""
        ...

    async def load_event(self, event_id: str) -> LoadedEvent | None:
        """Claim the event (next owner epoch) and read its state; None if it does not exist,
        ``OwnedElsewhere`` (with the owner) if another living instance serves it."""
        ...

    async def persist_many(self, writes: Sequence[BatchWrite]) -> list[Exception | None]:
        """Several events' batches in one transaction; per batch None (written) or what
        ``persist`` would raise for it (nothing of that batch written). Raises only when the
        transaction's outcome is unknown (the connection failed)."""
        ...

    async def earliest_expiries(self, overdue_by: float | None = None) -> list[tuple[str, float]]:
        """Each event with holds in storage, with its earliest hold expiry; only those with a
        hold that expired over ``overdue_by`` seconds ago, if given."""
        ...

    async def event_statuses(self, event_ids: Sequence[str]) -> dict[str, str]:
        """The stored status (``open``, ``closed``) of each of these events that exists."""
        ...

    async def read_snapshot(self, event_id: str) -> SeatSnapshot | None:
        """The event's committed seat state and version, read without owning the event (for
        subscribers on an instance that does not own it); None if it does not exist."""
        ...

    async def list_events(
        self,
        *,
        near: tuple[float, float] | None,
        radius_m: float | None,
        limit: int,
        after: str | None,
    ) -> EventPage: ...


class Coordinator(Protocol):
    """Decides which instance may own an event (a lease per event). The owner's writes are
    fenced by PostgreSQL anyway; the lease keeps instances from taking events from each other."""

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Take or extend the leases; returns the ids held by another instance, each with the
        id of the instance that holds it."""
        ...

    async def release(self, event_ids: Sequence[str]) -> None:
        """Let these leases go, those still held by this instance."""
        ...


class SoleInstance:
    """The coordinator of a single instance: every event is ours."""

    async def claim(self, event_ids: Sequence[str]) -> dict[str, str]:
        return {}

    async def release(self, event_ids: Sequence[str]) -> None:
        return None


class MessageBus(Protocol):
    """Messages between instances: requests to one instance with its answer, and each event's
    availability pushes to every instance that follows the event."""

    instance_id: str

    async def request(
        self, instance_id: str, header: dict[str, Any], body: bytes, timeout: float
    ) -> tuple[dict[str, Any], bytes]:
        """The answer of ``instance_id`` (its handler's header and body), or ``BusError``."""
        ...

    def publish(self, event_id: str, frame: bytes) -> None: ...

    async def follow(self, event_id: str) -> None:
        """Start receiving the event's pushes; returns once no later push can be missed."""
        ...

    def unfollow(self, event_id: str) -> None: ...

    def abandon(self, instance_id: str) -> None:
        """Fail the requests waiting for that instance's answers with ``PeerLost`` (it lost
        its events)."""
        ...


class CommitObserver(Protocol):
    """Told, synchronously and in commit order, what each durable batch changed."""

    def committed(
        self, event_id: str, version: int, effects: Sequence[Effect], state: object
    ) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """POSIX seconds."""
        ...

    def alarm(self, deadline: float, ring: Callable[[], None]) -> object:
        """Call ``ring`` at ``deadline`` (at once if it has passed) unless cancelled first."""
        ...

    def cancel(self, alarm: object) -> None:
        """Forget an alarm; nothing if it already went off."""
        ...
