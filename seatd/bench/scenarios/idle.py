"""idle: memory per quiet connection and per activated-then-passivated event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from seatd.bench.scenarios.harness import (
    MB,
    Harness,
    RunResult,
    closes_by_code,
    loadgen_summary,
    merge_ops,
    split_evenly,
)
from seatd.bench.scenarios.instances import (
    redis_client,
    run_label,
)
from seatd.bench.stack import (
    BenchError,
    ProcessMeter,
)
from seatd.bench.verify import Verdict
from seatd.bench.workers import WorkerPool


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
    client = redis_client(h)
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
            for i, (offset, count) in enumerate(split_evenly(connections, workers))
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
            shares = split_evenly(events, workers)
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
    get = merge_ops(activated, "get_event")
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
        f"{open_at_end} of {connections}; closed: {closes_by_code(results) or 'none'}",
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
        label=run_label(h, 1),
        params=dict(p),
        window_s=max(window.stopped - window.started, 1e-3),
        ops=[get_summary],
        resources=window.resources(),
        loadgen=loadgen_summary(results, max(window.stopped - window.started, 1e-3), h.client),
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )
