"""The coordinator side of each scenario: set-up, driving the workers, results, verification.

``harness`` holds what every scenario shares (the server and its measurements, the workers,
the window); each scenario's own set-up and checks live in a module of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seatd.bench.scenarios.fanout import run_fanout
from seatd.bench.scenarios.harness import Cluster, Harness, RunResult
from seatd.bench.scenarios.idle import run_idle
from seatd.bench.scenarios.purchase import run_baseline, run_events, run_forwarding, run_throughput
from seatd.bench.scenarios.rush import run_rush

__all__ = ["SCENARIO_RUNNERS", "Cluster", "Harness", "RunResult", "run_baseline", "run_forwarding"]

SCENARIO_RUNNERS: dict[str, Callable[[Harness, dict[str, Any]], Any]] = {
    "throughput": run_throughput,
    "rush": run_rush,
    "events": run_events,
    "fanout": run_fanout,
    "idle": run_idle,
}
