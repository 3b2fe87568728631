"""The servers' own account of a load window: their batches and commits (``GET /metrics``).

The client sees latency; the server knows why. Read before and after the window, the difference
gives how many batches the actors ran, how large they grew, what each commit cost and what
share of the actors' time went to waiting for PostgreSQL. A server that does not serve
``/metrics`` (``--url`` without SEATD_METRICS=on) gives nothing, and the report says nothing.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "actor_stats",
    "bucket_quantile",
    "metrics_url",
    "parse_metrics",
    "scrape",
    "wal_position",
]

_BUCKET = "seatd_commit_seconds_bucket"


def metrics_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/metrics"


def scrape(ws_url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """The server's metrics, or None if it serves none."""
    try:
        with urllib.request.urlopen(metrics_url(ws_url), timeout=timeout) as reply:
            if reply.status != 200:
                return None
            return parse_metrics(reply.read().decode())
    except (OSError, urllib.error.URLError, ValueError):
        return None


async def wal_position(postgres_env: Mapping[str, str] | None) -> int | None:
    """How many bytes of WAL PostgreSQL has written in its life, or None if it cannot be asked.

    Read before and after a window, the difference is what the window's writes cost in WAL:
    how much ``min_wal_size`` must hold for a burst of them (README), and what each commit
    must bring to the disk."""
    if not postgres_env or "POSTGRES_PORT" not in postgres_env:
        return None
    from seatd.bench.verify import connect

    # A database that refuses us (asyncpg's errors, a timeout) only costs the figure.
    try:
        connection = await connect(postgres_env)
    except Exception:
        return None
    try:
        # The insert position: what has been written, whether or not it reached the disk yet.
        position = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint", timeout=5
        )
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            await connection.close(timeout=5)
    return int(position)


def parse_metrics(text: str) -> dict[str, float]:
    """Sample lines of Prometheus' text format: ``name{labels} value`` -> {name{labels}: value}."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples


def bucket_quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The q-quantile of a histogram (per-bucket counts, the last one above every bound),
    interpolated linearly inside its bucket as Prometheus' histogram_quantile does."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(bounds):  # above the last bound: the last bound is all we know
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def actor_stats(
    before: Sequence[Mapping[str, float] | None], after: Sequence[Mapping[str, float] | None]
) -> dict[str, Any] | None:
    """What the servers' actors did between the two reads (summed over instances)."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    if not pairs:
        return None

    def delta(name: str) -> float:
        return sum(a.get(name, 0.0) - b.get(name, 0.0) for b, a in pairs)

    bounds = sorted(
        float(key[len(_BUCKET) + 5 : -2])
        for key in pairs[0][1]
        if key.startswith(_BUCKET) and "+Inf" not in key
    )
    cumulative = [delta(f'{_BUCKET}{{le="{bound!r}"}}') for bound in bounds]
    cumulative.append(delta(f'{_BUCKET}{{le="+Inf"}}'))
    counts = [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]
    batches = delta("seatd_batches_total")
    commands = delta("seatd_batch_commands_total")
    busy = delta("seatd_actor_busy_seconds_total")
    commits = delta("seatd_commit_seconds_count")
    commit_s = delta("seatd_commit_seconds_sum")

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 2)

    return {
        "batches": int(batches),
        "commands": int(commands),
        "mean_batch": round(commands / batches, 1) if batches else None,
        "commits": int(commits),
        "commit_failures": int(delta("seatd_commit_failures_total")),
        "commit_ms": {
            "mean": ms(commit_s / commits) if commits else None,
            "p50": ms(bucket_quantile(bounds, counts, 0.50)),
            "p99": ms(bucket_quantile(bounds, counts, 0.99)),
        },
        "busy_s": round(busy, 3),
        # Of the actors' time on batches, the share spent waiting for their commits.
        "commit_share": round(commit_s / busy, 3) if busy > 0 else None,
    }
