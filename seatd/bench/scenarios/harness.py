"""What every scenario's coordinator shares: the server, the workers, the measured window.

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
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from seatd.bench.serverstats import actor_stats, scrape, wal_position
from seatd.bench.stack import (
    BenchError,
    ProcessMeter,
    SeatdProcess,
    Services,
    listener_pid,
    summarize_log,
)
from seatd.bench.stats import OpAggregate, OpData, OpSummary
from seatd.bench.verify import Verdict
from seatd.bench.workers import WorkerPool, WorkerSpec

# Hold requests with these outcomes may or may not have created a hold.
UNKNOWN_OUTCOME = ("no_reply", "connection_closed", "unavailable", "internal_error")
MB = 1024 * 1024


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
        # Bytes of WAL PostgreSQL wrote over the window, when the harness could ask it.
        self.wal_bytes: int | None = None

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
            if (wait := meter.wait_percent) is not None:
                entry["wait_percent"] = round(wait, 1)
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
            waits = [m.wait_s for m in servers]
            if wall_s > 0 and all(wait is not None for wait in waits):
                total["wait_percent"] = round(100.0 * sum(w or 0.0 for w in waits) / wall_s, 1)
            result = {"server": total, "instances": instances, **result}
        if self._metrics_after:
            actors = actor_stats(self._metrics_before, self._metrics_after)
            if actors is not None:
                result["actors"] = actors
        if self.wal_bytes is not None:
            result["wal"] = {"bytes": self.wal_bytes, "mb": round(self.wal_bytes / 1e6, 1)}
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
            for i, (offset, count) in enumerate(split_evenly(connections, workers))
        ]
        pool = WorkerPool(specs)
        try:
            await self.connect_workers(pool, connections, what)
            window = self.window(server)
            base = pool.progress_total()
            wal_before = await wal_position(self.postgres_env)
            t0 = await self.go(pool, window, duration, bucket=bucket)
            results = await self.results(
                pool, window, desc=desc, total=total, unit=unit, timeout=timeout, base=base
            )
            window.stop()
            wal_after = await wal_position(self.postgres_env)
            if wal_before is not None and wal_after is not None:
                window.wal_bytes = wal_after - wal_before
        finally:
            await pool.close()
        return window, t0, results


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """(offset, count) of each of ``parts`` near-equal shares of ``total``."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def merge_ops(results: Sequence[dict[str, Any]], key: str) -> OpAggregate:
    aggregate = OpAggregate()
    for result in results:
        data: OpData = result[key]
        aggregate.add(data)
    return aggregate


def loadgen_summary(
    results: Sequence[dict[str, Any]], window_s: float, client: str
) -> dict[str, Any]:
    cpu = sum(float(r["cpu_s"]) for r in results)
    return {
        "workers": len(results),
        "client": client,
        "cpu_s": round(cpu, 2),
        "cpu_percent": round(100.0 * cpu / window_s, 1) if window_s > 0 else 0.0,
    }


def per_request(
    resources: dict[str, Any], loadgen: dict[str, Any], requests: int
) -> dict[str, float]:
    """Each process's CPU per request answered in the window, in microseconds: what an A/B of
    two commits compares, since it moves less with the machine's hour than throughput does.
    And PostgreSQL's WAL per request, in bytes, which does not move with the hour at all."""
    if not requests:
        return {}
    out: dict[str, float] = {}
    if wal := resources.get("wal"):
        out["postgres_wal_bytes_per_request"] = round(wal["bytes"] / requests)
    for name, entry in (
        ("server", resources.get("server")),
        ("postgres", resources.get("postgres")),
        ("loadgen", loadgen),
    ):
        if entry:
            out[f"{name}_cpu_us_per_request"] = round(1e6 * float(entry["cpu_s"]) / requests, 1)
    return out


def closes_by_code(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for code, n in result.get("closed", {}).items():
            total[code] = total.get(code, 0) + n
    return total


def unknown_holds(hold: OpAggregate) -> int:
    summary = hold.summary("hold", 1.0)
    return sum(summary.errors.get(code, 0) for code in UNKNOWN_OUTCOME)
