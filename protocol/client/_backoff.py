"""Exponential backoff with full jitter, floored by the server's ``retry_after_ms``.

Full jitter (``random(0, min(cap, base * 2**attempt))``) spreads the retries of many clients
that failed at the same moment (a server restart) instead of having them return in waves. The
server's ``retry_after_ms`` is a floor: it knows better than a client's guess when retrying
can succeed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backoff", "UniformRandom"]

# 2**62 already dwarfs any sensible cap; clamping keeps ``base * 2**attempt`` a finite float.
_MAX_EXPONENT = 62


class UniformRandom(Protocol):
    """What the backoff needs from a random source (``random.Random`` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retry number ``attempt`` (0 for the first retry), in seconds."""

    base: float = 0.1
    cap: float = 10.0
    rng: UniformRandom = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("backoff base and cap must be positive")

    def ceiling(self, attempt: int) -> float:
        """The largest delay that retry ``attempt`` may draw (before the server's floor)."""
        exponent = min(max(attempt, 0), _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, attempt: int, retry_after_ms: int | None = None) -> float:
        drawn = self.rng.uniform(0.0, self.ceiling(attempt))
        if retry_after_ms is not None and retry_after_ms > 0:
            return max(drawn, retry_after_ms / 1000.0)
        return drawn
