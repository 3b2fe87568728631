"""``seatd bench --url``: the one connection it opens before the load, against a real server."""

from __future__ import annotations

import pytest
from support.server import SECRET, RunningServer

from seatd.bench.cli import _preflight
from seatd.bench.stack import BenchError


async def test_the_right_secret_passes(server: RunningServer) -> None:
    await _preflight(server.url, SECRET)


async def test_a_wrong_secret_is_said_before_the_load(server: RunningServer) -> None:
    with pytest.raises(
        BenchError, match=r"refused the bench's token \(HTTP 401\).*SEATD_JWT_SECRET"
    ):
        await _preflight(server.url, "not-the-server-secret-0123456789abcdef")
