"""The worker side of each scenario: connections, request loops, and what they report.

``conn`` holds what every load shares (a connection's callbacks, connecting, the shared start);
each scenario's load lives in a module of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from seatd.bench.loads.fanout import fanout_subscriber_load, fanout_writer_load
from seatd.bench.loads.idle import idle_load
from seatd.bench.loads.purchase import purchase_load
from seatd.bench.loads.rush import rush_load
from seatd.bench.workers import Control, WorkerSpec

__all__ = ["LOADS"]

LOADS: dict[str, Callable[[WorkerSpec, Control], Awaitable[Any]]] = {
    "purchase": purchase_load,
    "rush": rush_load,
    "fanout_writer": fanout_writer_load,
    "fanout_subscriber": fanout_subscriber_load,
    "idle": idle_load,
}
