"""How many objects the cyclic garbage collector walks: what long-lived state costs its passes.

A live hold must leave the collector nothing to walk (bytes, strings and floats in untracked
dicts): an on-sale keeps hundreds of thousands for minutes; every object they leave tracked is
walked again by each pass of an older generation, and even one the first young pass untracks
makes those passes longer, stalling every reply (BENCHMARKS.md, rounds 12 and 13)."""

from __future__ import annotations

import gc
from collections.abc import Callable


def tracked_objects() -> int:
    """Objects the collector still tracks after a full pass (which untracks what it can)."""
    gc.collect()
    gc.collect()  # a tuple holding a tuple is untracked one pass after the inner one
    return len(gc.get_objects())


def young_objects(action: Callable[[], object]) -> int:
    """How many new objects ``action`` leaves for the collector's next young pass to walk, even
    ones that pass will stop tracking: young passes come every 50,000 new objects (gctune.py)
    and hold the event loop for their length."""
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects(0))
        action()
        return len(gc.get_objects(0)) - before
    finally:
        gc.enable()
