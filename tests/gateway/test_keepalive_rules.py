"""The gateway's keep-alive decisions: ping the quiet, close the silent, leave the busy alone."""

from __future__ import annotations

import pytest

from seatd.gateway.keepalive import keepalive_action

INTERVAL, TIMEOUT = 20.0, 20.0


@pytest.mark.parametrize(
    ("now", "last_seen", "ping_sent", "expected"),
    [
        (100.0, 95.0, 0.0, None),  # heard from 5 s ago
        (100.0, 80.0, 0.0, "ping"),  # quiet for the whole interval
        (100.0, 50.0, 0.0, "ping"),
        (100.0, 80.0, 90.0, None),  # pinged 10 s ago, nothing since: still in time
        (110.0, 80.0, 90.0, "close"),  # pinged 20 s ago, nothing since
        (110.0, 95.0, 90.0, None),  # something arrived after the ping: answered
        (115.0, 95.0, 90.0, "ping"),  # ...and then quiet for an interval again
        (100.0, 90.0, 90.0, None),  # a frame in the same loop pass as the ping counts
    ],
)
def test_keepalive_action(now: float, last_seen: float, ping_sent: float, expected: str) -> None:
    assert keepalive_action(now, last_seen, ping_sent, INTERVAL, TIMEOUT) == expected
