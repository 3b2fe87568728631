"""The coordinator side of each scenario: set-up, driving the workers, results, verification.

Why a ``Harness``: every scenario needs the same things (a server started with the right
settings, its CPU and memory measured over exactly the load window, workers started and
stopped cleanly, a progress bar) and differs only in its set-up and in what it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from seatd.bench.acks import AckLog
from seatd.bench.admin import AdminClient
from seatd.bench.layout import EventLayout
from seatd.bench.serverstats import actor_stats, scrape
from seatd.bench.stack import (
    BenchError,
    ProcessMeter,
    SeatdProcess,
    Services,
    listener_pid,
    summarize_log,
)
from seatd.bench.stats import OpAggregate, OpData, OpSummary
from seatd.bench.verify import Verdict, seat_counts, verify_run
from seatd.bench.workers import WorkerPool, WorkerSpec

__all__ = ["SCENARIO_RUNNERS", "Cluster", "Harness", "RunResult", "run_baseline", "run_forwarding"]

# Hold requests with these outcomes may or may not have created a hold.
_UNKNOWN_OUTCOME = ("no_reply", "connection_closed", "unavailable", "internal_error")
MB = 1024 * 1024
_SHM = Path("/dev/shm")


@dataclass
class RunResult:
    """One run of one scenario: everything the report prints."""

    scenario: str
    label: str
    params: dict[str, Any]
    window_s: float
    ops: list[OpSummary]
    resources: dict[str, Any]
    loadgen: dict[str, Any]
    metrics: dict[str, Any]
    verdict: Verdict
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "label": self.label,
            "params": self.params,
            "window_s": round(self.window_s, 3),
            "wall_s": round(self.wall_s, 2),
            "ops": {op.name: op.as_json() for op in self.ops},
            "resources": self.resources,
            "loadgen": self.loadgen,
            "metrics": self.metrics,
            "verification": self.verdict.as_json(),
            "notes": self.notes,
        }


class Progress:
    """A tqdm bar on stderr, or nothing (disabled, or tqdm not installed)."""

    def __init__(self, enabled: bool, desc: str, total: int | None, unit: str) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                return
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )

    def set(self, value: int) -> None:
        if self._bar is not None:
            self._bar.n = value
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Window:
    """Resource meters over a load window: the server, PostgreSQL and Redis, when known; and
    what the servers' actors did in it, by their own count (``serverstats``)."""

    def __init__(self, meters: dict[str, ProcessMeter], server_urls: Sequence[str] = ()) -> None:
        self.meters = meters
        self.started = 0.0
        self.stopped = 0.0
        self._server_urls = list(server_urls)
        self._metrics_before: list[dict[str, float] | None] = []
        self._metrics_after: list[dict[str, float] | None] = []

    def count_from_here(self) -> None:
        """Read the actors' counters now, before the load starts: read once it runs, the
        first commands would fall before the window (a read takes milliseconds, one
        instance after another)."""
        self._metrics_before = [scrape(url) for url in self._server_urls]

    def start(self) -> None:
        if not self._metrics_before:
            self.count_from_here()
        self.started = time.time()
        for meter in self.meters.values():
            meter.start()

    def sample(self) -> None:
        for meter in self.meters.values():
            meter.sample()

    def stop(self) -> None:
        self.stopped = time.time()
        for meter in self.meters.values():
            meter.stop()
        self._metrics_after = [scrape(url) for url in self._server_urls]

    def resources(self) -> dict[str, Any]:
        """Per meter: CPU (and for servers memory). Several instances (meters named
        ``server:<instance id>``): ``server`` is their sum and ``instances`` each one."""
        result: dict[str, Any] = {}
        instances: dict[str, Any] = {}
        for name, meter in self.meters.items():
            entry: dict[str, Any] = {
                "cpu_percent": round(meter.cpu_percent, 1),
                "cpu_s": round(meter.cpu_s, 2),
            }
            if name == "server" or name.startswith("server:"):
                entry["rss_mb"] = round(meter.rss_end / MB, 1)
                entry["rss_peak_mb"] = round(meter.rss_peak / MB, 1)
            if name.startswith("server:"):
                instances[name.removeprefix("server:")] = entry
            else:
                result[name] = entry
        if instances:
            servers = [m for n, m in self.meters.items() if n.startswith("server:")]
            cpu_s = sum(m.cpu_s for m in servers)
            wall_s = max(m.wall_s for m in servers)
            total = {
                "cpu_percent": round(100.0 * cpu_s / wall_s, 1) if wall_s > 0 else 0.0,
                "cpu_s": round(cpu_s, 2),
                "rss_mb": round(sum(m.rss_end for m in servers) / MB, 1),
                "rss_peak_mb": round(sum(m.rss_peak for m in servers) / MB, 1),
                "instances": len(servers),
            }
            result = {"server": total, "instances": instances, **result}
        if self._metrics_after:
            actors = actor_stats(self._metrics_before, self._metrics_after)
            if actors is not None:
                result["actors"] = actors
        return result


@dataclass
class Server:
    url: str
    pid: int | None
    process: SeatdProcess | None = None
    instance_id: str | None = None


@dataclass
class Cluster:
    """The seatd instances of one run, all on the same PostgreSQL and Redis (one unless
    ``--instances``); the first is where the coordinator creates events."""

    servers: list[Server]
    # instance id -> what its log said at warning level and above (``summarize_log``), filled
    # in when the instances have stopped.
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.servers)

    @property
    def url(self) -> str:
        return self.servers[0].url

    def targets(self, indices: Sequence[int] | None = None) -> list[tuple[str, int]]:
        """(url, instance index) for the load's connections, dealt round-robin."""
        chosen = range(len(self.servers)) if indices is None else indices
        return [(self.servers[i].url, i) for i in chosen]

    def index_of(self, instance_id: str | None) -> int:
        for i, server in enumerate(self.servers):
            if server.instance_id == instance_id:
                return i
        return -1


