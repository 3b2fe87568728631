"""Availability deltas to subscribers, and hold-expiry pushes to holders, on this instance.

Committed changes of an event become ``availability`` pushes, each encoded once for all its
subscribers and stamped with the range of versions it covers (``from_version``..``version``).
An event's first change after a quiet spell goes out at once; changes that follow within
``interval`` seconds are merged into one push (latest state per seat), so a busy event costs
each subscriber at most one frame per interval however many batches commit. Ranges follow each
other without holes, so a client always notices a gap.

Subscribing is race-free: the connection is registered as *pending* before its snapshot is
requested from the actor, deltas committed meanwhile are buffered, and once the snapshot (at
version v) is sent, only the buffered deltas newer than v follow it. The last deltas of each
watched event are kept so a client that reconnects with ``since_version`` gets just what it
missed; older gaps get a fresh snapshot.

Several instances: the owner of an event also hands each push to ``publish`` (the message bus),
and an instance whose connections watch an event it does not own feeds the pushes it receives
into ``relayed``. Each topic remembers the last version it sent, so a push that arrives both
ways (this instance's own, echoed back) or twice is sent once; a lost push is a gap that the
client repairs by resubscribing, as with any gap. Owners also publish "hold news" (holds
extended or ended, per batch) on the same channel, so a connection here that follows a hold
of an event owned elsewhere still gets ``hold_expired`` and a moved ``hold_expiring``.
``watched``/``unwatched`` tell when an event starts or stops mattering here (a subscriber or
a followed hold), to follow its channel.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from protocol import messages as wire
from protocol._validate import decoder
from protocol.codec import encode_push, exact_bytes, format_time
from seatd.core import (
    Effect,
    Hold,
    HoldCreated,
    HoldEnded,
    HoldEndReason,
    HoldExtended,
    ReservationCreated,
)
from seatd.core.shards import ShardedDict

__all__ = ["Broadcaster", "Subscriber", "seat_changes"]

# Types for isinstance, as tuples made once: `A | B` in the call builds a union each time.
_PLACED_OR_EXTENDED = (HoldCreated, HoldExtended)
_EXTENDED_OR_ENDED = (HoldExtended, HoldEnded)


class Subscriber(Protocol):
    def send(self, frame: bytes) -> None: ...

    def hold_changed(self, event_id: str, hold: Hold, ended: HoldEndReason | None) -> None:
        """A hold this subscriber watches was extended (``ended`` None) or ended."""
        ...


_decode_availability = decoder(wire.Availability, ignore=("type",))


@dataclass(slots=True)
class _Delta:
    from_version: int
    version: int
    frame: bytes
    # Decoded from ``frame`` only when a resume reply needs it (relayed pushes arrive encoded).
    message: wire.Availability | None = None

    def availability(self) -> wire.Availability:
        if self.message is None:
            self.message = _decode_availability(orjson.loads(self.frame))
        return self.message


@dataclass(slots=True)
class _Topic:
    # None: live; a list: pending, deltas buffered until the snapshot has been sent.
    subscribers: dict[Subscriber, list[_Delta] | None] = field(default_factory=dict)
    history: deque[_Delta] = field(default_factory=deque)
    # Changes committed but not yet pushed, merged per seat, and the versions they span.
    unsent: dict[str, wire.SeatChange] = field(default_factory=dict)
    unsent_from: int = 0
    unsent_to: int = 0
    last_push: float = float("-inf")
    timer: asyncio.TimerHandle | None = None
    last_version: int = 0  # of the last push sent, whether made here or relayed
    watched: bool = False  # has had a subscriber here: keep history for resuming clients


def seat_changes(effects: Sequence[Effect]) -> tuple[wire.SeatChange, ...]:
    """Each seat's final state after a batch (a seat changed twice appears once)."""
    changes: dict[str, wire.SeatChange] = {}
    for effect in effects:
        if isinstance(effect, _PLACED_OR_EXTENDED):
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

    def __init__(
        self,
        history: int = 256,
        interval: float = 0.02,
        *,
        publish: Callable[[str, bytes], None] | None = None,
        publishing: Callable[[], bool] = lambda: True,
        watched: Callable[[str], None] | None = None,
        unwatched: Callable[[str], None] | None = None,
        instance_id: str = "",
    ) -> None:
        self._history = history
        self._interval = interval
        self._publish = publish  # every push of an event owned here, for other instances
        # False while no other instance exists: then nothing is built or sent for them.
        self._publishing = publishing
        self._watched = watched  # an event gained its first subscriber or followed hold here
        self._unwatched = unwatched  # ... and lost its last one
        self._instance_id = instance_id  # to ignore our own hold news echoed back
        self._topics: dict[str, _Topic] = {}
        # Hold id -> the connection following it, or a set when several do (rare): a set per
        # live hold would be one more object the garbage collector walks (see core.Hold).
        # Sharded, so that it never grows all at once (core.shards).
        self._hold_watchers: ShardedDict[str, Subscriber | set[Subscriber]] = ShardedDict(
            _WATCHER_SHARDS
        )
        # Event -> how many of its holds are followed here. A count, not a set of the hold ids:
        # only whether there are any is asked, and a set growing with a sale's holds stalled
        # the loop for milliseconds each time it doubled (BENCHMARKS.md, round 14). For the
        # same reason no dict of each hold's event: the callers know it (round 16).
        self._followed_holds: dict[str, int] = {}

    # --- the commit side -------------------------------------------------------------------

    def committed(
        self, event_id: str, version: int, effects: Sequence[Effect], state: object
    ) -> None:
        publish = self._publisher()
        topic = self._topics.get(event_id)
        if topic is None and publish is not None:
            topic = self._topics[event_id] = _Topic()
        if topic is not None:
            if not topic.unsent:
                topic.unsent_from = version
            topic.unsent_to = version
            for change in seat_changes(effects):
                topic.unsent[change.seat_id] = change
            if topic.timer is None:
                loop = asyncio.get_running_loop()
                due = topic.last_push + self._interval
                if loop.time() >= due:
                    self._push(event_id, topic)
                else:
                    topic.timer = loop.call_at(due, self._push, event_id, topic)
        if self._followed_holds:  # some hold is followed here
            self._notify_holders(event_id, effects)
        if publish is not None:
            news = _hold_news(effects)
            if news:
                publish(
                    event_id,
                    orjson.dumps({"type": _NEWS, "from": self._instance_id, "holds": news}),
                )

    def _push(self, event_id: str, topic: _Topic) -> None:
        """Send what is unsent as one delta, to every live subscriber."""
        if topic.timer is not None:
            topic.timer.cancel()
            topic.timer = None
        if not topic.unsent:
            return
        message = wire.Availability(
            event_id, topic.unsent_from, topic.unsent_to, tuple(topic.unsent.values())
        )
        topic.unsent = {}
        topic.last_push = asyncio.get_running_loop().time()
        frame = encode_push("availability", message)
        self._deliver(topic, _Delta(message.from_version, message.version, frame, message))
        publish = self._publisher()
        if publish is not None:
            publish(event_id, frame)

    def _publisher(self) -> Callable[[str, bytes], None] | None:
        """Where pushes for other instances go, or None while there is nobody to send them to."""
        return self._publish if self._publish is not None and self._publishing() else None

    def relayed(self, event_id: str, frame: bytes) -> None:
        """A push of an event owned elsewhere (or echoed back), for the subscribers here."""
        if frame.startswith(_NEWS_PREFIX):
            self._relayed_news(event_id, frame)
            return
        topic = self._topics.get(event_id)
        if topic is None or not topic.subscribers:
            return
        try:
            head = orjson.loads(frame)
            from_version, version = int(head["from_version"]), int(head["version"])
        except (ValueError, KeyError, TypeError):
            return
        if version > topic.last_version:
            self._deliver(topic, _Delta(from_version, version, frame))

    def _deliver(self, topic: _Topic, delta: _Delta) -> None:
        topic.last_version = delta.version
        # History serves resuming subscribers: kept from an event's first subscriber on, not
        # for every event this instance merely publishes (that would be memory for nobody).
        if topic.watched:
            if delta.message is not None:  # made here by orjson: kept, so made compact
                delta.frame = exact_bytes(delta.frame)
            topic.history.append(delta)
            if len(topic.history) > self._history:
                topic.history.popleft()
        for subscriber, pending in topic.subscribers.items():
            if pending is None:
                subscriber.send(delta.frame)
            else:
                pending.append(delta)

    def _notify_holders(self, event_id: str, effects: Sequence[Effect]) -> None:
        """Tell the connections watching a hold that it changed, whoever changed it."""
        for effect in effects:
            if isinstance(effect, HoldExtended):
                self._hold_news(event_id, effect.hold, None)
            elif isinstance(effect, HoldEnded):
                self._hold_news(event_id, effect.hold, effect.reason)

    def _hold_news(self, event_id: str, hold: Hold, ended: HoldEndReason | None) -> None:
        if ended is None:
            for watcher in _as_tuple(self._hold_watchers.get(hold.hold_id)):
                watcher.hold_changed(event_id, hold, None)
            return
        watchers = _as_tuple(self._hold_watchers.pop(hold.hold_id, None))
        if watchers:
            self._drop_hold(event_id)
        for watcher in watchers:
            watcher.hold_changed(event_id, hold, ended)

    def _relayed_news(self, event_id: str, frame: bytes) -> None:
        if event_id not in self._followed_holds:
            return
        try:
            news = orjson.loads(frame)
            if news.get("from") == self._instance_id:
                return  # ours, echoed back: the watchers here were told at commit
            for hold_id, user_id, seat_ids, expires_at, max_expires_at, ended in news["holds"]:
                if hold_id in self._hold_watchers:
                    hold = Hold(hold_id, user_id, tuple(seat_ids), 0.0, expires_at, max_expires_at)
                    self._hold_news(event_id, hold, HoldEndReason(ended) if ended else None)
        except (ValueError, KeyError, TypeError):
            return

    # --- subscriptions ---------------------------------------------------------------------

    def has_subscribers(self, event_id: str) -> bool:
        topic = self._topics.get(event_id)
        return topic is not None and bool(topic.subscribers)

    def begin(self, event_id: str, subscriber: Subscriber) -> None:
        """Register before asking for the snapshot; deltas are buffered until ``complete``."""
        topic = self._topics.setdefault(event_id, _Topic())
        topic.subscribers[subscriber] = []
        topic.watched = True

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
        self._push(event_id, topic)  # history now reaches the snapshot's version
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
        # The kept deltas after ``since``: the first must reach back to since + 1, each must
        # start where the previous ended, and the last must end at ``version``.
        deltas = [d for d in topic.history if d.version > since]
        if not deltas or deltas[0].from_version > since + 1 or deltas[-1].version != version:
            return None
        for previous, following in itertools.pairwise(deltas):
            if following.from_version != previous.version + 1:
                return None
        return tuple(d.availability() for d in deltas)

    def cancel(self, event_id: str, subscriber: Subscriber) -> bool:
        """Stop sending this event's deltas; True if the subscriber was subscribed."""
        topic = self._topics.get(event_id)
        if topic is None or subscriber not in topic.subscribers:
            return False
        del topic.subscribers[subscriber]
        if not topic.subscribers and event_id not in self._followed_holds:
            self._lost_interest(event_id)
        return True

    def _lost_interest(self, event_id: str) -> None:
        if self._unwatched is not None:
            self._unwatched(event_id)

    def forget(self, event_id: str) -> None:
        """The event's actor stopped: drop its history unless someone still watches it."""
        topic = self._topics.get(event_id)
        if topic is not None and not topic.subscribers:
            if topic.timer is not None:
                topic.timer.cancel()
            del self._topics[event_id]

    # --- holders ---------------------------------------------------------------------------

    def follows_holds(self, event_id: str) -> bool:
        return event_id in self._followed_holds

    def watch_hold(self, event_id: str, hold_id: str, subscriber: Subscriber) -> None:
        watchers = self._hold_watchers.shard(hold_id)
        current = watchers.get(hold_id)
        if isinstance(current, set):
            current.add(subscriber)
        elif current is not None:
            if current is not subscriber:
                watchers[hold_id] = {current, subscriber}
        else:
            watchers[hold_id] = subscriber
            followed = self._followed_holds.get(event_id, 0) + 1
            self._followed_holds[event_id] = followed
            if followed == 1 and not self.has_subscribers(event_id) and self._watched:
                self._watched(event_id)

    def unwatch_hold(self, event_id: str, hold_id: str, subscriber: Subscriber) -> None:
        """``subscriber`` no longer follows the hold ``hold_id`` of ``event_id``."""
        current = self._hold_watchers.get(hold_id)
        if isinstance(current, set):
            current.discard(subscriber)
            if current:
                return
        elif current is not subscriber:
            return
        del self._hold_watchers[hold_id]
        self._drop_hold(event_id)

    def _drop_hold(self, event_id: str) -> None:
        """One of the event's followed holds lost its last follower here."""
        followed = self._followed_holds.get(event_id, 0) - 1
        if followed > 0:
            self._followed_holds[event_id] = followed
            return
        if self._followed_holds.pop(event_id, None) is None:
            return
        if not self.has_subscribers(event_id):
            self._lost_interest(event_id)


_NEWS = "holds"
# Shards of the followed holds' table: ~1,400 holds each at 87,382 (where one dict of them
# stalled the loop for up to 18 ms as it grew), whatever the events they belong to.
_WATCHER_SHARDS = 64
_NEWS_PREFIX = b'{"type":"holds"'


def _hold_news(effects: Sequence[Effect]) -> list[tuple[object, ...]]:
    """The batch's extended and ended holds, compact, for instances following them."""
    news: list[tuple[object, ...]] = []
    for effect in effects:
        if isinstance(effect, _EXTENDED_OR_ENDED):
            hold = effect.hold
            ended = effect.reason.value if isinstance(effect, HoldEnded) else None
            news.append(
                (
                    hold.hold_id,
                    hold.user_id,
                    hold.seat_ids,
                    hold.expires_at,
                    hold.max_expires_at,
                    ended,
                )
            )
    return news


def _as_tuple(watchers: Subscriber | set[Subscriber] | None) -> tuple[Subscriber, ...]:
    """The followers of a hold as stored in ``Broadcaster._hold_watchers``, as a tuple (a
    copy: telling one may make it stop following)."""
    if watchers is None:
        return ()
    if isinstance(watchers, set):
        return tuple(watchers)
    return (watchers,)
