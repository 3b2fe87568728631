"""``GET /metrics``: this instance's load and its actors' group commit, in Prometheus' text format.

Off unless ``SEATD_METRICS=on``; SECURITY.md says what it reveals. What an operator watches
during an on-sale: open connections, requests in progress, loaded events, and how batches grow
and what their commits cost (``seatd.runtime.stats``). ``seatd bench`` reads the same page
before and after its load window.
"""

from __future__ import annotations

from dataclasses import dataclass

from seatd.runtime.stats import BatchStats

__all__ = ["CONTENT_TYPE", "Gauges", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Gauges:
    connections: int
    requests_in_progress: int
    events_loaded: int


def render(gauges: Gauges, stats: BatchStats) -> str:
    """The page: one HELP and TYPE line per metric, then its samples."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, *samples: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)

    metric(
        "seatd_connections",
        "gauge",
        "Open WebSocket connections.",
        f"seatd_connections {gauges.connections}",
    )
    metric(
        "seatd_requests_in_progress",
        "gauge",
        "Requests started and not yet answered.",
        f"seatd_requests_in_progress {gauges.requests_in_progress}",
    )
    metric(
        "seatd_events_loaded",
        "gauge",
        "Events whose actor is loaded on this instance.",
        f"seatd_events_loaded {gauges.events_loaded}",
    )
    metric(
        "seatd_batches_total",
        "counter",
        "Batches of commands the actors applied (one commit at most each).",
        f"seatd_batches_total {stats.batches}",
    )
    metric(
        "seatd_batch_commands_total",
        "counter",
        "Commands in those batches (divided by the batches: the mean batch size).",
        f"seatd_batch_commands_total {stats.commands}",
    )
    metric(
        "seatd_actor_busy_seconds_total",
        "counter",
        "Time the actors spent on batches, from taking one to answering it.",
        f"seatd_actor_busy_seconds_total {stats.busy_seconds!r}",
    )
    metric(
        "seatd_commit_failures_total",
        "counter",
        "Batch writes that failed (the batch was undone and answered with a temporary error).",
        f"seatd_commit_failures_total {stats.commit_failures}",
    )
    commits = stats.commits
    samples = []
    cumulative = 0
    for bound, count in zip(commits.bounds, commits.counts, strict=False):
        cumulative += count
        samples.append(f'seatd_commit_seconds_bucket{{le="{bound!r}"}} {cumulative}')
    total = cumulative + commits.counts[-1]
    samples.append(f'seatd_commit_seconds_bucket{{le="+Inf"}} {total}')
    samples.append(f"seatd_commit_seconds_sum {commits.sum!r}")
    samples.append(f"seatd_commit_seconds_count {total}")
    metric(
        "seatd_commit_seconds",
        "histogram",
        "Time of each batch write, from sending it until the actor went on: PostgreSQL's "
        "work, and under load this process's own turn in its event loop.",
        *samples,
    )
    return "\n".join(lines) + "\n"
