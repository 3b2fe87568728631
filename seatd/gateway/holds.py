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
from seatd.errors import SeatdError
from seatd.gateway.broadcast import Broadcaster, Subscriber
from seatd.runtime.ports import StoredReply

__all__ = ["HoldFollower"]


class _Sink(Subscriber, Protocol):
    """The connection: where pushes go, and who the broadcaster tells about watched holds."""


class HoldFollower:
    __slots__ = (
        "_broadcaster",
        "_clock",
        "_closed",
        "_connection",
        "_followed",
        "_timers",
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
        self._followed: set[str] | None = None  # made on first use: most connections hold nothing
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Answers may still arrive after the connection is gone: they must not follow anything.
        self._closed = False

    def follow(self, event_id: str, command: core.Command, result: object) -> None:
        """After a successful reply: watch a placed or refreshed hold; drop an ended one.

        Works from the core result (a stored reply carries it when the command just ran), so
        nothing is decoded again on this per-hold path; only a replayed answer is read back.
        """
        if self._closed:
            return
        if isinstance(command, core.ReleaseHold | core.Reserve):
            if _succeeded(result):
                self._cancel(command.hold_id)
                self._unfollow(command.hold_id)
                self._broadcaster.unwatch_hold(command.hold_id, self._connection)
            return
        outcome = result
        if isinstance(result, StoredReply):
            outcome = result.outcome or _hold_from_reply(result.response)
        if isinstance(outcome, core.Hold):
            if self._followed is None:
                self._followed = set()
            self._followed.add(outcome.hold_id)
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
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        followed, self._followed = self._followed, None
        for hold_id in followed or ():
            self._broadcaster.unwatch_hold(hold_id, self._connection)

    def _schedule(self, event_id: str, hold: core.Hold) -> None:
        self._cancel(hold.hold_id)
        lifetime = hold.expires_at - self._clock()
        delay = lifetime - min(self._warning, lifetime / 4)
        self._timers[hold.hold_id] = asyncio.get_running_loop().call_later(
            max(delay, 0.0), self._warn, event_id, hold
        )

    def _unfollow(self, hold_id: str) -> None:
        if self._followed is not None:
            self._followed.discard(hold_id)

    def _cancel(self, hold_id: str) -> None:
        timer = self._timers.pop(hold_id, None)
        if timer is not None:
            timer.cancel()

    def _warn(self, event_id: str, hold: core.Hold) -> None:
        self._timers.pop(hold.hold_id, None)
        expires_at = format_time(hold.expires_at)
        warning = wire.HoldExpiring(event_id, hold.hold_id, hold.seat_ids, expires_at)
        self._connection.send(encode_push("hold_expiring", warning))


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
