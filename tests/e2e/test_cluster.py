"""Three seatd processes on one PostgreSQL and one Redis, with faults injected under load.

Each test runs SDK clients (agents acting for many customers, every mutation with an
idempotency key, retried with the same key until it has an answer) against all three
instances, records every operation in a ``History`` and ends with ``check``: no seat reserved
twice, every acknowledged hold and reservation in PostgreSQL, nothing there that no operation
can have written, nobody over the per-user limit, and every subscriber's seat map equal to
PostgreSQL. The faults:

- kill -9 of the event's owner: another instance takes the event over, the killed one comes
  back and its clients carry on;
- SIGSTOP of the owner for longer than its lease: another instance takes over and serves; on
  SIGCONT the old owner's pending write is refused by the epoch fence and never reaches
  PostgreSQL;
- Redis restarted, then PostgreSQL restarted, under load: /readyz reports the outage, the
  service recovers by itself and loses nothing acknowledged.

Clients are spread over the instances (``support.cluster.ROUTING``); ``SEATD_TEST_ROUTING=owner``
sends every request to the owner instead, for working on the tests without forwarding.

PostgreSQL and Redis here are private to this module (the restart tests stop them), and always
left running when a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support.cluster import Cluster
from support.history import (
    History,
    Op,
    Violation,
    WatcherView,
    check,
    read_db,
    watcher_view,
)
from support.server import token
from support.services import running_postgres, running_redis, service_env
from support.waiting import until

from protocol.client import Backoff, SeatBlock, SeatClient, TemporaryError, Watch
from seatd.auth import Role
from seatd.devstack import PostgresServer, RedisServer

LIMIT = 4  # MAX_SEATS_PER_USER of the cluster
ROWS = tuple("ABCDEFGHIJ")
SEATS = [f"{row}-{n}" for row in ROWS for n in range(1, 21)]  # 200 seats for the load
# Row Z (Z-1, Z-2) is never touched by the load: the fencing test's contested seat.
WORKERS = 6
CUSTOMERS_PER_WORKER = 10
WATCHERS_PER_INSTANCE = 2
QUICK = Backoff(base=0.05, cap=0.5)
LOAD_BEFORE = 1.0  # seconds of load before each fault
SETTLE = 5.0  # seconds subscribers get to catch up after the load
OUTAGE = 2.0  # PostgreSQL and Redis stay down at least this long
LEASE_TTL = 2.0  # the cluster's SEATD_LEASE_TTL (support.cluster)
OP_DEADLINE = 12.0  # an operation retried (same idempotency key) this long ends as unknown


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def cluster(
    own_postgres: PostgresServer, own_redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Cluster]:
    running = Cluster(service_env(own_postgres, own_redis), tmp_path, MAX_SEATS_PER_USER=str(LIMIT))
    try:
        await running.start()
        yield running
    finally:
        running.close()
        # The next test gets its services back whatever this one did to them.
        if not own_redis.is_running():
            own_redis.resume()
        if not own_postgres.is_running():
            own_postgres.resume()


# --- the load ------------------------------------------------------------------------------


class Load:
    """Workers holding, reserving, releasing and refreshing seats of one event, recorded."""

    def __init__(self, cluster: Cluster, event_id: str) -> None:
        self.cluster = cluster
        self.event_id = event_id
        self.history = History()
        self.stop = asyncio.Event()
        self._clients: dict[tuple[str, str], SeatClient] = {}
        self._stack = contextlib.AsyncExitStack()
        self._workers: list[asyncio.Task[None]] = []
        self.watches: list[tuple[str, Watch]] = []
        self.started_at = time.monotonic()

    def mark(self, what: str) -> float:
        """Print (shown for failed tests, or with -rP) what happened when; returns the time."""
        now = time.monotonic()
        print(f"{now - self.started_at:6.2f} s  {what}  {self.history.counts()}")
        return now

    async def client(
        self, name: str, url: str, role: Role = "agent", request_timeout: float = 6
    ) -> SeatClient:
        """The SDK client of worker ``name`` connected to ``url`` (opened on first use)."""
        key = (name, url)
        if key not in self._clients:
            self._clients[key] = await self._stack.enter_async_context(
                SeatClient(
                    url, token=token(name, role), backoff=QUICK, request_timeout=request_timeout
                )
            )
        return self._clients[key]

    async def watch(self, name: str, n: int) -> None:
        """A subscriber of the event, ``name``, connected to instance ``n``."""
        watcher = await self.client(name, self.cluster.urls[n], "user")
        watch = await self._stack.enter_async_context(watcher.watch(self.event_id))
        self.watches.append((f"{name}@{self.cluster.ids[n]}", watch))

    def clients_of(self, name: str) -> list[SeatClient]:
        return [c for (n, _), c in self._clients.items() if n == name]

    async def op(
        self,
        process: str,
        home: int,
        name: str,
        target: Any,
        user: str,
        *,
        first_url: str | None = None,
    ) -> Any:
        """One recorded operation (``name`` of hold, refresh, release, reserve; ``target`` its
        seats or hold id), sent with one idempotency key until it has an answer (the first
        attempt to ``first_url`` if given, then wherever the routing says)."""
        key = str(uuid.uuid4())

        async def attempts() -> Any:
            deadline = time.monotonic() + OP_DEADLINE
            url = first_url
            while True:
                url = url or await self.cluster.url_for(home, self.event_id)
                client = await self.client(process, url)
                try:
                    return await _send(client, name, self.event_id, target, user, key)
                except (TemporaryError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                url = None
                await asyncio.sleep(0.05)

        args = {"seat_ids": tuple(target)} if name == "hold" else {"hold_id": target}
        return await self.history.run(
            process, name, attempts(), event_id=self.event_id, key=key, user=user, **args
        )

    async def _worker(self, n: int) -> None:
        rng = random.Random(n)
        process = f"agent-{n}"
        customers = [f"cust-{n}-{k}" for k in range(CUSTOMERS_PER_WORKER)]
        while not self.stop.is_set():
            user = rng.choice(customers)
            seats = rng.sample(SEATS, rng.choice((1, 1, 2)))
            hold = await self.op(process, n, "hold", seats, user)
            if hold is not None:
                choice = rng.random()
                then = []
                if choice < 0.15:
                    then.append("refresh")
                if choice < 0.35:
                    then.append("reserve")
                elif choice < 0.85:
                    then.append("release")
                # else: the hold is kept (it outlives the test)
                for name in then:
                    await self.op(process, n, name, hold.hold_id, user)
            await asyncio.sleep(rng.uniform(0.01, 0.04))

    async def start(self) -> None:
        """Open the watchers (spread routing) and start the workers."""
        if self.cluster.routing == "spread":
            for n in range(len(self.cluster.urls) * WATCHERS_PER_INSTANCE):
                await self.watch(f"watcher-{n}", self.cluster.home(n))
        self._workers = [asyncio.create_task(self._worker(n)) for n in range(WORKERS)]

    async def finish(self) -> None:
        """Stop the workers; each finishes the operation it is in (bounded by OP_DEADLINE)."""
        self.mark("stopping the load")
        self.stop.set()
        async with asyncio.timeout(OP_DEADLINE * 3 + 10):
            await asyncio.gather(*self._workers)
        self.mark("load stopped")

    async def close(self) -> None:
        self.stop.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._stack.aclose()

    def acked_since(self, since: float, processes: set[str] | None = None) -> int:
        return sum(
            1
            for e in self.history.entries
            if e.kind == "ok" and e.time >= since and (processes is None or e.process in processes)
        )

    def invoked_between(self, start: float, end: float) -> list[Op]:
        """The operations invoked in [start, end] (monotonic times)."""
        return [op for op in self.history.ops() if start <= op.invoke.time <= end]

    async def wait_acked(
        self, since: float, count: int, what: str, processes: set[str] | None = None
    ) -> None:
        deadline = time.monotonic() + 15
        while self.acked_since(since, processes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: only {self.acked_since(since, processes)} operations "
                    f"acknowledged in 15 s; history so far: {self.history.counts()}\n"
                    + self.cluster.logs_tail()
                )
            await asyncio.sleep(0.1)


async def _send(
    client: SeatClient, name: str, event_id: str, target: Any, user: str, key: str
) -> Any:
    if name == "hold":
        return await client.hold(event_id, target, on_behalf_of=user, idempotency_key=key)
    method = {"refresh": client.refresh, "release": client.release, "reserve": client.reserve}
    return await method[name](event_id, target, on_behalf_of=user, idempotency_key=key)


@contextlib.asynccontextmanager
async def load_on(cluster: Cluster) -> AsyncIterator[Load]:
    """A new event on ``cluster``, owned by instance 0, and a load on it (not started yet)."""
    async with SeatClient(cluster.urls[0], token=token("boss", "admin"), backoff=QUICK) as admin:
        event = await admin.create_event(
            "Scale-out",
            blocks=[
                SeatBlock(rows=ROWS, seats_per_row=20),
                SeatBlock(rows=("Z",), seats_per_row=2),
            ],
        )
        # The first use activates the event where it arrives: make instance 0 its owner.
        await admin.get_event(event.event_id)
    assert await cluster.wait_owner(event.event_id) == 0
    load = Load(cluster, event.event_id)
    try:
        yield load
    finally:
        await load.close()


async def verify(load: Load, own_postgres: PostgresServer) -> None:
    """Wait for the subscribers to settle, then check the history against PostgreSQL."""
    cluster, event_id = load.cluster, load.event_id
    counts = load.history.counts()
    assert counts.get("hold ok", 0) >= 20 and counts.get("reserve ok", 0) >= 5, (
        f"the load barely ran, the test proves little: {counts}"
    )
    if cluster.routing == "owner":
        # Development mode: subscribers follow nobody, so watch the final owner afresh.
        owner = await cluster.wait_owner(event_id)
        for n in range(WATCHERS_PER_INSTANCE):
            await load.watch(f"late-watcher-{n}", owner)
    watches = list(load.watches)
    db = await read_db(own_postgres.dsn, event_id)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if all(w.version == db.version and dict(w.seats) == db.seat_map() for _, w in watches):
            break
        await asyncio.sleep(0.1)
        db = await read_db(own_postgres.dsn, event_id)
    views: list[WatcherView] = [watcher_view(name, w) for name, w in watches]
    violations = check(load.history, db, views, max_seats_per_user=LIMIT)
    print(f"{event_id}: {counts}; PostgreSQL version {db.version}, {len(db.holds)} held seats,")
    print(f"  {len(db.reservations)} reserved; subscribers {[v.version for v in views]}")
    if violations:
        load.history.dump(cluster.processes[0].log_path.with_name("history.jsonl"))
    assert not violations, _report(violations, load)


def _report(violations: list[Violation], load: Load) -> str:
    lines = [f"{len(violations)} violations:"]
    lines += [f"  {v}" for v in violations[:30]]
    lines.append(f"history: {load.history.counts()}")
    lines.append(load.cluster.logs_tail(10))
    return "\n".join(lines)


def _outcomes(ops: list[Op]) -> dict[str, int]:
    """How ``ops`` ended, by status and error code: {"hold ok": 3, "hold fail x": 1, ...}."""
    outcomes: dict[str, int] = {}
    for op in ops:
        error = op.completion.error if op.completion else None
        key = " ".join(filter(None, (op.name, op.status, error)))
        outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


def _succeeded(outcomes: dict[str, int]) -> int:
    """How many of ``Load.invoked_between``'s operations ended ok."""
    return sum(n for outcome, n in outcomes.items() if outcome.split()[1] == "ok")


