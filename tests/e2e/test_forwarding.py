"""Two instances on one PostgreSQL and Redis: any instance serves any event.

A command reaching the instance that does not own its event is forwarded to the owner and its
reply routed back unchanged; subscribers on either instance see every change in order, also
when the event changes hands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from support.client import RawClient, client, create_event
from support.server import RunningServer, base_env, in_process_server
from support.waiting import until

from seatd.adapters.redis import lease_key, make_client


@pytest.fixture(scope="module")
async def second(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    async with in_process_server(base_env(service_env)) as running:
        yield running


async def _pushes_until(c: RawClient, version: int, timeout: float = 5) -> list[dict[str, Any]]:
    """Availability pushes received until one reaches ``version``."""
    found = [p for p in c.pushes if p.get("type") == "availability"]
    c.pushes = [p for p in c.pushes if p.get("type") != "availability"]
    while not found or found[-1]["version"] < version:
        frame = await c.recv(timeout)
        if frame.get("type") == "availability":
            found.append(frame)
        else:
            c.pushes.append(frame)
    return found


def _chained(deltas: list[dict[str, Any]], since: int) -> bool:
    reached = since
    for delta in deltas:
        if delta["from_version"] > reached + 1:
            return False
        reached = max(reached, delta["version"])
    return True


async def _lose_event(server: RunningServer, event_id: str, env: dict[str, str]) -> None:
    """The instance loses the event for good without letting it go (its lease gone, as are
    its marks in PostgreSQL, as for an instance judged dead): the next command anywhere may
    take it."""
    assert server.app is not None
    registry = server.app.registry
    actor = registry.active(event_id)
    assert actor is not None
    actor.request_stop("lease_lost")
    await until(lambda: registry.active(event_id) is None, 2, "the actor to stop")
    redis = make_client("127.0.0.1", int(env["REDIS_PORT"]), 0, None)
    await redis.delete(lease_key(event_id))
    await redis.aclose()
    conn = await asyncpg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        database=env["POSTGRES_DB"],
    )
    try:
        await conn.execute("UPDATE events SET owner_instance = NULL WHERE id = $1", event_id)
    finally:
        await conn.close()


def _owner(server: RunningServer, event_id: str) -> bool:
    assert server.app is not None
    return server.app.registry.active(event_id) is not None


async def test_a_command_for_an_event_owned_elsewhere_is_forwarded(
    server: RunningServer, second: RunningServer, admin: RawClient
) -> None:
    event_id = (await create_event(admin, seats=6, max_seats_per_user=3))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "bob") as bob,
    ):
        await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
        assert _owner(server, event_id) and not _owner(second, event_id)

        hold = await bob.ok("hold", event_id=event_id, seat_ids=["A-2", "A-3"])
        assert hold["user_id"] == "bob" and hold["seat_ids"] == ["A-2", "A-3"]
        assert not _owner(second, event_id), "the second instance must not take the event"

        # Refusals come back as the owner wrote them, with their details.
        conflict = await bob.error("hold", event_id=event_id, seat_ids=["A-1"])
        assert conflict["code"] == "seat_unavailable" and not conflict["temporary"]
        limit = await bob.error("hold", event_id=event_id, seat_ids=["A-4", "A-5"])
        assert limit["code"] == "seat_limit_exceeded"

        # A retried reserve (same idempotency key) gets the first answer, byte for byte.
        reserve = {"event_id": event_id, "hold_id": hold["hold_id"], "idempotency_key": "r-1"}
        first = await bob.request("reserve", **reserve)
        again = await bob.request("reserve", **reserve)
        assert first["ok"] is True and {**again, "id": first["id"]} == first

        page = await bob.ok("list_available", event_id=event_id)
        assert [s["seat_id"] for s in page["seats"]] == ["A-4", "A-5", "A-6"]
        event = await bob.ok("get_event", event_id=event_id)
        assert event["event_id"] == event_id


async def test_a_user_cannot_act_for_another_through_a_forward(
    server: RunningServer, second: RunningServer, admin: RawClient
) -> None:
    event_id = (await create_event(admin, seats=4))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "mallory") as mallory,
    ):
        hold = await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
        refused = await mallory.error("reserve", event_id=event_id, hold_id=hold["hold_id"])
        assert refused["code"] in {"hold_not_found", "forbidden"}
        spoof = await mallory.error(
            "hold", event_id=event_id, seat_ids=["A-2"], on_behalf_of="alice"
        )
        assert spoof["code"] == "forbidden"


async def test_subscribers_on_another_instance_see_every_change(
    server: RunningServer, second: RunningServer, admin: RawClient
) -> None:
    event_id = (await create_event(admin, seats=10))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "watcher") as watcher,
    ):
        held = await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
        snap = await watcher.ok("subscribe", event_id=event_id)
        assert snap["mode"] == "snapshot" and [h["seat_id"] for h in snap["held"]] == ["A-1"]
        assert snap["held"][0]["expires_at"] == held["expires_at"]
        assert not _owner(second, event_id)

        seats = {h["seat_id"]: "held" for h in snap["held"]}
        version = snap["version"]
        for n in range(2, 8):
            await alice.ok("hold", event_id=event_id, seat_ids=[f"A-{n}"])
        await alice.ok("reserve", event_id=event_id, hold_id=held["hold_id"])
        final = (await alice.ok("subscribe", event_id=event_id))["version"]
        deltas = await _pushes_until(watcher, final)
        assert _chained(deltas, version)
        for delta in deltas:
            for change in delta["changes"]:
                seats[change["seat_id"]] = change["state"]
        assert seats == {"A-1": "reserved", **{f"A-{n}": "held" for n in range(2, 8)}}


async def test_deltas_keep_coming_when_the_event_changes_hands(
    server: RunningServer, second: RunningServer, admin: RawClient, service_env: dict[str, str]
) -> None:
    assert server.app is not None and second.app is not None
    event_id = (await create_event(admin, seats=10))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "bob") as bob,
        client(server.url, "watcher") as watcher,
    ):
        await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
        snap = await watcher.ok("subscribe", event_id=event_id)
        # The first instance lets the event go (as when its lease is lost); the next command
        # lands on the second instance, which takes the event over.
        await _lose_event(server, event_id, service_env)
        await bob.ok("hold", event_id=event_id, seat_ids=["A-2"])
        assert _owner(second, event_id)
        await alice.ok("hold", event_id=event_id, seat_ids=["A-3"])  # forwarded the other way
        final = (await bob.ok("subscribe", event_id=event_id))["version"]
        deltas = await _pushes_until(watcher, final)
        assert _chained(deltas, snap["version"])
        changed = {c["seat_id"] for d in deltas for c in d["changes"]}
        assert changed == {"A-2", "A-3"}


async def _push(c: RawClient, push_type: str, timeout: float = 5) -> dict[str, Any]:
    for index, frame in enumerate(c.pushes):
        if frame.get("type") == push_type:
            return c.pushes.pop(index)
    while True:
        frame = await c.recv(timeout)
        if frame.get("type") == push_type:
            return frame
        c.pushes.append(frame)


async def test_a_forwarded_hold_is_followed_to_its_end(
    server: RunningServer, second: RunningServer, admin: RawClient
) -> None:
    event_id = (await create_event(admin, seats=4, hold_duration_s=2))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "bob") as bob,
    ):
        await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])  # owned by the first
        hold = await bob.ok("hold", event_id=event_id, seat_ids=["A-2"])
        released = await bob.ok("hold", event_id=event_id, seat_ids=["A-3"])
        await bob.ok("release", event_id=event_id, hold_id=released["hold_id"])
        assert not _owner(second, event_id)
        expiring = await _push(bob, "hold_expiring")
        assert (expiring["hold_id"], expiring["expires_at"]) == (
            hold["hold_id"],
            hold["expires_at"],
        )
        expired = await _push(bob, "hold_expired")
        assert (expired["hold_id"], expired["seat_ids"]) == (hold["hold_id"], ["A-2"])
        # Nothing about the released hold: it ended through this connection.
        await asyncio.sleep(0.3)
        assert not [p for p in bob.pushes if p.get("hold_id") == released["hold_id"]]


async def test_a_refusal_stored_for_retries_leaves_the_version_alone(
    server: RunningServer, second: RunningServer, admin: RawClient
) -> None:
    """PostgreSQL's version must name the owner's state: a snapshot read from it (subscribers
    on other instances) would otherwise claim a version the owner uses for the next change."""
    event_id = (await create_event(admin, seats=4))["event_id"]
    async with (
        client(server.url, "alice") as alice,
        client(second.url, "watcher") as watcher,
    ):
        await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
        refused = await alice.error(
            "hold", event_id=event_id, seat_ids=["A-1"], idempotency_key="k-1"
        )
        assert refused["code"] == "seat_unavailable"
        owner_version = (await alice.ok("subscribe", event_id=event_id))["version"]
        snap = await watcher.ok("subscribe", event_id=event_id)  # read from PostgreSQL
        assert snap["version"] == owner_version
        await alice.ok("hold", event_id=event_id, seat_ids=["A-2"])
        (delta,) = await _pushes_until(watcher, owner_version + 1)
        assert delta["from_version"] == owner_version + 1
        assert [c["seat_id"] for c in delta["changes"]] == ["A-2"]


async def test_a_hold_is_still_followed_after_its_event_moved_away(
    server: RunningServer, second: RunningServer, admin: RawClient, service_env: dict[str, str]
) -> None:
    assert server.app is not None
    event_id = (await create_event(admin, seats=4, hold_duration_s=3))["event_id"]
    async with client(server.url, "alice") as alice, client(second.url, "bob") as bob:
        hold = await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])  # owned here
        await _lose_event(server, event_id, service_env)
        await bob.ok("hold", event_id=event_id, seat_ids=["A-2"])  # the second takes it
        assert _owner(second, event_id) and not _owner(server, event_id)
        expired = await _push(alice, "hold_expired", timeout=6)
        assert expired["hold_id"] == hold["hold_id"]
