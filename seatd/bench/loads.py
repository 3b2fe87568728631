"""The worker side of each scenario: connections, request loops, and what they report.

Why it looks like this: the load generator shares two cores with seatd, PostgreSQL and Redis,
so every byte of CPU it burns is taken from the system under test. Each connection is a
small object whose ``on_message`` callback is called straight from the WebSocket parser; a
request's follow-up (a ``reserve`` after a ``hold``) is sent from that callback, with no task
per request. Request frames are assembled from pre-encoded pieces (``layout.Frames``), replies
are parsed with orjson, and the availability pushes of the fan-out scenario, the bulk of its
traffic, are not parsed at all: the version is cut out of the bytes.

Every load: connect its share of connections, send "ready", wait for "go" (a wall-clock start
time shared by all workers), run, and return a picklable dict of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import random
import time
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from seatd.bench.acks import AckLog
from seatd.bench.layout import EventLayout, Frames
from seatd.bench.stats import OpRecorder
from seatd.bench.workers import Control, WorkerSpec, cpu_seconds
from seatd.bench.wsclient import Link, connect

__all__ = ["LOADS"]

_loads = orjson.loads
_perf = time.perf_counter
_wall = time.time

HOLD, RESERVE, RELEASE, GET = 0, 1, 2, 3
TEMPORARY = frozenset({"overloaded", "unavailable", "shutting_down", "internal_error"})
# Errors after which the change may or may not have been applied (PROTOCOL.md, Retrying).
AMBIGUOUS = frozenset({"unavailable", "internal_error"})
DRAIN_TIMEOUT_S = 15.0
AVAILABILITY = b'{"type":"availability"'


# --- connections ----------------------------------------------------------------------------


class Conn:
    """One client connection; subclasses handle the frames after the welcome."""

    __slots__ = (
        "close_code",
        "closed",
        "instance",
        "link",
        "next_id",
        "pending",
        "user",
        "welcome",
    )

    def __init__(self, user: str) -> None:
        self.user = user
        self.instance = 0  # which seatd instance it is connected to (several: --instances)
        self.link: Link | None = None
        self.welcome: asyncio.Future[None] | None = None
        self.closed = False
        self.close_code: int | None = None
        self.next_id = 1
        self.pending: dict[int, tuple[Any, ...]] = {}

    def on_message(self, data: bytes) -> None:
        welcome = self.welcome
        if welcome is not None and not welcome.done():
            welcome.set_result(None)
            return
        self.on_frame(data)

    def on_frame(self, data: bytes) -> None:
        """A frame after the welcome."""

    def on_close(self, code: int | None) -> None:
        self.closed = True
        self.close_code = code
        if self.welcome is not None and not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before the welcome ({code})"))
            self.welcome.exception()
        self.on_lost()

    def on_lost(self) -> None:
        """The connection closed: settle what was pending on it."""

    def send(self, frame: bytes) -> None:
        assert self.link is not None
        self.link.send(frame)

    def take_id(self) -> int:
        rid = self.next_id
        self.next_id = rid + 1
        return rid


def _keyed(params: dict[str, Any]) -> bool:
    """Whether mutations carry an idempotency_key (``--no-retry-keys`` turns it off)."""
    return bool(params.get("retry_keys", True))


def assign_targets(spec: WorkerSpec, conns: list[Any]) -> list[str]:
    """The URL of each connection; sets each one's ``instance``.

    ``targets`` (several instances): ``[(url, instance index), ...]``, dealt round-robin by the
    connection's run-wide number (``conn_offset`` + its position), like a load balancer would;
    without it every connection goes to ``spec.url``.
    """
    targets: list[tuple[str, int]] = spec.params.get("targets") or [(spec.url, 0)]
    offset = int(spec.params.get("conn_offset", 0))
    urls = []
    for position, conn in enumerate(conns):
        url, instance = targets[(offset + position) % len(targets)]
        conn.instance = instance
        urls.append(url)
    return urls


async def connect_all(
    spec: WorkerSpec, conns: list[Any], control: Control, concurrency: int = 48
) -> None:
    """Open every connection (bounded concurrency, a few retries) and wait for each welcome."""
    from seatd.auth import TokenAuthority

    authority = TokenAuthority(spec.secret)
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    urls = assign_targets(spec, conns)

    async def one(conn: Conn, url: str) -> None:
        token = authority.mint(conn.user, "user", ttl_s=86400)
        error: BaseException | None = None
        async with gate:
            for attempt in range(6):
                conn.welcome = loop.create_future()
                conn.closed = False
                try:
                    conn.link = await connect(
                        url, token, conn.on_message, conn.on_close, client=spec.client
                    )
                    await asyncio.wait_for(asyncio.shield(conn.welcome), 15)
                except Exception as exc:
                    error = exc
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                control.progress(1)
                return
        raise ConnectionError(f"could not connect {conn.user} to {url}: {error!r}")

    await asyncio.gather(*(one(c, u) for c, u in zip(conns, urls, strict=True)))


async def close_all(conns: list[Any]) -> None:
    async def one(conn: Conn) -> None:
        if conn.link is not None and not conn.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.link.close(), 5)

    await asyncio.gather(*(one(c) for c in conns))


async def start_clock(control: Control) -> tuple[float, float, dict[str, Any]]:
    """Wait for "go"; return (t0 on the perf clock, t0 wall, the go payload) at the start."""
    go: dict[str, Any] = await control.recv("go")
    t0_wall = float(go["t0"])
    delay = t0_wall - _wall()
    if delay > 0:
        await asyncio.sleep(delay)
    return _perf() + (t0_wall - _wall()), t0_wall, go


def close_codes(conns: list[Any]) -> dict[str, int]:
    return dict(Counter(str(c.close_code) for c in conns if c.closed))


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = _perf() + timeout
    while not predicate():
        if _perf() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def _error_code(msg: dict[str, Any]) -> str:
    error = msg.get("error")
    return str(error.get("code", "unknown")) if isinstance(error, dict) else "unknown"


# --- throughput and events: hold distinct seats, then reserve each hold ----------------------


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
    """Holds distinct seats (no conflicts by construction) and reserves every hold.

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
        self.frames = [Frames(layout.event_id, _keyed(p)) for layout in self.layouts]
        workers, w = int(p["workers"]), spec.index
        self.cursor = [layout.seats * w // workers for layout in self.layouts]
        self.limit = [layout.seats * (w + 1) // workers for layout in self.layouts]
        self.open_events = [i for i in range(len(self.layouts)) if self.cursor[i] < self.limit[i]]
        self.max_per_user = int(p["max_per_user"])
        self.pipeline = int(p["pipeline"])
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
                    now - entry[1], now, None if msg.get("ok") else _error_code(msg)
                )
            if msg.get("ok"):
                result = msg["result"]
                self.hold.record(now - entry[1], now)
                hold_id: str = result["hold_id"]
                index = self.acks.add(entry[2], (entry[3],), hold_id, result["expires_at"])
                rid = conn.take_id()
                conn.pending[rid] = (RESERVE, now, index)
                self.outstanding += 1
                conn.send(self.frames[entry[2]].reserve(rid, hold_id.encode()))
                return
            code: str | None = _error_code(msg)
            self.hold.record(now - entry[1], now, code)
        else:
            code = None
            if msg.get("ok"):
                self.reserve.record(now - entry[1], now)
                self.acks.reserved(entry[2], msg["result"]["reservation_id"])
                self.control.progress(1)
            else:
                code = _error_code(msg)
                self.reserve.record(now - entry[1], now, code)
                if code in AMBIGUOUS:
                    self.acks.unknown(entry[2])
                    self.unknown += 1
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
        await wait_until(lambda: _perf() >= self.deadline and self.outstanding <= 0, 1e9)

    async def _open_loop(self, t0: float) -> None:
        rate = float(self.rate or 1.0)
        conns = self.conns
        sent = 0
        while True:
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


# --- rush: an on-sale burst for a few hot seats ---------------------------------------------


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
        self.frames = Frames(self.layout.event_id, _keyed(p))
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
            code = _error_code(msg)
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
            code = _error_code(msg)
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


# --- fan-out: writers change seats, subscribers time the deltas ------------------------------


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
        self.frames = Frames(self.layout.event_id, _keyed(p))
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
        recorder.record(now - due, now, None if ok else _error_code(msg))
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
        elif _error_code(msg) in AMBIGUOUS:
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
        self.frames = Frames(self.layout.event_id, _keyed(p))
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


# --- idle: many quiet connections, many events activated once -------------------------------


class IdleConn(Conn):
    __slots__ = ("on_reply",)

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.on_reply: Callable[[IdleConn, tuple[Any, ...], dict[str, Any]], None] | None = None

    def on_frame(self, data: bytes) -> None:
        if self.on_reply is None:
            return
        msg = _loads(data)
        entry = self.pending.pop(msg.get("id"), None)
        if entry is not None:
            self.on_reply(self, entry, msg)


async def _activate(
    conns: list[IdleConn], event_ids: list[str], pipeline: int, control: Control
) -> OpRecorder:
    """``get_event`` every event once (which loads it into the server's memory)."""
    recorder = OpRecorder(_perf(), 0.25)
    todo = deque(event_ids)
    outstanding = 0

    def send_next(conn: IdleConn) -> None:
        nonlocal outstanding
        if not todo or conn.closed:
            return
        rid = conn.take_id()
        conn.pending[rid] = (GET, _perf())
        outstanding += 1
        conn.send(Frames(todo.popleft()).get_event(rid))

    def on_reply(conn: IdleConn, entry: tuple[Any, ...], msg: dict[str, Any]) -> None:
        nonlocal outstanding
        now = _perf()
        outstanding -= 1
        recorder.record(now - entry[1], now, None if msg.get("ok") else _error_code(msg))
        control.progress(1)
        send_next(conn)

    for conn in conns:
        conn.on_reply = on_reply
        for _ in range(pipeline):
            send_next(conn)
    await wait_until(lambda: not todo and outstanding <= 0, 3600, 0.01)
    for conn in conns:
        conn.on_reply = None
    return recorder


async def idle_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    p = spec.params
    offset = int(p["conn_offset"])
    conns = [IdleConn(f"{p['user_prefix']}-i{offset + i}") for i in range(int(p["connections"]))]
    await connect_all(spec, conns, control, concurrency=64)
    control.send("ready", len(conns))
    cpu0 = cpu_seconds()
    while True:
        kind, order = await control.recv_any("activate", "close")
        if kind == "close":
            break
        started = cpu_seconds()
        event_ids = [f"{order['prefix']}{i}" for i in range(int(order["lo"]), int(order["hi"]))]
        active = conns[: max(1, min(len(conns), int(order["connections"])))]
        recorder = await _activate(active, event_ids, int(order["pipeline"]), control)
        control.send("activated", {"get_event": recorder.data(), "cpu_s": cpu_seconds() - started})
    still_open = sum(1 for c in conns if not c.closed)
    closed = close_codes(conns)
    await close_all(conns)
    return {"open_at_end": still_open, "closed": closed, "cpu_s": cpu_seconds() - cpu0}


LOADS: dict[str, Callable[[WorkerSpec, Control], Awaitable[Any]]] = {
    "purchase": purchase_load,
    "rush": rush_load,
    "fanout_writer": fanout_writer_load,
    "fanout_subscriber": fanout_subscriber_load,
    "idle": idle_load,
}