async def _readiness(cluster: Cluster) -> list[tuple[int, str, dict[str, Any]]]:
    replies = await asyncio.gather(
        *(asyncio.to_thread(cluster.readyz, n) for n in range(len(cluster.urls)))
    )
    return [(status, body["status"], body["checks"]) for status, body in replies]


# --- the tests -----------------------------------------------------------------------------


async def test_kill_9_of_the_owner_under_load(
    cluster: Cluster, own_postgres: PostgresServer
) -> None:
    async with load_on(cluster) as load:
        await load.start()
        await load.wait_acked(0, 30, "load before the kill")
        await asyncio.sleep(LOAD_BEFORE)

        killed_at = load.mark("kill -9 seatd-0")
        cluster.kill(0)
        in_flight = {op.invoke.index for op in load.history.ops() if op.completion is None}
        new_owner = await cluster.wait_owner(load.event_id, other_than=0, timeout=10)
        await load.wait_acked(killed_at, 20, f"traffic on the new owner {cluster.ids[new_owner]}")

        load.mark(f"{cluster.ids[new_owner]} took over and serves")
        await cluster.start(0)
        back_at = load.mark("seatd-0 restarted")
        # Every worker carries on, those connected to the killed instance after reconnecting.
        for n in range(WORKERS):
            await load.wait_acked(back_at, 3, f"agent-{n} after the restart", {f"agent-{n}"})
        await load.finish()
        # What was in flight at the kill got an answer (the SDK resent it after reconnecting).
        unanswered = [
            op.describe()
            for op in load.history.ops()
            if op.invoke.index in in_flight and op.status != "ok" and op.status != "fail"
        ]
        assert not unanswered, unanswered
        if cluster.routing == "spread":
            for n in range(WORKERS):
                if cluster.home(n) == 0:
                    (client,) = load.clients_of(f"agent-{n}")
                    assert client.connections >= 2, f"agent-{n} never reconnected"
        await verify(load, own_postgres)


