"""Operation histories of concurrent clients, and a checker for what seatd promises.

A test records every operation it attempts as an ``invoke`` entry and, when the outcome is
known, one completion for it (the style of Jepsen's histories):

- ``ok``: the server acknowledged it (the result is kept);
- ``fail``: the server refused it for good (a permanent error code): it had no effect;
- ``info``: the outcome is unknown (a timeout, a temporary error after the last retry, a
  connection lost): it may or may not have taken effect. An invoke left without a completion
  counts as ``info`` too.

``check`` compares a history, what PostgreSQL holds at the end (``DbState``, read by
``read_db``) and what each subscriber's seat map shows (``WatcherView``) and returns the
violations found, one ``Violation`` per problem with a message that names the seats, holds and
users involved. It is pure: tests feed it doctored inputs to show it catches each kind of
violation (tests/test_history_checker.py). The rules:

- ``double-booking``: a seat in two reservations, in two live holds, or both held and reserved
  (PostgreSQL); two acknowledged reservations of one seat (history).
- ``lost-reservation``: an acknowledged reservation is not in PostgreSQL, seat for seat.
- ``lost-hold``: an acknowledged hold that nothing ended (no release or reserve of it was
  attempted, its acknowledged expiry is still ahead) is not in PostgreSQL with its seats.
- ``lost-release``: a hold whose release or reservation was acknowledged is still held.
- ``unexplained-write``: PostgreSQL has a hold or reservation that no acknowledged or
  indeterminate operation can have made (e.g. a write of a fenced-out owner, or of a refused
  request).
- ``over-limit``: a user holds plus reserves more seats of the event than the limit.
- ``divergent-watcher``: a subscriber's version or seat map differs from PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import orjson

from protocol.errors import RemoteError

__all__ = [
    "DbState",
    "Entry",
    "History",
    "HoldRow",
    "Op",
    "ReservationRow",
    "Violation",
    "WatcherView",
    "check",
    "read_db",
    "watcher_view",
]

Kind = Literal["invoke", "ok", "fail", "info"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a history. ``index`` links a completion to its invoke."""

    index: int
    kind: Kind
    time: float  # time.monotonic()
    process: str  # the client that ran the operation
    op: str  # hold | refresh | release | reserve | ...
    args: Mapping[str, Any]
    result: Mapping[str, Any] | None = None  # ok: the acknowledged result
    error: str | None = None  # fail / info: the error code (or exception type)


@dataclass(frozen=True, slots=True)
class Op:
    """A completed (or unfinished) operation: its invoke and its completion, if any."""

    invoke: Entry
    completion: Entry | None

    @property
    def status(self) -> Literal["ok", "fail", "info"]:
        if self.completion is None:
            return "info"
        kind = self.completion.kind
        assert kind != "invoke"
        return kind

    @property
    def name(self) -> str:
        return self.invoke.op

    @property
    def args(self) -> Mapping[str, Any]:
        return self.invoke.args

    @property
    def result(self) -> Mapping[str, Any]:
        assert self.completion is not None and self.completion.result is not None
        return self.completion.result

    def describe(self) -> str:
        outcome: str = self.status
        if self.completion is not None and self.completion.error:
            outcome += f" {self.completion.error}"
        return (
            f"#{self.invoke.index} {self.invoke.process} {self.name}{dict(self.args)} -> {outcome}"
        )


