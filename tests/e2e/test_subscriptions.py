"""Live availability: snapshot then ordered deltas, resume after a gap, pushes to holders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.client import RawClient, client, create_event
from support.server import RunningServer, base_env, in_process_server


async def _next_push(c: RawClient, push_type: str, timeout: float = 5) -> dict[str, Any]:
    for index, frame in enumerate(c.pushes):
        if frame.get("type") == push_type and "id" not in frame:
            return c.pushes.pop(index)
    while True:
        frame = await c.recv(timeout)
        if frame.get("type") == push_type and "id" not in frame:
            return frame
        c.pushes.append(frame)


def _spans_without_holes(deltas: list[dict[str, Any]], since: int, until: int) -> bool:
    """Deltas cover versions from_version..version: they must chain from since + 1 to until."""
    reached = since
    for delta in deltas:
        if delta["from_version"] != reached + 1 or delta["version"] < delta["from_version"]:
            return False
        reached = delta["version"]
    return reached == until


def _apply(seats: dict[str, str], delta: dict[str, Any]) -> None:
    for change in delta["changes"]:
        seats[change["seat_id"]] = change["state"]


async def test_snapshot_then_every_change_in_order(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    event_id = (await create_event(admin, seats=6, hold_duration_s=2))["event_id"]
    taken = await bob.ok("hold", event_id=event_id, seat_ids=["A-6"])
    await bob.ok("reserve", event_id=event_id, hold_id=taken["hold_id"])
    held_before = await bob.ok("hold", event_id=event_id, seat_ids=["A-5"])

    snap = await alice.ok("subscribe", event_id=event_id)
    assert snap["mode"] == "snapshot" and snap["total_seats"] == 6
    assert snap["reserved"] == ["A-6"]
    assert [(h["seat_id"], h["expires_at"]) for h in snap["held"]] == [
        ("A-5", held_before["expires_at"])
    ]
    version = snap["version"]

    hold = await bob.ok("hold", event_id=event_id, seat_ids=["A-1", "A-2"])
    delta = await _next_push(alice, "availability")
    assert delta["event_id"] == event_id
    assert (delta["from_version"], delta["version"]) == (version + 1, version + 1)
    assert delta["changes"] == [
        {"seat_id": "A-1", "state": "held", "expires_at": hold["expires_at"]},
        {"seat_id": "A-2", "state": "held", "expires_at": hold["expires_at"]},
    ]
    await bob.ok("reserve", event_id=event_id, hold_id=hold["hold_id"])
    delta = await _next_push(alice, "availability")
    assert delta["version"] == version + 2
    assert {c["seat_id"]: c["state"] for c in delta["changes"]} == {
        "A-1": "reserved",
        "A-2": "reserved",
    }
    # A-5's hold expires by itself (2 s): everyone watching sees the seat come back.
    delta = await _next_push(alice, "availability", timeout=5)
    assert delta["version"] == version + 3
    assert delta["changes"] == [{"seat_id": "A-5", "state": "available"}]

    await alice.ok("unsubscribe", event_id=event_id)
    await bob.ok("hold", event_id=event_id, seat_ids=["A-3"])
    await alice.ok("ping")
    assert not [p for p in alice.pushes if p.get("type") == "availability"]
    # Unsubscribing again is harmless (idempotent).
    assert await alice.ok("unsubscribe", event_id=event_id) == {"event_id": event_id}


async def test_holder_is_warned_then_told_of_expiry(admin: RawClient, alice: RawClient) -> None:
    event_id = (await create_event(admin, seats=2, hold_duration_s=1))["event_id"]
    hold = await alice.ok("hold", event_id=event_id, seat_ids=["A-1"])
    expiring = await _next_push(alice, "hold_expiring", timeout=3)
    assert expiring == {
        "type": "hold_expiring",
        "event_id": event_id,
        "hold_id": hold["hold_id"],
        "seat_ids": ["A-1"],
        "expires_at": hold["expires_at"],
    }
    expired = await _next_push(alice, "hold_expired", timeout=3)
    assert expired == {
        "type": "hold_expired",
        "event_id": event_id,
        "hold_id": hold["hold_id"],
        "seat_ids": ["A-1"],
    }


async def test_subscribe_to_an_unknown_event(alice: RawClient) -> None:
    error = await alice.error("subscribe", event_id="no-such-event-here")
    assert error["code"] == "event_not_found"


@pytest.fixture
async def short_memory(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    # One push per commit (no merging), so "more changes than kept" is exact.
    env = base_env(
        service_env, SEATD_DELTA_HISTORY="3", SEATD_MAX_SUBSCRIPTIONS="2", SEATD_DELTA_INTERVAL="0"
    )
    async with in_process_server(env) as running:
        yield running


async def test_resume_replays_missed_deltas_or_sends_a_snapshot(
    short_memory: RunningServer,
) -> None:
    async with client(short_memory.url, "admin", "admin") as admin:
        event_id = (await create_event(admin, seats=10))["event_id"]
    async with client(short_memory.url, "gus") as gus, client(short_memory.url, "hal") as hal:
        seen: dict[str, str] = {}
        snap = await gus.ok("subscribe", event_id=event_id)
        last = snap["version"]
        await gus.ws.close()

        await hal.ok("hold", event_id=event_id, seat_ids=["A-1"])
        second = await hal.ok("hold", event_id=event_id, seat_ids=["A-2"])
        await hal.ok("release", event_id=event_id, hold_id=second["hold_id"])

    async with client(short_memory.url, "gus") as gus:
        resumed = await gus.ok("subscribe", event_id=event_id, since_version=last)
        assert resumed["mode"] == "resume"
        assert _spans_without_holes(resumed["deltas"], last, last + 3)
        for delta in resumed["deltas"]:
            _apply(seen, delta)
        assert seen == {"A-1": "held", "A-2": "available"}
        assert resumed["version"] == last + 3

        # Four more changes: more than the three deltas kept, so a resume gets a snapshot.
        async with client(short_memory.url, "hal") as hal:
            for seat in ("A-3", "A-4", "A-5", "A-6"):
                await hal.ok("hold", event_id=event_id, seat_ids=[seat])
        stale = await gus.ok("subscribe", event_id=event_id, since_version=last + 3)
        assert stale["mode"] == "snapshot"
        assert sorted(h["seat_id"] for h in stale["held"]) == ["A-1", "A-3", "A-4", "A-5", "A-6"]

        # The connection's subscription limit (2 here) answers clearly.
        async with client(short_memory.url, "admin", "admin") as admin:
            others = [(await create_event(admin, seats=1))["event_id"] for _ in range(2)]
        await gus.ok("subscribe", event_id=others[0])
        error = await gus.error("subscribe", event_id=others[1])
        assert error["code"] == "too_many_subscriptions"
        assert error["details"] == {"limit": 2}


async def test_many_writers_one_subscriber_sees_a_gapless_stream(
    server: RunningServer, admin: RawClient
) -> None:
    event_id = (await create_event(admin, seats=40, max_seats_per_user=100))["event_id"]
    async with client(server.url, "watcher") as watcher:
        snap = await watcher.ok("subscribe", event_id=event_id)
        seats: dict[str, str] = {}
        deltas: list[dict[str, Any]] = []

        async def writer(n: int) -> None:
            async with client(server.url, f"w{n}") as w:
                for seat in range(n * 10 + 1, n * 10 + 11):
                    hold = await w.ok("hold", event_id=event_id, seat_ids=[f"A-{seat}"])
                    if seat % 2:
                        await w.ok("release", event_id=event_id, hold_id=hold["hold_id"])

        await asyncio.gather(*(writer(n) for n in range(4)))
        final = await watcher.ok("get_event", event_id=event_id)
        while not deltas or deltas[-1]["version"] < final["version"]:
            delta = await _next_push(watcher, "availability")
            deltas.append(delta)
            _apply(seats, delta)
    assert _spans_without_holes(deltas, snap["version"], final["version"])
    held = {s for s, state in seats.items() if state == "held"}
    assert held == {f"A-{n}" for n in range(1, 41) if n % 2 == 0}


async def test_unsubscribe_while_the_snapshot_is_on_its_way_sticks(
    server: RunningServer, admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    event_id = (await create_event(admin, seats=4))["event_id"]
    await alice.send({"id": "s", "type": "subscribe", "event_id": event_id})
    await alice.send({"id": "u", "type": "unsubscribe", "event_id": event_id})
    replies = {}
    while len(replies) < 2:
        frame = await alice.recv()
        replies[frame.get("id")] = frame
    assert replies["s"]["ok"] and replies["u"]["ok"], replies
    await bob.ok("hold", event_id=event_id, seat_ids=["A-1"])
    await alice.ok("ping")
    await asyncio.sleep(0.1)
    await alice.ok("ping")
    assert not [p for p in alice.pushes if p.get("type") == "availability"]
    assert server.app is not None
    assert not server.app.gateway.ctx.broadcaster.has_subscribers(event_id)


async def test_a_keyed_hold_and_its_replay_are_both_followed(
    admin: RawClient, alice: RawClient
) -> None:
    event_id = (await create_event(admin, seats=2, hold_duration_s=1))["event_id"]
    first = await alice.ok("hold", event_id=event_id, seat_ids=["A-2"], idempotency_key="k-1")
    replay = await alice.ok("hold", event_id=event_id, seat_ids=["A-2"], idempotency_key="k-1")
    assert replay == first
    expiring = await _next_push(alice, "hold_expiring", timeout=3)
    assert expiring["hold_id"] == first["hold_id"]
    assert expiring["expires_at"] == first["expires_at"]
    expired = await _next_push(alice, "hold_expired", timeout=3)
    assert expired["hold_id"] == first["hold_id"]


async def test_pushes_after_the_last_of_two_pipelined_subscribes_have_no_gap(
    admin: RawClient, alice: RawClient, bob: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscribing again restarts the subscription: the pushes after the last reply chain on
    from its version. Here the first snapshot is held back until a change has committed, so
    the second subscription would otherwise go live, and get that change, before the first
    reply, which then names an older version than the pushes that follow it."""
    from seatd.gateway.forward import Router

    event_id = (await create_event(admin, seats=4))["event_id"]
    await admin.ok("get_event", event_id=event_id)  # loaded: snapshots come from the actor
    gate = asyncio.Event()
    snapshot = Router.snapshot
    calls = 0

    async def first_held_back(self: Router, event: str) -> Any:
        nonlocal calls
        calls += 1
        held_back = calls == 1
        result = await snapshot(self, event)
        if held_back:
            await gate.wait()
        return result

    monkeypatch.setattr(Router, "snapshot", first_held_back)
    await alice.send({"id": "first", "type": "subscribe", "event_id": event_id})
    await alice.send({"id": "second", "type": "subscribe", "event_id": event_id})
    await asyncio.sleep(0.2)
    await bob.ok("hold", event_id=event_id, seat_ids=["A-1"])  # committed while held back
    await asyncio.sleep(0.2)
    gate.set()
    frames: list[dict[str, Any]] = []
    while sum(1 for f in frames if f.get("id") in ("first", "second")) < 2:
        frames.append(await alice.recv())
    await bob.ok("hold", event_id=event_id, seat_ids=["A-2"])
    while not (frames[-1].get("type") == "availability" and "A-2" in str(frames[-1])):
        frames.append(await alice.recv())
    last = max(i for i, f in enumerate(frames) if f.get("id") in ("first", "second"))
    version = frames[last]["result"]["version"]
    after = [f for f in frames[last + 1 :] if f.get("type") == "availability"]
    assert after and after[0]["from_version"] <= version + 1, (version, frames)
    assert _spans_without_holes(after, after[0]["from_version"] - 1, after[-1]["version"])
