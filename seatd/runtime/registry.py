"""Finds or activates the actor of an event, and keeps passivated events' expiries on time.

Activation loads the event from PostgreSQL (claiming the next owner epoch) the first time it is
used; concurrent first uses share one load. Idle actors stop to free memory; an event stopped
with live holds leaves a clock alarm at its earliest hold, which loads it again when that hold
is due, so expiry never depends on Redis notices alone.

Ownership between instances: an event is activated only under its lease (``Coordinator``),
renewed every third of its lifetime while the actor runs and released when it stops. A lease
held elsewhere refuses the activation (``OwnedElsewhere``, temporary), and so does the load
itself when PostgreSQL records another living instance serving the event (a Redis that
restarted empty forgot every lease). If the coordinator cannot be asked at all the event is
loaded anyway: that check in the load, and PostgreSQL's epoch fencing, keep it safe.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from seatd.core import Command, EventState, Expire, Policy, Result
from seatd.errors import EventNotFound, OwnedElsewhere, SeatdError, ShuttingDown
from seatd.logging import ThrottledWarning, detached
from seatd.runtime.actor import ActorSettings, Envelope, EventActor
from seatd.runtime.ports import (
    BatchStore,
    Clock,
    CommitObserver,
    Coordinator,
    SeatStore,
    SoleInstance,
    StoredReply,
)
from seatd.runtime.stats import BatchStats

__all__ = ["Registry"]

log = structlog.get_logger("seatd.registry")
_OWNER_HINTS = 100_000
# How many lease lifetimes an instance remembers letting an event go (see lease_expired).
_LET_GO_LEASES = 3
# Leases claimed or released per call: one Redis round trip, a few milliseconds of this
# process's time.
_LEASE_SLICE = 2_000
# A woken event that failed to load is woken again after this long, doubling up to the most.
_WAKE_RETRY_FIRST = 0.5
_WAKE_RETRY_MAX = 30.0
# How long a stopping registry waits for the tasks it cancelled.
_CANCEL_GRACE = 1.0


class Registry:
    """All event actors of this instance."""

    def __init__(
        self,
        store: SeatStore,
        clock: Clock,
        policy: Policy,
        settings: ActorSettings,
        observers: Sequence[CommitObserver] = (),
        coordinator: Coordinator | None = None,
        lease_ttl: float = 10.0,
        writer: BatchStore | None = None,
    ) -> None:
        self._store = store
        self._writer: BatchStore = writer or store  # the actors' batch writes go through it
        self._coordinator = coordinator or SoleInstance()
        self._lease_ttl = lease_ttl
        self._lease_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._clock = clock
        self._policy = policy
        self._settings = settings
        self.observers: list[CommitObserver] = list(observers)
        self._actors: dict[str, EventActor] = {}
        self._loading: dict[str, asyncio.Task[EventActor]] = {}
        # Status notices that came while the event was loading (see status_changed).
        self._statuses_heard: dict[str, str] = {}
        # Status notices heard so far, and the number of each event's latest: a recheck that
        # read PostgreSQL before a notice must not undo it (see _recheck_statuses).
        self._status_notices = 0
        self._noticed_at: dict[str, int] = {}
        # Passivated events with holds: (when to wake the event, the clock's alarm for it).
        self._dormant: dict[str, tuple[float, object]] = {}
        # Events whose wake-up failed to load them: the delay before the next try.
        self._wake_retries: dict[str, float] = {}
        # Woken events refused as another instance's, to be woken once more (see _tell_later).
        self._wake_rechecks: set[str] = set()
        # One callable for every actor (``keep_alive`` may be replaced after they start).
        self._keep_alive_of: Callable[[str], bool] = lambda event_id: self.keep_alive(event_id)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        # Where another instance's lease was last seen, so commands for its events are
        # forwarded without asking Redis each time; dropped when a forward fails.
        self._owners: dict[str, str] = {}
        # When this instance's writes for an event were last refused by a newer owner's epoch.
        self._fenced: dict[str, float] = {}
        # Events whose leases are to be released, in order (one task sends them while there
        # are any); claiming an event again takes it off.
        self._to_release: dict[str, None] = {}
        self._releasing = False
        # When this instance let events go (their leases released, or left to run out) in the
        # last few lease lifetimes, oldest first.
        self._let_go: dict[str, float] = {}
        # An idle event stays active while this says so (someone is watching it).
        self.keep_alive: Callable[[str], bool] = lambda _: False
        # Told the id of every event whose actor stopped.
        self.stop_listeners: list[Callable[[str], None]] = []
        # Told each event loaded here, with its state as PostgreSQL has it.
        self.load_listeners: list[Callable[[str, EventState], None]] = []
        # Every actor's batches and commits (``/metrics``).
        self.stats = BatchStats()
        self._unchecked = ThrottledWarning("lease_unchecked", logger="seatd.registry")

    def __len__(self) -> int:
        return len(self._actors)

    def active(self, event_id: str) -> EventActor | None:
        actor = self._actors.get(event_id)
        return actor if actor is not None and not actor.stopped else None

    def actors(self) -> list[EventActor]:
        return [actor for actor in self._actors.values() if not actor.stopped]

    # --- asking ----------------------------------------------------------------------------

    def submit_nowait(self, event_id: str, envelope: Envelope) -> asyncio.Future[Any] | None:
        """Fast path: queue on an already active actor without a task switch; None if inactive."""
        actor = self.active(event_id)
        return None if actor is None else actor.submit(envelope.command, envelope)

    async def ask(
        self, event_id: str, command: Command, envelope: Envelope | None = None
    ) -> Result | StoredReply:
        """Run a command on the event's actor (activating it if needed) and await the answer:
        the command's result, or a ``StoredReply`` when the envelope carries a retry key."""
        envelope = envelope or Envelope(command)
        for _ in range(3):
            actor = await self.activate(event_id)
            if actor.stopped:
                continue  # stopped between activation and now: load it again
            reply: Result | StoredReply = await actor.submit(command, envelope)
            return reply
        raise ShuttingDown(f"event {event_id} keeps stopping; retry")

    def tell(self, event_id: str, command: Command) -> None:
        """Deliver a command nobody waits for, activating the event in the background."""
        actor = self.active(event_id)
        if actor is not None:
            actor.tell(command)
            return
        if self._closing:
            return
        self._spawn(self._tell_later(event_id, command))

    async def _tell_later(self, event_id: str, command: Command) -> None:
        try:
            actor = await self.activate(event_id)
        except OwnedElsewhere:
            # Another instance serves the event and times its holds. Or PostgreSQL could not
            # yet tell its recorded owner dead from alive (this instance has not been beating
            # for a lease: it just started, or was cut off): look once more a lease later.
            self._wake_retries.pop(event_id, None)
            if event_id in self._wake_rechecks:
                self._wake_rechecks.discard(event_id)
            elif not self._closing:
                self._wake_rechecks.add(event_id)
                self._sleep_until(event_id, self._clock.now() + self._lease_ttl)
            return
        except (EventNotFound, ShuttingDown):
            # Gone, or this instance is stopping.
            self._wake_retries.pop(event_id, None)
            return
        except SeatdError as error:
            # PostgreSQL out of reach, say: what woke the event (holds due) is still due, and
            # nothing else may come for the event. Wake it again later, backing off; a load
            # meanwhile (a client's command) takes the alarm off.
            retry_in = self._wake_retries.get(event_id, _WAKE_RETRY_FIRST)
            self._wake_retries[event_id] = min(2 * retry_in, _WAKE_RETRY_MAX)
            log.warning("activation_failed", event_id=event_id, error=str(error), retry_in=retry_in)
            if not self._closing:
                self._sleep_until(event_id, self._clock.now() + retry_in)
            return
        self._wake_retries.pop(event_id, None)
        self._wake_rechecks.discard(event_id)
        actor.tell(command)

    # --- activation ------------------------------------------------------------------------

    async def activate(self, event_id: str) -> EventActor:
        actor = self.active(event_id)
        if actor is not None:
            return actor
        if self._closing:
            raise ShuttingDown("the server is shutting down; reconnect and retry")
        loading = self._loading.get(event_id)
        if loading is None:
            # Its own task, shared by every caller: one caller going away (its connection
            # closed, its task cancelled) must not cancel the load the others wait for.
            loading = asyncio.get_running_loop().create_task(
                self._load(event_id), name=f"load:{event_id}", context=detached(event_id=event_id)
            )
            self._loading[event_id] = loading
            loading.add_done_callback(partial(self._loaded, event_id))
        return await asyncio.shield(loading)

    def _loaded(self, event_id: str, loading: asyncio.Task[EventActor]) -> None:
        if self._loading.get(event_id) is loading:
            del self._loading[event_id]
            self._statuses_heard.pop(event_id, None)  # applied by _load, or nothing loaded
        if not loading.cancelled():
            loading.exception()  # retrieved here: whoever still waits re-raises it

    async def _load(self, event_id: str) -> EventActor:
        await self._claim(event_id)
        try:
            loaded = await self._store.load_event(event_id)
        except BaseException as error:
            self._release(event_id)
            if isinstance(error, OwnedElsewhere) and error.owner is not None:
                # PostgreSQL knows a living owner that the lease did not (Redis restarted
                # empty, or cannot be asked): commands go there from now on, rather than
                # each taking the lease again to be refused.
                self.remember_owner(event_id, error.owner)
            raise
        if loaded is None:
            self._release(event_id)
            raise EventNotFound(f"no event {event_id}", details={"event_id": event_id})
        if self._closing:
            self._release(event_id)
            raise ShuttingDown("the server is shutting down; reconnect and retry")
        state = EventState(
            loaded.info,
            self._policy.for_event(loaded.info),
            loaded.seats,
            loaded.holds,
            loaded.reservations,
            loaded.version,
        )
        heard = self._statuses_heard.pop(event_id, None)
        if heard is not None:
            state.change_status(heard)
        actor = EventActor(
            event_id,
            state,
            loaded.epoch,
            self._writer,
            self._clock,
            self.observers,
            self._settings,
            self._on_actor_stop,
            self._keep_alive_of,
            stats=self.stats,
        )
        self._actors[event_id] = actor
        if heard is not None:  # read back, as for a notice to an active event
            self._spawn(self._recheck_statuses([event_id]))
        for listener in self.load_listeners:
            listener(event_id, state)
        self._wake_dormant(event_id)  # loaded: the actor times its holds itself now
        actor.start()
        self._ensure_lease_renewal()
        log.debug("actor_activated", event_id=event_id, epoch=loaded.epoch, seats=len(loaded.seats))
        return actor

    def _on_actor_stop(self, actor: EventActor) -> None:
        if self._actors.get(actor.event_id) is actor:
            del self._actors[actor.event_id]
        log.debug("actor_stopped", event_id=actor.event_id, reason=actor.stop_reason)
        if actor.stop_reason != "lease_lost":
            self._release(actor.event_id)
        if actor.stop_reason not in ("lease_lost", "fenced"):  # the lease was ours to the end
            self._let_go.pop(actor.event_id, None)  # oldest first: see _forget_let_go
            self._let_go[actor.event_id] = self._clock.now()
        if actor.stop_reason == "fenced":
            if len(self._fenced) >= _OWNER_HINTS:
                self._fenced.clear()
            self._fenced[actor.event_id] = self._clock.now()
        for listener in self.stop_listeners:
            listener(actor.event_id)
        if actor.stop_reason in ("idle", "store_error", "fault") and not self._closing:
            next_expiry = actor.state.next_expiry()
            if next_expiry is not None:
                self._sleep_until(actor.event_id, next_expiry)

    # --- leases ----------------------------------------------------------------------------

    async def _claim(self, event_id: str) -> None:
        # Claimed again before its release went out: the lease is the new actor's to keep.
        self._to_release.pop(event_id, None)
        try:
            taken = await self._coordinator.claim([event_id])
        except Exception as error:
            fenced_at = self._fenced.get(event_id)
            if fenced_at is not None and self._clock.now() - fenced_at < self._lease_ttl:
                # Another instance fenced us out moments ago and the leases cannot be checked:
                # leave the event to it for a lease's time rather than take it back at once
                # (instances would fence each other in turn, each refusing the other's batches).
                raise OwnedElsewhere(
                    f"event {event_id} is served by another instance; retry", retry_after_ms=1000
                ) from None
            self._unchecked.warn(event_id=event_id, error=repr(error))
            return
        owner = taken.get(event_id)
        if owner is not None:
            self.remember_owner(event_id, owner)
            raise OwnedElsewhere(
                f"event {event_id} is served by another instance; retry", owner=owner
            )

    def owner_hint(self, event_id: str) -> str | None:
        """The instance last seen owning the event, if not this one."""
        return None if event_id in self._actors else self._owners.get(event_id)

    def remember_owner(self, event_id: str, owner: str) -> None:
        if len(self._owners) >= _OWNER_HINTS:
            self._owners.clear()
        self._owners[event_id] = owner

    def forget_owner(self, event_id: str) -> None:
        self._owners.pop(event_id, None)

    def lease_expired(self, event_id: str) -> None:
        """An event's lease ran out: its owner died or stalled. Take the event over now (one
        instance wins the lease; the others are refused and ignore it), so its holds keep
        expiring on time and its commands stop failing before anyone retries them."""
        self._owners.pop(event_id, None)
        let_go = self._let_go.pop(event_id, None)
        if let_go is not None and self._clock.now() - let_go < _LET_GO_LEASES * self._lease_ttl:
            # Our own lease, of an event this instance stopped moments ago: its release did
            # not reach Redis in time (or lost a race with a renewal). Nobody died, and the
            # event's holds, if any, are already timed here; taking it over would only load
            # it again for a whole idle timeout.
            return
        if not self._closing and self.active(event_id) is None:
            self._spawn(self._take_over(event_id))

    async def _take_over(self, event_id: str) -> None:
        try:
            actor = await self.activate(event_id)
        except (OwnedElsewhere, EventNotFound):
            return
        except SeatdError as error:
            log.warning("takeover_failed", event_id=event_id, error=str(error))
            return
        log.info("event_taken_over", event_id=event_id, epoch=actor.epoch)

    def _release(self, event_id: str) -> None:
        """Let the lease go soon: events that stop together (an on-sale's end, a shutdown)
        share a few calls instead of a task and a Redis call each."""
        self._to_release[event_id] = None
        if not self._releasing:
            self._releasing = True
            self._spawn(self._release_queued())

    async def _release_queued(self) -> None:
        try:
            await asyncio.sleep(0)  # the events stopping in this same moment join in
            while self._to_release:
                due = list(itertools.islice(self._to_release, _LEASE_SLICE))
                for event_id in due:
                    del self._to_release[event_id]
                try:
                    await self._coordinator.release(due)
                except Exception as error:  # the leases then simply run out
                    log.debug("lease_release_failed", events=len(due), error=repr(error))
        finally:
            self._releasing = False

    def _ensure_lease_renewal(self) -> None:
        if self._lease_task is None:
            self._lease_task = asyncio.get_running_loop().create_task(
                self._renew_leases(), name="registry:leases", context=detached()
            )

    def _forget_let_go(self) -> None:
        """Drop the events let go longer ago than that matters (they are in time order)."""
        let_go, oldest = self._let_go, self._clock.now() - _LET_GO_LEASES * self._lease_ttl
        while let_go:
            event_id, at = next(iter(let_go.items()))
            if at >= oldest:
                break
            del let_go[event_id]

    async def _renew_leases(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._lease_ttl / 3)
            self._forget_let_go()
            # Ids, not actors: a list of actors held across the awaits kept every actor of the
            # last round alive, passivated or not, until the next round.
            event_ids = [a.event_id for a in self.actors()]
            # In slices, so requests run in between (100,000 loaded events took the event
            # loop for over a second in one go). Each slice keeps only the events still loaded
            # when it is sent: renewing the lease of an event that passivated since the round
            # began would take it again (claiming re-takes a lease Redis lost), keeping other
            # instances from the event for a lease's time.
            for start in range(0, len(event_ids), _LEASE_SLICE):
                due = [e for e in event_ids[start : start + _LEASE_SLICE] if self.active(e)]
                if not due:
                    continue
                try:
                    lost = await self._coordinator.claim(due)
                except Exception as error:
                    log.warning("lease_renewal_failed", error=repr(error))
                    break
                for event_id in lost:
                    actor = self.active(event_id)
                    if actor is not None:
                        log.warning("lease_lost", event_id=event_id)
                        actor.request_stop("lease_lost")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, context=detached())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- expiry of passivated events -------------------------------------------------------

    def _sleep_until(self, event_id: str, wake_at: float) -> None:
        """Wake the event (load it, expire what is due) at ``wake_at``, or earlier if it is
        already due earlier: once loaded, the actor times the rest of its holds itself."""
        earlier = self._dormant.get(event_id)
        if earlier is not None:
            if earlier[0] <= wake_at:
                return
            self._clock.cancel(earlier[1])
        alarm = self._clock.alarm(wake_at, partial(self._dormant_due, event_id))
        if alarm is not None:  # not due yet (a due one has rung already)
            self._dormant[event_id] = (wake_at, alarm)

    def _dormant_due(self, event_id: str) -> None:
        self._dormant.pop(event_id, None)
        self.tell(event_id, Expire())

    def _wake_dormant(self, event_id: str) -> None:
        """Forget the event's alarm (it was loaded, or the instance is closing)."""
        self._wake_retries.pop(event_id, None)
        self._wake_rechecks.discard(event_id)
        dormant = self._dormant.pop(event_id, None)
        if dormant is not None:
            self._clock.cancel(dormant[1])

    def start_sweeping(self, interval: float, overdue_by: float) -> None:
        """Every ``interval`` seconds, wake the events with a hold that expired over
        ``overdue_by`` seconds ago and that no actor here times: nobody else does either.

        An event's holds are timed by its actor, or by the alarm of the instance that let it go
        (``wake_at``), or at an instance's start. An owner that died while Redis was away left
        no lease to run out, and one that died with its events passivated had only its own
        alarms: their holds stayed held until a command came (found by fault injection). Every
        instance sweeps; the lease picks the one that loads the event."""
        if self._sweep_task is None:
            self._sweep_task = asyncio.get_running_loop().create_task(
                self._sweep(interval, overdue_by), name="registry:sweep", context=detached()
            )

    async def _sweep(self, interval: float, overdue_by: float) -> None:
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                overdue = await self._store.earliest_expiries(overdue_by=overdue_by)
            except Exception as error:  # PostgreSQL away: the next round looks again
                log.warning("overdue_sweep_failed", error=repr(error))
                continue
            missed = [
                (event_id, at)
                for event_id, at in overdue
                if event_id not in self._actors
                and event_id not in self._loading
                and event_id not in self._dormant
            ]
            if missed:
                log.info("overdue_holds_found", events=len(missed))
                self.wake_at(missed)

    def wake_at(self, events: Sequence[tuple[str, float]]) -> None:
        """Expire these events' holds on time although no actor runs for them yet (at start:
        the events with holds in PostgreSQL, each with its earliest expiry)."""
        for event_id, wake_at in events:
            self._sleep_until(event_id, wake_at)

    def status_changed(self, event_id: str, status: str) -> None:
        """An operator opened or closed the event in PostgreSQL (``seatd close-event``). An
        actor here applies it at once, then reads the stored status back; one loading may have
        read the row before the change, so the notice waits for it (and is read back too).
        Elsewhere the next load reads the stored status."""
        self._status_notices += 1
        self._noticed_at[event_id] = self._status_notices
        actor = self.active(event_id)
        if actor is not None:
            actor.change_status(status)
            # Then read it back: notices come in the order they were published, which two
            # operators' commands at once need not share with their commits.
            self._spawn(self._recheck_statuses([event_id]))
        elif event_id in self._loading:
            self._statuses_heard[event_id] = status

    def recheck_statuses(self) -> None:
        """Read the stored status of every active event and apply what changed: a notice
        sent while this instance was not listening (Redis down or reconnecting) is lost, and
        the status it carried is in PostgreSQL. Called once notices are heard again."""
        event_ids = [actor.event_id for actor in self.actors()]
        if event_ids:
            self._spawn(self._recheck_statuses(event_ids))

    async def _recheck_statuses(self, event_ids: list[str]) -> None:
        """Until PostgreSQL answers (backing off up to a minute): a close made while Redis and
        PostgreSQL were both out of reach must still take effect once they are back."""
        delay = 0.5
        while True:
            started = self._status_notices
            try:
                stored = await self._store.event_statuses(event_ids)
                break
            except Exception as error:  # logged, and tried again
                log.warning("event_status_recheck_failed", error=repr(error), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        for event_id, status in stored.items():
            if self._noticed_at.get(event_id, 0) > started:
                continue  # a notice came meanwhile: newer than what was read
            actor = self.active(event_id)
            if actor is not None and actor.state.info.status != status:
                log.info("event_status_changed", event_id=event_id, status=status, heard="db")
                actor.change_status(status)

    def hint_expiry(self, event_id: str, command: Command) -> None:
        """A Redis expiry notice: acted on for events this instance holds, active or dormant.

        Notices for other events are ignored: they belong to another instance, or this one
        would wake the event anyway at its earliest expiry (``wake_at``).
        """
        if self.active(event_id) is not None or event_id in self._dormant:
            self.tell(event_id, command)

    # --- shutdown --------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Stop activating, let every actor finish its queued commands, then stop them all
        (each stopping actor releases its lease in the background: given a moment to finish)."""
        self._closing = True
        actors = list(self._actors.values())
        for actor in actors:
            actor.request_stop()  # a parked actor starts again to stop
        await _finish([task for actor in actors if (task := actor.task) is not None], timeout)
        for event_id in list(self._dormant):
            self._wake_dormant(event_id)
        timers = [t for t in (self._lease_task, self._sweep_task) if t is not None]
        for timer in timers:
            timer.cancel()
        await _finish([*timers, *self._background], 2.0)


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for the tasks up to ``timeout``, then cancel the rest and give them a moment to
    end: a task cancelled inside a write to a PostgreSQL that stopped answering ends only when
    its connection does (the pool is dropped right after), and must not hold up the exit."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        if stuck:
            log.warning("tasks_left_running", count=len(stuck))
