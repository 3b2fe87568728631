"""What the actors' batch loops did: how large batches grew and what their commits cost.

Group commit is where seatd's throughput comes from, so an operator watching an on-sale (and the
benchmark) needs the batch sizes and the commit times the actors saw. Counted once per batch,
never per command: a sum, a count and a bucket index cost nothing next to a commit. Read by
``/metrics`` (``seatd.gateway.metrics``) in Prometheus' text format.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COMMIT_BUCKETS", "BatchStats", "Histogram"]

# Upper bounds (seconds) of the commit-time buckets: a lone commit takes ~0.5 ms, a large
# batch on a busy machine tens of milliseconds, a stalled database seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts of observations at most each bound (the last count: above every bound)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class BatchStats:
    """Shared by every actor of one instance (one event loop: no locking)."""

    batches: int = 0
    commands: int = 0
    # Time from taking a batch to answering it: the actors' busy time.
    busy_seconds: float = 0.0
    commits: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    commit_failures: int = 0

    def batch_done(self, commands: int, seconds: float) -> None:
        self.batches += 1
        self.commands += commands
        self.busy_seconds += seconds

    def commit_done(self, seconds: float, *, failed: bool) -> None:
        self.commits.observe(seconds)
        if failed:
            self.commit_failures += 1
