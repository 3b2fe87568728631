"""``seatd bench``: a load generator and benchmark harness for seatd.

Why it lives in the package: a benchmark that runs against the real server binary, the real
wire protocol and a durable PostgreSQL, and then verifies in the database that nothing
acknowledged was lost, is part of the service's contract. Its third-party needs (picows,
hdrhistogram, psutil, tqdm, matplotlib) are the optional ``bench`` extra and are only imported
when the bench runs, so the service itself never needs them.

Layout: ``cli`` (entry point), ``options`` (arguments, presets), ``stack`` (throwaway services,
the seatd child process, process meters), ``workers`` (load processes), ``loads`` (their
request loops), ``wsclient`` (the lean WebSocket client), ``scenarios`` (set-up and results),
``stats`` (HDR histograms), ``acks`` and ``verify`` (PostgreSQL checks), ``report``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seatd bench`` with these arguments (default: the command line)."""
    from seatd.bench.cli import main as run

    return run(argv)
