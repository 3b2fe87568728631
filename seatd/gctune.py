"""Garbage collector settings for long-running processes (the server, the load generator)."""

from __future__ import annotations

import gc

__all__ = ["tune_garbage_collector"]


def tune_garbage_collector() -> None:
    """The server's objects either live long (connections, loaded events) or die by reference
    counting; the cyclic collector's defaults (a young pass every 700 allocations, and full
    passes over every live object) took ~40% of the server's CPU in a 5,000-buyer on-sale and
    stalled replies for whole passes (BENCHMARKS.md). What start-up made (modules, classes) is
    never garbage: freeze it out of every pass, and collect young objects every 50,000
    allocations; objects that survive reach the old generation, which is rarely scanned."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
