"""``seatd close-event``: an operator stops an event taking holds while the server runs."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from support.client import RawClient, create_event, new_event_id
from support.waiting import until

from seatd.devstack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _seatd(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the command without blocking the loop the in-process server shares."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "REDIS_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "seatd",
        *args,
        env={**base, **env},
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _is(c: RawClient, event_id: str, status: str) -> bool:
    return bool((await c.ok("get_event", event_id=event_id))["status"] == status)


async def test_a_loaded_event_stops_taking_holds_at_once_and_reopens(
    admin: RawClient, alice: RawClient, bob: RawClient, service_env: dict[str, str]
) -> None:
    event_id = (await create_event(admin, seats=4))["event_id"]
    held = await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])  # the actor is loaded

    code, out, err = await _seatd("close-event", event_id, env=service_env)
    assert code == 0, err
    told = re.search(r"is closed \((\d+) running instance\(s\) told\)", out)
    assert told is not None and int(told.group(1)) >= 1, out
    await until(lambda: _is(bob, event_id, "closed"), what="the actor to hear of the close")

    refused = await bob.error("hold", event_id=event_id, seat_ids=["A-2"])
    assert refused["code"] == "event_closed", refused
    await alice.ok("refresh", event_id=event_id, hold_id=held["hold_id"])  # held stays held
    await alice.ok("reserve", event_id=event_id, hold_id=held["hold_id"])

    code, out, err = await _seatd("close-event", "--reopen", event_id, env=service_env)
    assert code == 0 and f"event {event_id} is open" in out, (out, err)
    await until(lambda: _is(bob, event_id, "open"), what="the actor to hear of the reopening")
    await bob.ok("hold", event_id=event_id, seat_ids=["A-2"])


async def test_an_event_not_loaded_reads_its_status_when_it_loads(
    admin: RawClient, alice: RawClient, service_env: dict[str, str]
) -> None:
    event_id = (await create_event(admin, seats=2))["event_id"]
    code, _, err = await _seatd("close-event", event_id, env=service_env)
    assert code == 0, err
    refused = await alice.error("hold", event_id=event_id, seat_ids=["A-1"])
    assert refused["code"] == "event_closed", refused


async def test_an_unknown_event_is_said_and_exit_1(service_env: dict[str, str]) -> None:
    missing = new_event_id()
    code, _, err = await _seatd("close-event", missing, env=service_env)
    assert code == 1 and f"no event {missing}" in err, err


async def test_without_redis_the_row_changes_and_the_command_says_who_was_not_told(
    admin: RawClient, alice: RawClient, service_env: dict[str, str]
) -> None:
    event_id = (await create_event(admin, seats=2))["event_id"]
    no_redis = {**service_env, "REDIS_PORT": str(free_port())}  # nothing listens there
    code, _, err = await _seatd("close-event", event_id, env=no_redis)
    assert code == 1, err
    assert f"event {event_id} is closed in PostgreSQL, but Redis did not take the notice" in err
    assert "run this again once this command can reach Redis" in err
    refused = await alice.error("hold", event_id=event_id, seat_ids=["A-1"])  # loads: closed
    assert refused["code"] == "event_closed", refused


async def test_an_event_created_by_the_command_can_be_closed_by_it(
    alice: RawClient, service_env: dict[str, str]
) -> None:
    event_id = new_event_id("cli")
    layout = ("--event-id", event_id, "--sections", "floor", "--rows", "1", "--seats-per-row", "3")
    code, out, err = await _seatd("create-event", *layout, env=service_env)
    assert code == 0 and f"event created {event_id} (3 seats)" in out, (out, err)
    code, out, _ = await _seatd("create-event", *layout, env=service_env)
    assert code == 1 and f"event already exists: {event_id}" in out, out
    code, _, err = await _seatd("close-event", event_id, env=service_env)
    assert code == 0, err
    refused = await alice.error("hold", event_id=event_id, seat_ids=["floor-A-1"])
    assert refused["code"] == "event_closed", refused
