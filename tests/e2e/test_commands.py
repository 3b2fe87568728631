"""Every request type of seatd.v1 over a real WebSocket: its result and each of its error replies.

Tests read the raw reply frames (``{"id", "type", "ok", "result" | "error"}``) exactly as a client
written from the protocol description would. Each test creates its own events, so tests never
depend on each other or on what else the shared server holds.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from support.client import RawClient, client, create_event, new_event_id
from support.server import RunningServer

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MISSING: Any = object()

# The server runs with the service defaults (tests/support/server.py sets no overrides).
DEFAULT_HOLD_DURATION_S = 300.0
DEFAULT_MAX_SEATS_PER_USER = 8
MAX_HOLD_LIFETIME_S = 1800.0


# --- helpers -----------------------------------------------------------------------------------


def wire_time(text: Any) -> float:
    """An RFC 3339 UTC time with milliseconds and 'Z', as POSIX seconds."""
    assert isinstance(text, str) and RFC3339_Z.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def assert_near_now(text: Any, offset: float = 0.0, tolerance: float = 3.0) -> None:
    assert abs(wire_time(text) - (time.time() + offset)) < tolerance, (text, offset)


async def ok(c: RawClient, request_type: str, **fields: Any) -> dict[str, Any]:
    """The result of a request that must succeed; checks the reply envelope too."""
    request_id = fields.pop("id", None) or f"r-{uuid.uuid4().hex[:8]}"
    reply = await c.request(request_type, id=request_id, **fields)
    assert reply.get("ok") is True, reply
    assert reply["id"] == request_id, reply
    assert reply["type"] == request_type, reply
    assert set(reply) == {"id", "type", "ok", "result"}, reply
    result: dict[str, Any] = reply["result"]
    return result


async def fail(
    c: RawClient,
    request_type: str,
    code: str,
    *,
    details: Any = MISSING,
    **fields: Any,
) -> dict[str, Any]:
    """The error object of a request that must fail with ``code`` (a permanent error).

    ``details`` (when given) must equal the reply's details exactly; ``None`` means no details.
    """
    request_id = fields.pop("id", None) or f"r-{uuid.uuid4().hex[:8]}"
    reply = await c.request(request_type, id=request_id, **fields)
    assert reply.get("ok") is False, reply
    assert reply["id"] == request_id, reply
    assert reply["type"] == request_type, reply
    assert "result" not in reply, reply
    error: dict[str, Any] = reply["error"]
    assert error["code"] == code, error
    assert error["temporary"] is False, error
    assert "retry_after_ms" not in error, error
    assert isinstance(error["message"], str) and error["message"], error
    if details is None:
        assert "details" not in error, error
    elif details is not MISSING:
        assert error.get("details") == details, error
    return error


async def available_ids(c: RawClient, event_id: str, **filters: Any) -> list[str]:
    result = await ok(c, "list_available", event_id=event_id, limit=5000, **filters)
    return [seat["seat_id"] for seat in result["seats"]]


async def live_counts(c: RawClient, event_id: str) -> tuple[int, int, int, int]:
    event = await ok(c, "get_event", event_id=event_id)
    return event["total_seats"], event["available"], event["held"], event["reserved"]


@pytest.fixture
async def agent(server: RunningServer) -> AsyncIterator[RawClient]:
    async with client(server.url, "box-office-1", "agent") as c:
        yield c


@pytest.fixture
async def carol(server: RunningServer) -> AsyncIterator[RawClient]:
    async with client(server.url, "carol", "user") as c:
        yield c


# --- ping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [1, 987654321012, -5, "abc", "x" * 64, "ünïcødé id"])
async def test_ping_echoes_the_id_and_reports_server_time(
    alice: RawClient, request_id: Any
) -> None:
    await alice.send({"id": request_id, "type": "ping"})
    reply = await alice.reply_to(request_id)
    assert reply == {"id": request_id, "type": "ping", "ok": True, "result": reply["result"]}
    assert set(reply["result"]) == {"server_time"}
    assert_near_now(reply["result"]["server_time"])


async def test_welcome_frame_describes_the_session(alice: RawClient, admin: RawClient) -> None:
    welcome = alice.welcome
    assert welcome["protocol"] == "seatd.v1"
    assert (welcome["user_id"], welcome["role"]) == ("alice", "user")
    assert (admin.welcome["user_id"], admin.welcome["role"]) == ("admin-1", "admin")
    assert welcome["session_id"] != admin.welcome["session_id"]
    assert welcome["max_seats_per_hold"] == 100
    assert welcome["max_frame_bytes"] > 0 and welcome["max_inflight"] > 0
    assert_near_now(welcome["server_time"])


# --- create_event ------------------------------------------------------------------------------


async def test_create_event_with_every_field(admin: RawClient) -> None:
    event_id = new_event_id()
    result = await ok(
        admin,
        "create_event",
        event_id=event_id,
        name="Gala night",
        starts_at="2026-12-01T19:30:00+01:00",
        venue="Opera House",
        location={"latitude": 48.8719, "longitude": 2.3316},
        hold_duration_s=120,
        max_seats_per_user=3,
        seats=[{"seat_id": "VIP-1", "category": "gold"}],
        blocks=[{"rows": ["A", "B"], "seats_per_row": 4}],
    )
    assert result == {
        "event_id": event_id,
        "name": "Gala night",
        "status": "open",
        "hold_duration_s": 120,
        "max_seats_per_user": 3,
        "starts_at": "2026-12-01T18:30:00.000Z",
        "venue": "Opera House",
        "location": {"latitude": 48.8719, "longitude": 2.3316},
        "total_seats": 9,
        "available": 9,
        "held": 0,
        "reserved": 0,
        "version": result["version"],
    }
    assert isinstance(result["version"], int)

    # The same event, read back from the database by the event's actor.
    fetched = await ok(admin, "get_event", event_id=event_id)
    assert fetched["location"] == {
        "latitude": pytest.approx(48.8719, abs=1e-9),
        "longitude": pytest.approx(2.3316, abs=1e-9),
    }
    assert {k: v for k, v in fetched.items() if k != "location"} == {
        k: v for k, v in result.items() if k != "location"
    }


async def test_create_event_defaults(admin: RawClient) -> None:
    event_id = new_event_id()
    result = await ok(
        admin,
        "create_event",
        event_id=event_id,
        name="Plain",
        blocks=[{"rows": ["A"], "seats_per_row": 2}],
    )
    assert result["hold_duration_s"] == DEFAULT_HOLD_DURATION_S
    assert result["max_seats_per_user"] == DEFAULT_MAX_SEATS_PER_USER
    for absent in ("starts_at", "venue", "location", "distance_m"):
        assert absent not in result, result
    fetched = await ok(admin, "get_event", event_id=event_id)
    assert (fetched["hold_duration_s"], fetched["max_seats_per_user"]) == (
        DEFAULT_HOLD_DURATION_S,
        DEFAULT_MAX_SEATS_PER_USER,
    )


async def test_create_event_overrides_are_visible_in_get_event(admin: RawClient) -> None:
    created = await create_event(admin, seats=3, hold_duration_s=42, max_seats_per_user=1)
    fetched = await ok(admin, "get_event", event_id=created["event_id"])
    assert (fetched["hold_duration_s"], fetched["max_seats_per_user"]) == (42, 1)


async def test_create_event_without_id_gets_a_server_chosen_id(admin: RawClient) -> None:
    first = await ok(
        admin, "create_event", name="Anonymous", blocks=[{"rows": ["A"], "seats_per_row": 1}]
    )
    second = await ok(
        admin, "create_event", name="Anonymous", blocks=[{"rows": ["A"], "seats_per_row": 1}]
    )
    assert re.fullmatch(r"ev-[0-9a-f]{16}", first["event_id"]), first
    assert first["event_id"] != second["event_id"]
    fetched = await ok(admin, "get_event", event_id=first["event_id"])
    assert (fetched["name"], fetched["total_seats"]) == ("Anonymous", 1)


async def test_create_event_seats_and_blocks_expand_to_seat_views(admin: RawClient) -> None:
    event_id = new_event_id()
    created = await ok(
        admin,
        "create_event",
        event_id=event_id,
        name="Mixed",
        seats=[
            {
                "seat_id": "VIP-1",
                "section": "VIP",
                "row": "1",
                "number": 1,
                "category": "gold",
                "x": 1.5,
                "y": -2.0,
            },
            {"seat_id": "BOX", "category": "box"},
        ],
        blocks=[
            {"section": "Stalls", "rows": ["A", "B"], "seats_per_row": 2, "category": "standard"},
            {"rows": ["C"], "seats_per_row": 2, "first_number": 10},
        ],
    )
    assert created["total_seats"] == 8
    seats = (await ok(admin, "list_available", event_id=event_id))["seats"]
    assert seats == [
        {
            "seat_id": "VIP-1",
            "section": "VIP",
            "row": "1",
            "category": "gold",
            "number": 1,
            "x": 1.5,
            "y": -2.0,
        },
        {"seat_id": "BOX", "section": "", "row": "", "category": "box"},
        {
            "seat_id": "Stalls-A-1",
            "section": "Stalls",
            "row": "A",
            "category": "standard",
            "number": 1,
        },
        {
            "seat_id": "Stalls-A-2",
            "section": "Stalls",
            "row": "A",
            "category": "standard",
            "number": 2,
        },
        {
            "seat_id": "Stalls-B-1",
            "section": "Stalls",
            "row": "B",
            "category": "standard",
            "number": 1,
        },
        {
            "seat_id": "Stalls-B-2",
            "section": "Stalls",
            "row": "B",
            "category": "standard",
            "number": 2,
        },
        {"seat_id": "C-10", "section": "", "row": "C", "category": "", "number": 10},
        {"seat_id": "C-11", "section": "", "row": "C", "category": "", "number": 11},
    ]


async def test_create_event_duplicate_id_is_event_exists(admin: RawClient) -> None:
    created = await create_event(admin, seats=2, name="Original")
    event_id = created["event_id"]
    await fail(
        admin,
        "create_event",
        "event_exists",
        details={"event_id": event_id},
        event_id=event_id,
        name="Impostor",
        blocks=[{"rows": ["Z"], "seats_per_row": 5}],
    )
    fetched = await ok(admin, "get_event", event_id=event_id)
    assert (fetched["name"], fetched["total_seats"]) == ("Original", 2)


@pytest.mark.parametrize(("sub", "role"), [("alice", "user"), ("box-office-1", "agent")])
async def test_create_event_is_forbidden_without_admin_role(
    server: RunningServer, admin: RawClient, sub: str, role: str
) -> None:
    event_id = new_event_id()
    async with client(server.url, sub, role) as c:  # type: ignore[arg-type]
        await fail(
            c,
            "create_event",
            "forbidden",
            details=None,
            event_id=event_id,
            name="Not mine",
            blocks=[{"rows": ["A"], "seats_per_row": 1}],
        )
    await fail(
        admin, "get_event", "event_not_found", details={"event_id": event_id}, event_id=event_id
    )


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        pytest.param({}, {"path": "$.seats"}, id="no-seats-at-all"),
        pytest.param({"seats": [], "blocks": []}, {"path": "$.seats"}, id="empty-seats-and-blocks"),
        pytest.param(
            {"seats": [{"seat_id": s} for s in ("S-1", "S-2", "S-1", "S-2", "S-1", "S-3")]},
            {"path": "$.seats", "seat_ids": ["S-1", "S-2"]},  # each repeated id once
            id="duplicate-seat-ids",
        ),
        pytest.param(
            {"seats": [{"seat_id": "A-2"}], "blocks": [{"rows": ["A"], "seats_per_row": 3}]},
            {"path": "$.seats", "seat_ids": ["A-2"]},
            id="seat-collides-with-block",
        ),
        pytest.param(
            {"blocks": [{"rows": ["A"], "seats_per_row": 2}, {"rows": ["A"], "seats_per_row": 3}]},
            {"path": "$.seats", "seat_ids": ["A-1", "A-2"]},
            id="overlapping-blocks",
        ),
        pytest.param(
            {"starts_at": "next friday", "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.starts_at"},
            id="unparseable-starts-at",
        ),
        pytest.param(
            {"starts_at": "2026-12-01T19:30:00", "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.starts_at"},
            id="starts-at-without-offset",
        ),
        pytest.param(
            {"name": "n" * 201, "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.name", "reason": "must be at most 200 characters"},
            id="over-long-name",
        ),
        pytest.param(
            {"name": "", "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.name", "reason": "must be at least 1 character"},
            id="empty-name",
        ),
        pytest.param(
            {"hold_duration_s": 0, "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.hold_duration_s", "reason": "must be >= 1"},
            id="zero-hold-duration",
        ),
        pytest.param(
            {"max_seats_per_user": 10001, "blocks": [{"rows": ["A"], "seats_per_row": 1}]},
            {"path": "$.max_seats_per_user", "reason": "must be <= 10000"},
            id="huge-seat-limit",
        ),
        pytest.param(
            {
                "location": {"latitude": 91, "longitude": 0},
                "blocks": [{"rows": ["A"], "seats_per_row": 1}],
            },
            {"path": "$.location.latitude", "reason": "must be <= 90"},
            id="latitude-out-of-range",
        ),
        pytest.param(
            {"blocks": [{"rows": ["A", "A"], "seats_per_row": 1}]},
            {"path": "$.blocks[0].rows[1]", "reason": "duplicate item"},
            id="duplicate-block-rows",
        ),
    ],
)
async def test_create_event_invalid_request(
    admin: RawClient, fields: dict[str, Any], details: dict[str, Any]
) -> None:
    event_id = new_event_id()
    error = await fail(
        admin,
        "create_event",
        "invalid_request",
        event_id=event_id,
        **{"name": "Bad event", **fields},
    )
    assert error["details"]["path"] == details["path"], error
    for key, value in details.items():
        assert error["details"][key] == value, error
    # Nothing was created.
    await fail(
        admin, "get_event", "event_not_found", details={"event_id": event_id}, event_id=event_id
    )


async def test_create_event_bad_event_id_pattern(admin: RawClient) -> None:
    error = await fail(
        admin,
        "create_event",
        "invalid_request",
        event_id="-starts-with-dash",
        name="x",
        blocks=[{"rows": ["A"], "seats_per_row": 1}],
    )
    assert error["details"]["path"] == "$.event_id"


# --- get_event ---------------------------------------------------------------------------------


async def test_get_event_unknown_is_event_not_found(alice: RawClient) -> None:
    event_id = new_event_id("missing")
    await fail(
        alice, "get_event", "event_not_found", details={"event_id": event_id}, event_id=event_id
    )


async def test_get_event_reports_live_counts(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    created = await create_event(admin, seats=6, name="Counts")
    event_id = created["event_id"]
    fresh = await ok(alice, "get_event", event_id=event_id)
    assert (fresh["total_seats"], fresh["available"], fresh["held"], fresh["reserved"]) == (
        6,
        6,
        0,
        0,
    )
    assert (fresh["name"], fresh["status"], fresh["event_id"]) == ("Counts", "open", event_id)
    assert "distance_m" not in fresh

    await ok(alice, "hold", event_id=event_id, seat_ids=["A-1", "A-2"])
    bob_hold = await ok(bob, "hold", event_id=event_id, seat_ids=["A-3"])
    await ok(bob, "reserve", event_id=event_id, hold_id=bob_hold["hold_id"])

    live = await ok(alice, "get_event", event_id=event_id)
    assert (live["total_seats"], live["available"], live["held"], live["reserved"]) == (6, 3, 2, 1)
    assert live["version"] > fresh["version"]


# --- list_events -------------------------------------------------------------------------------


async def test_list_events_pages_with_limit_and_after(admin: RawClient, alice: RawClient) -> None:
    prefix = f"pg{uuid.uuid4().hex[:12]}"
    ids = [f"{prefix}-{n}" for n in (1, 2, 3)]
    for n, event_id in enumerate(ids):
        await create_event(
            admin, event_id=event_id, seats=1, name=f"Paged {n}", hold_duration_s=60 + n
        )

    first = await ok(alice, "list_events", after=prefix, limit=2)
    assert [e["event_id"] for e in first["events"]] == ids[:2]
    assert first["next_after"] == ids[1]
    assert first["events"][0] == {
        "event_id": ids[0],
        "name": "Paged 0",
        "status": "open",
        "hold_duration_s": 60,
        "max_seats_per_user": DEFAULT_MAX_SEATS_PER_USER,
    }

    second = await ok(alice, "list_events", after=first["next_after"], limit=2)
    assert second["events"][0]["event_id"] == ids[2]
    assert second["events"][0]["hold_duration_s"] == 62
    assert ids[0] not in {e["event_id"] for e in second["events"]}

    one = await ok(alice, "list_events", after=prefix, limit=1)
    assert ([e["event_id"] for e in one["events"]], one["next_after"]) == ([ids[0]], ids[0])

    past = await ok(alice, "list_events", after=ids[2], limit=200)
    assert not set(ids) & {e["event_id"] for e in past["events"]}

    # The default page (limit 50) is ordered by id too: ours come first after `prefix`.
    default = await ok(alice, "list_events", after=prefix)
    assert [e["event_id"] for e in default["events"][:3]] == ids
    assert len(default["events"]) <= 50


async def test_list_events_past_the_end(alice: RawClient) -> None:
    # No valid event id sorts after 64 'z's, so this page is empty and has no next_after.
    page = await ok(alice, "list_events", after="z" * 64)
    assert page == {"events": []}


async def test_list_events_near_a_point(admin: RawClient, alice: RawClient) -> None:
    # A random spot in the Southern Ocean: nobody else's event is anywhere near it.
    rng = random.Random()
    lat, lon = rng.uniform(-62.0, -55.0), rng.uniform(-170.0, 170.0)
    here = await create_event(
        admin, seats=1, name="Here", location={"latitude": lat, "longitude": lon}
    )
    close = await create_event(
        admin, seats=1, name="5 km north", location={"latitude": lat + 0.045, "longitude": lon}
    )
    far = await create_event(
        admin, seats=1, name="500 km north", location={"latitude": lat + 4.5, "longitude": lon}
    )
    nowhere = await create_event(admin, seats=1, name="No location")
    mine = {e["event_id"] for e in (here, close, far, nowhere)}

    near = await ok(
        alice, "list_events", near={"latitude": lat, "longitude": lon}, radius_m=10_000, limit=200
    )
    found = [e for e in near["events"] if e["event_id"] in mine]
    assert [e["event_id"] for e in found] == [here["event_id"], close["event_id"]]
    assert found[0]["distance_m"] == pytest.approx(0, abs=1)
    assert 4_900 < found[1]["distance_m"] < 5_100
    assert found[1]["location"] == {
        "latitude": pytest.approx(lat + 0.045, abs=1e-9),
        "longitude": pytest.approx(lon, abs=1e-9),
    }
    assert all(e["distance_m"] <= 10_000 for e in near["events"])
    distances = [e["distance_m"] for e in near["events"]]
    assert distances == sorted(distances)

    wide = await ok(
        alice, "list_events", near={"latitude": lat, "longitude": lon}, radius_m=600_000, limit=200
    )
    found = [e for e in wide["events"] if e["event_id"] in mine]
    assert [e["event_id"] for e in found] == [here["event_id"], close["event_id"], far["event_id"]]
    assert 490_000 < found[2]["distance_m"] < 510_000
    distances = [e["distance_m"] for e in wide["events"]]
    assert distances == sorted(distances)

    nearest = await ok(alice, "list_events", near={"latitude": lat, "longitude": lon}, limit=2)
    assert [e["event_id"] for e in nearest["events"]] == [here["event_id"], close["event_id"]]

    # Paging near a point: one event per page, in distance order, none skipped or repeated.
    paged: list[str] = []
    after: str | None = None
    for _ in range(5):
        fields: dict[str, Any] = {"near": {"latitude": lat, "longitude": lon}, "radius_m": 600_000}
        page = await ok(
            alice, "list_events", limit=1, **fields, **({"after": after} if after else {})
        )
        paged += [e["event_id"] for e in page["events"]]
        after = page.get("next_after")
        if after is None:
            break
    assert [e for e in paged if e in mine] == [here["event_id"], close["event_id"], far["event_id"]]


async def test_list_events_radius_needs_a_point(alice: RawClient) -> None:
    error = await alice.error("list_events", radius_m=1000)
    assert error["code"] == "invalid_request"
    assert error["details"]["path"] == "$.radius_m"


# --- hold --------------------------------------------------------------------------------------


async def test_hold_success(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=5, hold_duration_s=120)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-3", "A-1"])
    assert set(hold) == {
        "hold_id",
        "event_id",
        "user_id",
        "seat_ids",
        "expires_at",
        "max_expires_at",
    }
    assert UUID_RE.match(hold["hold_id"]), hold
    assert (hold["event_id"], hold["user_id"]) == (event_id, "alice")
    assert sorted(hold["seat_ids"]) == ["A-1", "A-3"]
    assert_near_now(hold["expires_at"], 120)
    assert_near_now(hold["max_expires_at"], MAX_HOLD_LIFETIME_S)
    assert await available_ids(alice, event_id) == ["A-2", "A-4", "A-5"]
    assert await live_counts(alice, event_id) == (5, 3, 2, 0)


async def test_hold_default_duration(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=1)
    hold = await ok(alice, "hold", event_id=event["event_id"], seat_ids=["A-1"])
    assert_near_now(hold["expires_at"], DEFAULT_HOLD_DURATION_S)


async def test_hold_conflicts_are_all_or_nothing(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    event = await create_event(admin, seats=5)
    event_id = event["event_id"]
    await ok(bob, "hold", event_id=event_id, seat_ids=["A-1"])
    sold = await ok(bob, "hold", event_id=event_id, seat_ids=["A-2"])
    await ok(bob, "reserve", event_id=event_id, hold_id=sold["hold_id"])
    mine = await ok(alice, "hold", event_id=event_id, seat_ids=["A-4"])

    error = await fail(
        alice,
        "hold",
        "seat_unavailable",
        event_id=event_id,
        seat_ids=["A-3", "A-1", "A-2", "A-4"],
    )
    assert error["details"] == {
        "conflicts": [
            {"seat_id": "A-1", "state": "held", "yours": False},
            {"seat_id": "A-2", "state": "reserved"},
            {"seat_id": "A-4", "state": "held", "yours": True},
        ]
    }
    # Nothing was held: A-3 is still free, and alice still has only her first hold.
    assert await available_ids(alice, event_id) == ["A-3", "A-5"]
    assert await live_counts(alice, event_id) == (5, 2, 2, 1)
    again = await ok(alice, "hold", event_id=event_id, seat_ids=["A-3"])
    assert again["hold_id"] != mine["hold_id"]


async def test_hold_unknown_seats(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    await fail(
        alice,
        "hold",
        "unknown_seat",
        details={"seat_ids": ["Z-9", "A-4"]},
        event_id=event_id,
        seat_ids=["A-1", "Z-9", "A-4"],
    )
    assert await available_ids(alice, event_id) == ["A-1", "A-2", "A-3"]


async def test_hold_seat_limit(admin: RawClient, alice: RawClient, bob: RawClient) -> None:
    event = await create_event(admin, seats=6, max_seats_per_user=2)
    event_id = event["event_id"]
    first = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"])
    await fail(
        alice,
        "hold",
        "seat_limit_exceeded",
        details={"limit": 2, "current": 1, "requested": 2},
        event_id=event_id,
        seat_ids=["A-2", "A-3"],
    )
    assert await available_ids(alice, event_id) == ["A-2", "A-3", "A-4", "A-5", "A-6"]
    # Reserved seats count too.
    await ok(alice, "reserve", event_id=event_id, hold_id=first["hold_id"])
    await ok(alice, "hold", event_id=event_id, seat_ids=["A-2"])
    await fail(
        alice,
        "hold",
        "seat_limit_exceeded",
        details={"limit": 2, "current": 2, "requested": 1},
        event_id=event_id,
        seat_ids=["A-3"],
    )
    # The limit is per user: bob is not affected.
    await ok(bob, "hold", event_id=event_id, seat_ids=["A-3", "A-4"])


async def test_hold_default_seat_limit(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=10)
    seats = [f"A-{n}" for n in range(1, 10)]
    await fail(
        alice,
        "hold",
        "seat_limit_exceeded",
        details={"limit": DEFAULT_MAX_SEATS_PER_USER, "current": 0, "requested": 9},
        event_id=event["event_id"],
        seat_ids=seats,
    )
    await ok(alice, "hold", event_id=event["event_id"], seat_ids=seats[:8])


async def test_hold_unknown_event(alice: RawClient) -> None:
    event_id = new_event_id("missing")
    await fail(
        alice,
        "hold",
        "event_not_found",
        details={"event_id": event_id},
        event_id=event_id,
        seat_ids=["A-1"],
    )


async def test_agent_must_name_the_customer(admin: RawClient, agent: RawClient) -> None:
    event = await create_event(admin, seats=2)
    await fail(
        agent,
        "hold",
        "invalid_request",
        details={"path": "$.on_behalf_of"},
        event_id=event["event_id"],
        seat_ids=["A-1"],
    )
    assert await available_ids(agent, event["event_id"]) == ["A-1", "A-2"]


async def test_agent_holds_for_a_customer(
    admin: RawClient, agent: RawClient, carol: RawClient, alice: RawClient
) -> None:
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    hold = await ok(agent, "hold", event_id=event_id, seat_ids=["A-1"], on_behalf_of="carol")
    assert hold["user_id"] == "carol"
    # The hold is carol's: carol herself may refresh it, alice may not, the agent acts for carol.
    refreshed = await ok(carol, "refresh", event_id=event_id, hold_id=hold["hold_id"])
    assert refreshed["user_id"] == "carol"
    await fail(
        alice, "refresh", "forbidden", details=None, event_id=event_id, hold_id=hold["hold_id"]
    )
    await fail(
        agent,
        "reserve",
        "forbidden",
        details=None,
        event_id=event_id,
        hold_id=hold["hold_id"],
        on_behalf_of="dave",
    )
    await fail(
        agent,
        "reserve",
        "invalid_request",
        details={"path": "$.on_behalf_of"},
        event_id=event_id,
        hold_id=hold["hold_id"],
    )
    reservation = await ok(
        agent, "reserve", event_id=event_id, hold_id=hold["hold_id"], on_behalf_of="carol"
    )
    assert reservation["user_id"] == "carol"


async def test_user_acting_for_someone_else_is_forbidden(
    admin: RawClient, alice: RawClient
) -> None:
    event = await create_event(admin, seats=2)
    event_id = event["event_id"]
    await fail(
        alice,
        "hold",
        "forbidden",
        details=None,
        event_id=event_id,
        seat_ids=["A-1"],
        on_behalf_of="bob",
    )
    assert await available_ids(alice, event_id) == ["A-1", "A-2"]
    own = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"], on_behalf_of="alice")
    assert own["user_id"] == "alice"


# --- refresh -----------------------------------------------------------------------------------


async def test_refresh_extends_the_hold(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=2, hold_duration_s=60)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"])
    await asyncio.sleep(0.05)
    refreshed = await ok(alice, "refresh", event_id=event_id, hold_id=hold["hold_id"])
    assert {
        k: refreshed[k] for k in ("hold_id", "event_id", "user_id", "seat_ids", "max_expires_at")
    } == {k: hold[k] for k in ("hold_id", "event_id", "user_id", "seat_ids", "max_expires_at")}
    assert wire_time(refreshed["expires_at"]) > wire_time(hold["expires_at"])
    assert_near_now(refreshed["expires_at"], 60)
    assert await live_counts(alice, event_id) == (2, 1, 1, 0)


async def test_refresh_accepts_any_spelling_of_the_hold_uuid(
    admin: RawClient, alice: RawClient
) -> None:
    event = await create_event(admin, seats=1)
    hold = await ok(alice, "hold", event_id=event["event_id"], seat_ids=["A-1"])
    refreshed = await ok(
        alice, "refresh", event_id=event["event_id"], hold_id=hold["hold_id"].upper()
    )
    assert refreshed["hold_id"] == hold["hold_id"]


@pytest.mark.parametrize("hold_duration_s", [1800, 3600])
async def test_refresh_past_the_maximum_lifetime(
    admin: RawClient, alice: RawClient, hold_duration_s: int
) -> None:
    # With a hold duration >= MAX_HOLD_LIFETIME the lifetime is the duration itself, so a new
    # hold already expires at its maximum and cannot be extended.
    event = await create_event(admin, seats=1, hold_duration_s=hold_duration_s)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"])
    assert hold["expires_at"] == hold["max_expires_at"]
    assert_near_now(hold["max_expires_at"], hold_duration_s)
    error = await fail(
        alice, "refresh", "hold_lifetime_exceeded", event_id=event_id, hold_id=hold["hold_id"]
    )
    # Times on the wire are RFC 3339 strings, in details as everywhere else.
    assert error.get("details") == {"max_expires_at": hold["max_expires_at"]}, error
    # The hold is untouched and still live.
    assert await live_counts(alice, event_id) == (1, 0, 1, 0)


async def test_refresh_unknown_hold(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=1)
    hold_id = str(uuid.uuid4())
    await fail(
        alice,
        "refresh",
        "hold_not_found",
        details={"hold_id": hold_id},
        event_id=event["event_id"],
        hold_id=hold_id,
    )


@pytest.mark.parametrize("request_type", ["refresh", "release", "reserve"])
@pytest.mark.parametrize("hold_id", ["not-a-uuid", "12345", "g" * 32])
async def test_hold_commands_need_a_uuid(
    admin: RawClient, alice: RawClient, request_type: str, hold_id: str
) -> None:
    event = await create_event(admin, seats=1)
    await fail(
        alice,
        request_type,
        "invalid_request",
        details={"path": "$.hold_id"},
        event_id=event["event_id"],
        hold_id=hold_id,
    )


@pytest.mark.parametrize("request_type", ["refresh", "release", "reserve"])
async def test_hold_commands_on_unknown_event(alice: RawClient, request_type: str) -> None:
    event_id = new_event_id("missing")
    await fail(
        alice,
        request_type,
        "event_not_found",
        details={"event_id": event_id},
        event_id=event_id,
        hold_id=str(uuid.uuid4()),
    )


@pytest.mark.parametrize("request_type", ["refresh", "release", "reserve"])
async def test_hold_commands_on_another_users_hold_are_forbidden(
    admin: RawClient, alice: RawClient, bob: RawClient, request_type: str
) -> None:
    event = await create_event(admin, seats=2)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"])
    await fail(
        bob, request_type, "forbidden", details=None, event_id=event_id, hold_id=hold["hold_id"]
    )
    # The hold is still alice's and still live.
    assert await live_counts(alice, event_id) == (2, 1, 1, 0)
    await ok(alice, request_type, event_id=event_id, hold_id=hold["hold_id"])


async def test_expired_hold(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=4, hold_duration_s=1)
    event_id = event["event_id"]
    holds = [await ok(alice, "hold", event_id=event_id, seat_ids=[f"A-{n}"]) for n in (1, 2, 3)]
    assert await live_counts(alice, event_id) == (4, 1, 3, 0)
    await asyncio.sleep(1.3)
    for request_type, hold in zip(("refresh", "reserve", "release"), holds, strict=True):
        await fail(
            alice,
            request_type,
            "hold_expired",
            details={"hold_id": hold["hold_id"]},
            event_id=event_id,
            hold_id=hold["hold_id"],
        )
    # Its seats are free again, and nothing was reserved.
    assert await available_ids(alice, event_id) == ["A-1", "A-2", "A-3", "A-4"]
    assert await live_counts(alice, event_id) == (4, 4, 0, 0)


# --- release -----------------------------------------------------------------------------------


async def test_release_frees_the_seats(admin: RawClient, alice: RawClient, bob: RawClient) -> None:
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1", "A-2"])
    assert await available_ids(alice, event_id) == ["A-3"]
    released = await ok(alice, "release", event_id=event_id, hold_id=hold["hold_id"])
    assert released["hold_id"] == hold["hold_id"]
    assert released["event_id"] == event_id
    assert sorted(released["seat_ids"]) == ["A-1", "A-2"]
    assert set(released) == {"hold_id", "event_id", "seat_ids"}
    assert await available_ids(alice, event_id) == ["A-1", "A-2", "A-3"]
    assert await live_counts(alice, event_id) == (3, 3, 0, 0)
    # Anyone can take them now.
    await ok(bob, "hold", event_id=event_id, seat_ids=["A-1"])

    for request_type in ("release", "refresh", "reserve"):
        await fail(
            alice,
            request_type,
            "hold_not_found",
            details={"hold_id": hold["hold_id"], "reason": "released"},
            event_id=event_id,
            hold_id=hold["hold_id"],
        )


async def test_release_unknown_hold(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=1)
    hold_id = str(uuid.uuid4())
    await fail(
        alice,
        "release",
        "hold_not_found",
        details={"hold_id": hold_id},
        event_id=event["event_id"],
        hold_id=hold_id,
    )


async def test_hold_belongs_to_its_event(admin: RawClient, alice: RawClient) -> None:
    one = await create_event(admin, seats=1)
    other = await create_event(admin, seats=1)
    hold = await ok(alice, "hold", event_id=one["event_id"], seat_ids=["A-1"])
    await fail(
        alice,
        "release",
        "hold_not_found",
        details={"hold_id": hold["hold_id"]},
        event_id=other["event_id"],
        hold_id=hold["hold_id"],
    )
    assert await live_counts(alice, one["event_id"]) == (1, 0, 1, 0)


# --- reserve -----------------------------------------------------------------------------------


async def test_reserve_confirms_the_seats(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    event = await create_event(admin, seats=5)
    event_id = event["event_id"]
    hold = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1", "A-2"])
    reservation = await ok(alice, "reserve", event_id=event_id, hold_id=hold["hold_id"])
    assert set(reservation) == {
        "reservation_id",
        "hold_id",
        "event_id",
        "user_id",
        "seat_ids",
        "reserved_at",
    }
    assert UUID_RE.match(reservation["reservation_id"])
    assert reservation["reservation_id"] != hold["hold_id"]
    assert (reservation["hold_id"], reservation["event_id"], reservation["user_id"]) == (
        hold["hold_id"],
        event_id,
        "alice",
    )
    assert sorted(reservation["seat_ids"]) == ["A-1", "A-2"]
    assert_near_now(reservation["reserved_at"])
    assert await live_counts(alice, event_id) == (5, 3, 0, 2)
    assert await available_ids(alice, event_id) == ["A-3", "A-4", "A-5"]

    await fail(
        bob,
        "hold",
        "seat_unavailable",
        details={"conflicts": [{"seat_id": "A-2", "state": "reserved"}]},
        event_id=event_id,
        seat_ids=["A-2", "A-3"],
    )
    await fail(
        alice,
        "hold",
        "seat_unavailable",
        details={"conflicts": [{"seat_id": "A-1", "state": "reserved"}]},
        event_id=event_id,
        seat_ids=["A-1"],
    )
    for request_type in ("reserve", "release", "refresh"):
        await fail(
            alice,
            request_type,
            "hold_not_found",
            details={"hold_id": hold["hold_id"], "reason": "reserved"},
            event_id=event_id,
            hold_id=hold["hold_id"],
        )
    assert await live_counts(alice, event_id) == (5, 3, 0, 2)


async def test_reserve_unknown_hold(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=1)
    hold_id = str(uuid.uuid4())
    await fail(
        alice,
        "reserve",
        "hold_not_found",
        details={"hold_id": hold_id},
        event_id=event["event_id"],
        hold_id=hold_id,
    )
    assert await live_counts(alice, event["event_id"]) == (1, 1, 0, 0)


# --- idempotency keys --------------------------------------------------------------------------


async def test_hold_retried_with_its_idempotency_key_gets_the_first_reply(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    """A client that lost a reply retries with the same key and gets the original outcome."""
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    key = f"key-{uuid.uuid4().hex}"
    first = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"], idempotency_key=key)
    again = await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"], idempotency_key=key)
    assert again == first
    assert await live_counts(alice, event_id) == (3, 2, 1, 0)
    # Keys belong to their user: bob's identical key is his own.
    bobs = await ok(bob, "hold", event_id=event_id, seat_ids=["A-2"], idempotency_key=key)
    assert bobs["user_id"] == "bob" and bobs["hold_id"] != first["hold_id"]

    reserved = await ok(
        alice, "reserve", event_id=event_id, hold_id=first["hold_id"], idempotency_key=key + "-r"
    )
    reserved_again = await ok(
        alice, "reserve", event_id=event_id, hold_id=first["hold_id"], idempotency_key=key + "-r"
    )
    assert reserved_again == reserved
    assert await live_counts(alice, event_id) == (3, 1, 1, 1)


async def test_idempotency_key_reused_for_another_request(
    admin: RawClient, alice: RawClient
) -> None:
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    key = f"key-{uuid.uuid4().hex}"
    await ok(alice, "hold", event_id=event_id, seat_ids=["A-1"], idempotency_key=key)
    await fail(
        alice,
        "hold",
        "idempotency_mismatch",
        event_id=event_id,
        seat_ids=["A-2"],
        idempotency_key=key,
    )
    assert await available_ids(alice, event_id) == ["A-2", "A-3"]


# --- list_available ----------------------------------------------------------------------------


async def test_list_available_filters(admin: RawClient, alice: RawClient) -> None:
    event_id = new_event_id()
    await ok(
        admin,
        "create_event",
        event_id=event_id,
        name="Sections",
        seats=[
            {"seat_id": "VIP-1", "section": "VIP", "category": "gold"},
            {"seat_id": "VIP-2", "section": "VIP", "category": "gold"},
            {"seat_id": "VIP-3", "section": "VIP", "category": "silver"},
        ],
        blocks=[
            {"section": "Stalls", "rows": ["A"], "seats_per_row": 3, "category": "silver"},
            {"rows": ["C"], "seats_per_row": 2},
        ],
    )
    await ok(alice, "hold", event_id=event_id, seat_ids=["VIP-2", "Stalls-A-1"])

    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["VIP-1", "VIP-3", "Stalls-A-2", "Stalls-A-3", "C-1", "C-2"]),
        ({"section": "VIP"}, ["VIP-1", "VIP-3"]),
        ({"category": "silver"}, ["VIP-3", "Stalls-A-2", "Stalls-A-3"]),
        ({"section": "VIP", "category": "gold"}, ["VIP-1"]),
        ({"section": "Stalls", "category": "gold"}, []),
        ({"section": ""}, ["C-1", "C-2"]),
        ({"section": "Balcony"}, []),
    ]
    for filters, expected in cases:
        result = await ok(alice, "list_available", event_id=event_id, **filters)
        assert result["event_id"] == event_id
        assert [s["seat_id"] for s in result["seats"]] == expected, filters
        assert result["total_available"] == len(expected), filters
        assert "next_after" not in result, result
        for seat in result["seats"]:
            if "section" in filters:
                assert seat["section"] == filters["section"]
            if "category" in filters:
                assert seat["category"] == filters["category"]


async def test_list_available_pages_cover_every_seat_once(
    admin: RawClient, alice: RawClient
) -> None:
    event = await create_event(admin, seats=10, rows=2)
    event_id = event["event_id"]
    await ok(alice, "hold", event_id=event_id, seat_ids=["A-2", "A-3", "B-5"])
    every = [f"{row}-{n}" for row in "AB" for n in range(1, 11)]
    expected = [s for s in every if s not in {"A-2", "A-3", "B-5"}]

    collected: list[str] = []
    pages = 0
    after: str | None = None
    while True:
        request: dict[str, Any] = {"event_id": event_id, "limit": 4}
        if after is not None:
            request["after"] = after
        page = await ok(alice, "list_available", **request)
        pages += 1
        ids = [s["seat_id"] for s in page["seats"]]
        assert page["total_available"] == len(expected)
        collected += ids
        after = page.get("next_after")
        if after is None:
            assert len(ids) <= 4
            break
        assert len(ids) == 4
        assert after == ids[-1]
        assert pages < 10, "paging does not terminate"
    assert collected == expected
    assert pages == 5  # 17 seats, 4 per page

    exact = await ok(alice, "list_available", event_id=event_id, limit=len(expected))
    assert [s["seat_id"] for s in exact["seats"]] == expected
    assert "next_after" not in exact

    # `after` may name a seat that is not available: the page starts after it.
    from_held = await ok(alice, "list_available", event_id=event_id, after="A-3", limit=2)
    assert [s["seat_id"] for s in from_held["seats"]] == ["A-4", "A-5"]
    assert from_held["next_after"] == "A-5"

    last = await ok(alice, "list_available", event_id=event_id, after="B-10")
    assert (last["seats"], last["total_available"]) == ([], len(expected))
    assert "next_after" not in last


async def test_replies_of_every_frame_length_arrive_whole(
    admin: RawClient, alice: RawClient
) -> None:
    """Reply frames are built by the gateway: a payload under 126 bytes, one under 64 KiB and
    one over it each take a different header, and the client's own parser must accept them."""
    event = await create_event(admin, seats=250, rows=20)  # 5,000 seats, A-1 .. T-250
    event_id = event["event_id"]
    tiny = await alice.request("ping", id="p")
    assert tiny["ok"] is True and len(orjson.dumps(tiny)) < 126
    for limit in (1, 100, 5000):
        page = await ok(alice, "list_available", event_id=event_id, limit=limit)
        assert len(page["seats"]) == limit
        assert page["total_available"] == 5000
    assert len(orjson.dumps(page)) > 1 << 16
    assert page["seats"][-1]["seat_id"] == "T-250"


async def test_list_available_unknown_after_seat(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=2)
    await fail(
        alice,
        "list_available",
        "unknown_seat",
        details={"seat_ids": ["Q-99"]},
        event_id=event["event_id"],
        after="Q-99",
    )


async def test_list_available_unknown_event(alice: RawClient) -> None:
    event_id = new_event_id("missing")
    await fail(
        alice,
        "list_available",
        "event_not_found",
        details={"event_id": event_id},
        event_id=event_id,
    )
