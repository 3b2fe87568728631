"""A cluster made with ``wal_ready_mb`` has its next WAL segments on disk before it needs them."""

from __future__ import annotations

import pytest

from seatd.devstack import DevstackError, PostgresServer


def _segments_ahead(pg: PostgresServer) -> int:
    """How many segment files after the one being written exist already."""
    current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    names = sorted(p.name for p in (pg.data_dir / "pg_wal").iterdir() if len(p.name) == 24)
    return len([name for name in names if name > current])


def test_a_new_cluster_makes_each_segment_when_it_gets_there() -> None:
    with PostgresServer(dbname="walcheck") as pg:
        assert _segments_ahead(pg) <= 1
        assert pg.psql("SHOW min_wal_size").strip() == "80MB"


def test_wal_ready_mb_leaves_that_much_recycled_ahead_and_keeps_it() -> None:
    with PostgresServer(dbname="walcheck", wal_ready_mb=96) as pg:
        assert pg.psql("SHOW min_wal_size").strip() == "96MB"
        # 96 MB is six 16 MB segments; the one written last is the current one.
        assert _segments_ahead(pg) >= 5


def test_wal_ready_mb_is_what_min_wal_size_accepts() -> None:
    """Under two segments PostgreSQL refuses min_wal_size; over max_wal_size it caps it."""
    for wrong in (-1, 16, 2048):
        with pytest.raises(DevstackError, match="wal_ready_mb is 0 or 32 to 1024"):
            PostgresServer(dbname="walcheck", wal_ready_mb=wrong)