class Harness:
    """One ``seatd bench`` invocation: where the server is, how to start it, shared helpers."""

    def __init__(
        self,
        *,
        secret: str,
        client: str,
        services: Services | None,
        url: str | None,
        server_pid: int | None,
        progress: bool,
        group_commit: bool = True,
        retry_keys: bool = True,
        server_env: dict[str, str] | None = None,
    ) -> None:
        self.secret = secret
        self.client = client
        self.services = services
        self.url = url
        self.server_pid = server_pid
        self.show_progress = progress
        self.group_commit = group_commit
        self.retry_keys = retry_keys
        self.server_env = dict(server_env or {})
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{secrets.token_hex(3)}"
        self._counter = 0

    @property
    def postgres_env(self) -> dict[str, str] | None:
        if self.services is not None:
            return self.services.postgres_env
        env = {k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")}
        return env if "POSTGRES_PORT" in env else None

    @property
    def redis_env(self) -> dict[str, str] | None:
        if self.services is not None:
            return self.services.redis_env
        env = {k: v for k, v in os.environ.items() if k.startswith("REDIS_")}
        return env if "REDIS_PORT" in env else None

    def prefix(self, scenario: str) -> str:
        """A fresh event id prefix: runs never share events, even against one database."""
        self._counter += 1
        return f"{self.run_id}-{self._counter}{scenario[:2]}"

    @contextlib.asynccontextmanager
    async def server(self, overrides: dict[str, str]) -> AsyncIterator[Server]:
        """The server for one run: started here with these settings, or the one at --url."""
        if self.services is None:
            assert self.url is not None
            pid = self.server_pid
            parts = urlsplit(self.url)
            if pid is None and parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port:
                pid = listener_pid(parts.port)
            yield Server(self.url, pid)
            return
        process = SeatdProcess(self._server_env(overrides))
        await asyncio.to_thread(process.start)
        try:
            yield Server(process.url, process.pid, process)
        finally:
            problems = process.problems()
            code = await asyncio.to_thread(process.stop)
            if problems:
                print(
                    f"seatd logged {len(problems)} error(s), e.g.: {problems[0][:500]}",
                    file=sys.stderr,
                )
            if code not in (0, None):
                print(f"seatd exited with code {code}", file=sys.stderr)

    def _server_env(self, overrides: dict[str, str]) -> dict[str, str]:
        assert self.services is not None
        env = {**self.services.postgres_env, **self.services.redis_env}
        env["SEATD_JWT_SECRET"] = self.secret
        env["SEATD_METRICS"] = "on"  # the actors' own count of the window (``serverstats``)
        if not self.group_commit:
            env["SEATD_MAX_BATCH"] = "1"
        env.update(overrides)
        env.update(self.server_env)  # the user's --server-env has the last word
        return env

    @contextlib.asynccontextmanager
    async def cluster(
        self, overrides: dict[str, str], instances: int = 1
    ) -> AsyncIterator[Cluster]:
        """``instances`` seatd processes on the same services, each with its own port and
        SEATD_INSTANCE_ID (``bench-<port>``); one instance is exactly ``server()``."""
        if instances == 1:
            async with self.server(overrides) as server:
                yield Cluster([server])
            return
        if self.services is None:
            raise BenchError("--instances needs servers started here, not --url")
        env = self._server_env(overrides)
        processes = [SeatdProcess(env) for _ in range(instances)]
        cluster = Cluster(
            [Server(p.url, None, p, p.instance_id) for p in processes]  # pids set once started
        )
        try:
            # Every start finishes (or fails) before any stop: a stop racing a start would not
            # see the process it started.
            started = await asyncio.gather(
                *(asyncio.to_thread(p.start) for p in processes), return_exceptions=True
            )
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome
            for server, process in zip(cluster.servers, processes, strict=True):
                server.pid = process.pid
            yield cluster
        finally:
            codes = await asyncio.gather(
                *(asyncio.to_thread(p.stop) for p in processes), return_exceptions=True
            )
            for process, code in zip(processes, codes, strict=True):
                summary = summarize_log(process.final_log)
                cluster.logs[process.instance_id] = summary
                errors = [k for k in summary["counts"] if not k.startswith("warning:")]
                if errors:
                    print(
                        f"seatd {process.instance_id} logged {errors}, e.g.: "
                        f"{summary['examples'].get(errors[0], '')[:500]}",
                        file=sys.stderr,
                    )
                if isinstance(code, BaseException) or code not in (0, None):
                    print(f"seatd {process.instance_id} exited with {code!r}", file=sys.stderr)

    def window(self, server: Server | Cluster) -> Window:
        meters: dict[str, ProcessMeter] = {}
        candidates: list[tuple[str, int | None, bool]]
        if isinstance(server, Cluster) and len(server) > 1:
            candidates = [(f"server:{s.instance_id}", s.pid, False) for s in server.servers]
        else:
            first = server.servers[0] if isinstance(server, Cluster) else server
            candidates = [("server", first.pid, False)]
        if self.services is not None:
            for name, port, children in (
                ("postgres", self.services.postgres_port, True),
                ("redis", self.services.redis_port, False),
            ):
                candidates.append((name, listener_pid(port) if port else None, children))
        import psutil  # type: ignore[import-untyped,unused-ignore]

        for name, pid, children in candidates:
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    meters[name] = ProcessMeter(pid, children=children, label=name)
        servers = server.servers if isinstance(server, Cluster) else [server]
        return Window(meters, [s.url for s in servers])

    def progress(self, desc: str, total: int | None, unit: str) -> Progress:
        return Progress(self.show_progress, desc, total, unit)

    def spec(self, index: int, load: str, url: str, params: dict[str, Any]) -> WorkerSpec:
        params = {**params, "retry_keys": self.retry_keys}
        return WorkerSpec(index, load, url, self.secret, self.client, params)

    async def connect_workers(self, pool: WorkerPool, total: int, what: str) -> None:
        """Start the workers and wait until each has opened its connections."""
        pool.start()
        bar = self.progress(f"connecting {what}", total, "conn")
        try:
            timeout = 120 + total / 50
            await pool.expect("ready", timeout=timeout, tick=lambda: bar.set(pool.progress_total()))
        finally:
            bar.close()

    async def go(
        self, pool: WorkerPool, window: Window, duration: float, bucket: float | None = None
    ) -> float:
        """Start every worker's load at the same wall-clock instant; returns that instant.

        ``bucket``: the width of the timeline's buckets (default: about 40 over the run).
        """
        if bucket is None:
            bucket = 1.0 if duration >= 40 else 0.5 if duration >= 20 else 0.25
        window.count_from_here()
        t0 = time.time() + 0.3
        pool.broadcast("go", {"t0": t0, "duration": duration, "bucket": bucket})
        await asyncio.sleep(max(0.0, t0 - time.time()))
        window.start()
        return t0

    async def results(
        self,
        pool: WorkerPool,
        window: Window,
        *,
        desc: str,
        total: int | None,
        unit: str,
        timeout: float,
        indices: Sequence[int] | None = None,
        kind: str = "result",
        base: int = 0,
    ) -> list[Any]:
        bar = self.progress(desc, total, unit)

        def tick() -> None:
            window.sample()
            bar.set(pool.progress_total() - base)

        try:
            return await pool.expect(kind, indices=indices, timeout=timeout, tick=tick)
        finally:
            bar.close()

    async def drive(
        self,
        server: Server | Cluster,
        load: str,
        shared: dict[str, Any],
        connections: int,
        workers: int,
        *,
        what: str,
        desc: str,
        unit: str,
        duration: float,
        timeout: float,
        total: int | None = None,
        bucket: float | None = None,
        targets: list[tuple[str, int]] | None = None,
    ) -> tuple[Window, float, list[dict[str, Any]]]:
        """Split the connections over worker processes, connect them, start the load at one
        instant and collect every worker's result: the window, the start time, the results.

        Several instances: the connections are dealt round-robin over ``targets`` (default:
        every instance), like a load balancer would."""
        if targets is None and isinstance(server, Cluster) and len(server) > 1:
            targets = server.targets()
        if targets is not None:
            shared = {**shared, "targets": targets}
        specs = [
            self.spec(i, load, server.url, {**shared, "connections": count, "conn_offset": offset})
            for i, (offset, count) in enumerate(_split(connections, workers))
        ]
        pool = WorkerPool(specs)
        try:
            await self.connect_workers(pool, connections, what)
            window = self.window(server)
            base = pool.progress_total()
            t0 = await self.go(pool, window, duration, bucket=bucket)
            results = await self.results(
                pool, window, desc=desc, total=total, unit=unit, timeout=timeout, base=base
            )
            window.stop()
        finally:
            await pool.close()
        return window, t0, results


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """(offset, count) of each of ``parts`` near-equal shares of ``total``."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def _merge(results: Sequence[dict[str, Any]], key: str) -> OpAggregate:
    aggregate = OpAggregate()
    for result in results:
        data: OpData = result[key]
        aggregate.add(data)
    return aggregate


def _loadgen(results: Sequence[dict[str, Any]], window_s: float, client: str) -> dict[str, Any]:
    cpu = sum(float(r["cpu_s"]) for r in results)
    return {
        "workers": len(results),
        "client": client,
        "cpu_s": round(cpu, 2),
        "cpu_percent": round(100.0 * cpu / window_s, 1) if window_s > 0 else 0.0,
    }


def _cpu_per_request(
    resources: dict[str, Any], loadgen: dict[str, Any], requests: int
) -> dict[str, float]:
    """Each process's CPU per request answered in the window, in microseconds: what an A/B of
    two commits compares, since it moves less with the machine's hour than throughput does."""
    if not requests:
        return {}
    out: dict[str, float] = {}
    for name, entry in (
        ("server", resources.get("server")),
        ("postgres", resources.get("postgres")),
        ("loadgen", loadgen),
    ):
        if entry:
            out[f"{name}_cpu_us_per_request"] = round(1e6 * float(entry["cpu_s"]) / requests, 1)
    return out


def _closed(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for code, n in result.get("closed", {}).items():
            total[code] = total.get(code, 0) + n
    return total


def _unknown_holds(hold: OpAggregate) -> int:
    summary = hold.summary("hold", 1.0)
    return sum(summary.errors.get(code, 0) for code in _UNKNOWN_OUTCOME)


# --- throughput and events --------------------------------------------------------------------


async def run_throughput(
    h: Harness, p: dict[str, Any], label: str = "", clients_on: int | None = None
) -> RunResult:
    """``clients_on``: every connection on this instance (several instances; the event is
    owned by instance 0), instead of round-robin over all of them."""
    layouts = [EventLayout(f"{h.prefix('throughput')}-0", int(p["seats"]), 1000)]
    return await _purchase(h, "throughput", label, p, layouts, clients_on)


async def run_events(h: Harness, p: dict[str, Any]) -> RunResult:
    seats = int(p["seats"])
    prefix = h.prefix("events")
    layouts = [
        EventLayout(f"{prefix}-{i}", seats, min(1000, seats)) for i in range(int(p["events"]))
    ]
    return await _purchase(h, "events", "", p, layouts)


async def _purchase(
    h: Harness,
    scenario: str,
    label: str,
    p: dict[str, Any],
    layouts: list[EventLayout],
    clients_on: int | None = None,
) -> RunResult:
    started = time.monotonic()
    workers, connections = int(p["workers"]), int(p["connections"])
    duration = float(p["duration"])
    instances = int(p.get("instances", 1))
    event_ids = [lay.event_id for lay in layouts]
    owners: list[int] = []
    owners_after: list[int] = []
    # Open loop may queue many requests on one connection: let the server read them all.
    async with h.cluster({"SEATD_MAX_INFLIGHT": "100000"}, instances) as cluster:
        admin = await AdminClient.open(cluster.url, h.secret)
        try:
            await admin.call_many("create_event", [lay.create_request() for lay in layouts])
            if instances == 1:
                # Load every event now, so the window measures steady state, not activation.
                await admin.call_many("get_event", [{"event_id": e} for e in event_ids])
        finally:
            await admin.close()
        shared: dict[str, Any] = {}
        targets = None
        if instances > 1:
            # Event i is first used, so owned, by instance i mod N: the owners are spread
            # like first uses behind a load balancer would spread them.
            await _activate_spread(h, cluster, event_ids)
            owners = await _owners(h, cluster, event_ids)
            shared["owners"] = owners
            if clients_on is not None:
                targets = cluster.targets([clients_on])
        rate = p.get("rate")
        window, t0, results = await h.drive(
            cluster,
            "purchase",
            {
                "events": [(lay.event_id, lay.seats, lay.per_row) for lay in layouts],
                "workers": workers,
                "pipeline": int(p["pipeline"]),
                "rate": None if rate is None else float(rate) / workers,
                "max_per_user": 10_000,
                "user_prefix": h.run_id,
                "seed": int(p["seed"]),
                **shared,
            },
            connections,
            workers,
            what="purchasers",
            desc=f"{scenario}{' ' + label if label else ''}",
            unit="purchase",
            duration=duration,
            timeout=duration + 120,
            targets=targets,
        )
        if instances > 1:
            owners_after = await _owners(h, cluster, event_ids)
    window_s = max(max(float(r["t_last"]) for r in results) - t0, 1e-3)
    hold, reserve = _merge(results, "hold"), _merge(results, "reserve")
    logs: list[AckLog] = [r["acks"] for r in results]
    ops = [hold.summary("hold", window_s), reserve.summary("reserve", window_s)]
    exhausted = sum(int(r["exhausted"]) for r in results)
    metrics: dict[str, Any] = {
        "events": len(layouts),
        "seats_per_event": layouts[0].seats,
        "purchases": reserve.ok,
        "purchases_per_s": round(reserve.ok / window_s, 1),
        "requests_per_s": round((hold.count + reserve.count) / window_s, 1),
        "mode": "open loop" if p.get("rate") else "closed loop",
        "group_commit": h.group_commit,
        "seat_supply_exhausted": exhausted,
        "closed_connections": _closed(results),
    }
    notes = []
    if exhausted:
        notes.append(
            f"{exhausted} holds not sent: seats (or the per-user limit) ran out; "
            "use --seats or a shorter --duration"
        )
    if instances > 1:
        on_owner, forwarded = _merge(results, "hold_on_owner"), _merge(results, "hold_forwarded")
        ops += [
            split.summary(name, window_s)
            for name, split in (("hold on owner", on_owner), ("hold forwarded", forwarded))
            if split.count
        ]
        split_total = on_owner.count + forwarded.count
        metrics.update(
            instances=instances,
            clients_on="every instance" if clients_on is None else f"instance {clients_on}",
            forwarded_share=round(forwarded.count / split_total, 3) if split_total else None,
            server_cpu_ms_per_purchase=_cpu_ms_per(window.resources(), "server", reserve.ok),
        )
        metrics.update(_ownership(cluster, owners, owners_after))
        notes += _cluster_notes(cluster, owners, owners_after)
    verdict = await verify_run(h.postgres_env, layouts, logs, unknown_holds=_unknown_holds(hold))
    resources, loadgen = window.resources(), _loadgen(results, window_s, h.client)
    metrics.update(_cpu_per_request(resources, loadgen, hold.count + reserve.count))
    return RunResult(
        scenario=scenario,
        label=label or _label(h, instances),
        params={k: v for k, v in p.items()},
        window_s=window_s,
        ops=ops,
        resources=resources,
        loadgen=loadgen,
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )


async def run_baseline(h: Harness, p: dict[str, Any]) -> tuple[RunResult, RunResult]:
    """Throughput with group commit, then without (SEATD_MAX_BATCH=1), same load."""
    h.group_commit = True
    on = await run_throughput(h, p, "group commit")
    h.group_commit = False
    try:
        off = await run_throughput(h, p, "no group commit")
    finally:
        h.group_commit = True
    return on, off


async def run_forwarding(h: Harness, p: dict[str, Any]) -> tuple[RunResult, RunResult]:
    """The cost of forwarding: throughput on ``instances`` instances, the event owned by the
    first; every client on the owner, then every client on the second instance (each command
    forwarded to the owner through Redis and its reply routed back), same load."""
    if int(p.get("instances", 1)) < 2:
        raise BenchError("--via-non-owner needs --instances 2 or more")
    on_owner = await run_throughput(h, p, "clients on the owner", clients_on=0)
    forwarded = await run_throughput(h, p, "clients on a non-owner", clients_on=1)
    return on_owner, forwarded


# --- several instances ------------------------------------------------------------------------


async def _activate_spread(h: Harness, cluster: Cluster, event_ids: Sequence[str]) -> None:
    """Load every event now (the window measures steady state, not activation), event i on
    instance i mod N: the first instance to use an event takes its lease, so owns it."""
    n = len(cluster)
    admins = [await AdminClient.open(server.url, h.secret) for server in cluster.servers]
    try:
        await asyncio.gather(
            *(
                admin.call_many("get_event", [{"event_id": e} for e in event_ids[i::n]])
                for i, admin in enumerate(admins)
                if event_ids[i::n]
            )
        )
    finally:
        for admin in admins:
            await admin.close()


def _redis_client(h: Harness) -> Any:
    """A Redis client on the run's Redis, or None when it is not known."""
    env = h.redis_env
    if env is None:
        return None
    from redis.asyncio import Redis

    return Redis(
        host=env.get("REDIS_HOST", "127.0.0.1"),
        port=int(env["REDIS_PORT"]),
        db=int(env.get("REDIS_DB", "0")),
        password=env.get("REDIS_PASSWORD") or None,
    )


async def _owners(h: Harness, cluster: Cluster, event_ids: Sequence[str]) -> list[int]:
    """The index of the instance holding each event's lease (-1: none, or not an instance of
    this run), read from Redis."""
    from seatd.adapters.redis import lease_key

    client = _redis_client(h)
    if client is None:
        return [-1] * len(event_ids)
    values: list[Any] = []
    try:
        for lo in range(0, len(event_ids), 1000):
            values += await client.mget([lease_key(e) for e in event_ids[lo : lo + 1000]])
    except Exception:
        return [-1] * len(event_ids)
    finally:
        await client.aclose()
    return [cluster.index_of(v.decode() if isinstance(v, bytes) else v) for v in values]


def _ownership(cluster: Cluster, before: list[int], after: list[int]) -> dict[str, Any]:
    owned = {s.instance_id or str(i): before.count(i) for i, s in enumerate(cluster.servers)}
    moved = sum(1 for a, b in zip(before, after, strict=False) if a != b)
    return {"owned_events": owned, "owner_changes": moved}


def _label(h: Harness, instances: int) -> str:
    if h.url is not None:  # the server's own settings: not known here
        return "running server"
    if instances == 1:
        return "group commit" if h.group_commit else "no group commit"
    return f"{instances} instances" + ("" if h.group_commit else ", no group commit")


def _cpu_ms_per(resources: dict[str, Any], name: str, count: int) -> float | None:
    entry = resources.get(name)
    if not entry or not count:
        return None
    return round(1000.0 * float(entry["cpu_s"]) / count, 3)


def _cluster_notes(cluster: Cluster, before: list[int], after: list[int]) -> list[str]:
    """What the instances logged (warnings and errors), and ownership surprises."""
    notes = []
    unowned = before.count(-1)
    if unowned:
        notes.append(f"{unowned} events had no lease of this run's instances after loading")
    moved = sum(1 for a, b in zip(before, after, strict=False) if a != b)
    if moved:
        notes.append(f"{moved} events changed owner during the run")
    logged = False
    for instance_id, summary in cluster.logs.items():
        counts = summary["counts"]
        if counts:
            logged = True
            listed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            notes.append(f"{instance_id} logged: {listed}")
    if not logged and cluster.logs:
        notes.append("no instance logged a warning or an error")
    return notes


# --- rush -------------------------------------------------------------------------------------


async def run_rush(h: Harness, p: dict[str, Any]) -> RunResult:
    started = time.monotonic()
    seats, connections, workers = int(p["seats"]), int(p["connections"]), int(p["workers"])
    duration = float(p["duration"])
    layout = EventLayout(f"{h.prefix('rush')}-0", seats, min(50, seats))
    instances = int(p.get("instances", 1))
    async with h.cluster({}, instances) as server:
        admin = await AdminClient.open(server.url, h.secret)
        try:
            await admin.call("create_event", **layout.create_request(max_seats_per_user=8))
            await admin.call("get_event", event_id=layout.event_id)
        finally:
            await admin.close()
        window, t0, results = await h.drive(
            server,
            "rush",
            {
                "event": (layout.event_id, layout.seats, layout.per_row),
                "hot_fraction": 0.2,
                "hot_weight": 0.8,
                "max_attempts": 50,
                "user_prefix": h.run_id,
                "seed": int(p["seed"]),
            },
            connections,
            workers,
            what="buyers",
            desc="rush",
            unit="buyer",
            duration=duration,
            timeout=duration + 60,
            total=connections,
            bucket=0.05,  # a sale is over in seconds: a fine timeline
        )
        owners = await _owners(h, server, [layout.event_id]) if instances > 1 else []
    hold, reserve = _merge(results, "hold"), _merge(results, "reserve")
    logs: list[AckLog] = [r["acks"] for r in results]
    seats_bought = sum(int(r["seats_bought"]) for r in results)
    buyers = sum(int(r["buyers"]) for r in results)
    last = max(float(r["t_last_reserve"]) for r in results)
    sold_out = seats_bought == seats
    window_s = max((last - t0) if last else window.stopped - t0, 1e-3)
    hold_summary = hold.summary("hold", window_s)
    metrics = {
        "seats": seats,
        "buyers": connections,
        "buyers_served": buyers,
        "buyers_without_seats": connections - buyers,
        "seats_sold": seats_bought,
        "sold_out": sold_out,
        "time_to_sell_out_s": round(last - t0, 3) if sold_out else None,
        "hold_attempts": hold.count,
        "conflicts": hold_summary.errors.get("seat_unavailable", 0),
        "gave_up": sum(int(r["gave_up"]) for r in results),
        "closed_connections": _closed(results),
    }
    verdict = Verdict()
    per_seat = seat_counts(logs, 1)[0]
    doubles = [layout.seat_id(s) for s, n in per_seat.items() if n > 1]
    verdict.add(
        "no seat in two acknowledged holds",
        not doubles,
        f"{len(per_seat)} seats acknowledged" + (f"; twice: {doubles[:5]}" if doubles else ""),
    )
    if sold_out:
        verdict.add(
            "sold out: every seat in exactly one acknowledged hold",
            len(per_seat) == seats and not doubles,
            f"{len(per_seat)} of {seats} seats",
        )
    await verify_run(
        h.postgres_env, [layout], logs, unknown_holds=_unknown_holds(hold), verdict=verdict
    )
    notes = [] if sold_out else [f"not sold out: {seats_bought} of {seats} seats sold"]
    if instances > 1:
        metrics["instances"] = instances
        notes += _cluster_notes(server, [0], owners)
    resources, loadgen = window.resources(), _loadgen(results, window_s, h.client)
    metrics.update(_cpu_per_request(resources, loadgen, hold.count + reserve.count))
    return RunResult(
        scenario="rush",
        label=_label(h, instances),
        params=dict(p),
        window_s=window_s,
        ops=[hold_summary, reserve.summary("reserve", window_s)],
        resources=resources,
        loadgen=loadgen,
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )


# --- fanout -----------------------------------------------------------------------------------


def _time_table(slots: int) -> IO[bytes]:
    """The file behind ``loads.TimeTable`` (in memory, /dev/shm, where there is one)."""
    table = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the caller closes it
        prefix="seatd-bench-", dir=_SHM if _SHM.is_dir() else None
    )
    table.truncate(slots * 16)
    table.flush()
    return table


async def run_fanout(h: Harness, p: dict[str, Any]) -> RunResult:
    started = time.monotonic()
    subscribers, workers = int(p["connections"]), int(p["workers"])
    writers, duration = int(p["writers"]), float(p["duration"])
    rate = float(p.get("rate") or 500.0)
    instances = int(p.get("instances", 1))
    seats = min(100_000, max(writers * 100, int(rate * duration * 1.1) + writers * 10))
    layout = EventLayout(f"{h.prefix('fanout')}-0", seats, min(1000, seats))
    slots = int(rate * duration * 1.5) + 10_000
    with _time_table(slots) as table:
        async with h.cluster({}, instances) as server:
            admin = await AdminClient.open(server.url, h.secret)
            try:
                await admin.call("create_event", **layout.create_request())
                await admin.call("get_event", event_id=layout.event_id)
                common = {
                    "event": (layout.event_id, layout.seats, layout.per_row),
                    "table": table.name,
                    "slots": slots,
                    "user_prefix": h.run_id,
                }
                if instances > 1:  # subscribers and writers round-robin over the instances
                    common["targets"] = server.targets()
                specs = [
                    h.spec(
                        i,
                        "fanout_subscriber",
                        server.url,
                        {**common, "connections": count, "conn_offset": offset},
                    )
                    for i, (offset, count) in enumerate(_split(subscribers, workers))
                ]
                writer_index = len(specs)
                specs.append(
                    h.spec(
                        writer_index,
                        "fanout_writer",
                        server.url,
                        {
                            **common,
                            "writers": writers,
                            "rate": rate,
                            "live_cap": max(1, min(9000, seats // writers // 2)),
                        },
                    )
                )
                subs = list(range(writer_index))
                pool = WorkerPool(specs)
                try:
                    await h.connect_workers(pool, subscribers + writers, "subscribers")
                    window = h.window(server)
                    base = pool.progress_total()
                    t0 = await h.go(pool, window, duration)
                    (writer,) = await h.results(
                        pool,
                        window,
                        desc="fanout",
                        total=int(rate * duration),
                        unit="change",
                        timeout=duration + 60,
                        indices=[writer_index],
                        base=base,
                    )
                    version = int(
                        (await admin.call("get_event", event_id=layout.event_id))["version"]
                    )
                    pool.broadcast("final", version, indices=subs)
                    results = await pool.expect(
                        "result", indices=subs, timeout=90, tick=window.sample
                    )
                    window.stop()
                    owners = await _owners(h, server, [layout.event_id]) if instances > 1 else []
                finally:
                    await pool.close()
            finally:
                await admin.close()
    window_s = max(window.stopped - t0, 1e-3)
    write_s = duration
    hold, release = _merge([writer], "hold"), _merge([writer], "release")
    delivery, e2e = _merge(results, "delivery"), _merge(results, "end_to_end")
    changes = hold.ok + release.ok
    frames = sum(int(r["frames"]) for r in results)
    covered = sum(int(r["covered"]) for r in results)
    expected = subscribers * version
    gaps = sum(int(r["gaps"]) for r in results)
    missing = sum(int(r["missing"]) for r in results)
    duplicates = sum(int(r["duplicates"]) for r in results)
    behind = sum(int(r["behind"]) for r in results)
    closed = _closed(results)
    metrics = {
        "subscribers": subscribers,
        "writers": writers,
        "target_changes_per_s": rate,
        "changes": changes,
        "changes_per_s": round(changes / write_s, 1),
        "versions": version,
        "changes_per_version": round(changes / version, 2) if version else None,
        "pushes_per_subscriber": round(frames / subscribers, 1),
        "versions_per_push": round(covered / frames, 2) if frames else None,
        "deliveries": frames,
        "deliveries_per_s": round(frames / window_s, 1),
        "versions_received": covered,
        "versions_expected": expected,
        "gaps": gaps,
        "missing_versions": missing,
        "duplicates": duplicates,
        "subscribers_behind": behind,
        "subscribers_closed": closed,
        "unmatched": sum(int(r["unmatched"]) for r in results),
        "delivered_before_writer_reply": sum(int(r["early"]) for r in results),
        "writer_starved": int(writer["starved"]),
        "changes_never_pushed": int(writer["unpushed"]),
    }
    verdict = Verdict()
    verdict.add(
        "every subscriber got every version, in order, once",
        gaps == 0 and missing == 0 and duplicates == 0 and behind == 0 and not closed,
        f"{subscribers} subscribers to version {version}: gaps {gaps}, missing {missing}, "
        f"duplicates {duplicates}, behind {behind}, closed {sum(closed.values())}",
    )
    verdict.add(
        "versions add up (subscribers x versions)",
        covered == expected,
        f"{covered} of {expected}",
    )
    verdict.add(
        "every acknowledged change was pushed",
        int(writer["unpushed"]) == 0,
        f"{int(writer['unpushed'])} of {changes} never seen in a push by their writer",
    )
    await verify_run(
        h.postgres_env,
        [layout],
        [writer["acks"]],
        unknown_holds=_unknown_holds(hold),
        verdict=verdict,
    )
    early = sum(int(r["early"]) for r in results)
    notes = []
    if instances > 1:
        metrics["instances"] = instances
        notes += _cluster_notes(server, [0], owners)
    if early:
        notes.append(
            f"reply->push counts from the writer's own reply and is clipped at 0: {early} of "
            f"{frames} pushes reached a subscriber before the writer had its reply"
        )
    return RunResult(
        scenario="fanout",
        label=_label(h, instances),
        params=dict(p),
        window_s=window_s,
        ops=[
            delivery.summary("reply->push", window_s),
            e2e.summary("request->push", window_s),
            hold.summary("hold", write_s),
            release.summary("release", write_s),
        ],
        resources=window.resources(),
        loadgen=_loadgen([*results, writer], window_s, h.client),
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )


# --- idle -------------------------------------------------------------------------------------


async def _create_idle_events(h: Harness, prefix: str, count: int, seats: int) -> None:
    """Insert events straight into PostgreSQL: far faster than create_event for 100,000."""
    from seatd.bench.verify import connect

    env = h.postgres_env
    if env is None:
        raise BenchError("the idle scenario needs POSTGRES_* to create its events")
    conn = await connect(env)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "events",
                records=[(f"{prefix}{i}", f"idle {i}") for i in range(count)],
                columns=["id", "name"],
            )
            await conn.copy_records_to_table(
                "seats",
                records=[
                    (f"{prefix}{i}", f"R0-{n + 1}", "R0", n + 1, n)
                    for i in range(count)
                    for n in range(seats)
                ],
                columns=["event_id", "seat_id", "row", "number", "ordinal"],
            )
    finally:
        await conn.close()


async def _count_leases(h: Harness, prefix: str) -> int | None:
    """Events of this run loaded in the server right now (their Redis leases), if visible."""
    client = _redis_client(h)
    if client is None:
        return None
    try:
        count = 0
        async for _ in client.scan_iter(match=f"seatd:{{{prefix}*}}:owner", count=10_000):
            count += 1
        return count
    except Exception:
        return None
    finally:
        await client.aclose()


async def _settled_rss(meter: ProcessMeter, seconds: float = 1.0) -> int:
    """Resident memory after a short pause (the lowest of a few samples)."""
    samples = []
    for _ in range(4):
        await asyncio.sleep(seconds / 4)
        samples.append(meter.rss())
    return min(samples)


async def _wait_passivated(h: Harness, prefix: str, idle_timeout: float, settle: float) -> bool:
    """Wait until no event of this run is loaded (their leases are gone); False on timeout or
    when Redis cannot be read (then it just waits out the idle timeout)."""
    deadline = time.monotonic() + idle_timeout + 30
    while time.monotonic() < deadline:
        leases = await _count_leases(h, prefix)
        if leases == 0:
            return True
        if leases is None:
            await asyncio.sleep(idle_timeout + 3 * settle)
            return False
        await asyncio.sleep(0.5)
    return False


async def run_idle(h: Harness, p: dict[str, Any]) -> RunResult:
    """Memory per idle connection, per loaded event and per passivated event.

    The events are activated and left to passivate twice: memory kept after the first round
    may be the allocator holding on to freed blocks (CPython rarely returns them) or a leak;
    if the second round, reusing those blocks, does not grow it again, it is not a leak.
    """
    started = time.monotonic()
    connections, events, workers = int(p["connections"]), int(p["events"]), int(p["workers"])
    idle_timeout = float(p["idle_timeout"])
    settle = float(p.get("settle", 1.0))  # pause before reading memory, so it is steady
    rounds = max(1, int(p.get("rounds", 2)))
    prefix = f"{h.prefix('idle')}-"
    notes: list[str] = []
    overrides = {"SEATD_ACTOR_IDLE_TIMEOUT": str(idle_timeout)}
    async with h.server(overrides) as server:
        if server.pid is None:
            raise BenchError("the idle scenario measures the server's memory: give --server-pid")
        window = h.window(server)
        meter = window.meters["server"]
        rss0 = await _settled_rss(meter, settle)
        specs = [
            h.spec(
                i,
                "idle",
                server.url,
                {"connections": count, "conn_offset": offset, "user_prefix": h.run_id},
            )
            for i, (offset, count) in enumerate(_split(connections, workers))
        ]
        pool = WorkerPool(specs)
        try:
            await h.connect_workers(pool, connections, "idle connections")
            window.start()
            rss1 = await _settled_rss(meter, 2 * settle)
            meter.stop()  # for the CPU the server spends on idle connections alone
            idle_cpu = meter.cpu_percent
            await _create_idle_events(h, prefix, events, 4)
            rss2 = await _settled_rss(meter, settle)
            shares = _split(events, workers)
            per_round: list[dict[str, Any]] = []
            activated: list[Any] = []
            for round_number in range(rounds):
                meter.rss_peak = meter.rss()
                base = pool.progress_total()
                for i, (lo, count) in enumerate(shares):
                    order = {"prefix": prefix, "lo": lo, "hi": lo + count}
                    pool.send(i, "activate", {**order, "connections": 16, "pipeline": 8})
                t_activate = time.monotonic()
                replies = await h.results(
                    pool,
                    window,
                    desc=f"activating events (round {round_number + 1})",
                    total=events,
                    unit="event",
                    timeout=600 + events / 50,
                    kind="activated",
                    base=base,
                )
                activation_s = time.monotonic() - t_activate
                activated += replies
                peak = meter.rss_peak
                loaded = await _count_leases(h, prefix)
                # What loaded but unused events cost the server (timers, lease renewal).
                probe = ProcessMeter(server.pid)
                probe.start()
                await asyncio.sleep(2 * settle)
                probe.stop()
                passivated = await _wait_passivated(h, prefix, idle_timeout, settle)
                after = await _settled_rss(meter, 2 * settle)
                per_round.append(
                    {
                        "activation_s": activation_s,
                        "loaded": loaded,
                        "peak": peak,
                        "after": after,
                        "loaded_cpu": probe.cpu_percent,
                        "passivated": passivated,
                    }
                )
            pool.broadcast("close")
            results = await pool.expect("result", timeout=120)
            rss_closed = await _settled_rss(meter, 2 * settle)
            window.stop()
        finally:
            await pool.close()
    get = _merge(activated, "get_event")
    activation_s = sum(r["activation_s"] for r in per_round)
    get_summary = get.summary("get_event", max(activation_s, 1e-3))
    open_at_end = sum(int(r["open_at_end"]) for r in results)
    first = per_round[0]
    metrics: dict[str, Any] = {
        "connections": connections,
        "events": events,
        "rss_baseline_mb": round(rss0 / MB, 1),
        "rss_connected_mb": round(rss1 / MB, 1),
        "rss_per_connection_kb": round((rss1 - rss0) / connections / 1024, 2),
        "server_cpu_idle_percent": round(idle_cpu, 2),
        "activation_s": round(first["activation_s"], 2),
        "events_activated_per_s": round(events / first["activation_s"], 1),
        "loaded_at_once": first["loaded"],
        "server_cpu_loaded_idle_percent": round(first["loaded_cpu"], 1),
        "rss_loaded_peak_mb": round(first["peak"] / MB, 1),
        "rss_per_loaded_event_kb": round((first["peak"] - rss2) / events / 1024, 2),
        "passivated": first["passivated"] if first["loaded"] is not None else None,
        "rss_passivated_mb": round(first["after"] / MB, 1),
        "rss_per_passivated_event_kb": round((first["after"] - rss2) / events / 1024, 2),
    }
    for number, entry in enumerate(per_round[1:], start=2):
        previous = per_round[number - 2]["after"]
        metrics[f"round{number}_rss_passivated_mb"] = round(entry["after"] / MB, 1)
        metrics[f"round{number}_rss_growth_mb"] = round((entry["after"] - previous) / MB, 1)
    metrics["rss_after_close_mb"] = round(rss_closed / MB, 1)
    metrics["rss_retained_after_close_mb"] = round((rss_closed - rss0) / MB, 1)
    loaded = first["loaded"]
    if loaded is not None and loaded < events:
        notes.append(
            f"only {loaded} of {events} events were loaded at once (idle timeout "
            f"{idle_timeout:g}s < activation time {first['activation_s']:.1f}s): the "
            "per-loaded-event figure is an upper bound; raise --idle-timeout"
        )
    if len(per_round) > 1:
        retained = first["after"] - rss2
        growth = per_round[-1]["after"] - per_round[-2]["after"]
        if retained > 0:
            verdict_text = (
                "reused, not leaked" if growth < 0.25 * retained else "grew again: possibly a leak"
            )
            notes.append(
                f"memory kept after passivation: {retained / MB:.1f} MB after round 1, "
                f"{growth / MB:+.1f} MB more after round {len(per_round)} ({verdict_text})"
            )
    verdict = Verdict()
    verdict.add(
        "every idle connection stayed open",
        open_at_end == connections,
        f"{open_at_end} of {connections}; closed: {_closed(results) or 'none'}",
    )
    verdict.add(
        "every event activated, every round",
        get_summary.ok == events * len(per_round),
        f"{get_summary.ok} of {events * len(per_round)}; errors: {get_summary.errors or 'none'}",
    )
    if loaded is not None:
        verdict.add(
            "every event passivated",
            all(r["passivated"] for r in per_round),
            f"idle timeout {idle_timeout:g}s",
        )
    return RunResult(
        scenario="idle",
        label=_label(h, 1),
        params=dict(p),
        window_s=max(window.stopped - window.started, 1e-3),
        ops=[get_summary],
        resources=window.resources(),
        loadgen=_loadgen(results, max(window.stopped - window.started, 1e-3), h.client),
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )


SCENARIO_RUNNERS: dict[str, Callable[[Harness, dict[str, Any]], Any]] = {
    "throughput": run_throughput,
    "rush": run_rush,
    "events": run_events,
    "fanout": run_fanout,
    "idle": run_idle,
}
