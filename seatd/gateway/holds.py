"""Following the holds a connection made: ``hold_expiring`` before, ``hold_expired`` after.

A connection follows each hold it placed or refreshed. The broadcaster tells it when such a hold
changes through any connection (a refresh moves the warning; a release or reservation cancels
it; an expiry is pushed), so pushes track the hold itself, not only what this connection did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import orjson

from protocol import messages as wire
from protocol.codec import encode_push, format_time, parse_time
from seatd import core
from seatd.core.deadlines import Deadlines
from seatd.errors import SeatdError
from seatd.gateway.broadcast import Broadcaster, Subscriber
from seatd.runtime.ports import StoredReply

__all__ = ["HoldFollower"]

# Types for isinstance, as tuples made once: `A | B` in the call builds a union each time.
_ENDING = (core.ReleaseHold, core.Reserve)


class _Sink(Subscriber, Protocol):
    """The connection: where pushes go, and who the broadcaster tells about watched holds."""


class HoldFollower:
    """Warnings are kept in one queue of deadlines per connection (``core.Deadlines``) with one
    loop timer for the earliest, not a timer per hold: most holds end (reserved, released) long
    before their warning, and a loop timer made and cancelled per hold was a few percent of the
    server's CPU. An ended or moved hold leaves its deadline behind, ignored when it comes up
    (its warning is gone, or due at another time); the queue is rebuilt when such deadlines
    outnumber the live ones."""

    __slots__ = (
        "_armed_at",
        "_broadcaster",
        "_clock",
        "_closed",
        "_connection",
        "_deadlines",
        "_followed",
        "_loop",
        "_pending",
        "_timer",
        "_warning",
    )

    def __init__(
        self,
        connection: _Sink,
        broadcaster: Broadcaster,
        clock: Callable[[], float],
        warning: float,
    ) -> None:
        self._connection = connection
        self._broadcaster = broadcaster
        self._clock = clock
        self._warning = warning
        # The holds watched, warned or not: a warning ends the timer, not the watching.
        # Hold id -> its event; made on first use: most connections hold nothing.
        self._followed: dict[str, str] | None = None
        self._pending: _Pending | None = None  # made on first use
        self._deadlines = Deadlines()  # (loop time, hold id), stale ones skipped
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        # Kept: asyncio.get_running_loop() makes a getpid system call each time on Python
        # 3.11, and a hold is scheduled with every reply that places or refreshes one.
        self._loop = asyncio.get_running_loop()
        # Answers may still arrive after the connection is gone: they must not follow anything.
        self._closed = False

    def follow(self, event_id: str, command: core.Command, result: object) -> None:
        """After a successful reply: watch a placed or refreshed hold; drop an ended one.

        Works from the core result (a stored reply carries it when the command just ran), so
        nothing is decoded again on this per-hold path; only a replayed answer is read back.
        """
        if self._closed:
            return
        if isinstance(command, _ENDING):
            if _succeeded(result):
                self._cancel(command.hold_id)
                self._unfollow(command.hold_id)
                self._broadcaster.unwatch_hold(event_id, command.hold_id, self._connection)
            return
        outcome = result
        if isinstance(result, StoredReply):
            outcome = result.outcome or _hold_from_reply(result.response)
        if isinstance(outcome, core.Hold):
            if self._followed is None:
                self._followed = {}
            self._followed[outcome.hold_id] = event_id
            self._broadcaster.watch_hold(event_id, outcome.hold_id, self._connection)
            self._schedule(event_id, outcome)

    def hold_changed(
        self, event_id: str, hold: core.Hold, ended: core.HoldEndReason | None
    ) -> None:
        """A watched hold changed, maybe through another connection."""
        if self._closed:
            return
        if ended is None:
            self._schedule(event_id, hold)
            return
        self._cancel(hold.hold_id)
        self._unfollow(hold.hold_id)  # the broadcaster dropped its watchers
        if ended is core.HoldEndReason.EXPIRED:
            expired = wire.HoldExpired(event_id, hold.hold_id, hold.seat_ids)
            self._connection.send(encode_push("hold_expired", expired))

    def close(self) -> None:
        """The connection is gone: no more warnings, no more watching."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending, self._deadlines = None, Deadlines()
        followed, self._followed = self._followed, None
        for hold_id, event_id in (followed or {}).items():
            self._broadcaster.unwatch_hold(event_id, hold_id, self._connection)

    def pending_warnings(self) -> int:
        """Deadlines kept, live or left behind by ended holds (bounded: see the class)."""
        return len(self._deadlines)

    def _schedule(self, event_id: str, hold: core.Hold) -> None:
        lifetime = hold.expires_at - self._clock()
        delay = lifetime - min(self._warning, lifetime / 4)
        loop = self._loop
        when = loop.time() + max(delay, 0.0)
        pending = self._pending
        if pending is None:
            pending = self._pending = _Pending()
        hold_id, due = hold.hold_id, pending.due
        due[hold_id] = when
        pending.expiries[hold_id] = hold.expires_at
        pending.ids[hold_id] = _SEP.join((event_id, *hold.seat_ids))
        deadlines = self._deadlines
        deadlines.push(when, hold.hold_id)
        if len(deadlines) > 2 * len(due) + _SPARE_ENTRIES:
            self._deadlines = Deadlines((at, hold_id) for hold_id, at in due.items())
        if self._timer is None or when < self._armed_at:
            self._arm(loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._ring)
        self._armed_at = when

    def _unfollow(self, hold_id: str) -> None:
        if self._followed is not None:
            self._followed.pop(hold_id, None)

    def _cancel(self, hold_id: str) -> None:
        if self._pending is not None:
            self._drop_warning(self._pending, hold_id)  # its deadline is skipped when it comes up

    def _drop_warning(self, pending: _Pending, hold_id: str) -> tuple[float, str]:
        """Forget a hold's warning (see ``_Pending.drop``); the last one gives ``pending`` back."""
        dropped = pending.drop(hold_id)
        if not pending.due:
            self._pending = None
        return dropped

    def _ring(self) -> None:
        """Send the warnings that are due; arm the timer for the next live one."""
        self._timer = None
        loop = self._loop
        now, wall = loop.time(), self._clock()
        deadlines, pending = self._deadlines, self._pending
        while deadlines and pending is not None and not self._closed:
            when, hold_id = deadlines.peek()
            if pending.due.get(hold_id) != when:
                deadlines.pop()  # the hold ended or moved since
                continue
            if when > now:
                self._arm(loop, when)
                return
            deadlines.pop()
            # Once the last is dropped, this loop drops the stale deadlines left.
            expires_at, ids = self._drop_warning(pending, hold_id)
            if expires_at > wall:
                event_id, *seat_ids = ids.split(_SEP)
                self._warn(event_id, hold_id, expires_at, seat_ids)
            # else: late (the process was paused, say): the hold has expired, and hold_expired
            # follows from its expiry. After a 15 s pause, 252 stale warnings went out at once.

    def _warn(self, event_id: str, hold_id: str, expires_at: float, seat_ids: list[str]) -> None:
        push = wire.HoldExpiring(event_id, hold_id, tuple(seat_ids), format_time(expires_at))
        self._connection.send(encode_push("hold_expiring", push))


