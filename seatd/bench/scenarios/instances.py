"""Several instances: spreading events' owners over them and reporting who owned what."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from seatd.bench.admin import AdminClient
from seatd.bench.scenarios.harness import (
    Cluster,
    Harness,
)


async def activate_spread(h: Harness, cluster: Cluster, event_ids: Sequence[str]) -> None:
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


def redis_client(h: Harness) -> Any:
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


async def event_owners(h: Harness, cluster: Cluster, event_ids: Sequence[str]) -> list[int]:
    """The index of the instance holding each event's lease (-1: none, or not an instance of
    this run), read from Redis."""
    from seatd.adapters.redis import lease_key

    client = redis_client(h)
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


def ownership(cluster: Cluster, before: list[int], after: list[int]) -> dict[str, Any]:
    owned = {s.instance_id or str(i): before.count(i) for i, s in enumerate(cluster.servers)}
    moved = sum(1 for a, b in zip(before, after, strict=False) if a != b)
    return {"owned_events": owned, "owner_changes": moved}


def run_label(h: Harness, instances: int) -> str:
    if h.url is not None:  # the server's own settings: not known here
        return "running server"
    if instances == 1:
        return "group commit" if h.group_commit else "no group commit"
    return f"{instances} instances" + ("" if h.group_commit else ", no group commit")


def cpu_ms_per(resources: dict[str, Any], name: str, count: int) -> float | None:
    entry = resources.get(name)
    if not entry or not count:
        return None
    return round(1000.0 * float(entry["cpu_s"]) / count, 3)


def cluster_notes(cluster: Cluster, before: list[int], after: list[int]) -> list[str]:
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
