"""The private services of ``make run`` listen on ports no outgoing connection can hold."""

from __future__ import annotations

from pathlib import Path

from seatd.devstack import DEV_PG_PORT, DEV_REDIS_PORT, SYSTEM_PORTS

# Where the kernel draws the local ports of outgoing connections from; another platform's
# range where this is not Linux (macOS and Windows use the IANA range).
_LINUX_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_ranges() -> list[range]:
    ranges = [range(49152, 65536)]
    if _LINUX_RANGE.exists():
        low, high = map(int, _LINUX_RANGE.read_text().split())
        ranges.append(range(low, high + 1))
    return ranges


def test_the_dev_ports_are_outside_every_ephemeral_port_range() -> None:
    """A port in such a range may be taken by a client's connection (or its TIME_WAIT, after a
    benchmark's thousands of connections) and PostgreSQL or Redis would fail to listen."""
    for port in (DEV_PG_PORT, DEV_REDIS_PORT):
        assert port not in SYSTEM_PORTS
        assert not any(port in r for r in _ephemeral_ranges()), port