async def test_a_paused_owner_is_fenced_out(cluster: Cluster, own_postgres: PostgresServer) -> None:
    async with load_on(cluster) as load:
        event_id = load.event_id
        epoch_of_first_owner = await _owner_epoch(own_postgres, event_id)
        # Connected before the pause, and patient: its request waits for the paused owner.
        await load.client("stale-agent", cluster.urls[0], request_timeout=OP_DEADLINE)
        await load.start()
        await load.wait_acked(0, 30, "load before the pause")
        await asyncio.sleep(LOAD_BEFORE)

        stopped_at = load.mark("SIGSTOP seatd-0")
        cluster.sigstop(0)
        # A request the paused owner receives but cannot answer: it still believes Z-1 free.
        stale_hold = asyncio.create_task(
            load.op("stale-agent", 0, "hold", ["Z-1"], "late", first_url=cluster.urls[0])
        )
        new_owner = await cluster.wait_owner(event_id, other_than=0, timeout=10)
        await load.wait_acked(stopped_at, 20, f"traffic on the new owner {cluster.ids[new_owner]}")
        assert await _owner_epoch(own_postgres, event_id) > epoch_of_first_owner
        # The new owner sells Z-1, which the paused owner's memory still has free.
        rival = await load.client("rival-agent", cluster.urls[new_owner])
        hold = await load.history.run(
            "rival-agent",
            "hold",
            rival.hold(event_id, ["Z-1"], on_behalf_of="rival"),
            event_id=event_id,
            seat_ids=("Z-1",),
            user="rival",
        )
        assert hold is not None, load.history.ops()[-1].describe()
        reservation = await load.history.run(
            "rival-agent",
            "reserve",
            rival.reserve(event_id, hold.hold_id, on_behalf_of="rival"),
            event_id=event_id,
            hold_id=hold.hold_id,
            user="rival",
        )
        assert reservation is not None, load.history.ops()[-1].describe()
        assert not stale_hold.done(), "the paused owner answered"

        load.mark(f"{cluster.ids[new_owner]} took over and reserved Z-1; SIGCONT seatd-0")
        cluster.sigcont(0)
        async with asyncio.timeout(OP_DEADLINE + 10):
            stale_result = await stale_hold
        assert stale_result is None, (
            f"the woken old owner's hold on Z-1, sold by the new owner meanwhile, was "
            f"acknowledged: {stale_result}"
        )
        stale_op = next(op for op in load.history.ops() if op.invoke.process == "stale-agent")
        assert stale_op.status == "fail", stale_op.describe()
        assert stale_op.completion is not None
        assert stale_op.completion.error == "seat_unavailable", stale_op.describe()
        await load.wait_acked(time.monotonic(), 10, "traffic after the old owner woke up")
        await load.finish()

        fenced = [
            r for r in cluster.log_records(0, "actor_fenced") if r.get("event_id") == event_id
        ]
        lost = [r for r in cluster.log_records(0, "lease_lost") if r.get("event_id") == event_id]
        assert fenced, (
            "the old owner never had a write refused by the fence "
            f"(lease_lost logged: {bool(lost)})\n{cluster.logs_tail(30, [0])}"
        )
        db = await read_db(own_postgres.dsn, event_id)
        assert [(r.seat_id, r.user_id) for r in db.reservations if r.seat_id == "Z-1"] == [
            ("Z-1", "rival")
        ]
        assert not [h for h in db.holds if h.user_id == "late"], "the stale hold was written"
        await verify(load, own_postgres)


