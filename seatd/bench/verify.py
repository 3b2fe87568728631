"""After every run: does PostgreSQL agree with what the clients were told?

Why here and not only in tests: a benchmark that drives the server hard is the best chance to
catch a lost acknowledgement or a double booking under real concurrency, so each run ends by
comparing the database with the load generator's acknowledgements (``acks.AckLog``):

* no seat reserved twice, no seat in two live holds (and the unique indexes that forbid both
  are in place), no seat both held and reserved;
* every acknowledged reservation exists, with exactly the acknowledged seats;
* every acknowledged hold is live (same seats), or ended legitimately: reserved (acknowledged),
  released (acknowledged) or expired (its ``expires_at`` has passed);
* no reservation or hold exists that no client was told about, beyond the requests whose
  reply never came (their outcome is unknown by definition).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seatd.bench.acks import HELD, RELEASED, RESERVED, AckLog
from seatd.bench.layout import EventLayout

__all__ = ["Check", "Verdict", "connect", "verify_run"]

_EXAMPLES = 5


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(slots=True)
class Verdict:
    checks: list[Check] = field(default_factory=list)
    skipped: str | None = None  # no database was named: nothing to check against
    error: str | None = None  # a database was named but could not be reached

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def label(self) -> str:
        if self.error:
            return "NOT CHECKED"
        if self.skipped and not self.checks:
            return "SKIPPED"
        label = "PASS" if self.ok else "FAIL"
        return f"{label} (database checks skipped)" if self.skipped else label

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.label,
            "skipped": self.skipped,
            "error": self.error,
            "checks": [c.as_json() for c in self.checks],
        }


def overall(verdicts: Sequence[Verdict]) -> str:
    """The whole invocation's verdict: FAIL if any check failed; a PASS says so when some runs
    could not check the database, so a pass nothing was compared for is not taken for one."""
    if not all(v.ok for v in verdicts):
        return "FAIL"
    unreached = sum(1 for v in verdicts if v.error)
    if unreached:
        return f"NOT VERIFIED (the database could not be reached in {unreached} of {len(verdicts)} runs)"
    unchecked = sum(1 for v in verdicts if v.skipped)
    if unchecked:
        return f"PASS (database checks skipped in {unchecked} of {len(verdicts)} runs)"
    return "PASS"


async def connect(postgres_env: Mapping[str, str]) -> Any:
    """An asyncpg connection to the service database named by POSTGRES_* variables."""
    import asyncpg

    return await asyncpg.connect(
        host=postgres_env.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(postgres_env["POSTGRES_PORT"]),
        user=postgres_env.get("POSTGRES_USER", "seatd"),
        password=postgres_env.get("POSTGRES_PASSWORD", ""),
        database=postgres_env.get("POSTGRES_DB", "seatd"),
        timeout=10,
    )


def _examples(items: Iterable[Any]) -> str:
    shown = [str(x) for _, x in zip(range(_EXAMPLES), items, strict=False)]
    return ", ".join(shown)


async def verify_run(
    postgres_env: Mapping[str, str] | None,
    layouts: Sequence[EventLayout],
    logs: Sequence[AckLog],
    *,
    unknown_holds: int = 0,
    verdict: Verdict | None = None,
) -> Verdict:
    """Compare the database with the acknowledgements of one run (see the module docstring).

    ``unknown_holds``: hold requests that never got a reply; that many holds may exist in the
    database without an acknowledgement.
    """
    verdict = verdict or Verdict()
    if not postgres_env or "POSTGRES_PORT" not in postgres_env:
        verdict.skipped = "no POSTGRES_* environment to reach the database"
        return verdict
    import asyncpg

    try:
        conn = await connect(postgres_env)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        where = f"{postgres_env.get('POSTGRES_HOST', '127.0.0.1')}:{postgres_env['POSTGRES_PORT']}"
        verdict.error = f"could not reach the database named by POSTGRES_* ({where}): {error}"
        return verdict
    try:
        await _check(conn, verdict, layouts, logs, unknown_holds)
    finally:
        await conn.close()
    return verdict


async def _once_per_seat(
    conn: Any, verdict: Verdict, name: str, table: str, events: Sequence[str]
) -> None:
    """A seat in at most one row of ``table``: the rows say so, and a unique index on
    (event_id, seat_id) keeps it so. Without the index the rows alone would pass by luck; with
    it they cannot fail, so the index is what this check is about."""
    enforced = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::regclass "
        "AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 2 AND (SELECT array_agg("
        "a.attname ORDER BY a.attname) FROM pg_attribute a WHERE a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey)) = ARRAY['event_id', 'seat_id']::name[])",
        table,
    )
    rows = await conn.fetch(
        f"SELECT event_id, seat_id, count(*) FROM {table} WHERE event_id = ANY($1::text[]) "
        "GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 10",
        events,
    )
    detail = _examples(f"{r[0]}/{r[1]} x{r[2]}" for r in rows)
    if not enforced:
        detail = f"no unique index on {table} (event_id, seat_id); " + detail
    else:
        detail = detail or f"a unique index on {table} (event_id, seat_id) forbids it"
    verdict.add(name, bool(enforced) and not rows, detail)


async def _check(
    conn: Any,
    verdict: Verdict,
    layouts: Sequence[EventLayout],
    logs: Sequence[AckLog],
    unknown_holds: int,
) -> None:
    events = [layout.event_id for layout in layouts]
    index = {event_id: i for i, event_id in enumerate(events)}

    for name, table in (
        ("no seat reserved twice", "reservations"),
        ("no seat in two live holds", "hold_seats"),
    ):
        await _once_per_seat(conn, verdict, name, table, events)
    rows = await conn.fetch(
        "SELECT h.event_id, h.seat_id FROM hold_seats h JOIN reservations r "
        "ON r.event_id = h.event_id AND r.seat_id = h.seat_id "
        "WHERE h.event_id = ANY($1::text[]) LIMIT 10",
        events,
    )
    verdict.add(
        "no seat both held and reserved", not rows, _examples(f"{r[0]}/{r[1]}" for r in rows)
    )

    reservations: dict[uuid.UUID, tuple[int, frozenset[str]]] = {}
    for r in await conn.fetch(
        "SELECT event_id, reservation_id, array_agg(seat_id) FROM reservations "
        "WHERE event_id = ANY($1::text[]) GROUP BY 1, 2",
        events,
    ):
        reservations[r[1]] = (index[r[0]], frozenset(r[2]))
    live: dict[uuid.UUID, tuple[int, frozenset[str]]] = {}
    for r in await conn.fetch(
        "SELECT h.event_id, h.hold_id, array_remove(array_agg(s.seat_id), NULL) FROM holds h "
        "LEFT JOIN hold_seats s ON s.event_id = h.event_id AND s.hold_id = h.hold_id "
        "WHERE h.event_id = ANY($1::text[]) GROUP BY 1, 2",
        events,
    ):
        live[r[1]] = (index[r[0]], frozenset(r[2]))

    now = time.time()
    reserved_ok = 0
    missing: list[str] = []
    vanished: list[str] = []
    released_live: list[str] = []
    told_reservations: set[uuid.UUID] = set()
    told_holds: set[uuid.UUID] = set()
    uncertain = 0
    acked = 0
    for log in logs:
        for hold in log:
            acked += 1
            told_holds.add(hold.hold_id)
            layout = layouts[hold.event]
            seats = frozenset(layout.seat_id(s) for s in hold.seats)
            where = f"{layout.event_id}:{hold.hold_id}"
            if hold.status == RESERVED:
                assert hold.reservation_id is not None
                told_reservations.add(hold.reservation_id)
                found = reservations.get(hold.reservation_id)
                if found != (hold.event, seats):
                    missing.append(f"{where} -> reservation {hold.reservation_id}")
                else:
                    reserved_ok += 1
            elif hold.status == HELD:
                found = live.get(hold.hold_id)
                if found is None:
                    if hold.expires_at > now:  # gone although neither ended nor due
                        vanished.append(where)
                elif found != (hold.event, seats):
                    vanished.append(f"{where} (other seats)")
            elif hold.status == RELEASED:
                if hold.hold_id in live:
                    released_live.append(where)
            else:  # a reserve or release that was never answered: any outcome is legitimate
                uncertain += 1

    verdict.add(
        "every acknowledged reservation exists",
        not missing,
        f"{reserved_ok} found"
        + (f"; {len(missing)} missing or different: {_examples(missing)}" if missing else ""),
    )
    verdict.add(
        "every acknowledged hold is live or ended legitimately",
        not vanished and not released_live,
        f"{acked} acknowledged holds"
        + (f"; vanished: {_examples(vanished)}" if vanished else "")
        + (f"; released but live: {_examples(released_live)}" if released_live else ""),
    )
    phantom_reservations = [r for r in reservations if r not in told_reservations]
    verdict.add(
        "no reservation nobody was told about",
        len(phantom_reservations) <= uncertain,
        f"{len(phantom_reservations)} unacknowledged, {uncertain} requests without a reply"
        + (f": {_examples(phantom_reservations)}" if len(phantom_reservations) > uncertain else ""),
    )
    phantom_holds = [h for h in live if h not in told_holds]
    verdict.add(
        "no live hold nobody was told about",
        len(phantom_holds) <= unknown_holds,
        f"{len(phantom_holds)} unacknowledged, {unknown_holds} hold requests without a reply",
    )


def seat_counts(logs: Sequence[AckLog], events: int) -> list[dict[int, int]]:
    """How many acknowledged holds each seat was part of, per event (client-side check)."""
    counts: list[dict[int, int]] = [{} for _ in range(events)]
    for log in logs:
        for hold in log:
            per_event = counts[hold.event]
            for seat in hold.seats:
                per_event[seat] = per_event.get(seat, 0) + 1
    return counts
