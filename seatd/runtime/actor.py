"""The event actor: the single owner of one event's seat state on this instance.

Commands queue in a mailbox. The loop takes everything queued (a batch), applies it to the
pure ``EventState``, persists the batch's effects in ONE transaction fenced by the owner epoch,
and only then answers each caller and tells the observers (Redis mirror, subscribers). While a
commit is in flight new commands pile up, so under load batches grow by themselves and one
commit serves many commands (group commit).

A failed commit undoes the batch in memory, answers every caller with a temporary error, and
stops the actor: the outcome of a commit whose connection broke is unknown, so the next command
reloads the truth from PostgreSQL instead of trusting memory. A stopped actor answers every
pending caller; nobody waits forever.

An actor with nothing to do parks: its task ends, and a clock alarm (its next hold expiry or
its idle deadline) or the next command starts a new one. A loaded but idle event then costs
its state and an entry in the clock's heap, not a task and its frames (about 1 KiB each, with
100,000 events loaded at once: BENCHMARKS.md, idle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import structlog

from seatd.core import Command, EventState, Expire, GetSnapshot
from seatd.errors import (
    IdempotencyMismatch,
    InternalFault,
    Overloaded,
    OwnershipLost,
    RequestError,
    SeatdError,
    ShuttingDown,
    StoreUnavailable,
)
from seatd.runtime.ports import (
    BatchStore,
    Clock,
    CommitObserver,
    FencedOut,
    IdempotencyKey,
    IdempotencyRecord,
    KeysAlreadyUsed,
    StoredReply,
    WriteNotSent,
)
from seatd.runtime.stats import BatchStats

__all__ = ["ActorSettings", "Envelope", "EventActor"]

log = structlog.get_logger("seatd.actor")


@dataclass(frozen=True, slots=True)
class ActorSettings:
    max_batch: int = 512
    mailbox_limit: int = 10_000
    idle_timeout: float = 60.0
    # Outcomes of keyed mutations remembered in memory (the latest half to all of this many);
    # older ones are looked up in PostgreSQL.
    remembered_keys: int = 20_000


@dataclass(slots=True)
class Envelope:
    """A command plus where its answer goes (``future`` is None for fire-and-forget tells).

    With an ``idempotency`` key the command runs at most once: its outcome is stored in the
    same transaction as its effects, and the answer is a ``StoredReply`` (the stored response),
    now and on every retry with the same key.
    """

    command: Command
    future: asyncio.Future[Any] | None = None
    idempotency: IdempotencyKey | None = None


class EventActor:
    """Owns one event on this instance; see the module docstring for the batch loop."""

    def __init__(
        self,
        event_id: str,
        state: EventState,
        epoch: int,
        store: BatchStore,
        clock: Clock,
        observers: Sequence[CommitObserver],
        settings: ActorSettings,
        on_stop: Callable[[EventActor], None],
        keep_alive: Callable[[str], bool] = lambda _: False,
        *,
        stats: BatchStats,
    ) -> None:
        self.event_id = event_id
        self.state = state
        self.epoch = epoch
        self._store = store
        self._clock = clock
        self._observers = observers
        self._settings = settings
        self._on_stop = on_stop
        self._mailbox: list[Envelope] = []  # a list: a deque allocates 0.6 KiB up front
        self._task: asyncio.Task[None] | None = None  # None while parked (or stopped)
        self._alarm: object = None  # while parked: the clock's alarm that starts it again
        self._stopping = False  # drain the mailbox, then stop
        self._stop_request = "shutdown"
        self.stopped = False  # accepts nothing more
        self.stop_reason = ""
        self._last_active = clock.now()
        # Outcomes of retry keys, the newest and the generation before; made on first use (most
        # events never see a retry key). A full generation is dropped whole: a per-key eviction
        # from an ordered dict cost more than the rest of remembering.
        self._keys: _Outcomes | None = None
        self._older_keys: _Outcomes | None = None
        self._keep_alive = keep_alive  # e.g. "someone watches this event": do not passivate
        self._stats = stats  # the instance's, shared by its actors
        # Kept: asyncio.get_running_loop() makes a getpid system call each time on Python
        # 3.11, and ``submit`` runs for every command.
        self._loop = asyncio.get_running_loop()

    # --- the public face -------------------------------------------------------------------

    def submit(self, command: Command, envelope: Envelope | None = None) -> asyncio.Future[Any]:
        """Queue a command and return the future of its answer."""
        if self.stopped or self._stopping:
            raise ShuttingDown("the event is being handed over; retry")
        if len(self._mailbox) >= self._settings.mailbox_limit:
            raise Overloaded(f"event {self.event_id} has too many queued commands")
        future: asyncio.Future[Any] = self._loop.create_future()
        if envelope is None:
            envelope = Envelope(command, future)
        else:
            envelope.future = future
        self._mailbox.append(envelope)
        self._nudge()
        return future

    def tell(self, command: Command) -> None:
        """Queue a command nobody waits for (expiry hints)."""
        if not self.stopped and len(self._mailbox) < self._settings.mailbox_limit:
            self._mailbox.append(Envelope(command))
            self._nudge()

    def change_status(self, status: str) -> None:
        """Open or close the event between two batches: commands applied from now on see it.
        Not through the mailbox, which may be full (and drops what it cannot take)."""
        self.state.change_status(status)

    def request_stop(self, reason: str = "shutdown") -> None:
        """Finish what is queued, then stop (graceful shutdown, or the lease went elsewhere)."""
        self._stopping = True
        self._stop_request = reason
        self._nudge()

    # --- the loop --------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run the loop (once, when loaded): it parks when idle, see the module docstring."""
        self._nudge()
        assert self._task is not None
        return self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task; None while parked or once stopped."""
        return self._task

    def _nudge(self) -> None:
        """Something to do: start the loop again if it is parked."""
        if self._task is not None or self.stopped:
            return
        self._clock.cancel(self._alarm)
        self._alarm = None
        self._task = self._loop.create_task(self._run(), name=f"actor:{self.event_id}")

    def _ring(self) -> None:
        """The parked actor's alarm: an expiry or the idle deadline is due."""
        self._alarm = None
        self._nudge()

    async def _run(self) -> None:
        reason = "idle"
        try:
            while True:
                if self._mailbox:
                    started = perf_counter()
                    batch = self._take_batch()
                    carry_on = await self._run_batch(batch)
                    self._stats.batch_done(len(batch), perf_counter() - started)
                    if not carry_on:
                        reason = self.stop_reason
                        break
                    continue
                if self._stopping:
                    reason = self._stop_request
                    break
                if not self._awake():
                    break  # idle: passivate
                if not self._mailbox:
                    # Park until a command or the next deadline (no await since the mailbox
                    # was found empty: nothing can have arrived in between).
                    self._task = None
                    self._alarm = self._clock.alarm(self._sleep_deadline(), self._ring)
                    reason = ""
                    return
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            if reason:
                self._task = None
                self._finish(reason)

    def _sleep_deadline(self) -> float:
        next_expiry = self.state.next_expiry()
        idle_deadline = self._last_active + self._settings.idle_timeout
        return idle_deadline if next_expiry is None else min(next_expiry, idle_deadline)

    def _awake(self) -> bool:
        """With the mailbox empty: queue the expiry that is due, if any. False: passivate."""
        if self._mailbox or self._stopping:
            return True
        idle_deadline = self._last_active + self._settings.idle_timeout
        now = self._clock.now()
        next_expiry = self.state.next_expiry()
        if next_expiry is not None and next_expiry <= now:
            self._mailbox.append(Envelope(Expire()))
            return True
        if now < idle_deadline:
            return True
        if self._keep_alive(self.event_id):
            # Being watched counts as activity: look again one idle timeout from now (without
            # this the past deadline would make every wait return at once, a busy loop).
            self._last_active = now
            return True
        return False

    def _take_batch(self) -> list[Envelope]:
        """The next batch: everything queued, up to ``max_batch`` commands."""
        mailbox = self._mailbox
        size = min(len(mailbox), self._settings.max_batch)
        batch = mailbox[:size]
        del mailbox[:size]
        if any(type(e.command) is GetSnapshot for e in batch):
            # Snapshots describe the state after the whole batch, which is what commits.
            batch.sort(key=lambda e: type(e.command) is GetSnapshot)
        return batch

    async def _run_batch(self, batch: list[Envelope]) -> bool:
        """Apply, persist and answer one batch. False when the actor must stop."""
        state = self.state
        now = self._clock.now()
        self._last_active = now
        # Retry keys are checked in memory only. A key this instance does not remember may
        # still be stored (its first attempt reached an earlier owner, or was forgotten here):
        # the write refuses the whole batch then (KeysAlreadyUsed), and the batch runs again
        # with the stored outcomes. New keys, nearly all of them, cost no extra round trip.
        known = self._remembered(batch)
        looked_up = False
        while True:
            applied = self._apply(batch, known, now)
            if applied is None:
                return False
            replies, records = applied
            if not (state.effects or records):
                break
            try:
                failure = await self._persist(list(records.values()))
            except KeysAlreadyUsed:
                if looked_up:  # refused again with the stored outcomes in hand: reload
                    log.warning("retry_keys_disagree", event_id=self.event_id)
                    self.stop_reason = "store_error"
                    failure = StoreUnavailable("the change could not be stored; retry it")
                else:
                    state.rollback()
                    try:
                        stored = await self._stored_keys(batch, known)
                    except asyncio.CancelledError:  # the write was refused: nothing changed
                        _answer_all(batch, ShuttingDown("stopped before the change was committed"))
                        raise
                    if stored is None:
                        error = StoreUnavailable(
                            "could not check the idempotency keys; nothing was changed"
                        )
                        _answer_all(batch, error)
                        return True
                    known.update(stored)
                    looked_up = True
                    continue
            except WriteNotSent:  # still queued for a write slot: nothing was committed
                state.rollback()
                _answer_all(batch, ShuttingDown("stopped before the change was committed"))
                raise
            except asyncio.CancelledError:
                # The write may have reached PostgreSQL and committed: its outcome is unknown.
                state.rollback()
                _answer_all(batch, _unconfirmed())
                raise
            if failure is not None:
                state.rollback()
                _answer_all(batch, failure)
                return False
            self._remember(records)
            effects = state.commit()
            if effects:
                for observer in self._observers:
                    try:
                        observer.committed(self.event_id, state.version, effects, state)
                    except Exception:  # an observer must never break the owner of the seats
                        log.exception("observer_failed", event_id=self.event_id)
            break
        for envelope, reply in zip(batch, replies, strict=True):
            _answer(envelope, reply)
        return True

    def _apply(
        self,
        batch: list[Envelope],
        known: Mapping[tuple[str, str], IdempotencyRecord],
        now: float,
    ) -> tuple[list[Any], dict[tuple[str, str], IdempotencyRecord]] | None:
        """Run the batch on the state: each command's reply, and the retry records to store.
        None after a bug in the rules (the batch is undone and answered; the actor stops)."""
        state = self.state
        replies: list[Any] = []
        records: dict[tuple[str, str], IdempotencyRecord] = {}
        for envelope in batch:
            key = envelope.idempotency
            if key is not None:
                scope = key.scope
                prior = records.get(scope) or known.get(scope)
                if prior is not None:
                    replies.append(_replay(prior, key))
                    continue
            reply: Any
            try:
                reply = state.handle(envelope.command, now)
            except RequestError as error:
                # Without its traceback: that refers to this frame, which refers to the error
                # (a cycle holding the whole batch until the cyclic collector runs).
                reply = error.with_traceback(None)
            except Exception:  # a bug: undo the batch, answer everyone, reload from PostgreSQL
                log.exception("command_failed", event_id=self.event_id)
                state.rollback()
                _answer_all(batch, InternalFault("the command failed unexpectedly; retry"))
                self.stop_reason = "fault"
                return None
            if key is not None:
                record = key.record(reply)
                records[scope] = record
                reply = StoredReply(record.response, reply)
            replies.append(reply)
        return replies, records

    def _remembered(self, batch: list[Envelope]) -> dict[tuple[str, str], IdempotencyRecord]:
        """The outcomes this instance remembers for the batch's retry keys."""
        known: dict[tuple[str, str], IdempotencyRecord] = {}
        remembered, older = self._keys, self._older_keys
        if remembered or older:
            for envelope in batch:
                key = envelope.idempotency
                if key is not None:
                    record = remembered.get(key) if remembered else None
                    if record is None and older:
                        record = older.get(key)
                    if record is not None:
                        known[key.scope] = record
        return known

    async def _stored_keys(
        self, batch: list[Envelope], known: Mapping[tuple[str, str], IdempotencyRecord]
    ) -> dict[tuple[str, str], IdempotencyRecord] | None:
        """The stored outcomes of the batch's other keys (None if they cannot be read)."""
        missing = list(
            {
                e.idempotency.scope
                for e in batch
                if e.idempotency is not None and e.idempotency.scope not in known
            }
        )
        try:
            return await self._store.find_idempotency(self.event_id, missing)
        except Exception as error:
            log.warning("idempotency_lookup_failed", event_id=self.event_id, error=repr(error))
            return None

    def _remember(self, records: dict[tuple[str, str], IdempotencyRecord]) -> None:
        if not records:
            return
        keys = self._keys
        if keys is None:
            keys = self._keys = _Outcomes()
        for record in records.values():
            keys.add(record)
        if len(keys) >= max(1, self._settings.remembered_keys // 2):
            # Between half and all of them remembered.
            self._older_keys, self._keys = keys, _Outcomes()

    async def _persist(self, records: list[IdempotencyRecord]) -> SeatdError | None:
        """Write the batch; on failure say why (as the error every caller gets) and stop."""
        state = self.state
        # A batch that only stores retry keys (refusals) changes no seat: the version, the
        # availability stream's clock, stays; PostgreSQL's must always name the same state.
        version = state.version + 1 if state.effects else state.version
        started = perf_counter()
        failed = True
        try:
            await self._store.persist(
                self.event_id, self.epoch, version, state.effects, records, previous=state.version
            )
            failed = False
        except KeysAlreadyUsed:
            failed = False
            raise  # not a failure: the batch runs again with the stored outcomes
        except FencedOut:
            self.stop_reason = "fenced"
            log.warning("actor_fenced", event_id=self.event_id, epoch=self.epoch)
            return OwnershipLost("another instance took this event over; retry")
        except Exception as error:
            self.stop_reason = "store_error"
            log.warning("persist_failed", event_id=self.event_id, error=repr(error))
            return _unconfirmed()
        finally:
            self._stats.commit_done(perf_counter() - started, failed=failed)
        return None

    def _finish(self, reason: str) -> None:
        self.stopped = True
        self.stop_reason = reason
        if self._mailbox:
            error: SeatdError
            if reason == "fenced":
                error = OwnershipLost("another instance took this event over; retry")
            elif reason == "store_error":
                # PostgreSQL failed the write before these: the same connection may retry them.
                error = StoreUnavailable("the event's last write failed before this command ran")
            else:
                error = ShuttingDown("the event was stopped before this command ran; retry")
            queued, self._mailbox = self._mailbox, []
            _answer_all(queued, error)
        self._on_stop(self)


class _Outcomes:
    """One generation of remembered outcomes, in two dicts of strings and bytes.

    Not a dict of records (or of tuples): every keyed request adds one, so each would be an
    object the garbage collector tracks until a pass sees it, and those passes walk every
    object made since the last; a dict holding only strings and bytes is never tracked.
    Remembering outcomes as records made the collector's young passes 1.5 times as frequent
    at 7,500 keyed holds/s (hold p99 21.7-27.2 against 18.1-21.2 ms; BENCHMARKS.md)."""

    __slots__ = ("_hashes", "_responses")

    def __init__(self) -> None:
        self._hashes: dict[str, str] = {}
        self._responses: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, record: IdempotencyRecord) -> None:
        name = _scope_name(record.user_id, record.key)
        self._hashes[name] = record.request_hash
        self._responses[name] = record.response

    def get(self, key: IdempotencyKey) -> IdempotencyRecord | None:
        name = _scope_name(key.user_id, key.key)
        request_hash = self._hashes.get(name)
        if request_hash is None:
            return None
        return IdempotencyRecord(key.user_id, key.key, request_hash, self._responses[name])


def _scope_name(user_id: str, key: str) -> str:
    """One string per (user, key): the key's length first, so no two pairs share a name."""
    return f"{len(key)}:{key}{user_id}"


def _replay(prior: IdempotencyRecord, key: IdempotencyKey) -> StoredReply | SeatdError:
    if prior.request_hash != key.request_hash:
        return IdempotencyMismatch(
            f"idempotency key {key.key!r} was used for a different request",
            details={"idempotency_key": key.key},
        )
    return StoredReply(prior.response)


def _unconfirmed() -> StoreUnavailable:
    """The answer to a batch whose write may or may not have committed."""
    return StoreUnavailable(
        "the change could not be confirmed by the database; retry it with the same "
        "idempotency_key, which applies it at most once"
    )


def _answer_all(batch: list[Envelope], reply: Any) -> None:
    for envelope in batch:
        _answer(envelope, reply)


def _answer(envelope: Envelope, reply: Any) -> None:
    future = envelope.future
    if future is None or future.done():
        return
    if isinstance(reply, SeatdError):
        future.set_exception(reply)
    else:
        future.set_result(reply)