async def test_redis_restart_under_load(
    cluster: Cluster, own_redis: RedisServer, own_postgres: PostgresServer
) -> None:
    async with load_on(cluster) as load:
        await load.start()
        await load.wait_acked(0, 30, "load before Redis stops")
        await asyncio.sleep(LOAD_BEFORE)

        down_at = load.mark("stop Redis")
        await asyncio.to_thread(own_redis.halt)

        async def all_degraded() -> bool:
            return all(
                (status, label, checks["redis"]) == (200, "degraded", "unavailable")
                for status, label, checks in await _readiness(cluster)
            )

        await until(all_degraded, 10, "every instance to report degraded readiness", interval=0.1)
        await asyncio.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))
        load.mark("every instance degraded; start Redis")
        await asyncio.to_thread(own_redis.resume)  # empty: every lease and mirror key is gone
        back_at = load.mark("Redis is back")

        await until(
            lambda: _all_ready(cluster), 15, "every instance to be ready again", interval=0.1
        )
        await load.wait_acked(back_at, 30, "traffic after Redis came back")
        await load.finish()
        during = _outcomes(load.invoked_between(down_at, back_at))
        print(f"operations invoked while Redis was down: {during}")
        assert _succeeded(during) >= 5, f"hardly anything got through the outage: {during}"
        await verify(load, own_postgres)


