"""The slowest batches while one event's live holds grow (BENCHMARKS.md, round 16).

    .venv/bin/python scripts/hold_growth_stalls.py [--holds 100000] [--batch 10] [--rounds 2]
        [--against GIT_REF]

Places ``--holds`` one-seat holds in one event of as many seats, ``--batch`` at a time, each
followed by the broadcaster (as a connection's hold is), and times every batch with its
commit. A dict keyed by hold or seat grows by rehashing all of it at once, so the batch that
crosses a doubling (43,691 entries, 87,382, ...) stalls the whole process; the slowest batches
and where they fell show which doublings are left. ``--against`` runs the same at another
commit (checked out in a temporary folder), in alternating rounds.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(holds: int, batch: int) -> None:
    """Run in a fresh interpreter whose ``seatd`` is the code under test; print one line."""
    from seatd.core.commands import PlaceHold
    from seatd.core.event_state import EventState
    from seatd.core.model import EventInfo, Policy, Seat
    from seatd.gateway.broadcast import Broadcaster

    class Follower:
        def send(self, frame: bytes) -> None: ...

        def hold_changed(self, *args: object) -> None: ...

    seats = [Seat(f"S{i:07d}") for i in range(holds)]
    state = EventState(EventInfo("e", "E"), Policy(3600.0, holds, 7200.0), seats)
    broadcaster = Broadcaster()
    followers = [Follower() for _ in range(200)]
    commands = [
        PlaceHold(f"user-{i % 200}", (seats[i].seat_id,), str(uuid.uuid4())) for i in range(holds)
    ]
    gc.collect()
    gc.disable()  # the collector's passes are another matter (round 13)
    times: list[float] = []
    for start in range(0, holds, batch):
        began = time.perf_counter()
        for i in range(start, min(start + batch, holds)):
            command = commands[i]
            state.handle(command, 1000.0)
            broadcaster.watch_hold("e", command.hold_id, followers[i % 200])  # type: ignore[arg-type]
        state.commit()
        times.append((time.perf_counter() - began) * 1000)
    slowest = sorted(range(len(times)), key=lambda i: -times[i])[:5]
    median = sorted(times)[len(times) // 2]
    print(
        f"median batch {median:.3f} ms; slowest "
        + ", ".join(f"{times[i]:.1f} ms (at {i * batch:,} holds)" for i in slowest)
    )


def run(source: Path, holds: int, batch: int) -> str:
    code = f"import sys; sys.path.insert(0, {str(source)!r}); "
    code += f"sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
    code += f"import hold_growth_stalls as m; m.measure({holds}, {batch})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holds", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", metavar="GIT_REF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as other:
        sources = {"this checkout": ROOT}
        if args.against:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.against, "seatd"],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", other], input=archive.stdout, check=True)
            sources = {args.against: Path(other), **sources}
        for _ in range(args.rounds):
            for name, source in sources.items():
                print(f"{name}: {run(source, args.holds, args.batch)}", flush=True)


if __name__ == "__main__":
    main()
