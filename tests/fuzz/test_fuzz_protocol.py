"""Hostile frames against a live server: every one answered correctly, or a documented close.

Six connections (users, agents and admins, a few opened without a token so that their first
frame is fuzzed) pipeline ``SEATD_FUZZ_FRAMES`` (100,000) frames drawn from Hypothesis
strategies (``strategies.py``: every request type and field of the schema, mutated, and
garbage of every kind) at a server child process; ``engine.py`` checks each reply (see its
docstring for the oracle). Meanwhile a well-behaved SDK client holds, refreshes, reserves and
releases seats of its own event, and watches it: it must see no error at all, never reconnect,
and its seat map must end equal to the server's. Afterwards the server process is alive,
``/healthz`` answers, a fresh client is served, and the server logged no error and no
traceback.

A failure lists each kind of violation with example frames (and, for a connection the server
broke, the frame that does it when replayed alone); ``SEATD_FUZZ_SEED`` replays the run.
"""

from __future__ import annotations

import asyncio

from fuzz.harness import (
    FuzzSettings,
    GoodClient,
    ServerUnderFuzz,
    fuzz,
    health_problems,
    log_problems,
    log_warnings,
    make_world,
)
from support.client import client, create_event, new_event_id


async def test_hostile_frames_get_valid_replies_or_documented_closes(
    fuzz_server: ServerUnderFuzz, fuzz_settings: FuzzSettings, fuzz_report: list[str]
) -> None:
    async with client(fuzz_server.url, "good-admin", "admin") as admin:
        good_event = await create_event(
            admin,
            seats=100,
            rows=6,
            max_seats_per_user=10000,
            event_id=new_event_id("good"),
        )
    world = await make_world(fuzz_server.url, read_only=[good_event["event_id"]])
    good = GoodClient(fuzz_server.url, good_event["event_id"])
    good_task = asyncio.create_task(good.run())
    try:
        result = await fuzz(fuzz_server.url, world, fuzz_settings)
    finally:
        good.stop.set()
        await asyncio.wait_for(good_task, 30)

    run = result.run
    problems = run.problems()
    if run.sent < fuzz_settings.frames:
        problems.append(
            f"only {run.sent} of {fuzz_settings.frames} frames sent in "
            f"{fuzz_settings.seconds:g} s (SEATD_FUZZ_SECONDS)"
        )
    problems += good.problems()
    problems += await health_problems(fuzz_server)
    log = fuzz_server.log()
    problems += log_problems(log)

    fuzz_report.extend(result.report())
    fuzz_report.append(
        f"  well-behaved client: {sum(good.ops.values())} calls "
        + ", ".join(f"{k} {v}" for k, v in sorted(good.ops.items()))
        + f"; {len(good.errors)} errors"
    )
    warnings = log_warnings(log)
    if warnings:
        fuzz_report.append(
            "  server warnings: " + ", ".join(f"{k} {v}" for k, v in warnings.most_common())
        )
    assert not problems, "\n".join(["", *result.report(), *problems])
