"""throughput and events: connections hold distinct seats and reserve each hold (or, with
``holds_only``, only hold them); the baseline (one transaction per command) and forwarding
(every client on a non-owner) comparisons."""

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
    activate_spread,
    cluster_notes,
    cpu_ms_per,
    event_owners,
    ownership,
    run_label,
)
from seatd.bench.stack import (
    BenchError,
)
from seatd.bench.verify import verify_run


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
            await activate_spread(h, cluster, event_ids)
            owners = await event_owners(h, cluster, event_ids)
            shared["owners"] = owners
            if clients_on is not None:
                targets = cluster.targets([clients_on])
        rate = p.get("rate")
        holds_only = bool(p.get("holds_only"))
        window, t0, results = await h.drive(
            cluster,
            "purchase",
            {
                "events": [(lay.event_id, lay.seats, lay.per_row) for lay in layouts],
                "workers": workers,
                "pipeline": int(p["pipeline"]),
                "rate": None if rate is None else float(rate) / workers,
                "max_per_user": 10_000,
                "holds_only": holds_only,
                "user_prefix": h.run_id,
                "seed": int(p["seed"]),
                **shared,
            },
            connections,
            workers,
            what="purchasers",
            desc=f"{scenario}{' ' + label if label else ''}",
            unit="hold" if holds_only else "purchase",
            duration=duration,
            timeout=duration + 120,
            targets=targets,
        )
        if instances > 1:
            owners_after = await event_owners(h, cluster, event_ids)
    window_s = max(max(float(r["t_last"]) for r in results) - t0, 1e-3)
    hold, reserve = merge_ops(results, "hold"), merge_ops(results, "reserve")
    logs: list[AckLog] = [r["acks"] for r in results]
    ops = [hold.summary("hold", window_s)]
    exhausted = sum(int(r["exhausted"]) for r in results)
    metrics: dict[str, Any] = {"events": len(layouts), "seats_per_event": layouts[0].seats}
    if holds_only:
        metrics.update(holds=hold.ok, holds_per_s=round(hold.ok / window_s, 1))
    else:
        ops.append(reserve.summary("reserve", window_s))
        metrics.update(purchases=reserve.ok, purchases_per_s=round(reserve.ok / window_s, 1))
    metrics |= {
        "requests_per_s": round((hold.count + reserve.count) / window_s, 1),
        "mode": "open loop" if p.get("rate") else "closed loop",
        "group_commit": h.group_commit,
        "seat_supply_exhausted": exhausted,
        "closed_connections": closes_by_code(results),
    }
    notes = []
    if exhausted and holds_only:
        notes.append(
            f"every seat was asked for {window_s:.1f} s in, which ends a --holds-only run: "
            "--seats (or --events) for a longer one"
        )
    elif exhausted:
        notes.append(
            f"{exhausted} holds not sent: seats (or the per-user limit) ran out; "
            "use --seats or a shorter --duration"
        )
    if instances > 1:
        on_owner, forwarded = (
            merge_ops(results, "hold_on_owner"),
            merge_ops(results, "hold_forwarded"),
        )
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
        )
        if not holds_only:
            metrics["server_cpu_ms_per_purchase"] = cpu_ms_per(
                window.resources(), "server", reserve.ok
            )
        metrics.update(ownership(cluster, owners, owners_after))
        notes += cluster_notes(cluster, owners, owners_after)
    verdict = await verify_run(h.postgres_env, layouts, logs, unknown_holds=unknown_holds(hold))
    resources, loadgen = window.resources(), loadgen_summary(results, window_s, h.client)
    metrics.update(per_request(resources, loadgen, hold.count + reserve.count))
    return RunResult(
        scenario=scenario,
        label=label or run_label(h, instances),
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
