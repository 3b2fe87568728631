"""SystemClock: alarms share one timer and ring at their own deadlines, unless cancelled."""

from __future__ import annotations

import asyncio
import time

from seatd.runtime.clock import SystemClock


async def _sleep_until(
    clock: SystemClock, deadline: float, woke: dict[str, float], name: str
) -> None:
    rung = asyncio.Event()
    clock.alarm(deadline, rung.set)
    await rung.wait()
    woke[name] = time.time()


async def test_each_sleeper_wakes_at_its_own_deadline_whatever_the_order_they_came() -> None:
    clock = SystemClock()
    start = time.time()
    woke: dict[str, float] = {}
    deadlines = {"late": start + 0.30, "early": start + 0.05, "middle": start + 0.15}
    tasks = [
        asyncio.create_task(_sleep_until(clock, at, woke, name)) for name, at in deadlines.items()
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(woke, key=woke.__getitem__) == ["early", "middle", "late"]
    for name, at in deadlines.items():
        assert at <= woke[name] < at + 0.1, (name, woke[name] - at)


async def test_an_earlier_deadline_moves_the_timer_forward() -> None:
    clock = SystemClock()
    woke: dict[str, float] = {}
    start = time.time()
    far = asyncio.create_task(_sleep_until(clock, start + 30, woke, "far"))
    await asyncio.sleep(0.01)  # the timer is armed for the far deadline
    await asyncio.wait_for(_sleep_until(clock, start + 0.05, woke, "near"), 1)
    assert woke["near"] - start < 0.5
    assert not far.done()
    far.cancel()


async def test_cancelled_alarms_do_not_pile_up() -> None:
    clock = SystemClock()
    for _ in range(1_000):  # an actor woken by commands long before its next expiry
        clock.cancel(clock.alarm(time.time() + 60, lambda: None))
        await asyncio.sleep(0)
    # Abandoned entries do not pile up: the heap is rebuilt once they are most of it.
    assert len(clock._heap) <= 2 * 64 + 2


async def test_a_cancelled_alarm_does_not_ring_later_and_others_still_do() -> None:
    clock = SystemClock()
    cancelled_signal, other = asyncio.Event(), asyncio.Event()
    cancelled = clock.alarm(time.time() + 0.05, cancelled_signal.set)
    clock.alarm(time.time() + 0.1, other.set)
    await asyncio.sleep(0)
    clock.cancel(cancelled)
    await asyncio.wait_for(other.wait(), 1)
    assert not cancelled_signal.is_set()  # its entry was abandoned, not fired


async def test_a_past_deadline_rings_at_once_and_a_later_one_not_before_it() -> None:
    clock = SystemClock()
    past, later = asyncio.Event(), asyncio.Event()
    clock.alarm(time.time() - 1, past.set)
    assert past.is_set()
    at = time.time() + 0.1
    clock.alarm(at, later.set)
    await asyncio.sleep(0.05)
    assert not later.is_set()
    await asyncio.wait_for(later.wait(), 1)
    assert time.time() >= at


def test_a_clock_serves_one_event_loop_after_another() -> None:
    clock = SystemClock()
    for _ in range(2):
        started = time.time()
        asyncio.run(asyncio.wait_for(_sleep_until(clock, time.time() + 0.05, {}, "x"), 2))
        assert time.time() - started >= 0.05


async def test_an_alarm_sets_its_event_unless_cancelled_and_a_past_one_at_once() -> None:
    clock = SystemClock()
    rung, cancelled, past = asyncio.Event(), asyncio.Event(), asyncio.Event()
    clock.alarm(time.time() + 0.05, rung.set)
    clock.cancel(clock.alarm(time.time() + 0.02, cancelled.set))
    clock.cancel(clock.alarm(time.time() - 1, past.set))  # rung already: nothing to cancel
    assert past.is_set() and not rung.is_set()
    await asyncio.wait_for(rung.wait(), 1)
    await asyncio.sleep(0.05)
    assert not cancelled.is_set()
