"""What PostgreSQL spends on each part of one event's batch write (``seatd_apply_batch``), per
hold, on a throwaway durable cluster (BENCHMARKS.md, round 15).

    .venv/bin/python scripts/batch_write_cost.py [--holds 50] [--calls 100] [--rounds 6]
        [--refusals] [--against GIT_REF]

Each call writes ``--holds`` new one-seat holds, each with its retry record, as the service
sends them (``--refusals``: the retry records alone, as a refused command leaves). Besides the
function itself, copies of it with one part cut out run in turn (rounds alternate, so the
machine's drift falls on every variant alike); the difference between two is what that part
costs. ``--against`` also runs the function as init.sql had it at another commit, to compare
a change of it side by side. The figure is the backend's CPU time (user + system, from
/proc: the cluster must run on this machine), which includes the commit's WAL write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import orjson

from seatd.adapters.postgres import _PERSIST, _keys_document, _row_arguments
from seatd.core import Hold, HoldCreated
from seatd.devstack import PostgresServer
from seatd.runtime.ports import IdempotencyRecord

INIT_SQL = Path(__file__).resolve().parent.parent / "init.sql"
# The one-event batch function: seatd_apply_batch, seatd_write_batch before round 15.
_FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION seatd_apply_batch\(.*?\n\$fn\$;\n", re.S)
_EARLIER_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION seatd_write_batch\(.*?\n\$fn\$;\n", re.S
)


def _cut(body: str, first: str, upto: str, instead: str = "") -> str:
    """``body`` without the text from the line starting ``first`` up to ``upto``."""
    start, end = body.index(first), body.index(upto, body.index(first))
    return body[:start] + instead + body[end:]


_RECORDS = "    -- A plain INSERT: a key already stored fails it"
_VERSION = "    UPDATE events SET version"
_RETURN = "    RETURN 0;\nEND"


def _without_records(body: str) -> str:
    return _cut(body, _RECORDS, _VERSION)


def _without_holds(body: str) -> str:
    return _cut(
        body, "    IF cardinality(p_seats) > 0 THEN", "    IF cardinality(p_reserved_seats)"
    )


def _lock_and_version(body: str) -> str:
    return _cut(
        body, _RECORDS, _RETURN, "    UPDATE events SET version = p_version WHERE id = p_event;\n"
    )


# Variant name -> how its body is made from the function's; the first is the function itself.
VARIANTS: dict[str, Callable[[str], str]] = {
    "as it is": lambda body: body,
    "no retry records": _without_records,
    "no hold rows": _without_holds,
    "lock and version only": _lock_and_version,
}


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _functions(against: str | None) -> dict[str, str]:
    """Variant label -> its ``CREATE FUNCTION`` under a name of its own."""
    found = _FUNCTION.search(INIT_SQL.read_text())
    assert found is not None, "seatd_apply_batch not found in init.sql"
    body = found.group(0)
    functions = {
        label: make(body).replace("FUNCTION seatd_apply_batch(", f"FUNCTION seatd_cost_v{n}(")
        for n, (label, make) in enumerate(VARIANTS.items())
    }
    if against is not None:
        text = subprocess.run(
            ["git", "show", f"{against}:init.sql"],
            cwd=INIT_SQL.parent, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        earlier = _FUNCTION.search(text) or _EARLIER_FUNCTION.search(text)
        assert earlier is not None, f"no batch function in init.sql at {against}"
        functions[f"at {against}"] = re.sub(
            r"FUNCTION seatd_(apply|write)_batch\(", "FUNCTION seatd_cost_ref(", earlier.group(0)
        )
    return functions


def _name(function: str) -> str:
    found = re.search(r"FUNCTION (seatd_cost_\w+)\(", function)
    assert found is not None
    return found.group(1)


async def _measure(
    dsn: str, functions: dict[str, str], holds: int, calls: int, rounds: int, refusals: bool
) -> dict[str, list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        for function in functions.values():
            await conn.execute(function)
        event = f"cost-{uuid.uuid4().hex[:8]}"
        await conn.execute("INSERT INTO events (id, name) VALUES ($1, 'cost')", event)
        await conn.execute(
            "INSERT INTO seats (event_id, seat_id, ordinal)"
            " SELECT $1, 'S' || n, n FROM generate_series(1, $2) AS n",
            event,
            holds * calls * rounds * len(functions),
        )
        epoch, version = await conn.fetchrow(
            "UPDATE events SET owner_epoch = owner_epoch + 1 WHERE id = $1"
            " RETURNING owner_epoch, version",
            event,
        )
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        response = orjson.dumps({"ok": True, "result": {"hold_id": str(uuid.uuid4())}})
        seat = 0
        spent: dict[str, list[float]] = {label: [] for label in functions}
        for _ in range(rounds):
            for label, function in functions.items():
                statement = _PERSIST.replace("seatd_apply_batch(", f"{_name(function)}(")
                before = _backend_cpu(pid)
                for _ in range(calls):
                    now = time.time()
                    effects, records = [], []
                    for _ in range(holds):
                        seat += 1
                        user = f"user{seat % 1000}"
                        if not refusals:
                            seats = (f"S{seat}",)
                            hold = Hold(str(uuid.uuid4()), user, seats, now, now + 600, now + 1800)
                            effects.append(HoldCreated(hold))
                        records.append(
                            IdempotencyRecord(user, str(uuid.uuid4()), "h" * 32, response)
                        )
                    after = version + 1 if effects else version
                    outcome = await conn.fetchval(
                        statement, event, epoch, version, after,
                        *_row_arguments(effects), _keys_document(records),
                    )  # fmt: skip
                    assert outcome == 0, outcome
                    version = after
                spent[label].append((_backend_cpu(pid) - before) / (calls * holds) * 1e6)
        return spent
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holds", type=int, default=50, help="commands per call")
    parser.add_argument("--calls", type=int, default=100, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--refusals", action="store_true", help="retry records, no hold rows")
    parser.add_argument("--against", metavar="GIT_REF", help="also the function at this commit")
    args = parser.parse_args()
    functions = _functions(args.against)
    with PostgresServer(dbname="batchcost", durable=True, init_sql=INIT_SQL) as pg:
        spent = asyncio.run(
            _measure(pg.dsn, functions, args.holds, args.calls, args.rounds, args.refusals)
        )
    tick = 1e6 / os.sysconf("SC_CLK_TCK") / (args.calls * args.holds)
    what = "refused command" if args.refusals else "hold"
    print(f"PostgreSQL CPU per {what}, {args.holds} a call (one clock tick = {tick:.1f} µs):")
    for label, figures in spent.items():
        low, high = min(figures), max(figures)
        print(f"  {label:<28} median {statistics.median(figures):6.1f} µs  ({low:.1f}-{high:.1f})")


if __name__ == "__main__":
    main()
