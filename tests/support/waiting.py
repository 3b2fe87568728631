"""Waiting for a condition in async tests, with a deadline and a message saying what hung."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    what: str = "the condition",
    interval: float = 0.02,
) -> None:
    """Poll ``check`` (plain or async) until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