class _Pending:
    """The pending warnings of one connection's holds, by hold id, in three dicts of strings
    and floats: the loop time each is due, its hold's expiry, and its ids joined, "event_id NUL
    seat_id [NUL seat_id ...]". Followed holds leave the garbage collector nothing to walk but
    these dicts (see event_state._pack); a tuple per hold left one object for every young
    pass. Given back when the last warning goes."""

    __slots__ = ("due", "expiries", "ids")

    def __init__(self) -> None:
        self.due: dict[str, float] = {}
        self.expiries: dict[str, float] = {}
        self.ids: dict[str, str] = {}

    def drop(self, hold_id: str) -> tuple[float, str]:
        """Forget a hold's warning; its expiry and ids (0.0 and "" if it had none)."""
        self.due.pop(hold_id, None)
        return self.expiries.pop(hold_id, 0.0), self.ids.pop(hold_id, "")


# Between a warning's ids, which never hold control characters (the protocol and the events
# table refuse them).
_SEP = "\0"
# Deadlines of ended holds tolerated beyond the live ones before the queue is rebuilt.
_SPARE_ENTRIES = 32


def _succeeded(result: object) -> bool:
    """Whether a command's answer (a stored reply may hold a refusal) was a success."""
    if not isinstance(result, StoredReply):
        return True
    if result.outcome is None:  # a replay: read the stored answer
        return bool(orjson.loads(result.response).get("ok"))
    return not isinstance(result.outcome, SeatdError)


def _hold_from_reply(response: bytes) -> core.Hold | None:
    """The hold a replayed hold/refresh answer describes (None if it was a refusal)."""
    body = orjson.loads(response)
    if not body.get("ok"):
        return None
    r = body["result"]
    return core.Hold(
        r["hold_id"],
        r["user_id"],
        tuple(r["seat_ids"]),
        0.0,
        parse_time(r["expires_at"]),
        parse_time(r["max_expires_at"]),
    )
