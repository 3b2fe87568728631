"""Backoff: exponential ceilings, full jitter within [0, ceiling], the server's floor."""

from __future__ import annotations

import email.utils
import random

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from protocol.client import Backoff
from protocol.client._transport import retry_after_ms


class Fixed:
    """A random source that always draws the same fraction of the range, and records calls."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (5, 1.0), (10_000, 1.0), (-3, 0.1)],
)
def test_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=Fixed(1.0))
    assert backoff.ceiling(attempt) == pytest.approx(ceiling)
    assert backoff.delay(attempt) == pytest.approx(ceiling)
    assert backoff.rng.calls == [(0.0, pytest.approx(ceiling))]  # type: ignore[attr-defined]


@pytest.mark.parametrize("attempt", [0, 1, 3, 6, 20])
def test_full_jitter_spans_zero_to_the_ceiling(attempt: int) -> None:
    backoff = Backoff(base=0.05, cap=2.0, rng=random.Random(attempt))
    ceiling = backoff.ceiling(attempt)
    delays = [backoff.delay(attempt) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter, not "half plus jitter": draws reach both ends of the range.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


@pytest.mark.parametrize(
    ("fraction", "retry_after_ms", "expected"),
    [
        (0.5, None, 0.2),  # ceiling 0.4 at attempt 2, half of it
        (0.5, 0, 0.2),  # no floor
        (0.5, 100, 0.2),  # the draw is already above the floor
        (0.5, 750, 0.75),  # the server's floor wins
        (0.0, 30_000, 30.0),  # even above the cap: the server knows best
    ],
)
def test_retry_after_is_a_floor(
    fraction: float, retry_after_ms: int | None, expected: float
) -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=Fixed(fraction))
    assert backoff.delay(2, retry_after_ms) == pytest.approx(expected)


def test_same_seed_same_delays() -> None:
    first = Backoff(rng=random.Random(7))
    second = Backoff(rng=random.Random(7))
    assert [first.delay(n) for n in range(8)] == [second.delay(n) for n in range(8)]


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (0.1, 0.0), (-1.0, 1.0)])
def test_rejects_non_positive_settings(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def _refusal(retry_after: str | None) -> InvalidStatus:
    headers = Headers() if retry_after is None else Headers({"Retry-After": retry_after})
    return InvalidStatus(Response(503, "Service Unavailable", headers, b""))


NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("header", "expected_ms"),
    [
        (None, None),
        ("", None),
        ("0", 0),
        ("5", 5000),
        (" 7 ", 7000),
        ("100000", 300_000),  # capped: a proxy must not park a client for a day
        ("soon", None),
        ("-3", None),
        (email.utils.formatdate(NOW + 12, usegmt=True), 12_000),
        (email.utils.formatdate(NOW - 60, usegmt=True), 0),  # already past
    ],
)
def test_retry_after_of_a_refused_handshake(header: str | None, expected_ms: int | None) -> None:
    assert retry_after_ms(_refusal(header), now=NOW) == expected_ms


def test_retry_after_of_other_failures_is_unknown() -> None:
    assert retry_after_ms(ConnectionRefusedError(), now=NOW) is None
