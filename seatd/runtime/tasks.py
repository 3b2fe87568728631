"""Stopping background tasks for sure.

A task whose cancellation is swallowed somewhere below it (a library that turns the
``CancelledError`` into a connection error its caller retries) keeps running, and an
``await task`` after one ``cancel()`` waits for it forever: the process can then never exit.
Seen when an instance failed to start just as its Redis loops began connecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["stop_tasks"]


async def stop_tasks(tasks: Collection[asyncio.Task[Any]], *, every: float = 0.5) -> None:
    """Cancel the tasks, again every ``every`` seconds, until all of them have ended. Their
    outcomes are not raised here (a loop logs its own errors), only retrieved."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
