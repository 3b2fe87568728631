"""How a rush buyer picks seats (``seatd.bench.loads.rush.RushRun._pick``)."""

from __future__ import annotations

import random
from typing import Any

from seatd.bench.loads.rush import RushRun
from seatd.bench.workers import WorkerSpec


class _Control:
    def progress(self, n: int) -> None:
        pass


def _run(seats: int = 200, per_row: int = 20, seed: int = 1) -> RushRun:
    params: dict[str, Any] = {
        "event": ("ev-pick", seats, per_row),
        "hot_fraction": 0.2,
        "hot_weight": 0.8,
        "max_attempts": 50,
        "seed": seed,
        "conn_offset": 0,
        "user_prefix": "u",
        "connections": 4,
        "keyed": True,
    }
    control: Any = _Control()  # only progress() is called
    return RushRun(WorkerSpec(0, "rush", "ws://unused", "secret", "websockets", params), control)


def test_a_pick_is_free_seats_side_by_side_in_one_row_mostly_in_front() -> None:
    run = _run()
    rng = random.Random(3)
    for seat in rng.sample(range(run.n), 60):
        run._mark(seat)
    front = 0
    for want in [1, 2, 3, 4] * 250:
        seats = run._pick(want)
        assert seats is not None and len(seats) == want
        assert not any(run.taken[s] for s in seats)
        if seats == tuple(range(seats[0], seats[0] + want)) and seats[0] // 20 == seats[-1] // 20:
            front += seats[-1] < run.hot
        else:  # only when eight tries found no such block: any free seats, in order
            assert list(seats) == sorted(seats)
    assert front > 500  # 80% of the anchors fall in the front fifth


def test_when_blocks_run_out_any_free_seats_are_taken_and_none_once_sold_out() -> None:
    run = _run(seats=40, per_row=20)
    for seat in range(40):
        if seat % 2:  # no two free seats side by side
            run._mark(seat)
    seats = run._pick(3)
    assert seats is not None and len(seats) == 3 and all(s % 2 == 0 for s in seats)
    assert run._pick(30) is not None and len(run._pick(30) or ()) == 20  # all that is left
    for seat in range(0, 40, 2):
        run._mark(seat)
    assert run._pick(1) is None
