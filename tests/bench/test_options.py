"""What the throwaway PostgreSQL is started with, by preset and switches."""

from __future__ import annotations

import pytest

from seatd.bench.options import WAL_READY_MB, WAL_READY_MB_QUICK, parse_options


@pytest.mark.parametrize(
    ("args", "ready_mb"),
    [
        (["throughput"], WAL_READY_MB),
        (["all", "--quick"], WAL_READY_MB_QUICK),
        (["throughput", "--fresh-wal"], 0),
        # Nobody reads a smoke run's figures: it starts in seconds instead.
        (["all", "--smoke"], 0),
    ],
)
def test_wal_is_ready_for_reuse_unless_fresh_or_smoke(args: list[str], ready_mb: int) -> None:
    assert parse_options(args).wal_ready_mb == ready_mb
