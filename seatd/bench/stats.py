"""Latency and count recording in the workers, merging and summaries in the coordinator.

Why HDR histograms: they record every latency in constant memory with bounded relative error
and merge exactly, so each worker process records locally and ships one small encoded blob
instead of millions of samples. Latencies are recorded in microseconds.

``hdrh`` (the ``hdrhistogram`` package) is part of the ``bench`` extra; it is imported lazily so
``seatd.bench`` stays importable without it.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OpAggregate",
    "OpData",
    "OpRecorder",
    "OpSummary",
    "new_histogram",
    "summary_percentiles",
]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is clamped
DIGITS = 3  # overall histograms: 0.1% resolution
TIMELINE_DIGITS = 2  # per-second histograms: 1% resolution is plenty for a plot
_LATEST_LIMIT = 1 << 20  # values (two per reply) an OpRecorder keeps before recording them


def new_histogram(digits: int = DIGITS) -> Any:
    """An empty HDR histogram for latencies in microseconds."""
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped,unused-ignore]

    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def decode_histogram(blob: bytes) -> Any:
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped,unused-ignore]

    return HdrHistogram.decode(blob)


def _clamp_us(seconds: float) -> int:
    us = int(seconds * 1e6)
    if us < LOWEST_US:
        return LOWEST_US
    return us if us < HIGHEST_US else HIGHEST_US


@dataclass(slots=True)
class OpData:
    """What a worker ships for one request type: picklable, histograms encoded."""

    histogram: bytes
    count: int
    ok: int
    errors: dict[str, int]
    # bucket (``bucket_s`` wide) since the run's start -> (ok, errors, encoded histogram)
    timeline: dict[int, tuple[int, int, bytes]]
    bucket_s: float = 1.0


class OpRecorder:
    """Worker side: every reply of one request type (ok or error), with its latency.

    ``t0`` is the run's start on the worker's ``perf_counter`` clock; the timeline buckets
    replies by ``bucket_s`` since then (finer for short runs, so their plot has a shape).
    """

    __slots__ = ("_bucket", "_errors", "_hist", "_latest", "_per_second", "_t0", "count", "ok")

    def __init__(self, t0: float = 0.0, bucket_s: float = 1.0) -> None:
        self._hist = new_histogram()
        self._per_second: dict[int, list[Any]] = {}
        # (bucket, latency in us) of replies not yet in the histograms, flat. hdrh records in
        # Python (~2 us a value, twice per reply): done later, off the load's critical path,
        # when the run's data is taken or this many values have waited.
        self._latest = array("q")
        self._errors: Counter[str] = Counter()
        self._t0 = t0
        self._bucket = bucket_s
        self.count = 0
        self.ok = 0

    def start(self, t0: float, bucket_s: float | None = None) -> None:
        self._t0 = t0
        if bucket_s is not None:
            self._bucket = bucket_s

    def bucket_of(self, elapsed: float) -> int:
        """The timeline bucket of a moment ``elapsed`` seconds after the start."""
        return int(elapsed / self._bucket) if elapsed > 0 else 0

    def record(self, latency_s: float, now: float, code: str | None = None) -> None:
        """One reply: ``code`` None for a success, else the error code."""
        us = _clamp_us(latency_s)
        self.count += 1
        elapsed = now - self._t0
        second = int(elapsed / self._bucket) if elapsed > 0 else 0
        bucket = self._per_second.get(second)
        if bucket is None:
            bucket = self._per_second[second] = [0, 0, new_histogram(TIMELINE_DIGITS)]
        latest = self._latest
        latest.append(second)
        latest.append(us)
        if len(latest) >= _LATEST_LIMIT:
            self._fold()
        if code is None:
            self.ok += 1
            bucket[0] += 1
        else:
            self._errors[code] += 1
            bucket[1] += 1

    def _fold(self) -> None:
        """Record the waiting latencies in the histograms."""
        latest, hist, per_second = self._latest, self._hist, self._per_second
        for i in range(0, len(latest), 2):
            us = latest[i + 1]
            hist.record_value(us)
            per_second[latest[i]][2].record_value(us)
        del latest[:]

    def record_bulk(self, counts: Mapping[tuple[int, int], int]) -> None:
        """Successful replies pre-aggregated as (bucket, latency in us) -> how many."""
        hist, per_second = self._hist, self._per_second
        for (second, us), n in counts.items():
            us = min(max(us, LOWEST_US), HIGHEST_US)
            hist.record_value(us, n)
            bucket = per_second.get(second)
            if bucket is None:
                bucket = per_second[second] = [0, 0, new_histogram(TIMELINE_DIGITS)]
            bucket[2].record_value(us, n)
            bucket[0] += n
            self.count += n
            self.ok += n

    def error_only(self, code: str) -> None:
        """A request that got no reply (connection lost, or still pending at the end)."""
        self._errors[code] += 1
        self.count += 1

    def data(self) -> OpData:
        self._fold()
        return OpData(
            histogram=self._hist.encode(),
            count=self.count,
            ok=self.ok,
            errors=dict(self._errors),
            timeline={s: (b[0], b[1], b[2].encode()) for s, b in self._per_second.items()},
            bucket_s=self._bucket,
        )


@dataclass(slots=True)
class OpSummary:
    """Coordinator side: one request type over the whole run, all workers merged."""

    name: str
    count: int
    ok: int
    errors: dict[str, int]
    ops_per_s: float  # successful replies per second
    latency_ms: dict[str, float]
    replies_per_s: float = 0.0  # every reply, refusals too: what the server answered
    # (seconds since the start, ok/s, errors/s, p50 ms, p99 ms) per timeline bucket
    timeline: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    # (percentile, latency ms) points of the whole distribution, for the plot
    distribution: list[tuple[float, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "ops_per_s": round(self.ops_per_s, 1),
            "replies_per_s": round(self.replies_per_s, 1),
            "latency_ms": self.latency_ms,
        }


def summary_percentiles(hist: Any) -> dict[str, float]:
    """p50/p95/p99/p99.9/max/mean in milliseconds (zeros for an empty histogram)."""
    if hist.get_total_count() == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0}
    result = {
        "p50": hist.get_value_at_percentile(50.0) / 1000,
        "p95": hist.get_value_at_percentile(95.0) / 1000,
        "p99": hist.get_value_at_percentile(99.0) / 1000,
        "p999": hist.get_value_at_percentile(99.9) / 1000,
    }
    result["max"] = hist.get_max_value() / 1000
    result["mean"] = hist.get_mean_value() / 1000
    return {k: round(v, 3) for k, v in result.items()}


def _distribution(hist: Any) -> list[tuple[float, float]]:
    """Latency at percentiles spread evenly on the 1/(1-p) log scale, up to the maximum."""
    if hist.get_total_count() == 0:
        return []
    points: list[tuple[float, float]] = []
    for k in range(0, 61):
        p = 100.0 * (1.0 - math.pow(10.0, -k / 10.0))
        points.append((p, hist.get_value_at_percentile(p) / 1000))
        if p >= 99.9999:
            break
    points.append((100.0, hist.get_max_value() / 1000))
    return points


class OpAggregate:
    """Merges the ``OpData`` of every worker for one request type."""

    def __init__(self) -> None:
        self._hist = new_histogram()
        self._errors: Counter[str] = Counter()
        self._timeline: dict[int, list[Any]] = {}
        self._bucket = 1.0
        self.count = 0
        self.ok = 0

    def add(self, data: OpData) -> None:
        self._hist.decode_and_add(data.histogram)
        self.count += data.count
        self.ok += data.ok
        self._errors.update(data.errors)
        self._bucket = data.bucket_s
        for second, (ok, errors, blob) in data.timeline.items():
            bucket = self._timeline.get(second)
            if bucket is None:
                bucket = self._timeline[second] = [0, 0, new_histogram(TIMELINE_DIGITS)]
            bucket[0] += ok
            bucket[1] += errors
            bucket[2].decode_and_add(blob)

    @property
    def histogram(self) -> Any:
        return self._hist

    def summary(self, name: str, window_s: float) -> OpSummary:
        width = self._bucket

        def span(start: float) -> float:
            """The bucket's time inside the window: the last one is cut short by the window's
            end, and its rate counted over its whole width would plunge to near zero."""
            left = window_s - start
            return left if 0 < left < width else width

        timeline = [
            (
                second * width,
                b[0] / span(second * width),
                b[1] / span(second * width),
                b[2].get_value_at_percentile(50.0) / 1000,
                b[2].get_value_at_percentile(99.0) / 1000,
            )
            for second, b in sorted(self._timeline.items())
        ]
        return OpSummary(
            name=name,
            count=self.count,
            ok=self.ok,
            errors=dict(self._errors),
            ops_per_s=self.ok / window_s if window_s > 0 else 0.0,
            replies_per_s=self.count / window_s if window_s > 0 else 0.0,
            latency_ms=summary_percentiles(self._hist),
            timeline=timeline,
            distribution=_distribution(self._hist),
        )
