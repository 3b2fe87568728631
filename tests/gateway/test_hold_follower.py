"""HoldFollower's warnings: one ``hold_expiring`` per followed hold, at the right time, moved by
a refresh, dropped when the hold ends or the connection goes; on a real event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import orjson
from support.tracking import tracked_objects, young_objects

from seatd import core
from seatd.gateway.holds import HoldFollower

WARNING = 0.2  # warned this long before expiry (at most a quarter of the hold's lifetime)


class _Sink:
    def __init__(self) -> None:
        self.pushes: list[dict[str, Any]] = []

    def send(self, frame: bytes) -> None:
        self.pushes.append(orjson.loads(frame))

    def hold_changed(self, *args: Any) -> None:  # the broadcaster's call, unused here
        raise AssertionError("not expected")


class _Broadcaster:
    def __init__(self) -> None:
        # "event id/hold id": strings, which the young-pass test below does not count
        self.watched: set[str] = set()

    def watch_hold(self, event_id: str, hold_id: str, subscriber: object) -> None:
        self.watched.add(f"{event_id}/{hold_id}")

    def unwatch_hold(self, event_id: str, hold_id: str, subscriber: object) -> None:
        self.watched.discard(f"{event_id}/{hold_id}")


def _hold(hold_id: str, expires_in: float) -> core.Hold:
    now = time.time()
    return core.Hold(hold_id, "u1", (f"S-{hold_id}",), now, now + expires_in, now + 3600)


def _follower() -> tuple[HoldFollower, _Sink, _Broadcaster]:
    sink, broadcaster = _Sink(), _Broadcaster()
    follower = HoldFollower(cast(Any, sink), cast(Any, broadcaster), time.time, WARNING)
    return follower, sink, broadcaster


def _place(follower: HoldFollower, hold: core.Hold) -> None:
    command = core.PlaceHold(hold.user_id, hold.seat_ids, hold.hold_id)
    follower.follow("ev", command, hold)


def _warned(sink: _Sink) -> list[str]:
    return [p["hold_id"] for p in sink.pushes if p["type"] == "hold_expiring"]


async def test_holds_are_warned_in_the_order_they_expire_each_once() -> None:
    follower, sink, broadcaster = _follower()
    for hold_id, expires_in in (("c", 1.2), ("a", 0.6), ("b", 0.9)):
        _place(follower, _hold(hold_id, expires_in))
    assert broadcaster.watched == {"ev/a", "ev/b", "ev/c"}
    await asyncio.sleep(0.3)
    assert _warned(sink) == []  # "a" is warned 0.2 s before its 0.6 s
    await asyncio.sleep(0.8)
    assert _warned(sink) == ["a", "b", "c"]
    pushed = sink.pushes[0]
    assert pushed["event_id"] == "ev" and pushed["seat_ids"] == ["S-a"]
    await asyncio.sleep(0.3)
    assert _warned(sink) == ["a", "b", "c"]
    follower.close()


async def test_a_refresh_moves_the_warning_and_an_ended_hold_is_not_warned() -> None:
    follower, sink, broadcaster = _follower()
    _place(follower, _hold("moved", 0.5))
    _place(follower, _hold("released", 0.5))
    _place(follower, _hold("kept", 0.7))
    refreshed = _hold("moved", 1.2)
    follower.follow("ev", core.RefreshHold("u1", "moved"), refreshed)
    follower.follow("ev", core.ReleaseHold("u1", "released"), None)
    assert broadcaster.watched == {"ev/moved", "ev/kept"}
    await asyncio.sleep(0.7)
    assert _warned(sink) == ["kept"]
    await asyncio.sleep(0.5)
    assert _warned(sink) == ["kept", "moved"]
    follower.close()


async def test_a_change_through_another_connection_moves_or_drops_the_warning() -> None:
    follower, sink, _ = _follower()
    _place(follower, _hold("extended", 0.4))
    _place(follower, _hold("reserved", 0.4))
    follower.hold_changed("ev", _hold("extended", 1.0), None)
    follower.hold_changed("ev", _hold("reserved", 0.4), core.HoldEndReason.RESERVED)
    await asyncio.sleep(0.5)
    assert _warned(sink) == []
    await asyncio.sleep(0.5)
    assert _warned(sink) == ["extended"]
    follower.close()


async def test_nothing_is_warned_after_the_connection_is_gone() -> None:
    follower, sink, broadcaster = _follower()
    _place(follower, _hold("a", 0.3))
    follower.close()
    assert broadcaster.watched == set()
    await asyncio.sleep(0.4)
    assert sink.pushes == []


async def test_many_ended_holds_leave_no_warnings_and_no_backlog() -> None:
    """A client that holds and reserves all day: nothing builds up per hold it ended."""
    follower, sink, _ = _follower()
    for n in range(5000):
        hold = _hold(f"h{n}", 300.0)
        _place(follower, hold)
        follower.follow("ev", core.Reserve("u1", hold.hold_id, f"r{n}"), None)
    _place(follower, _hold("last", 0.4))
    await asyncio.sleep(0.5)
    assert _warned(sink) == ["last"]
    assert follower.pending_warnings() <= 64
    follower.close()


async def test_a_warning_come_due_after_its_hold_expired_is_not_sent() -> None:
    """A process paused past a hold's expiry (SIGSTOP, a stalled host) finds the warning
    late: the hold has expired, so only its hold_expired push is due, not a warning."""
    skew = [0.0]
    sink, broadcaster = _Sink(), _Broadcaster()
    follower = HoldFollower(
        cast(Any, sink), cast(Any, broadcaster), lambda: time.time() + skew[0], WARNING
    )
    _place(follower, _hold("late", 1.0))
    _place(follower, _hold("on-time", 5.0))
    skew[0] = 1.5  # the wall clock moved on while the loop's timers waited
    await asyncio.sleep(0.9)
    assert _warned(sink) == []
    follower.close()


async def test_followed_holds_leave_the_garbage_collector_after_a_pass() -> None:
    """Each followed hold's pending warning adds no object the collector keeps walking."""
    follower, _, broadcaster = _follower()
    holds = [_hold(f"h{i}", 3600) for i in range(2000)]
    before = tracked_objects()
    for hold in holds:
        _place(follower, hold)
    assert len(broadcaster.watched) == 2000
    await asyncio.sleep(0.01)  # the loop frees the timers it cancelled on its next turn
    assert tracked_objects() - before < 50
    follower.close()


async def test_a_followed_hold_leaves_nothing_for_the_next_young_pass() -> None:
    """Its warning is a float and a string in two dicts, its deadline is queued in
    core.Deadlines, and the broadcaster keeps its only follower directly: nothing for the next
    young pass to walk. The flat tuple before left one object per hold."""
    follower, _, _ = _follower()
    now = time.time()
    holds = [
        core.Hold(f"h{i}", "u1", (f"S{i}",), now, now + 3600 + i, now + 7200) for i in range(2000)
    ]

    def follow_all() -> None:
        for hold in holds:
            _place(follower, hold)

    assert young_objects(follow_all) < 20
    follower.close()
