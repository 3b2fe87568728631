"""No data lost under abuse: the history checker while fuzzers and a flood hit the same event.

Four SDK agents hold, refresh, reserve and release seats of one event for forty customers,
every mutation with an idempotency key, retried with the same key until it has an answer, each
recorded in a ``History`` (``tests/support/history.py``). At the same time three fuzzing
connections send hostile frames (``strategies.py``) naming that event, and a flood connection
pipelines holds, pages and releases as fast as it can; every hold, refresh, release and reserve
they send on the event is recorded in the same history, as the server parsed it, with its
outcome. Two SDK subscribers watch the event. Then ``check``: no seat reserved or held twice,
every acknowledged hold and reservation in PostgreSQL, nothing there that no operation can
have made, nobody over the per-user limit (4), every subscriber's map equal to PostgreSQL; and
the server is alive and serves a fresh client.

The fuzz oracle's findings are reported with the run (test_fuzz_protocol fails on them); this
test fails on lost or doubled data.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from typing import Any

from fuzz.engine import Fuzzer, FuzzRun
from fuzz.harness import (
    FrameRecorder,
    FuzzSettings,
    ServerUnderFuzz,
    draw_corpus,
    flood_corpus,
    fuzz,
    health_problems,
    log_problems,
)
from fuzz.schema_check import load_schema
from fuzz.strategies import World
from support.history import History, WatcherView, check, read_db, watcher_view
from support.server import token

from protocol.client import Backoff, SeatBlock, SeatClient, TemporaryError, Watch
from seatd.devstack import PostgresServer

LIMIT = 4  # MAX_SEATS_PER_USER of the abuse server
ROWS = tuple("ABCDEF")
SEATS = tuple(f"{row}-{n}" for row in ROWS for n in range(1, 21))  # 120 seats
HOLD_SECONDS = 4  # short: holds also expire while everything runs
AGENTS = 4
CUSTOMERS = 10  # per agent
OP_DEADLINE = 8.0  # an operation retried this long (same key) ends as unknown
QUICK = Backoff(base=0.05, cap=0.5)


class Agents:
    """SDK agents doing what kiosks do, each operation recorded (as in test_cluster)."""

    def __init__(self, url: str, event_id: str, history: History) -> None:
        self.url = url
        self.event_id = event_id
        self.history = history
        self.stop = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self.watches: list[tuple[str, Watch]] = []

    async def __aenter__(self) -> Agents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await self._stack.aclose()

    async def client(self, name: str, role: str = "agent") -> SeatClient:
        return await self._stack.enter_async_context(
            SeatClient(self.url, token=token(name, role), backoff=QUICK, request_timeout=6)  # type: ignore[arg-type]
        )

    async def watch(self, name: str) -> None:
        watcher = await self.client(name, "user")
        watch = await self._stack.enter_async_context(watcher.watch(self.event_id))
        await watch.synced()
        self.watches.append((name, watch))

    async def op(self, sdk: SeatClient, process: str, name: str, target: Any, user: str) -> Any:
        key = str(uuid.uuid4())

        async def attempts() -> Any:
            deadline = time.monotonic() + OP_DEADLINE
            while True:
                try:
                    if name == "hold":
                        return await sdk.hold(
                            self.event_id, target, on_behalf_of=user, idempotency_key=key
                        )
                    method = {
                        "refresh": sdk.refresh,
                        "release": sdk.release,
                        "reserve": sdk.reserve,
                    }
                    return await method[name](
                        self.event_id, target, on_behalf_of=user, idempotency_key=key
                    )
                except (TemporaryError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)

        args = {"seat_ids": tuple(target)} if name == "hold" else {"hold_id": target}
        return await self.history.run(
            process, name, attempts(), event_id=self.event_id, key=key, user=user, **args
        )

    async def worker(self, n: int) -> None:
        rng = random.Random(n)
        process = f"agent-{n}"
        sdk = await self.client(process)
        customers = [f"cust-{n}-{k}" for k in range(CUSTOMERS)]
        while not self.stop.is_set():
            user = rng.choice(customers)
            hold = await self.op(
                sdk, process, "hold", rng.sample(SEATS, rng.choice((1, 1, 2))), user
            )
            if hold is not None:
                roll = rng.random()
                then = (["refresh"] if roll < 0.15 else []) + (
                    ["reserve"] if roll < 0.35 else ["release"] if roll < 0.85 else []
                )
                for name in then:
                    await self.op(sdk, process, name, hold.hold_id, user)
            await asyncio.sleep(rng.uniform(0.005, 0.02))


async def test_no_double_booking_and_nothing_acknowledged_lost_under_abuse(
    abuse_server: ServerUnderFuzz,
    fuzz_postgres: PostgresServer,
    fuzz_settings: FuzzSettings,
    fuzz_report: list[str],
) -> None:
    url = abuse_server.url
    async with SeatClient(url, token=token("abuse-admin", "admin")) as admin:
        event = await admin.create_event(
            "Abuse",
            event_id=f"abuse-{uuid.uuid4().hex[:10]}",
            hold_duration_s=HOLD_SECONDS,
            blocks=[SeatBlock(rows=ROWS, seats_per_row=20)],
        )
    event_id = event.event_id
    history = History()
    recorder = FrameRecorder(history, event_id)
    world = World.from_schema(load_schema(), events=(event_id,), seats=SEATS)
    templates = await draw_corpus(world, fuzz_settings, size=400)
    customers = [f"flood-{k}" for k in range(30)]
    flood_run = FuzzRun(
        url, flood_corpus(event_id, SEATS, customers, fuzz_settings.seed), 10**9,
        fuzz_settings.seed, token, window=200, recorder=recorder, first_frame_share=0.0,
    )  # fmt: skip
    flood = Fuzzer(flood_run, 0, "flood", "agent")

    async with Agents(url, event_id, history) as agents:
        for n in range(2):
            await agents.watch(f"watcher-{n}")
        workers = [asyncio.create_task(agents.worker(n)) for n in range(AGENTS)]
        started = time.monotonic()
        flood_run.deadline = started + fuzz_settings.abuse_seconds
        flood_run.started = started
        fuzzing = asyncio.create_task(
            fuzz(
                url,
                world,
                fuzz_settings,
                frames=10**9,
                seconds=fuzz_settings.abuse_seconds,
                connections=3,
                recorder=recorder,
                first_corpus=templates,
            )
        )
        await flood.run_until_done()
        flood_run.finished = time.monotonic()
        result = await fuzzing
        marks = [f"load {time.monotonic() - started:.1f} s"]
        agents.stop.set()
        async with asyncio.timeout(OP_DEADLINE * 3 + 10):
            await asyncio.gather(*workers)
        marks.append(f"agents done {time.monotonic() - started:.1f} s")

        db = await read_db(fuzz_postgres.dsn, event_id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
            w.version == db.version and dict(w.seats) == db.seat_map() for _, w in agents.watches
        ):
            await asyncio.sleep(0.1)
            db = await read_db(fuzz_postgres.dsn, event_id)
        views: list[WatcherView] = [watcher_view(name, w) for name, w in agents.watches]
        marks.append(f"settled {time.monotonic() - started:.1f} s")

    violations = check(history, db, views, max_seats_per_user=LIMIT)
    counts = history.counts()
    fuzz_report.extend(result.report())
    fuzz_report.append("  flood: " + flood_run.summary().replace("\n", "\n  "))
    fuzz_report.append(
        f"  history ({len(history.entries)} entries; {recorder.recorded} from fuzzers and flood): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    fuzz_report.append("  timeline: " + ", ".join(marks))
    fuzz_report.append(
        f"  PostgreSQL: version {db.version}, {len(db.live_holds())} held and "
        f"{len(db.reservations)} reserved seats; subscribers at {[v.version for v in views]}"
    )
    problems = [str(v) for v in violations[:30]]
    if counts.get("hold ok", 0) < 50 or counts.get("reserve ok", 0) < 5:
        problems.append(f"the load barely ran, the check proves little: {counts}")
    problems += await health_problems(abuse_server)
    findings = [*result.run.problems(), *flood_run.problems(), *log_problems(abuse_server.log())]
    fuzz_report.extend(f"  fuzz finding (test_fuzz_protocol fails on these): {line.splitlines()[0]}"
                       for line in findings)  # fmt: skip
    assert not problems, "\n".join(["", *problems, f"history: {counts}"])
