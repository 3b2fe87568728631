"""How many objects the cyclic garbage collector walks: what long-lived state costs its passes.

A live hold must leave the collector after one pass (flat tuples of strings and numbers): an
on-sale keeps hundreds of thousands for minutes, and every object they leave tracked is walked
again by each pass of an older generation, stalling every reply (BENCHMARKS.md, round 12)."""

from __future__ import annotations

import gc


def tracked_objects() -> int:
    """Objects the collector still tracks after a full pass (which untracks what it can)."""
    gc.collect()
    gc.collect()  # a tuple holding a tuple is untracked one pass after the inner one
    return len(gc.get_objects())
