"""Availability deltas to subscribers, and hold-expiry pushes to holders, on this instance.

Every committed batch that changed seats becomes one ``availability`` push stamped with the
event's new version, encoded once and queued on each subscribed connection. Versions increase
by exactly one per delta, so a client always notices a gap.

Subscribing is race-free: the connection is registered as *pending* before its snapshot is
requested from the actor, deltas committed meanwhile are buffered, and once the snapshot (at
version v) is sent, only the buffered deltas newer than v follow it. The last deltas of each
watched event are kept so a client that reconnects with ``since_version`` gets just what it
missed; older gaps get a fresh snapshot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from protocol import messages as wire
from protocol.codec import encode_push, format_time
from seatd.core import (
    Effect,
    Hold,
    HoldCreated,
    HoldEnded,
    HoldEndReason,
    HoldExtended,
    ReservationCreated,
)

__all__ = ["Broadcaster", "Subscriber", "seat_changes"]


class Subscriber(Protocol):
    def send(self, frame: bytes) -> None: ...

    def hold_changed(self, event_id: str, hold: Hold, ended: HoldEndReason | None) -> None:
        """A hold this subscriber watches was extended (``ended`` None) or ended."""
        ...


@dataclass(frozen=True, slots=True)
class _Delta:
    version: int
    message: wire.Availability
    frame: bytes


@dataclass(slots=True)
class _Topic:
    # None: live; a list: pending, deltas buffered until the snapshot has been sent.
    subscribers: dict[Subscriber, list[_Delta] | None] = field(default_factory=dict)
    history: deque[_Delta] = field(default_factory=deque)


def seat_changes(effects: Sequence[Effect]) -> tuple[wire.SeatChange, ...]:
    """Each seat's final state after a batch (a seat changed twice appears once)."""
    changes: dict[str, wire.SeatChange] = {}
    for effect in effects:
        if isinstance(effect, HoldCreated | HoldExtended):
            expires_at = format_time(effect.hold.expires_at)
            for sid in effect.hold.seat_ids:
                changes[sid] = wire.SeatChange(sid, "held", expires_at)
        elif isinstance(effect, HoldEnded):
            if effect.reason is not HoldEndReason.RESERVED:
                for sid in effect.hold.seat_ids:
                    changes[sid] = wire.SeatChange(sid, "available")
        elif isinstance(effect, ReservationCreated):
            for sid in effect.reservation.seat_ids:
                changes[sid] = wire.SeatChange(sid, "reserved")
    return tuple(changes.values())


class Broadcaster:
    """``CommitObserver`` fanning committed changes out to this instance's connections."""

    def __init__(self, history: int = 256) -> None:
        self._history = history
        self._topics: dict[str, _Topic] = {}
        self._hold_watchers: dict[str, set[Subscriber]] = {}

    # --- the commit side -------------------------------------------------------------------

    def committed(
        self, event_id: str, version: int, effects: Sequence[Effect], state: object
    ) -> None:
        topic = self._topics.get(event_id)
        if topic is not None:
            changes = seat_changes(effects)
            message = wire.Availability(event_id, version, changes)
            delta = _Delta(version, message, encode_push("availability", message))
            topic.history.append(delta)
            if len(topic.history) > self._history:
                topic.history.popleft()
            for subscriber, pending in topic.subscribers.items():
                if pending is None:
                    subscriber.send(delta.frame)
                else:
                    pending.append(delta)
        if self._hold_watchers:
            self._notify_holders(event_id, effects)

    def _notify_holders(self, event_id: str, effects: Sequence[Effect]) -> None:
        """Tell the connections watching a hold that it changed, whoever changed it."""
        for effect in effects:
            if isinstance(effect, HoldExtended):
                for watcher in list(self._hold_watchers.get(effect.hold.hold_id, ())):
                    watcher.hold_changed(event_id, effect.hold, None)
            elif isinstance(effect, HoldEnded):
                for watcher in self._hold_watchers.pop(effect.hold.hold_id, ()):
                    watcher.hold_changed(event_id, effect.hold, effect.reason)

    # --- subscriptions ---------------------------------------------------------------------

    def has_subscribers(self, event_id: str) -> bool:
        topic = self._topics.get(event_id)
        return topic is not None and bool(topic.subscribers)

    def begin(self, event_id: str, subscriber: Subscriber) -> None:
        """Register before asking for the snapshot; deltas are buffered until ``complete``."""
        topic = self._topics.setdefault(event_id, _Topic())
        topic.subscribers[subscriber] = []

    def complete(
        self, event_id: str, subscriber: Subscriber, version: int, since: int | None
    ) -> tuple[tuple[wire.Availability, ...] | None, list[bytes]]:
        """The subscriber's snapshot is at ``version``: go live.

        Returns the deltas that bring a client from ``since`` to ``version`` (None when they
        are no longer all kept: send the snapshot), and the buffered frames newer than
        ``version`` to send right after the reply.
        """
        topic = self._topics.get(event_id)
        if topic is None:
            return None, []
        if subscriber not in topic.subscribers:  # unsubscribed while the snapshot was on its way
            return self._replay(topic, since, version), []
        buffered = topic.subscribers[subscriber] or []
        topic.subscribers[subscriber] = None
        after = [d.frame for d in buffered if d.version > version]
        return self._replay(topic, since, version), after

    def _replay(
        self, topic: _Topic, since: int | None, version: int
    ) -> tuple[wire.Availability, ...] | None:
        if since is None or since > version:
            return None
        if since == version:
            return ()
        deltas = [d for d in topic.history if since < d.version <= version]
        if len(deltas) != version - since or deltas[0].version != since + 1:
            return None
        return tuple(d.message for d in deltas)

    def cancel(self, event_id: str, subscriber: Subscriber) -> bool:
        """Stop sending this event's deltas; True if the subscriber was subscribed."""
        topic = self._topics.get(event_id)
        if topic is None or subscriber not in topic.subscribers:
            return False
        del topic.subscribers[subscriber]
        return True

    def forget(self, event_id: str) -> None:
        """The event's actor stopped: drop its history unless someone still watches it."""
        topic = self._topics.get(event_id)
        if topic is not None and not topic.subscribers:
            del self._topics[event_id]

    # --- holders ---------------------------------------------------------------------------

    def watch_hold(self, hold_id: str, subscriber: Subscriber) -> None:
        self._hold_watchers.setdefault(hold_id, set()).add(subscriber)

    def unwatch_hold(self, hold_id: str, subscriber: Subscriber) -> None:
        watchers = self._hold_watchers.get(hold_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._hold_watchers[hold_id]
