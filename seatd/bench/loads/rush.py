"""rush, worker side: buyers race for a few hot seats, each keeping one request in flight."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson

from seatd.bench.acks import AckLog
from seatd.bench.layout import EventLayout, Frames
from seatd.bench.loads.conn import (
    AMBIGUOUS,
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


class RushConn(Conn):
    __slots__ = ("attempts", "done", "run", "seats", "want")

    def __init__(self, user: str, run: RushRun, want: int) -> None:
        super().__init__(user)
        self.run = run
        self.want = want
        self.attempts = 0
        self.seats: tuple[int, ...] = ()
        self.done = False

    def on_frame(self, data: bytes) -> None:
        msg = _loads(data)
        entry = self.pending.pop(msg.get("id"), None)
        if entry is not None:
            self.run.on_reply(self, entry, msg)

    def on_lost(self) -> None:
        self.run.on_lost(self)


class RushRun:
    """Buyers who each want 1-4 adjacent seats, most of them in the same hot front rows.

    A buyer whose hold is refused learns from the conflicts which seats are gone (so does
    every buyer in the same worker, like a live seat map would show) and tries again with
    other seats, until it has bought, or no seat is left, or it gives up.
    """

    def __init__(self, spec: WorkerSpec, control: Control) -> None:
        p = spec.params
        self.control = control
        self.layout = EventLayout(*p["event"])
        self.frames = Frames(self.layout.event_id, keyed(p))
        self.n = self.layout.seats
        self.taken = bytearray(self.n)
        self.taken_count = 0
        # The free seats, and where each sits in that list: a taken seat leaves in O(1), and
        # a pick among the free ones costs O(seats wanted), not a scan of the whole event.
        self.free = list(range(self.n))
        self.free_at = list(range(self.n))
        self.hot = max(1, int(self.n * float(p["hot_fraction"])))
        self.hot_weight = float(p["hot_weight"])
        self.max_attempts = int(p["max_attempts"])
        self.rng = random.Random(int(p["seed"]) * 104729 + spec.index)
        self.hold = OpRecorder()
        self.reserve = OpRecorder()
        self.acks = AckLog()
        self.active = 0
        self.buyers = 0
        self.seats_bought = 0
        self.gave_up = 0
        self.sold_out = 0
        self.last_reserve = 0.0
        self.unknown = 0
        offset = int(p["conn_offset"])
        prefix = p["user_prefix"]
        self.conns = [
            RushConn(f"{prefix}-b{offset + i}", self, self.rng.randint(1, 4))
            for i in range(int(p["connections"]))
        ]
        self.seat_json = [b'"' + self.layout.seat_id(i).encode() + b'"' for i in range(self.n)]

    def _mark(self, seat: int) -> None:
        if not self.taken[seat]:
            self.taken[seat] = 1
            self.taken_count += 1
            free, free_at = self.free, self.free_at
            last = free.pop()
            if last != seat:
                position = free_at[seat]
                free[position] = last
                free_at[last] = position

    def _pick(self, want: int) -> tuple[int, ...] | None:
        free = self.n - self.taken_count
        if free <= 0:
            return None
        k = min(want, free)
        rng, per_row, n, hot, taken = self.rng, self.layout.per_row, self.n, self.hot, self.taken
        # Near the end most tries miss, so each costs little: random() rather than randrange()
        # (a fifth of the time), and the seats checked in one C call (bytearray.find).
        uniform = rng.random
        for _ in range(8):
            anchor = int(uniform() * hot) if uniform() < self.hot_weight else int(uniform() * n)
            row_start = anchor - anchor % per_row
            row_end = min(row_start + per_row, n)
            start = max(row_start, min(anchor, row_end - k))
            if start + k <= row_end and taken.find(1, start, start + k) < 0:
                return tuple(range(start, start + k))
        # The hot rows are mostly gone: take whatever seats are still free.
        return tuple(sorted(rng.sample(self.free, k)))

    def try_hold(self, conn: RushConn) -> None:
        if conn.done or conn.closed:
            return
        seats = self._pick(conn.want)
        if seats is None:
            self.sold_out += 1
            self._finish(conn)
            return
        conn.seats = seats
        conn.attempts += 1
        rid = conn.take_id()
        conn.pending[rid] = (HOLD, _perf())
        conn.send(self.frames.hold(rid, b",".join(self.seat_json[s] for s in seats)))

    def _finish(self, conn: RushConn) -> None:
        if not conn.done:
            conn.done = True
            self.active -= 1
            self.control.progress(1)

    def _retry(self, conn: RushConn, delay: float = 0.0) -> None:
        if conn.attempts >= self.max_attempts:
            self.gave_up += 1
            self._finish(conn)
        elif delay > 0:
            asyncio.get_running_loop().call_later(delay, self.try_hold, conn)
        else:
            self.try_hold(conn)

    def on_reply(self, conn: RushConn, entry: tuple[Any, ...], msg: dict[str, Any]) -> None:
        now = _perf()
        if entry[0] == HOLD:
            if msg.get("ok"):
                self.hold.record(now - entry[1], now)
                result = msg["result"]
                hold_id: str = result["hold_id"]
                for seat in conn.seats:
                    self._mark(seat)
                index = self.acks.add(0, conn.seats, hold_id, result["expires_at"])
                rid = conn.take_id()
                conn.pending[rid] = (RESERVE, now, index)
                conn.send(self.frames.reserve(rid, hold_id.encode()))
                return
            code = error_code(msg)
            self.hold.record(now - entry[1], now, code)
            if code == "seat_unavailable":
                details = msg["error"].get("details") or {}
                for conflict in details.get("conflicts", ()):
                    self._mark(self.layout.seat_index(conflict["seat_id"]))
                self._retry(conn)
            elif code in TEMPORARY:
                self._retry(conn, 0.05)
            else:
                self._retry(conn)
            return
        if msg.get("ok"):
            self.reserve.record(now - entry[1], now)
            self.acks.reserved(entry[2], msg["result"]["reservation_id"])
            self.buyers += 1
            self.seats_bought += len(conn.seats)
            self.last_reserve = now
        else:
            code = error_code(msg)
            self.reserve.record(now - entry[1], now, code)
            if code in AMBIGUOUS:
                self.acks.unknown(entry[2])
                self.unknown += 1
        self._finish(conn)

    def on_lost(self, conn: RushConn) -> None:
        self._abandon(conn, "connection_closed")

    def _abandon(self, conn: RushConn, code: str) -> None:
        for entry in conn.pending.values():
            if entry[0] == HOLD:
                self.hold.error_only(code)
            else:
                self.reserve.error_only(code)
                self.acks.unknown(entry[2])
                self.unknown += 1
        conn.pending.clear()
        self._finish(conn)


async def rush_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    run = RushRun(spec, control)
    await connect_all(spec, run.conns, control)
    control.send("ready", len(run.conns))
    t0, t0_wall, go = await start_clock(control)
    cpu0 = cpu_seconds()
    run.hold.start(t0, float(go["bucket"]))
    run.reserve.start(t0, float(go["bucket"]))
    run.active = len(run.conns)
    for conn in run.conns:
        run.try_hold(conn)
    await wait_until(lambda: run.active <= 0, float(go["duration"]))
    for conn in run.conns:
        if not conn.done:
            run._abandon(conn, "no_reply")
    cpu = cpu_seconds() - cpu0
    result = {
        "hold": run.hold.data(),
        "reserve": run.reserve.data(),
        "acks": run.acks,
        "cpu_s": cpu,
        "t_last_reserve": run.last_reserve - t0 + t0_wall if run.last_reserve else 0.0,
        "buyers": run.buyers,
        "seats_bought": run.seats_bought,
        "gave_up": run.gave_up,
        "sold_out_seen": run.sold_out,
        "closed": close_codes(run.conns),
        "unknown": run.unknown,
    }
    await close_all(run.conns)
    return result
