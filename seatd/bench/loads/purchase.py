"""throughput and events, worker side: hold distinct seats, then reserve each hold."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import orjson

from seatd.bench.acks import AckLog
from seatd.bench.layout import EventLayout, Frames
from seatd.bench.loads.conn import (
    AMBIGUOUS,
    DRAIN_TIMEOUT_S,
    HOLD,
    RESERVE,
    TEMPORARY,
    Conn,
    close_all,
    close_codes,
    connect_all,
    error_code,
    keyed,
    start_clock,
    wait_until,
)
from seatd.bench.stats import OpRecorder
from seatd.bench.workers import Control, WorkerSpec, cpu_seconds

_loads = orjson.loads
_perf = time.perf_counter


class PurchaseConn(Conn):
    __slots__ = ("counts", "run")

    def __init__(self, user: str, run: PurchaseRun) -> None:
        super().__init__(user)
        self.run = run
        self.counts: dict[int, int] = {}

    def on_frame(self, data: bytes) -> None:
        msg = _loads(data)
        entry = self.pending.pop(msg.get("id"), None)  # pushes have no id
        if entry is not None:
            self.run.on_reply(self, entry, msg)

    def on_lost(self) -> None:
        self.run.on_lost(self)


class PurchaseRun:
    """Holds distinct seats (no conflicts by construction) and reserves every hold (with
    ``holds_only``, reserves none: every request is then a durable hold).

    Each worker owns a slice of every event's seats; each connection is its own user, so the
    per-user limit is the only thing that could refuse a hold (the events allow 10,000).
    Closed loop: each connection keeps ``pipeline`` hold-then-reserve chains going. Open loop:
    holds start at ``rate`` per second whatever the replies do, and a hold's latency counts
    from when it was due, not when it was sent (no coordinated omission).
    """

    def __init__(self, spec: WorkerSpec, control: Control) -> None:
        p = spec.params
        self.control = control
        self.layouts = [EventLayout(*e) for e in p["events"]]
        self.frames = [Frames(layout.event_id, keyed(p)) for layout in self.layouts]
        workers, w = int(p["workers"]), spec.index
        self.cursor = [layout.seats * w // workers for layout in self.layouts]
        self.limit = [layout.seats * (w + 1) // workers for layout in self.layouts]
        self.open_events = [i for i in range(len(self.layouts)) if self.cursor[i] < self.limit[i]]
        self.max_per_user = int(p["max_per_user"])
        self.pipeline = int(p["pipeline"])
        self.holds_only = bool(p.get("holds_only"))
        self.rate: float | None = p["rate"]
        self.rng = random.Random(int(p["seed"]) * 7919 + w)
        self.hold = OpRecorder()
        self.reserve = OpRecorder()
        # Several instances: the index of each event's owner, and each hold's reply recorded
        # again by whether its connection is on the owner or its command was forwarded.
        owners = p.get("owners")
        self.owners: list[int] | None = list(owners) if owners else None
        self.hold_on_owner = OpRecorder()
        self.hold_forwarded = OpRecorder()
        self.acks = AckLog()
        self.outstanding = 0
        self.deadline = 0.0
        self.stopped = False
        self.exhausted = 0
        self.unknown = 0
        self.last_reply = 0.0
        offset = int(p["conn_offset"])
        prefix = p["user_prefix"]
        self.conns = [
            PurchaseConn(f"{prefix}-u{offset + i}", self) for i in range(int(p["connections"]))
        ]

    def _next_seat(self) -> tuple[int, int] | None:
        """(event, seat index) of a seat nobody else will ask for, or None when all are used."""
        events = self.open_events
        while events:
            position = 0 if len(events) == 1 else self.rng.randrange(len(events))
            ev = events[position]
            seat = self.cursor[ev]
            if seat < self.limit[ev]:
                self.cursor[ev] = seat + 1
                return ev, seat
            events[position] = events[-1]
            events.pop()
        return None

    def send_hold(self, conn: PurchaseConn, due: float) -> bool:
        if conn.closed:
            return False
        picked = self._next_seat()
        if picked is None:
            self.exhausted += 1
            return False
        ev, seat = picked
        count = conn.counts.get(ev, 0)
        if count >= self.max_per_user:
            self.exhausted += 1
            return False
        conn.counts[ev] = count + 1
        rid = conn.take_id()
        conn.pending[rid] = (HOLD, due, ev, seat)
        self.outstanding += 1
        seat_json = b'"' + self.layouts[ev].seat_id(seat).encode() + b'"'
        conn.send(self.frames[ev].hold(rid, seat_json))
        return True

    def on_reply(self, conn: PurchaseConn, entry: tuple[Any, ...], msg: dict[str, Any]) -> None:
        now = _perf()
        self.last_reply = now
        self.outstanding -= 1
        if entry[0] == HOLD:
            owners = self.owners
            if owners is not None:
                on_owner = conn.instance == owners[entry[2]]
                (self.hold_on_owner if on_owner else self.hold_forwarded).record(
                    now - entry[1], now, None if msg.get("ok") else error_code(msg)
                )
            if msg.get("ok"):
                result = msg["result"]
                self.hold.record(now - entry[1], now)
                hold_id: str = result["hold_id"]
                index = self.acks.add(entry[2], (entry[3],), hold_id, result["expires_at"])
                if self.holds_only:
                    self.control.progress(1)
                    self._next(conn, now, None)
                    return
                rid = conn.take_id()
                conn.pending[rid] = (RESERVE, now, index)
                self.outstanding += 1
                conn.send(self.frames[entry[2]].reserve(rid, hold_id.encode()))
                return
            code: str | None = error_code(msg)
            self.hold.record(now - entry[1], now, code)
        else:
            code = None
            if msg.get("ok"):
                self.reserve.record(now - entry[1], now)
                self.acks.reserved(entry[2], msg["result"]["reservation_id"])
                self.control.progress(1)
            else:
                code = error_code(msg)
                self.reserve.record(now - entry[1], now, code)
                if code in AMBIGUOUS:
                    self.acks.unknown(entry[2])
                    self.unknown += 1
        self._next(conn, now, code)

    def _next(self, conn: PurchaseConn, now: float, code: str | None) -> None:
        """Closed loop: a chain ended (``code``: its error, if any); start the next one."""
        if self.rate is None and not self.stopped and now < self.deadline:
            if code in TEMPORARY:  # back off a little instead of hammering a busy server
                asyncio.get_running_loop().call_later(0.01, self.send_hold, conn, now + 0.01)
            else:
                self.send_hold(conn, now)

    def on_lost(self, conn: PurchaseConn) -> None:
        self._abandon(conn, "connection_closed")

    def _abandon(self, conn: PurchaseConn, code: str) -> None:
        for entry in conn.pending.values():
            self.outstanding -= 1
            if entry[0] == HOLD:
                self.hold.error_only(code)
            else:
                self.reserve.error_only(code)
                self.acks.unknown(entry[2])
                self.unknown += 1
        conn.pending.clear()

    async def run(self, t0: float, duration: float, bucket: float) -> None:
        self.hold.start(t0, bucket)
        self.reserve.start(t0, bucket)
        self.hold_on_owner.start(t0, bucket)
        self.hold_forwarded.start(t0, bucket)
        self.deadline = t0 + duration
        if self.rate is None:
            for conn in self.conns:
                for _ in range(self.pipeline):
                    self.send_hold(conn, _perf())
        else:
            await self._open_loop(t0)
        # Ends at the deadline, or sooner when this worker's seats have all been asked for.
        await wait_until(
            lambda: (_perf() >= self.deadline or not self.open_events) and self.outstanding <= 0,
            1e9,
        )

    async def _open_loop(self, t0: float) -> None:
        rate = float(self.rate or 1.0)
        conns = self.conns
        sent = 0
        while self.open_events:
            now = _perf()
            if now >= self.deadline:
                break
            due = int((now - t0) * rate)
            while sent < due:
                conn = conns[sent % len(conns)]
                self.send_hold(conn, t0 + sent / rate)
                sent += 1
            await asyncio.sleep(0.001)

    async def drain(self) -> None:
        self.stopped = True
        if not await wait_until(lambda: self.outstanding <= 0, DRAIN_TIMEOUT_S):
            for conn in self.conns:
                self._abandon(conn, "no_reply")


async def purchase_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    run = PurchaseRun(spec, control)
    await connect_all(spec, run.conns, control)
    control.send("ready", len(run.conns))
    t0, t0_wall, go = await start_clock(control)
    cpu0 = cpu_seconds()
    duration = float(go["duration"])
    main = asyncio.ensure_future(run.run(t0, duration, float(go["bucket"])))
    # Stop waiting for replies DRAIN_TIMEOUT_S after the deadline at the latest.
    await asyncio.wait([main], timeout=duration + DRAIN_TIMEOUT_S + 1)
    if not main.done():
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
    await run.drain()
    cpu = cpu_seconds() - cpu0
    last = run.last_reply - t0 + t0_wall if run.last_reply else t0_wall
    result = {
        "hold": run.hold.data(),
        "reserve": run.reserve.data(),
        "acks": run.acks,
        "cpu_s": cpu,
        "t_last": last,
        "closed": close_codes(run.conns),
        "exhausted": run.exhausted,
        "unknown": run.unknown,
    }
    if run.owners is not None:
        result["hold_on_owner"] = run.hold_on_owner.data()
        result["hold_forwarded"] = run.hold_forwarded.data()
    await close_all(run.conns)
    return result
