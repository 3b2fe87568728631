"""The history checker (tests/support/history.py) catches each kind of violation it looks for.

A small consistent history and database state pass; each test then plants one violation (a
doctored history, database state or subscriber map) and expects exactly that rule to fire.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from support.history import (
    DbState,
    History,
    HoldRow,
    ReservationRow,
    Violation,
    WatcherView,
    check,
)

from protocol.errors import ConflictError, TemporaryError

EVENT = "ev-1"
NOW = 1_000_000.0
LATER = NOW + 300
HOLD_1 = "00000000-0000-0000-0000-000000000001"  # alice, then reserved
HOLD_2 = "00000000-0000-0000-0000-000000000002"  # bob: B-1, kept
HOLD_3 = "00000000-0000-0000-0000-000000000003"  # carol: C-1, released
RES_1 = "10000000-0000-0000-0000-000000000001"


def _hold(history: History, process: str, user: str, seats: tuple[str, ...], hold_id: str) -> None:
    op = history.invoke(process, "hold", event_id=EVENT, seat_ids=seats, user=user)
    history.ok(
        op,
        {"hold_id": hold_id, "user_id": user, "seat_ids": seats, "expires_at": LATER},
    )


def _good_history() -> History:
    history = History()
    _hold(history, "agent-1", "alice", ("A-1", "A-2"), HOLD_1)
    _hold(history, "agent-2", "bob", ("B-1",), HOLD_2)
    _hold(history, "agent-1", "carol", ("C-1",), HOLD_3)
    reserve = history.invoke("agent-1", "reserve", event_id=EVENT, hold_id=HOLD_1, user="alice")
    history.ok(
        reserve,
        {
            "reservation_id": RES_1,
            "hold_id": HOLD_1,
            "user_id": "alice",
            "seat_ids": ("A-1", "A-2"),
        },
    )
    release = history.invoke("agent-1", "release", event_id=EVENT, hold_id=HOLD_3, user="carol")
    history.ok(release, {"hold_id": HOLD_3, "seat_ids": ("C-1",)})
    refused = history.invoke("agent-2", "hold", event_id=EVENT, seat_ids=("B-1",), user="dave")
    history.fail(refused, "seat_unavailable")
    return history


def _good_db(**changes: object) -> DbState:
    db = DbState(
        event_id=EVENT,
        version=5,
        holds=[HoldRow(HOLD_2, "bob", "B-1", LATER)],
        reservations=[
            ReservationRow("A-1", RES_1, "alice"),
            ReservationRow("A-2", RES_1, "alice"),
        ],
        now=NOW,
    )
    return dataclasses.replace(db, **changes)  # type: ignore[arg-type]


def _watchers(version: int = 5, seats: dict[str, str] | None = None) -> list[WatcherView]:
    expected = {"A-1": "reserved", "A-2": "reserved", "B-1": "held"}
    return [
        WatcherView("w-0", 5, expected),
        WatcherView("w-1", version, {**expected, **(seats or {})}),
    ]


def _rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_a_consistent_run_passes() -> None:
    assert check(_good_history(), _good_db(), _watchers(), max_seats_per_user=4) == []


# --- no seat reserved twice ---------------------------------------------------------------


def test_a_seat_reserved_twice_in_the_database() -> None:
    db = _good_db(
        reservations=[*_good_db().reservations, ReservationRow("A-1", "other-res", "eve")]
    )
    violations = check(_good_history(), db, max_seats_per_user=4)
    assert "double-booking" in _rules(violations)
    assert any("seat A-1 is reserved twice" in v.message for v in violations)


def test_a_seat_both_reserved_and_held() -> None:
    stale = HoldRow("00000000-0000-0000-0000-00000000dead", "mallory", "A-1", LATER)
    db = _good_db(holds=[*_good_db().holds, stale])
    violations = check(_good_history(), db, max_seats_per_user=4)
    assert _rules(violations) == ["double-booking", "unexplained-write"]
    assert "seat A-1 is reserved by" in violations[0].message
    assert "mallory" in violations[0].message


def test_two_acknowledged_reservations_of_one_seat() -> None:
    history = _good_history()
    _hold(history, "agent-3", "erin", ("A-2",), "00000000-0000-0000-0000-000000000009")
    reserve = history.invoke(
        "agent-3", "reserve", event_id=EVENT, hold_id="00000000-0000-0000-0000-000000000009"
    )
    history.ok(
        reserve,
        {"reservation_id": "res-erin", "hold_id": "x", "user_id": "erin", "seat_ids": ("A-2",)},
    )
    violations = check(history, _good_db(), max_seats_per_user=4)
    assert "double-booking" in _rules(violations)
    assert any("seat A-2 was acknowledged as reserved 2 times" in v.message for v in violations)


# --- every acknowledged write is in PostgreSQL ----------------------------------------------


def test_an_acknowledged_reservation_missing_from_the_database() -> None:
    db = _good_db(reservations=[ReservationRow("A-1", RES_1, "alice")])
    violations = check(_good_history(), db, max_seats_per_user=4)
    assert _rules(violations) == ["lost-reservation"]
    assert f"acknowledged reservation {RES_1} of alice" in violations[0].message
    assert "A-2 is not reserved" in violations[0].message


def test_an_acknowledged_hold_missing_from_the_database() -> None:
    violations = check(_good_history(), _good_db(holds=[]), max_seats_per_user=4)
    assert _rules(violations) == ["lost-hold"]
    assert f"acknowledged hold {HOLD_2} of bob on B-1" in violations[0].message


def test_a_hold_that_expired_may_be_gone() -> None:
    db = _good_db(holds=[], now=LATER + 1)
    assert check(_good_history(), db, max_seats_per_user=4) == []


def test_an_acknowledged_release_undone() -> None:
    db = _good_db(holds=[*_good_db().holds, HoldRow(HOLD_3, "carol", "C-1", LATER)])
    violations = check(_good_history(), db, max_seats_per_user=4)
    assert _rules(violations) == ["lost-release"]
    assert f"hold {HOLD_3} still holds C-1 after an acknowledged release" in violations[0].message


# --- nothing in PostgreSQL that no operation explains ----------------------------------------


def test_a_refused_hold_found_in_the_database() -> None:
    # dave's hold was refused (seat_unavailable): it must have changed nothing.
    db = _good_db(
        holds=[HoldRow("00000000-0000-0000-0000-0000000000d0", "dave", "D-1", LATER)],
    )
    history = _good_history()
    refused = history.invoke("agent-2", "hold", event_id=EVENT, seat_ids=("D-1",), user="dave")
    history.fail(refused, "seat_unavailable")
    violations = check(history, db, max_seats_per_user=4)
    assert "unexplained-write" in _rules(violations)
    assert any("hold 00000000-0000-0000-0000-0000000000d0 of dave" in v.message for v in violations)


def test_an_indeterminate_hold_may_have_happened() -> None:
    history = _good_history()
    unknown = history.invoke("agent-2", "hold", event_id=EVENT, seat_ids=("D-1",), user="dave")
    history.info(unknown, "TimeoutError")
    db = _good_db(holds=[*_good_db().holds, HoldRow("some-hold", "dave", "D-1", LATER)])
    assert check(history, db, _watchers(), max_seats_per_user=4) == [
        Violation(
            "divergent-watcher",
            "subscriber w-0: 1 seats differ (D-1: available != held)",
        ),
        Violation(
            "divergent-watcher",
            "subscriber w-1: 1 seats differ (D-1: available != held)",
        ),
    ]


def test_a_reservation_nobody_made() -> None:
    db = _good_db(reservations=[*_good_db().reservations, ReservationRow("Z-1", "ghost", "zed")])
    violations = check(_good_history(), db, max_seats_per_user=4)
    assert _rules(violations) == ["unexplained-write"]
    assert "reservation ghost of zed on Z-1" in violations[0].message


# --- no user over the limit -----------------------------------------------------------------


def test_a_user_over_the_limit() -> None:
    history = _good_history()
    _hold(
        history, "agent-1", "alice", ("E-1", "E-2", "E-3"), "00000000-0000-0000-0000-0000000000a2"
    )
    db = _good_db(
        holds=[
            *_good_db().holds,
            *(
                HoldRow("00000000-0000-0000-0000-0000000000a2", "alice", s, LATER)
                for s in ("E-1", "E-2", "E-3")
            ),
        ]
    )
    assert check(history, db, max_seats_per_user=5) == []
    violations = check(history, db, max_seats_per_user=4)
    assert _rules(violations) == ["over-limit"]
    assert "user alice holds or reserves 5 seats (limit 4)" in violations[0].message
    # The event's own limit wins over the service default.
    assert _rules(
        check(history, dataclasses.replace(db, max_seats_per_user=4), max_seats_per_user=8)
    ) == ["over-limit"]


# --- every subscriber converged to PostgreSQL ------------------------------------------------


def test_a_subscriber_with_a_different_seat_map() -> None:
    violations = check(
        _good_history(), _good_db(), _watchers(seats={"B-1": "reserved"}), max_seats_per_user=4
    )
    assert violations == [
        Violation("divergent-watcher", "subscriber w-1: 1 seats differ (B-1: reserved != held)")
    ]


def test_a_subscriber_behind_the_database() -> None:
    violations = check(_good_history(), _good_db(), _watchers(version=4), max_seats_per_user=4)
    assert violations == [
        Violation(
            "divergent-watcher", "subscriber w-1: version 4, PostgreSQL 5 (the seat maps agree)"
        )
    ]


def test_a_subscriber_that_never_synced() -> None:
    violations = check(
        _good_history(), _good_db(), [WatcherView("w-2", None, {})], max_seats_per_user=4
    )
    assert _rules(violations) == ["divergent-watcher"]
    assert "version None" in violations[0].message


# --- recording -----------------------------------------------------------------------------


async def test_run_records_ok_fail_and_info() -> None:
    history = History()

    async def succeed() -> dict[str, object]:
        return {"hold_id": "h", "expires_at": "2026-01-01T00:00:00.000Z", "seat_ids": ["A-1"]}

    async def refuse() -> str:
        raise ConflictError("seat_unavailable", "taken")

    async def give_up() -> str:
        raise TemporaryError("unavailable", "try later")

    async def time_out() -> str:
        await asyncio.sleep(1)
        return "too late"

    assert await history.run("p", "hold", succeed(), seat_ids=("A-1",)) is not None
    assert await history.run("p", "hold", refuse(), seat_ids=("A-1",)) is None
    assert await history.run("p", "hold", give_up(), seat_ids=("A-1",)) is None
    assert await history.run("p", "hold", asyncio.wait_for(time_out(), 0.01)) is None
    ops = history.ops()
    assert [(op.status, op.completion and op.completion.error) for op in ops] == [
        ("ok", None),
        ("fail", "seat_unavailable"),
        ("info", "unavailable"),
        ("info", "TimeoutError"),
    ]
    assert ops[0].result["expires_at"] == 1767225600.0
    assert ops[0].result["seat_ids"] == ("A-1",)
    assert all(op.invoke.time <= op.completion.time for op in ops if op.completion)
    assert history.counts() == {"hold fail": 1, "hold info": 2, "hold ok": 1}


def test_an_unfinished_operation_counts_as_unknown() -> None:
    history = History()
    history.invoke("p", "hold", event_id=EVENT, seat_ids=("D-1",), user="dave")
    (op,) = history.ops()
    assert op.status == "info"
    db = _good_db(holds=[HoldRow("h-d", "dave", "D-1", LATER)], reservations=[])
    assert check(history, db, max_seats_per_user=4) == []


def test_an_operation_completes_once() -> None:
    history = History()
    op = history.invoke("p", "hold", seat_ids=("A-1",))
    history.fail(op, "seat_unavailable")
    with pytest.raises(ValueError, match="not open"):
        history.ok(op, {})
