"""rush: an on-sale burst, many buyers racing for a few seats."""

from __future__ import annotations

import time
from typing import Any

from seatd.bench.acks import AckLog
from seatd.bench.admin import AdminClient
from seatd.bench.layout import EventLayout
from seatd.bench.scenarios.harness import (
    Harness,
    RunResult,
    closes_by_code,
    loadgen_summary,
    merge_ops,
    per_request,
    unknown_holds,
)
from seatd.bench.scenarios.instances import (
    cluster_notes,
    event_owners,
    run_label,
)
from seatd.bench.verify import Verdict, seat_counts, verify_run


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
        owners = await event_owners(h, server, [layout.event_id]) if instances > 1 else []
    hold, reserve = merge_ops(results, "hold"), merge_ops(results, "reserve")
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
        "closed_connections": closes_by_code(results),
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
        h.postgres_env, [layout], logs, unknown_holds=unknown_holds(hold), verdict=verdict
    )
    notes = [] if sold_out else [f"not sold out: {seats_bought} of {seats} seats sold"]
    if instances > 1:
        metrics["instances"] = instances
        notes += cluster_notes(server, [0], owners)
    resources, loadgen = window.resources(), loadgen_summary(results, window_s, h.client)
    metrics.update(per_request(resources, loadgen, hold.count + reserve.count))
    return RunResult(
        scenario="rush",
        label=run_label(h, instances),
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