class History:
    """An append-only record of invokes and completions; safe to share between asyncio tasks
    (appends are synchronous, so entries are in the order they happened)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._open: dict[int, Entry] = {}

    def invoke(self, process: str, op: str, **args: Any) -> Entry:
        entry = Entry(len(self.entries), "invoke", time.monotonic(), process, op, args)
        self.entries.append(entry)
        self._open[entry.index] = entry
        return entry

    def ok(self, invoke: Entry, result: Mapping[str, Any]) -> Entry:
        return self._complete(invoke, "ok", result=dict(result))

    def fail(self, invoke: Entry, error: str) -> Entry:
        return self._complete(invoke, "fail", error=error)

    def info(self, invoke: Entry, error: str) -> Entry:
        return self._complete(invoke, "info", error=error)

    def _complete(
        self,
        invoke: Entry,
        kind: Kind,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Entry:
        if self._open.pop(invoke.index, None) is None:
            raise ValueError(f"operation #{invoke.index} is not open (completed twice?)")
        entry = Entry(
            invoke.index, kind, time.monotonic(), invoke.process, invoke.op, invoke.args,
            result, error,
        )  # fmt: skip
        self.entries.append(entry)
        return entry

    async def run(self, process: str, op: str, call: Awaitable[T], **args: Any) -> T | None:
        """Record ``call`` as one operation and return its result (None unless it was ok).

        A permanent ``RemoteError`` is a ``fail``; any other exception (a temporary error after
        the client's retries, a timeout, a closed client) is an ``info``: its outcome is unknown.
        Cancellation leaves the operation unfinished (also unknown) and propagates.
        """
        invoke = self.invoke(process, op, **args)
        try:
            result = await call
        except RemoteError as error:
            if error.temporary:
                self.info(invoke, error.code)
            else:
                self.fail(invoke, error.code)
            return None
        except Exception as error:
            self.info(invoke, type(error).__name__)
            return None
        self.ok(invoke, summarise(result))
        return result

    def ops(self) -> list[Op]:
        """Every invoke with its completion (None while unfinished), in invoke order."""
        completions = {e.index: e for e in self.entries if e.kind != "invoke"}
        return [Op(e, completions.get(e.index)) for e in self.entries if e.kind == "invoke"]

    def counts(self) -> dict[str, int]:
        """``{"hold ok": 12, "hold fail": 3, ...}``: a quick view of what the load did."""
        counts: dict[str, int] = defaultdict(int)
        for op in self.ops():
            counts[f"{op.name} {op.status}"] += 1
        return dict(sorted(counts.items()))

    def dump(self, path: Path) -> None:
        """Write the entries as JSON lines (for reading a failed run)."""
        with path.open("wb") as out:
            for entry in self.entries:
                out.write(orjson.dumps(dataclasses.asdict(entry), default=str) + b"\n")

    def acknowledged_between(self, start: float, end: float) -> int:
        """How many operations were acknowledged (ok) in [start, end] (monotonic times)."""
        return sum(1 for e in self.entries if e.kind == "ok" and start <= e.time <= end)


def summarise(result: object) -> dict[str, Any]:
    """A result as a plain dict (SDK dataclasses included); RFC 3339 times become epoch floats."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        plain = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, Mapping):
        plain = dict(result)
    else:
        return {"value": result}
    for name in ("expires_at", "max_expires_at", "reserved_at"):
        value = plain.get(name)
        if isinstance(value, str):
            plain[name] = datetime.fromisoformat(value).timestamp()
    if isinstance(plain.get("seat_ids"), list | tuple):
        plain["seat_ids"] = tuple(plain["seat_ids"])
    return plain


# --- what PostgreSQL and the subscribers say ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldRow:
    """One seat of one hold (``hold_seats`` joined with ``holds``)."""

    hold_id: str
    user_id: str
    seat_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReservationRow:
    seat_id: str
    reservation_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class DbState:
    """An event as PostgreSQL has it; ``now`` is the database's clock at the read."""

    event_id: str
    version: int
    holds: Sequence[HoldRow]
    reservations: Sequence[ReservationRow]
    now: float
    max_seats_per_user: int | None = None  # the event's override, if any

    def live_holds(self) -> list[HoldRow]:
        return [row for row in self.holds if row.expires_at > self.now]

    def seat_map(self) -> dict[str, str]:
        """Unavailable seats -> "held" / "reserved", as a subscriber's map shows them."""
        seats = {row.seat_id: "held" for row in self.live_holds()}
        seats.update({row.seat_id: "reserved" for row in self.reservations})
        return seats


@dataclass(frozen=True, slots=True)
class WatcherView:
    """What one subscriber shows: its version and its map of unavailable seats."""

    name: str
    version: int | None
    seats: Mapping[str, str] = field(default_factory=dict)


def watcher_view(name: str, watch: Any) -> WatcherView:
    """The current view of an SDK ``Watch`` (``protocol.client.Watch``)."""
    return WatcherView(name, watch.version, dict(watch.seats))


async def read_db(dsn: str, event_id: str) -> DbState:
    """Read the event's version, live holds and reservations in one snapshot."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            event = await conn.fetchrow(
                "SELECT version, max_seats_per_user, extract(epoch FROM now())::float8 AS now "
                "FROM events WHERE id = $1",
                event_id,
            )
            if event is None:
                raise LookupError(f"no event {event_id} in PostgreSQL")
            holds = await conn.fetch(
                "SELECT h.hold_id::text, h.user_id, s.seat_id,"
                " extract(epoch FROM h.expires_at)::float8 AS expires_at"
                " FROM hold_seats s JOIN holds h USING (event_id, hold_id)"
                " WHERE s.event_id = $1",
                event_id,
            )
            reservations = await conn.fetch(
                "SELECT seat_id, reservation_id::text, user_id FROM reservations"
                " WHERE event_id = $1",
                event_id,
            )
    finally:
        await conn.close()
    return DbState(
        event_id=event_id,
        version=int(event["version"]),
        holds=[HoldRow(r["hold_id"], r["user_id"], r["seat_id"], r["expires_at"]) for r in holds],
        reservations=[
            ReservationRow(r["seat_id"], r["reservation_id"], r["user_id"]) for r in reservations
        ],
        now=float(event["now"]),
        max_seats_per_user=event["max_seats_per_user"],
    )


# --- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def check(
    history: History | Iterable[Op],
    db: DbState,
    watchers: Iterable[WatcherView] = (),
    *,
    max_seats_per_user: int,
) -> list[Violation]:
    """Every violation of the rules in the module docstring; empty when all hold.

    ``max_seats_per_user`` is the service default (MAX_SEATS_PER_USER); the event's own
    override in ``db`` wins when set.
    """
    ops = history.ops() if isinstance(history, History) else list(history)
    ops = [op for op in ops if op.args.get("event_id", db.event_id) == db.event_id]
    violations: list[Violation] = []
    violations += _double_booking(ops, db)
    violations += _acknowledged_writes(ops, db)
    violations += _unexplained_writes(ops, db)
    violations += _over_limit(db, db.max_seats_per_user or max_seats_per_user)
    violations += _divergent_watchers(db, watchers)
    return violations


def _seats(seats: Iterable[str]) -> str:
    return ", ".join(sorted(seats))


def _double_booking(ops: list[Op], db: DbState) -> list[Violation]:
    found: list[Violation] = []
    reserved: dict[str, list[str]] = defaultdict(list)
    for row in db.reservations:
        reserved[row.seat_id].append(f"{row.reservation_id} ({row.user_id})")
    held: dict[str, list[str]] = defaultdict(list)
    for hold in db.live_holds():
        held[hold.seat_id].append(f"{hold.hold_id} ({hold.user_id})")
    for seat, owners in sorted(reserved.items()):
        if len(owners) > 1:
            found.append(Violation("double-booking", f"seat {seat} is reserved twice: {owners}"))
    for seat, owners in sorted(held.items()):
        if len(owners) > 1:
            found.append(Violation("double-booking", f"seat {seat} is in two live holds: {owners}"))
        if seat in reserved:
            found.append(
                Violation(
                    "double-booking",
                    f"seat {seat} is reserved by {reserved[seat]} and held by {owners}",
                )
            )
    acked: dict[str, dict[str, str]] = defaultdict(dict)
    for op in ops:
        if op.name == "reserve" and op.status == "ok":
            for seat in op.result["seat_ids"]:
                acked[seat][op.result["reservation_id"]] = op.describe()
    for seat, reservations in sorted(acked.items()):
        if len(reservations) > 1:
            found.append(
                Violation(
                    "double-booking",
                    f"seat {seat} was acknowledged as reserved {len(reservations)} times: "
                    + "; ".join(reservations.values()),
                )
            )
    return found


def _acknowledged_writes(ops: list[Op], db: DbState) -> list[Violation]:
    found: list[Violation] = []
    reservation_of = {row.seat_id: row for row in db.reservations}
    live = db.live_holds()
    hold_seats: dict[str, set[str]] = defaultdict(set)
    hold_user: dict[str, str] = {}
    for hold in live:
        hold_seats[hold.hold_id].add(hold.seat_id)
        hold_user[hold.hold_id] = hold.user_id

    # The latest acknowledged expiry of each hold, and which holds something tried to end.
    expires: dict[str, float] = {}
    ended: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.name in ("hold", "refresh") and op.status == "ok":
            hold_id = op.result["hold_id"]
            expires[hold_id] = max(expires.get(hold_id, 0.0), float(op.result["expires_at"]))
        elif op.name in ("release", "reserve") and op.status != "fail":
            ended[str(op.args["hold_id"])].append(op)

    for op in ops:
        if op.status != "ok":
            continue
        if op.name == "reserve":
            result = op.result
            wrong = []
            for seat in result["seat_ids"]:
                row = reservation_of.get(seat)
                if row is None:
                    wrong.append(f"{seat} is not reserved")
                elif row.reservation_id != result["reservation_id"]:
                    wrong.append(f"{seat} belongs to reservation {row.reservation_id}")
                elif row.user_id != result["user_id"]:
                    wrong.append(f"{seat} is reserved for {row.user_id}")
            if wrong:
                found.append(
                    Violation(
                        "lost-reservation",
                        f"acknowledged reservation {result['reservation_id']} of "
                        f"{result['user_id']} (seats {_seats(result['seat_ids'])}) is not in "
                        f"PostgreSQL: {'; '.join(wrong)} [{op.describe()}]",
                    )
                )
        if op.name in ("release", "reserve"):
            hold_id = str(op.args["hold_id"])
            if hold_id in hold_seats:
                found.append(
                    Violation(
                        "lost-release",
                        f"hold {hold_id} still holds {_seats(hold_seats[hold_id])} after an "
                        f"acknowledged {op.name} [{op.describe()}]",
                    )
                )
        if op.name == "hold":
            hold_id = op.result["hold_id"]
            if ended.get(hold_id) or expires[hold_id] <= db.now:
                continue  # released, reserved (maybe) or expired: its absence is explained
            want = set(op.result["seat_ids"])
            have = hold_seats.get(hold_id, set())
            if have != want or hold_user.get(hold_id) != op.result["user_id"]:
                found.append(
                    Violation(
                        "lost-hold",
                        f"acknowledged hold {hold_id} of {op.result['user_id']} on "
                        f"{_seats(want)} (expires in {expires[hold_id] - db.now:.0f} s, never "
                        f"released) is {'not in PostgreSQL' if not have else 'changed: ' + _seats(have)} "
                        f"[{op.describe()}]",
                    )
                )
    return found


def _unexplained_writes(ops: list[Op], db: DbState) -> list[Violation]:
    """Every hold and reservation in PostgreSQL must come from an operation that was
    acknowledged, or whose outcome is unknown; never from a refused one or from nowhere."""
    found: list[Violation] = []
    acked_holds = {op.result["hold_id"] for op in ops if op.name == "hold" and op.status == "ok"}
    maybe_holds = {
        (str(op.args.get("user")), frozenset(op.args["seat_ids"]))
        for op in ops
        if op.name == "hold" and op.status == "info"
    }
    hold_of: dict[str, Mapping[str, Any]] = {
        op.result["hold_id"]: op.result for op in ops if op.name == "hold" and op.status == "ok"
    }
    acked_reservations = {
        op.result["reservation_id"] for op in ops if op.name == "reserve" and op.status == "ok"
    }
    maybe_reservations = set()
    for op in ops:
        if op.name == "reserve" and op.status == "info":
            hold = hold_of.get(str(op.args["hold_id"]))
            if hold is not None:
                maybe_reservations.add((hold["user_id"], frozenset(hold["seat_ids"])))

    holds: dict[str, tuple[str, set[str]]] = {}
    for row in db.holds:
        holds.setdefault(row.hold_id, (row.user_id, set()))[1].add(row.seat_id)
    for hold_id, (user, seats) in sorted(holds.items()):
        if hold_id not in acked_holds and (user, frozenset(seats)) not in maybe_holds:
            found.append(
                Violation(
                    "unexplained-write",
                    f"PostgreSQL has hold {hold_id} of {user} on {_seats(seats)}, which no "
                    "acknowledged or indeterminate hold made",
                )
            )
    reservations: dict[str, tuple[str, set[str]]] = {}
    for reservation in db.reservations:
        reservations.setdefault(reservation.reservation_id, (reservation.user_id, set()))[1].add(
            reservation.seat_id
        )
    for reservation_id, (user, seats) in sorted(reservations.items()):
        explained = reservation_id in acked_reservations or (
            (user, frozenset(seats)) in maybe_reservations
        )
        if not explained:
            found.append(
                Violation(
                    "unexplained-write",
                    f"PostgreSQL has reservation {reservation_id} of {user} on {_seats(seats)}, "
                    "which no acknowledged or indeterminate reserve made",
                )
            )
    return found


def _over_limit(db: DbState, limit: int) -> list[Violation]:
    taken: dict[str, set[str]] = defaultdict(set)
    for hold in db.live_holds():
        taken[hold.user_id].add(hold.seat_id)
    for row in db.reservations:
        taken[row.user_id].add(row.seat_id)
    return [
        Violation(
            "over-limit",
            f"user {user} holds or reserves {len(seats)} seats (limit {limit}): {_seats(seats)}",
        )
        for user, seats in sorted(taken.items())
        if len(seats) > limit
    ]


def _divergent_watchers(db: DbState, watchers: Iterable[WatcherView]) -> list[Violation]:
    found: list[Violation] = []
    expected = db.seat_map()
    for watcher in watchers:
        problems = []
        seats = dict(watcher.seats)
        if watcher.version != db.version:
            same = " (the seat maps agree)" if seats == expected else ""
            problems.append(f"version {watcher.version}, PostgreSQL {db.version}{same}")
        if seats != expected:
            differing = sorted(
                seat
                for seat in seats.keys() | expected.keys()
                if seats.get(seat) != expected.get(seat)
            )
            shown = ", ".join(
                f"{seat}: {seats.get(seat, 'available')} != {expected.get(seat, 'available')}"
                for seat in differing[:5]
            )
            more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
            problems.append(f"{len(differing)} seats differ ({shown}{more})")
        if problems:
            found.append(
                Violation("divergent-watcher", f"subscriber {watcher.name}: {'; '.join(problems)}")
            )
    return found
