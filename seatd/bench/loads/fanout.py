"""fanout, worker side: writers change seats, subscribers time the availability pushes."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import time
from array import array
from collections import Counter, deque
from typing import Any

import orjson

from seatd.bench.acks import AckLog
from seatd.bench.layout import EventLayout, Frames
from seatd.bench.loads.conn import (
    AMBIGUOUS,
    AVAILABILITY,
    DRAIN_TIMEOUT_S,
    GET,
    HOLD,
    RELEASE,
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
_wall = time.time


class TimeTable:
    """Per-version times shared by the writer and the subscribers through a mapped file.

    Slot ``v`` holds the wall time the first request of version ``v`` was due (send table) and
    the time its writer got the reply (reply table); 0 means not known yet. Only the writer
    process writes; subscriber processes read after the fact, so no locking is needed.
    """

    def __init__(self, path: str, slots: int) -> None:
        self.slots = slots
        self._file = open(path, "r+b")  # noqa: SIM115 - kept open for the mapping's life
        self._map = mmap.mmap(self._file.fileno(), slots * 16)
        view = memoryview(self._map)
        self._view = view
        self.sent = view[: slots * 8].cast("d")
        self.replied = view[slots * 8 :].cast("d")

    def close(self) -> None:
        self.sent.release()
        self.replied.release()
        self._view.release()
        self._map.close()
        self._file.close()


class WriterConn(Conn):
    __slots__ = ("free", "live", "run", "waiting")

    def __init__(self, user: str, run: WriterRun, seats: range) -> None:
        super().__init__(user)
        self.run = run
        self.free: deque[int] = deque(seats)
        self.live: deque[tuple[bytes, int, int]] = deque()  # (hold id, seat, ack index)
        # seat id of a change in flight -> [due (wall), reply time (wall, 0: not yet),
        # version of the push that showed it (0: not yet), the state it will show]
        self.waiting: dict[str, list[Any]] = {}

    def on_frame(self, data: bytes) -> None:
        msg = _loads(data)
        rid = msg.get("id")
        if rid is None:
            if msg.get("type") == "availability":
                version = msg["version"]
                waiting = self.waiting
                for change in msg["changes"]:
                    waits = waiting.get(change["seat_id"])
                    if waits is not None and waits[2] == 0 and change["state"] == waits[3]:
                        waits[2] = version
                        if waits[1]:
                            self.run.settle(self, change["seat_id"], waits)
            return
        entry = self.pending.pop(rid, None)
        if entry is None:
            return
        if entry[0] == GET:  # the writer's own subscribe
            entry[1].set_result(msg)
        else:
            self.run.on_reply(self, entry, msg)

    def on_lost(self) -> None:
        self.run.on_lost(self)


class WriterRun:
    """Changes one seat per request at ``rate`` per second: hold a free seat, or release the
    oldest hold once a writer holds enough. Writers subscribe to the event themselves: the push
    of a change reaches a subscribed connection before the reply to the request that made it,
    which tells each writer the version its change got."""

    def __init__(self, spec: WorkerSpec, control: Control) -> None:
        p = spec.params
        self.control = control
        self.layout = EventLayout(*p["event"])
        self.frames = Frames(self.layout.event_id, keyed(p))
        self.rate = float(p["rate"])
        self.cap = int(p["live_cap"])
        self.table = TimeTable(p["table"], int(p["slots"]))
        self.hold = OpRecorder()
        self.release = OpRecorder()
        self.acks = AckLog()
        self.outstanding = 0
        self.starved = 0
        self.unpushed = 0  # acknowledged changes no push ever showed
        self.max_version = 0
        self.unknown = 0
        self.t_offset = 0.0  # wall minus perf
        writers = int(p["writers"])
        seats = self.layout.seats
        prefix = p["user_prefix"]
        self.conns = [
            WriterConn(
                f"{prefix}-w{i}", self, range(seats * i // writers, seats * (i + 1) // writers)
            )
            for i in range(writers)
        ]

    def step(self, conn: WriterConn, due: float) -> None:
        if conn.closed:
            return
        rid = conn.take_id()
        due_wall = due + self.t_offset
        if conn.free and len(conn.live) + len(conn.waiting) < self.cap:
            seat = conn.free.popleft()
            seat_id = self.layout.seat_id(seat)
            conn.waiting[seat_id] = [due_wall, 0.0, 0, "held"]
            conn.pending[rid] = (HOLD, due, seat, seat_id)
            conn.send(self.frames.hold(rid, b'"' + seat_id.encode() + b'"'))
        elif conn.live:
            hold_id, seat, index = conn.live.popleft()
            seat_id = self.layout.seat_id(seat)
            conn.waiting[seat_id] = [due_wall, 0.0, 0, "available"]
            conn.pending[rid] = (RELEASE, due, seat, seat_id, index)
            conn.send(self.frames.release(rid, hold_id))
        else:
            self.starved += 1
            return
        self.outstanding += 1

    def on_reply(self, conn: WriterConn, entry: tuple[Any, ...], msg: dict[str, Any]) -> None:
        now = _perf()
        self.outstanding -= 1
        kind, due, seat, seat_id = entry[0], entry[1], entry[2], entry[3]
        ok = bool(msg.get("ok"))
        recorder = self.hold if kind == HOLD else self.release
        recorder.record(now - due, now, None if ok else error_code(msg))
        if ok:
            self.control.progress(1)
            if kind == HOLD:
                result = msg["result"]
                index = self.acks.add(0, (seat,), result["hold_id"], result["expires_at"])
                conn.live.append((result["hold_id"].encode(), seat, index))
            else:
                self.acks.released(entry[4])
                conn.free.append(seat)
            change = conn.waiting.get(seat_id)
            if change is not None:
                change[1] = now + self.t_offset
                if change[2]:  # its push came first (seatd sends pushes before replies)
                    self.settle(conn, seat_id, change)
            return
        conn.waiting.pop(seat_id, None)
        if kind == HOLD:
            conn.free.append(seat)
        elif error_code(msg) in AMBIGUOUS:
            self.acks.unknown(entry[4])
            self.unknown += 1
        # A refused release leaves its seat out of both pools: it is never used again.

    def settle(self, conn: WriterConn, seat_id: str, change: list[Any]) -> None:
        """A change whose reply and push both arrived: time the push's version by it.

        A push may cover several versions (merged changes): it is keyed by its last version,
        with the earliest due time and reply time of the changes it carries.
        """
        del conn.waiting[seat_id]
        version = change[2]
        if not 0 < version < self.table.slots:
            return
        self.max_version = max(self.max_version, version)
        sent, replied = self.table.sent, self.table.replied
        if sent[version] == 0.0 or change[0] < sent[version]:
            sent[version] = change[0]
        if replied[version] == 0.0 or change[1] < replied[version]:
            replied[version] = change[1]

    def on_lost(self, conn: WriterConn) -> None:
        self._abandon(conn, "connection_closed")

    def _abandon(self, conn: WriterConn, code: str) -> None:
        for entry in conn.pending.values():
            if entry[0] == GET:
                continue
            self.outstanding -= 1
            if entry[0] == HOLD:
                self.hold.error_only(code)
            else:
                self.release.error_only(code)
                self.acks.unknown(entry[4])
                self.unknown += 1
        conn.pending.clear()

    async def run(self, t0: float, duration: float) -> None:
        deadline = t0 + duration
        conns = self.conns
        sent = 0
        while True:
            now = _perf()
            if now >= deadline:
                break
            due = int((now - t0) * self.rate)
            while sent < due:
                self.step(conns[sent % len(conns)], t0 + sent / self.rate)
                sent += 1
            await asyncio.sleep(0.001)
        if not await wait_until(lambda: self.outstanding <= 0, DRAIN_TIMEOUT_S):
            for conn in conns:
                self._abandon(conn, "no_reply")
        # Merged pushes may trail the last replies by the server's merge interval.
        await wait_until(lambda: not any(c.waiting for c in conns), 2.0)
        self.unpushed = sum(len(c.waiting) for c in conns)


async def _subscribe_all(conns: list[Any], frames: Frames) -> list[int]:
    """Subscribe every connection (pipelined); the version each subscription starts at."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = []
    for conn in conns:
        future: asyncio.Future[Any] = loop.create_future()
        conn.subscribing = future
        conn.send(frames.subscribe(0))
        futures.append(future)
    replies = await asyncio.wait_for(asyncio.gather(*futures), 120)
    versions: list[int] = []
    for reply in replies:
        if not reply.get("ok"):
            raise RuntimeError(f"subscribe refused: {reply.get('error')}")
        versions.append(int(reply["result"]["version"]))
    return versions


