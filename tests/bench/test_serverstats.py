"""Reading the servers' metrics around a load window (``seatd.bench.serverstats``)."""

from __future__ import annotations

import pytest

from seatd.bench.serverstats import actor_stats, bucket_quantile, metrics_url, parse_metrics
from seatd.gateway.metrics import Gauges, render
from seatd.runtime.stats import COMMIT_BUCKETS, BatchStats, Histogram


def _page(stats: BatchStats) -> dict[str, float]:
    return parse_metrics(render(Gauges(3, 1, 2), stats))


def test_a_value_on_a_bound_counts_in_that_bucket_and_above_all_in_the_last() -> None:
    histogram = Histogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(0.5135)


def test_the_page_has_cumulative_buckets_and_every_counter() -> None:
    stats = BatchStats()
    stats.batch_done(10, 0.004)
    stats.batch_done(30, 0.006)
    stats.commit_done(0.003, failed=False)
    stats.commit_done(0.2, failed=True)
    page = _page(stats)
    assert page["seatd_connections"] == 3
    assert page["seatd_requests_in_progress"] == 1
    assert page["seatd_events_loaded"] == 2
    assert page["seatd_batches_total"] == 2
    assert page["seatd_batch_commands_total"] == 40
    assert page["seatd_actor_busy_seconds_total"] == pytest.approx(0.01)
    assert page["seatd_commit_failures_total"] == 1
    assert page['seatd_commit_seconds_bucket{le="0.002"}'] == 0
    assert page['seatd_commit_seconds_bucket{le="0.005"}'] == 1
    assert page['seatd_commit_seconds_bucket{le="0.25"}'] == 2
    assert page['seatd_commit_seconds_bucket{le="+Inf"}'] == 2
    assert page["seatd_commit_seconds_count"] == 2
    assert page["seatd_commit_seconds_sum"] == pytest.approx(0.203)


def test_quantiles_interpolate_inside_the_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert bucket_quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert bucket_quantile(bounds, [10, 10, 0, 0], 0.25) == pytest.approx(0.5)
    assert bucket_quantile(bounds, [0, 0, 10, 0], 0.99) == pytest.approx(3.98)
    assert bucket_quantile(bounds, [0, 0, 0, 5], 0.5) == 4.0  # above every bound
    assert bucket_quantile(bounds, [0, 0, 0, 0], 0.5) is None


def test_the_window_is_the_difference_of_two_reads_summed_over_instances() -> None:
    first, second = BatchStats(), BatchStats()
    first.batch_done(5, 0.01)
    first.commit_done(0.004, failed=False)
    before = [_page(first), _page(second)]
    for _ in range(4):
        first.batch_done(50, 0.005)
        first.commit_done(0.004, failed=False)
    second.batch_done(20, 0.02)
    second.commit_done(0.015, failed=False)
    after = [_page(first), _page(second)]
    actors = actor_stats(before, after)
    assert actors is not None
    assert (actors["batches"], actors["commands"], actors["commits"]) == (5, 220, 5)
    assert actors["mean_batch"] == 44.0
    assert actors["commit_ms"]["mean"] == pytest.approx(6.2)
    assert 2.0 < actors["commit_ms"]["p50"] <= 5.0  # four of five commits in (2, 5] ms
    assert 10.0 < actors["commit_ms"]["p99"] <= 20.0
    assert actors["commit_share"] == pytest.approx(0.031 / 0.04)
    assert len(COMMIT_BUCKETS) + 4 < len(after[0])  # every bucket was read


def test_a_server_without_metrics_gives_nothing() -> None:
    assert actor_stats([None], [None]) is None
    assert metrics_url("ws://127.0.0.1:8080/") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("wss://seats.example/") == "https://seats.example/metrics"
