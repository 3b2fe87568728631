"""The load generator's per-reply recording (``seatd.bench.stats.OpRecorder``)."""

from __future__ import annotations

import random

import pytest

from seatd.bench import stats
from seatd.bench.stats import OpRecorder, decode_histogram


def _replies(n: int) -> list[tuple[float, float, str | None]]:
    rng = random.Random(7)
    return [
        (rng.uniform(0.0001, 2.0), i * 0.01, None if rng.random() < 0.8 else "seat_unavailable")
        for i in range(n)
    ]


@pytest.mark.parametrize("limit", [4, 1 << 20])
def test_latencies_recorded_later_give_the_histograms_recorded_at_once(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Latencies wait in a flat buffer and reach the histograms when the data is taken, or
    when the buffer is full (``limit`` 4: every second reply): the same data either way."""
    monkeypatch.setattr(stats, "_LATEST_LIMIT", limit)
    replies = _replies(500)
    recorder = OpRecorder(bucket_s=0.5)
    for latency, now, code in replies:
        recorder.record(latency, now, code)
    data = recorder.data()

    expected = stats.new_histogram()
    per_bucket: dict[int, list[int]] = {}
    for latency, now, _ in replies:
        us = int(latency * 1e6)
        expected.record_value(us)
        per_bucket.setdefault(int(now / 0.5), []).append(us)
    hist = decode_histogram(data.histogram)
    assert hist.get_total_count() == 500
    for q in (50, 90, 99, 100):
        assert hist.get_value_at_percentile(q) == expected.get_value_at_percentile(q)
    assert (data.count, data.ok) == (500, sum(code is None for *_, code in replies))
    assert data.errors == {"seat_unavailable": 500 - data.ok}
    assert sorted(data.timeline) == sorted(per_bucket)
    for bucket, (ok, errors, blob) in data.timeline.items():
        assert ok + errors == len(per_bucket[bucket])
        assert decode_histogram(blob).get_total_count() == len(per_bucket[bucket])


def test_the_last_timeline_bucket_is_a_rate_over_the_time_it_covers() -> None:
    """A steady 100 replies/s over 2.25 s in 1 s buckets: the last bucket holds a quarter
    second; counted over a whole second its rate would read 25/s, a plunge that never was."""
    recorder = OpRecorder(bucket_s=1.0)
    for i in range(225):
        recorder.record(0.001, i / 100 + 0.005)
    aggregate = stats.OpAggregate()
    aggregate.add(recorder.data())
    rates = [rate for _, rate, *_ in aggregate.summary("hold", window_s=2.25).timeline]
    assert rates == pytest.approx([100.0, 100.0, 100.0])
