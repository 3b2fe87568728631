"""The actor's wake-up flag behaves like asyncio.Event for its one waiter."""

from __future__ import annotations

import asyncio

import pytest

from seatd.runtime.signal import Signal


async def test_a_wait_ends_when_set_and_not_before() -> None:
    signal = Signal()
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    signal.set()
    await asyncio.wait_for(waiting, 1)
    assert signal.is_set()


async def test_a_set_signal_does_not_wait_until_cleared() -> None:
    signal = Signal()
    signal.set()
    await asyncio.wait_for(signal.wait(), 1)
    signal.clear()
    assert not signal.is_set()
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    signal.set()
    await asyncio.wait_for(waiting, 1)


async def test_a_cancelled_wait_leaves_the_signal_usable() -> None:
    signal = Signal()
    waiter = asyncio.ensure_future(signal.wait())
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    signal.set()  # no error for the cancelled waiter
    signal.clear()
    again = asyncio.ensure_future(signal.wait())
    signal.set()
    await asyncio.wait_for(again, 1)
