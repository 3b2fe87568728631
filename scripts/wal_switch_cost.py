"""What a commit costs when it crosses into a new WAL segment, on a brand-new PostgreSQL cluster
and on one with segments ready for reuse (what ``seatd bench`` starts; BENCHMARKS.md, round 13).

    .venv/bin/python scripts/wal_switch_cost.py [--commits 1500] [--ready-mb 256]

Each cluster is throwaway and durable (fsync on). One connection commits 20 rows of 8,000
incompressible bytes at a time (160 KB of WAL) and times each commit; the commits after which
the WAL position is in another segment than before are the crossing ones.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

import asyncpg

from seatd.devstack import PostgresServer

_ROW = 8000
_ROWS_PER_COMMIT = 20


async def _commit_times(dsn: str, commits: int) -> tuple[list[float], list[float]]:
    """Milliseconds of the commits that stayed in their segment, and of those that crossed."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "CREATE TABLE walcost (b text); ALTER TABLE walcost ALTER b SET STORAGE EXTERNAL"
        )
        size = int(
            await connection.fetchval(
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"
            )
        )
        position = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        stayed: list[float] = []
        crossed: list[float] = []
        segment = await connection.fetchval(position) // size
        for _ in range(commits):
            rows = [secrets.token_hex(_ROW // 2) for _ in range(_ROWS_PER_COMMIT)]
            started = time.perf_counter()
            await connection.execute("INSERT INTO walcost SELECT unnest($1::text[])", rows)
            took = (time.perf_counter() - started) * 1000
            now = await connection.fetchval(position) // size
            (crossed if now != segment else stayed).append(took)
            segment = now
        return stayed, crossed
    finally:
        await connection.close()


def _line(label: str, stayed: list[float], crossed: list[float]) -> str:
    if not crossed:
        return f"{label:<34} no commit crossed a segment: give more --commits"
    cut = statistics.quantiles(stayed, n=100)
    return (
        f"{label:<34} other commits: {len(stayed)}, p50 {cut[49]:.1f} ms, p99 {cut[98]:.1f} ms;"
        f" crossing: {len(crossed)}, median {statistics.median(crossed):.1f} ms,"
        f" max {max(crossed):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--ready-mb", type=int, default=256, help="32 to 1024")
    args = parser.parse_args()
    for label, ready_mb in (
        ("brand-new cluster", 0),
        (f"{args.ready_mb} MB of WAL ready for reuse", args.ready_mb),
    ):
        with PostgresServer(dbname="walcost", durable=True, wal_ready_mb=ready_mb) as pg:
            stayed, crossed = asyncio.run(_commit_times(pg.superuser_dsn, args.commits))
        print(_line(label, stayed, crossed), flush=True)


if __name__ == "__main__":
    main()