async def fanout_writer_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    run = WriterRun(spec, control)
    await connect_all(spec, run.conns, control)
    loop = asyncio.get_running_loop()
    for conn in run.conns:
        future: asyncio.Future[Any] = loop.create_future()
        conn.pending[0] = (GET, future)
        conn.send(run.frames.subscribe(0))
        reply = await asyncio.wait_for(future, 60)
        if not reply.get("ok"):
            raise RuntimeError(f"writer could not subscribe: {reply.get('error')}")
    control.send("ready", len(run.conns))
    t0, t0_wall, go = await start_clock(control)
    run.t_offset = t0_wall - t0
    run.hold.start(t0, float(go["bucket"]))
    run.release.start(t0, float(go["bucket"]))
    cpu0 = cpu_seconds()
    await run.run(t0, float(go["duration"]))
    cpu = cpu_seconds() - cpu0
    result = {
        "hold": run.hold.data(),
        "release": run.release.data(),
        "acks": run.acks,
        "cpu_s": cpu,
        "max_version": run.max_version,
        "starved": run.starved,
        "unpushed": run.unpushed,
        "closed": close_codes(run.conns),
        "unknown": run.unknown,
    }
    await close_all(run.conns)
    run.table.close()
    return result


class SubscriberConn(Conn):
    __slots__ = ("covered", "duplicates", "gaps", "last", "missing", "run", "subscribing")

    def __init__(self, user: str, run: SubscriberRun) -> None:
        super().__init__(user)
        self.run = run
        self.last = 0
        self.covered = 0  # versions received
        self.gaps = 0
        self.missing = 0
        self.duplicates = 0
        self.subscribing: asyncio.Future[Any] | None = None

    def on_frame(self, data: bytes) -> None:
        if data.startswith(AVAILABILITY):
            # Cut the numbers out of the bytes instead of parsing the whole frame: a push
            # covers versions from_version (when merged; else version alone) to version.
            start = data.find(b'"version":', 22) + 10
            end = start
            while 47 < data[end] < 58:  # digits
                end += 1
            version = int(data[start:end])
            start = data.find(b'"from_version":', 22)
            if start < 0:
                first = version
            else:
                start += 15
                end = start
                while 47 < data[end] < 58:
                    end += 1
                first = int(data[start:end])
            run = self.run
            run.versions.append(version)
            run.times.append(_wall())
            expected = self.last + 1
            if first > expected:
                self.gaps += 1
                self.missing += first - expected
                expected = first
            elif version < expected:
                self.duplicates += 1
                return
            self.covered += version - expected + 1
            self.last = version
            return
        msg = _loads(data)
        future = self.subscribing
        if msg.get("id") is not None and future is not None and not future.done():
            future.set_result(msg)


class SubscriberRun:
    """Receives every delta of the event; latencies are resolved against the writer's table."""

    def __init__(self, spec: WorkerSpec, control: Control) -> None:
        p = spec.params
        self.control = control
        self.layout = EventLayout(*p["event"])
        self.frames = Frames(self.layout.event_id, keyed(p))
        self.table = TimeTable(p["table"], int(p["slots"]))
        self.versions = array("q")
        self.times = array("d")
        self.delivery = OpRecorder()
        self.end_to_end = OpRecorder()
        self.t0_wall = 0.0
        self.frames_received = 0
        self.unmatched = 0
        self.early = 0
        offset = int(p["conn_offset"])
        prefix = p["user_prefix"]
        self.conns = [
            SubscriberConn(f"{prefix}-s{offset + i}", self) for i in range(int(p["connections"]))
        ]

    def resolve(self, final: bool = False) -> None:
        """Turn (version, receipt time) pairs into latencies once their version's times are
        known; counts are aggregated per (second, latency) first, which keeps the cost far
        below one histogram update per delivered frame."""
        versions, times = self.versions, self.times
        if not versions:
            return
        self.versions, self.times = array("q"), array("d")
        sent, replied, slots, t0 = (
            self.table.sent,
            self.table.replied,
            self.table.slots,
            self.t0_wall,
        )
        delivery: Counter[tuple[int, int]] = Counter()
        end_to_end: Counter[tuple[int, int]] = Counter()
        for version, received in zip(versions, times, strict=True):
            reply = replied[version] if version < slots else 0.0
            if reply == 0.0:
                if final:
                    self.unmatched += 1
                    self.frames_received += 1
                else:  # its writer has not recorded it yet: look again next time
                    self.versions.append(version)
                    self.times.append(received)
                continue
            self.frames_received += 1
            second = self.delivery.bucket_of(received - t0)
            lag = received - reply
            if lag < 0:
                self.early += 1
            delivery[(second, _quantize_us(lag))] += 1
            end_to_end[(second, _quantize_us(received - sent[version]))] += 1
        self.delivery.record_bulk(delivery)
        self.end_to_end.record_bulk(end_to_end)

    async def resolver(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.resolve()


def _quantize_us(seconds: float) -> int:
    """Microseconds rounded to about three significant digits (the histogram's precision)."""
    us = int(seconds * 1e6)
    if us < 1000:
        return us if us > 0 else 1
    if us < 10_000:
        return us - us % 10
    if us < 100_000:
        return us - us % 100
    if us < 1_000_000:
        return us - us % 1000
    return us - us % 10_000


async def fanout_subscriber_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    run = SubscriberRun(spec, control)
    await connect_all(spec, run.conns, control)
    starts = await _subscribe_all(run.conns, run.frames)
    for conn, version in zip(run.conns, starts, strict=True):
        conn.last = version
    control.send("ready", len(run.conns))
    _, t0_wall, go = await start_clock(control)
    run.t0_wall = t0_wall
    run.delivery.start(0.0, float(go["bucket"]))
    run.end_to_end.start(0.0, float(go["bucket"]))
    cpu0 = cpu_seconds()
    resolver = asyncio.ensure_future(run.resolver())
    final = int(await control.recv("final"))
    caught_up = await wait_until(
        lambda: all(c.closed or c.last >= final for c in run.conns), 20.0, 0.05
    )
    resolver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await resolver
    run.resolve(final=True)
    cpu = cpu_seconds() - cpu0
    result = {
        "delivery": run.delivery.data(),
        "end_to_end": run.end_to_end.data(),
        "cpu_s": cpu,
        "frames": run.frames_received,
        "covered": sum(c.covered for c in run.conns),
        "gaps": sum(c.gaps for c in run.conns),
        "missing": sum(c.missing for c in run.conns),
        "duplicates": sum(c.duplicates for c in run.conns),
        "behind": sum(1 for c in run.conns if not c.closed and c.last < final),
        "caught_up": caught_up,
        "closed": close_codes(run.conns),
        "unmatched": run.unmatched,
        "early": run.early,
        "subscribers": len(run.conns),
    }
    await close_all(run.conns)
    run.table.close()
    return result