async def test_without_redis_the_owner_keeps_its_event(
    cluster: Cluster, own_redis: RedisServer, own_postgres: PostgresServer
) -> None:
    """Redis away for several leases: the instances that cannot forward leave the event to its
    living owner (PostgreSQL says who that is) instead of taking it, so the owner's clients
    are served throughout and nobody is fenced; the others' clients retry until Redis is
    back. Before, instances took the event from each other every lease."""
    async with load_on(cluster) as load:
        event_id = load.event_id
        epoch = await _owner_epoch(own_postgres, event_id)
        owners_agents = {f"agent-{n}" for n in range(WORKERS) if cluster.home(n) == 0}
        await load.start()
        await load.wait_acked(0, 30, "load before Redis stops")

        down_at = load.mark("stop Redis")
        await asyncio.to_thread(own_redis.halt)
        await asyncio.sleep(3 * LEASE_TTL)
        await load.wait_acked(down_at, 20, "the owner's clients without Redis", owners_agents)
        assert await _owner_epoch(own_postgres, event_id) == epoch, (
            "the event changed hands while Redis was away\n" + cluster.logs_tail(20)
        )
        fenced = [
            r for r in cluster.log_records(0, "actor_fenced") if r.get("event_id") == event_id
        ]
        assert not fenced, fenced

        await asyncio.to_thread(own_redis.resume)
        back_at = load.mark("Redis is back")
        await until(
            lambda: _all_ready(cluster), 15, "every instance to be ready again", interval=0.1
        )
        await load.wait_acked(back_at, 30, "traffic after Redis came back")
        await load.finish()
        await verify(load, own_postgres)


async def test_postgres_restart_under_load(cluster: Cluster, own_postgres: PostgresServer) -> None:
    async with load_on(cluster) as load:
        await load.start()
        await load.wait_acked(0, 30, "load before PostgreSQL stops")
        await asyncio.sleep(LOAD_BEFORE)

        down_at = load.mark("stop PostgreSQL")
        await asyncio.to_thread(own_postgres.halt)

        async def all_unavailable() -> bool:
            return all(
                (status, label, checks["postgres"]) == (503, "unavailable", "unavailable")
                for status, label, checks in await _readiness(cluster)
            )

        await until(
            all_unavailable, 10, "every instance to report PostgreSQL unavailable", interval=0.1
        )
        await asyncio.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))
        restart_at = load.mark("every instance unavailable; start PostgreSQL")
        await asyncio.to_thread(own_postgres.resume)
        back_at = load.mark("PostgreSQL is back")

        await until(
            lambda: _all_ready(cluster), 15, "every instance to be ready again", interval=0.1
        )
        await load.wait_acked(back_at, 30, "traffic after PostgreSQL came back")
        await load.finish()
        # Requests made during the outage were retried (same idempotency key) until it ended,
        # and then answered for good. Many holds by then find their seats taken (the load's
        # kept holds fill the event), so "answered" includes refusals.
        during = load.invoked_between(down_at, back_at)
        print(f"operations invoked while PostgreSQL was down: {_outcomes(during)}")
        waited = [op for op in during if op.completion and op.completion.time > restart_at]
        assert waited, f"no request waited for PostgreSQL: {_outcomes(during)}"
        unknown = [op for op in during if op.status == "info"]
        assert not unknown, f"requests of the outage left without an answer: {unknown}"
        await verify(load, own_postgres)


async def _all_ready(cluster: Cluster) -> bool:
    return all(label == "ready" for _, label, _ in await _readiness(cluster))


async def _owner_epoch(postgres: PostgresServer, event_id: str) -> int:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        return int(await conn.fetchval("SELECT owner_epoch FROM events WHERE id = $1", event_id))
    finally:
        await conn.close()
