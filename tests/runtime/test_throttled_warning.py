"""A warning that every failing request would log (PostgreSQL out of reach) is logged at most
once per interval, saying how many times it happened."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from seatd.logging import ThrottledWarning


def test_a_burst_is_one_line_then_one_per_interval_with_its_count() -> None:
    warning = ThrottledWarning("postgres_unavailable", interval=0.2)
    with capture_logs() as logs:
        for _ in range(1_000):
            warning.warn(error="refused")
        time.sleep(0.25)
        warning.warn(error="refused")
    assert [(e["event"], e["times"], e["error"]) for e in logs] == [
        ("postgres_unavailable", 1, "refused"),
        ("postgres_unavailable", 1_000, "refused"),
    ]
