"""fanout: writers change seats while subscribers time every availability push."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import IO, Any

from seatd.bench.admin import AdminClient
from seatd.bench.layout import EventLayout
from seatd.bench.scenarios.harness import (
    Harness,
    RunResult,
    closes_by_code,
    loadgen_summary,
    merge_ops,
    split_evenly,
    unknown_holds,
)
from seatd.bench.scenarios.instances import (
    cluster_notes,
    event_owners,
    run_label,
)
from seatd.bench.verify import Verdict, verify_run
from seatd.bench.workers import WorkerPool

_SHM = Path("/dev/shm")


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
                    for i, (offset, count) in enumerate(split_evenly(subscribers, workers))
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
                    owners = (
                        await event_owners(h, server, [layout.event_id]) if instances > 1 else []
                    )
                finally:
                    await pool.close()
            finally:
                await admin.close()
    window_s = max(window.stopped - t0, 1e-3)
    write_s = duration
    hold, release = merge_ops([writer], "hold"), merge_ops([writer], "release")
    delivery, e2e = merge_ops(results, "delivery"), merge_ops(results, "end_to_end")
    changes = hold.ok + release.ok
    frames = sum(int(r["frames"]) for r in results)
    covered = sum(int(r["covered"]) for r in results)
    expected = subscribers * version
    gaps = sum(int(r["gaps"]) for r in results)
    missing = sum(int(r["missing"]) for r in results)
    duplicates = sum(int(r["duplicates"]) for r in results)
    behind = sum(int(r["behind"]) for r in results)
    closed = closes_by_code(results)
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
        unknown_holds=unknown_holds(hold),
        verdict=verdict,
    )
    early = sum(int(r["early"]) for r in results)
    notes = []
    if instances > 1:
        metrics["instances"] = instances
        notes += cluster_notes(server, [0], owners)
    if early:
        notes.append(
            f"reply->push counts from the writer's own reply and is clipped at 0: {early} of "
            f"{frames} pushes reached a subscriber before the writer had its reply"
        )
    return RunResult(
        scenario="fanout",
        label=run_label(h, instances),
        params=dict(p),
        window_s=window_s,
        ops=[
            delivery.summary("reply->push", window_s),
            e2e.summary("request->push", window_s),
            hold.summary("hold", write_s),
            release.summary("release", write_s),
        ],
        resources=window.resources(),
        loadgen=loadgen_summary([*results, writer], window_s, h.client),
        metrics=metrics,
        verdict=verdict,
        wall_s=time.monotonic() - started,
        notes=notes,
    )
