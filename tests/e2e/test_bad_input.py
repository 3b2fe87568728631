"""Hostile and careless input over a real WebSocket: every bad frame gets a precise error reply.

After each bad frame the same connection keeps working (a ping succeeds), except for a frame
over the size limit, which closes the connection with 1009. A well-behaved client connected
alongside never notices. The handshake refuses missing or bad tokens (401) and unknown
subprotocols (400); the health probes answer plain HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
import pytest
from support.client import RawClient, client, create_event, new_event_id
from support.server import SECRET, RunningServer, token
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from seatd.auth import TokenAuthority

TYPES = sorted(
    [
        "ping",
        "authenticate",
        "create_event",
        "get_event",
        "list_events",
        "hold",
        "refresh",
        "release",
        "reserve",
        "subscribe",
        "unsubscribe",
        "list_available",
    ]
)
MAX_SEATS_PER_HOLD = 100
ANY: Any = object()


def frame(request_id: Any, request_type: str, **fields: Any) -> str:
    return json.dumps({"id": request_id, "type": request_type, **fields})


@dataclass(frozen=True, slots=True)
class Bad:
    """A bad frame and the error reply it must get."""

    case: str
    text: str
    code: str
    request_id: Any = None  # the reply's id
    request_type: str | None = None  # the reply's type; None: the reply has no "type"
    details: dict[str, Any] | None = None  # None: no details; ANY values: key present


_field_ids = itertools.count(100)


def not_json(case: str, text: str) -> Bad:
    return Bad(case, text, "invalid_json")


def bad_id(case: str, text: str, request_type: str | None = "ping") -> Bad:
    return Bad(case, text, "invalid_request", None, request_type, {"path": "$.id"})


def bad_type(case: str, text: str, request_id: Any) -> Bad:
    return Bad(case, text, "invalid_request", request_id, None, {"path": "$.type", "types": TYPES})


def unknown_type(case: str, request_type: str) -> Bad:
    request_id = next(_field_ids)
    return Bad(
        case, frame(request_id, request_type), "unknown_type", request_id, None, {"types": TYPES}
    )


def bad_field(
    case: str, request_type: str, fields: dict[str, Any], path: str, reason: Any = ANY
) -> Bad:
    """A well-formed envelope whose fields are wrong: invalid_request naming the field."""
    request_id = next(_field_ids)
    details = {"path": path, "reason": reason}
    return Bad(
        case,
        frame(request_id, request_type, **fields),
        "invalid_request",
        request_id,
        request_type,
        details,
    )


EV = {"event_id": "ev-x"}
HOLD = {"event_id": "ev-x", "seat_ids": ["A-1"]}
ONE_BLOCK = [{"rows": ["A"], "seats_per_row": 1}]
NOT_STR = "expected a string, got {}"
MISSING_FIELD = "required field is missing"
UNKNOWN_FIELD = "unknown field"

# fmt: off
BAD_FRAMES: list[Bad] = [
    # --- not a JSON object ---
    not_json("truncated-json", '{"id": 1, "type": "ping"'),
    not_json("garbage", "hello, seatd"),
    not_json("empty-text", ""),
    not_json("trailing-comma", '{"id": 1, "type": "ping",}'),
    not_json("json-array", '[{"id": 1, "type": "ping"}]'),
    not_json("json-number", "42"),
    not_json("json-string", '"ping"'),
    not_json("json-null", "null"),
    not_json("json-true", "true"),
    not_json("nan-literal", '{"id": 1, "type": "list_events", "radius_m": NaN}'),
    not_json("lone-surrogate", '{"id": 1, "type": "get_event", "event_id": "\\ud800"}'),
    not_json("deeply-nested", '{"id": 1, "type": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}"),
    # --- envelope: id ---
    bad_id("missing-id", '{"type": "ping"}'),
    bad_id("null-id", '{"id": null, "type": "ping"}'),
    bad_id("bool-id", '{"id": true, "type": "ping"}'),
    bad_id("false-id", '{"id": false, "type": "ping"}'),
    bad_id("float-id", '{"id": 1.5, "type": "ping"}'),
    bad_id("integral-float-id", '{"id": 1.0, "type": "ping"}'),
    bad_id("object-id", '{"id": {"n": 1}, "type": "ping"}'),
    bad_id("array-id", '{"id": [1], "type": "ping"}'),
    bad_id("empty-string-id", '{"id": "", "type": "ping"}'),
    bad_id("long-string-id", frame("x" * 65, "ping")),
    bad_id("int64-overflow-id", frame(2**63, "ping")),
    bad_id("huge-int-id", '{"id": 18446744073709551616, "type": "ping"}'),
    bad_id("bad-id-and-type", '{"id": true, "type": 5}', None),
    # --- envelope: type ---
    bad_type("missing-type", '{"id": "t1"}', "t1"),
    bad_type("number-type", '{"id": "t2", "type": 5}', "t2"),
    bad_type("null-type", '{"id": 3, "type": null}', 3),
    bad_type("object-type", '{"id": 4, "type": {"name": "ping"}}', 4),
    unknown_type("unknown-type", "hold_everything"),
    unknown_type("wrong-case-type", "PING"),
    unknown_type("empty-type", ""),
    unknown_type("welcome-is-no-request", "welcome"),
    # --- wrong field types ---
    bad_field("seat-id-number", "hold", {**EV, "seat_ids": [1]},
              "$.seat_ids[0]", NOT_STR.format("integer")),
    bad_field("second-seat-id-null", "hold", {**EV, "seat_ids": ["A-1", None]},
              "$.seat_ids[1]", NOT_STR.format("null")),
    bad_field("seat-ids-string", "hold", {**EV, "seat_ids": "A-1"},
              "$.seat_ids", "expected an array, got string"),
    bad_field("seat-ids-object", "hold", {**EV, "seat_ids": {"A-1": 1}},
              "$.seat_ids", "expected an array, got object"),
    bad_field("event-id-number", "hold", {"event_id": 7, "seat_ids": ["A-1"]},
              "$.event_id", NOT_STR.format("integer")),
    bad_field("on-behalf-of-number", "hold", {**HOLD, "on_behalf_of": 3},
              "$.on_behalf_of", "expected a string or null, got integer"),
    bad_field("hold-id-number", "refresh", {**EV, "hold_id": 123},
              "$.hold_id", NOT_STR.format("integer")),
    bad_field("get-event-id-null", "get_event", {"event_id": None},
              "$.event_id", NOT_STR.format("null")),
    bad_field("near-string", "list_events", {"near": "here"},
              "$.near", "expected an object or null, got string"),
    bad_field("near-latitude-string", "list_events", {"near": {"latitude": "1", "longitude": 2}},
              "$.near.latitude", "expected a number, got string"),
    bad_field("radius-string", "list_events", {"radius_m": "far"},
              "$.radius_m", "expected a number or null, got string"),
    bad_field("limit-string", "list_available", {**EV, "limit": "10"},
              "$.limit", "expected an integer, got string"),
    bad_field("limit-float", "list_available", {**EV, "limit": 1.5},
              "$.limit", "expected an integer, got number"),
    bad_field("section-number", "list_available", {**EV, "section": 5},
              "$.section", "expected a string or null, got integer"),
    bad_field("name-number", "create_event", {"name": 5},
              "$.name", NOT_STR.format("integer")),
    bad_field("block-rows-string", "create_event",
              {"name": "x", "blocks": [{"rows": "A", "seats_per_row": 2}]},
              "$.blocks[0].rows", "expected an array, got string"),
    bad_field("seat-spec-id-number", "create_event",
              {"name": "x", "seats": [{"seat_id": "a"}, {"seat_id": 1}]},
              "$.seats[1].seat_id", NOT_STR.format("integer")),
    bad_field("seat-spec-not-object", "create_event", {"name": "x", "seats": ["A-1"]},
              "$.seats[0]", "expected an object, got string"),
    bad_field("location-array", "create_event", {"name": "x", "location": [1, 2]},
              "$.location", "expected an object or null, got array"),
    # --- missing required fields ---
    bad_field("hold-no-seat-ids", "hold", EV, "$.seat_ids", MISSING_FIELD),
    bad_field("hold-no-event-id", "hold", {"seat_ids": ["A-1"]}, "$.event_id", MISSING_FIELD),
    bad_field("reserve-no-hold-id", "reserve", EV, "$.hold_id", MISSING_FIELD),
    bad_field("create-no-name", "create_event", {"blocks": ONE_BLOCK}, "$.name", MISSING_FIELD),
    bad_field("get-event-empty", "get_event", {}, "$.event_id", MISSING_FIELD),
    bad_field("near-no-longitude", "list_events", {"near": {"latitude": 1}},
              "$.near.longitude", MISSING_FIELD),
    bad_field("block-no-seats-per-row", "create_event", {"name": "x", "blocks": [{"rows": ["A"]}]},
              "$.blocks[0].seats_per_row", MISSING_FIELD),
    # --- unknown extra fields ---
    bad_field("ping-extra", "ping", {"foo": 1}, "$.foo", UNKNOWN_FIELD),
    bad_field("hold-misspelt", "hold", {**HOLD, "seat": "A-2"}, "$.seat", UNKNOWN_FIELD),
    bad_field("hold-user-id", "hold", {**HOLD, "user_id": "mallory"}, "$.user_id", UNKNOWN_FIELD),
    bad_field("seat-spec-extra", "create_event",
              {"name": "x", "seats": [{"seat_id": "a", "price": 5}]},
              "$.seats[0].price", UNKNOWN_FIELD),
    bad_field("near-extra", "list_events", {"near": {"latitude": 1, "longitude": 2, "alt": 3}},
              "$.near.alt", UNKNOWN_FIELD),
    bad_field("odd-key", "ping", {"two words": 1}, '$["two words"]', UNKNOWN_FIELD),
    # --- booleans where numbers are expected ---
    bad_field("limit-true", "list_available", {**EV, "limit": True},
              "$.limit", "expected an integer, got boolean"),
    bad_field("events-limit-false", "list_events", {"limit": False},
              "$.limit", "expected an integer, got boolean"),
    bad_field("hold-duration-true", "create_event", {"name": "x", "hold_duration_s": True},
              "$.hold_duration_s", "expected an integer or null, got boolean"),
    bad_field("seats-per-row-true", "create_event",
              {"name": "x", "blocks": [{"rows": ["A"], "seats_per_row": True}]},
              "$.blocks[0].seats_per_row", "expected an integer, got boolean"),
    bad_field("radius-true", "list_events", {"radius_m": True},
              "$.radius_m", "expected a number or null, got boolean"),
    bad_field("latitude-false", "list_events", {"near": {"latitude": False, "longitude": 0}},
              "$.near.latitude", "expected a number, got boolean"),
    # --- out-of-range numbers ---
    bad_field("available-limit-0", "list_available", {**EV, "limit": 0}, "$.limit", "must be >= 1"),
    bad_field("available-limit-100000", "list_available", {**EV, "limit": 100000},
              "$.limit", "must be <= 5000"),
    bad_field("available-limit-negative", "list_available", {**EV, "limit": -1},
              "$.limit", "must be >= 1"),
    bad_field("available-limit-int64-overflow", "list_available", {**EV, "limit": 2**63},
              "$.limit", "must fit in a signed 64-bit integer"),
    bad_field("events-limit-0", "list_events", {"limit": 0}, "$.limit", "must be >= 1"),
    bad_field("events-limit-100000", "list_events", {"limit": 100000}, "$.limit", "must be <= 200"),
    bad_field("radius-0", "list_events", {"near": {"latitude": 0, "longitude": 0}, "radius_m": 0},
              "$.radius_m", "must be >= 1"),
    bad_field("latitude-91", "list_events", {"near": {"latitude": 91, "longitude": 0}},
              "$.near.latitude", "must be <= 90"),
    bad_field("longitude-minus-181", "list_events", {"near": {"latitude": 0, "longitude": -181}},
              "$.near.longitude", "must be >= -180"),
    bad_field("seats-per-row-0", "create_event",
              {"name": "x", "blocks": [{"rows": ["A"], "seats_per_row": 0}]},
              "$.blocks[0].seats_per_row", "must be >= 1"),
    # --- seat id lists ---
    bad_field("empty-seat-ids", "hold", {**EV, "seat_ids": []},
              "$.seat_ids", "must have at least 1 item(s)"),
    bad_field("duplicate-seat-ids", "hold", {**EV, "seat_ids": ["A-1", "A-2", "A-1"]},
              "$.seat_ids[2]", "duplicate item"),
    bad_field("too-many-seat-ids", "hold", {**EV, "seat_ids": [f"S-{n}" for n in range(101)]},
              "$.seat_ids", "must have at most 100 item(s)"),
    bad_field("empty-seat-id", "hold", {**EV, "seat_ids": [""]},
              "$.seat_ids[0]", "must be at least 1 character"),
    bad_field("control-char-seat-id", "hold", {**EV, "seat_ids": ["A-1", "A\n2"]},
              "$.seat_ids[1]"),
    bad_field("long-seat-id", "hold", {**EV, "seat_ids": ["s" * 65]},
              "$.seat_ids[0]", "must be at most 64 characters"),
    # --- other constrained strings ---
    bad_field("event-id-pattern", "hold", {"event_id": "bad id!", "seat_ids": ["A-1"]},
              "$.event_id"),
    bad_field("event-id-trailing-newline", "get_event", {"event_id": "ev-x\n"}, "$.event_id"),
    bad_field("event-id-too-long", "get_event", {"event_id": "e" * 65}, "$.event_id"),
    bad_field("empty-hold-id", "release", {**EV, "hold_id": ""},
              "$.hold_id", "must be at least 1 character"),
    bad_field("empty-idempotency-key", "hold", {**HOLD, "idempotency_key": ""},
              "$.idempotency_key", "must be at least 1 character"),
    bad_field("name-control-char", "create_event", {"name": "a\u0007b", "blocks": ONE_BLOCK},
              "$.name"),
]
# fmt: on


def check_error_reply(reply: dict[str, Any], bad: Bad) -> None:
    """``reply`` is exactly the error reply ``bad`` must get."""
    assert reply.get("ok") is False, reply
    assert "id" in reply and reply["id"] == bad.request_id, reply
    if bad.request_type is None:
        assert "type" not in reply, reply
    else:
        assert reply.get("type") == bad.request_type, reply
    assert "result" not in reply, reply
    error = reply["error"]
    assert error["code"] == bad.code, error
    assert error["temporary"] is False, error
    assert "retry_after_ms" not in error, error
    assert isinstance(error["message"], str) and error["message"], error
    if bad.details is None:
        assert "details" not in error, error
        return
    assert set(error.get("details", {})) == set(bad.details), error
    for key, value in bad.details.items():
        if value is not ANY:
            assert error["details"][key] == value, error


async def next_reply(c: RawClient) -> dict[str, Any]:
    """The next frame that answers a request (pushes are set aside)."""
    while True:
        received = await c.recv(timeout=5)
        if "ok" in received:
            return received
        c.pushes.append(received)


async def assert_alive(c: RawClient) -> None:
    request_id = f"alive-{uuid.uuid4().hex[:8]}"
    reply = await c.request("ping", id=request_id)
    assert (reply["id"], reply["type"], reply["ok"]) == (request_id, "ping", True), reply


@pytest.mark.parametrize("bad", [pytest.param(bad, id=bad.case) for bad in BAD_FRAMES])
async def test_bad_frame_gets_an_error_and_the_connection_survives(
    alice: RawClient, bad: Bad
) -> None:
    await alice.send(bad.text)
    check_error_reply(await next_reply(alice), bad)
    await assert_alive(alice)


BINARY = Bad("binary-frame", "", "invalid_json")


async def test_binary_frame_is_refused(alice: RawClient) -> None:
    await alice.send(orjson.dumps({"id": 1, "type": "ping"}))  # bytes: a binary frame
    check_error_reply(await next_reply(alice), BINARY)
    await assert_alive(alice)


async def test_hold_accepts_exactly_the_maximum_seat_count(
    admin: RawClient, alice: RawClient
) -> None:
    # 100 seat ids pass validation; none exists in this small event, so all are named.
    event = await create_event(admin, seats=2)
    seats = [f"Z-{n}" for n in range(MAX_SEATS_PER_HOLD)]
    error = await alice.error("hold", event_id=event["event_id"], seat_ids=seats)
    assert (error["code"], error["details"]) == ("unknown_seat", {"seat_ids": seats})


async def test_unknown_event_and_unknown_seat(admin: RawClient, alice: RawClient) -> None:
    missing = new_event_id("missing")
    error = await alice.error("hold", event_id=missing, seat_ids=["A-1"])
    assert (error["code"], error["temporary"], error["details"]) == (
        "event_not_found",
        False,
        {"event_id": missing},
    )
    await assert_alive(alice)
    event = await create_event(admin, seats=2)
    error = await alice.error("hold", event_id=event["event_id"], seat_ids=["A-2", "A-3"])
    assert (error["code"], error["temporary"], error["details"]) == (
        "unknown_seat",
        False,
        {"seat_ids": ["A-3"]},
    )
    await assert_alive(alice)
    # Nothing was held by the refused request.
    summary = await alice.ok("get_event", event_id=event["event_id"])
    assert (summary["available"], summary["held"]) == (2, 0)


async def test_create_event_refuses_too_many_seats_before_building_them(
    admin: RawClient, bob: RawClient
) -> None:
    """A few KB of blocks describe a million seats: refused at once, without stalling the server.

    Each block is 500 rows x 1000 seats; two of them exceed the 100 000 seats an event may have.
    """
    event_id = new_event_id()
    block = {"rows": [f"R{n}" for n in range(500)], "seats_per_row": 1000}
    request = {"id": "huge", "type": "create_event", "event_id": event_id, "name": "Too big"}
    await admin.send({**request, "blocks": [block, block | {"section": "S"}]})
    started = asyncio.get_running_loop().time()
    await assert_alive(bob)  # other clients are served meanwhile
    bystander_wait = asyncio.get_running_loop().time() - started
    reply = await admin.reply_to("huge")
    elapsed = asyncio.get_running_loop().time() - started
    details = {"path": "$.blocks"}
    check_error_reply(reply, Bad("huge", "", "invalid_request", "huge", "create_event", details))
    assert bystander_wait < 0.5, f"a ping waited {bystander_wait:.2f} s behind the seat expansion"
    assert elapsed < 0.5, f"refusing the event took {elapsed:.2f} s"
    assert (await admin.error("get_event", event_id=event_id))["code"] == "event_not_found"


def padded_ping(size: int) -> str:
    """A ping frame of exactly ``size`` bytes, padded with an (unknown) field."""
    head, tail = '{"id":"big","type":"ping","pad":"', '"}'
    text = head + "x" * (size - len(head) - len(tail)) + tail
    assert len(text.encode()) == size
    return text


async def test_frame_at_the_size_limit_is_read(alice: RawClient) -> None:
    await alice.send(padded_ping(alice.welcome["max_frame_bytes"]))
    reply = await next_reply(alice)
    details = {"path": "$.pad", "reason": UNKNOWN_FIELD}
    check_error_reply(reply, Bad("at-limit", "", "invalid_request", "big", "ping", details))
    await assert_alive(alice)


async def test_oversize_frame_closes_with_1009(server: RunningServer, bob: RawClient) -> None:
    async with client(server.url, "mallory", "user") as mallory:
        limit = mallory.welcome["max_frame_bytes"]
        await mallory.send(padded_ping(limit + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await mallory.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert mallory.ws.close_code == 1009
    # Only that connection was closed.
    await assert_alive(bob)


async def test_barrage_leaves_the_connection_and_a_bystander_working(
    server: RunningServer, admin: RawClient, bob: RawClient
) -> None:
    """Every bad frame, pipelined on one connection, while another client goes about its day."""
    event = await create_event(admin, seats=3)
    event_id = event["event_id"]
    async with client(server.url, "mallory", "user") as mallory:
        for bad in BAD_FRAMES:
            await mallory.send(bad.text)
        await mallory.send(orjson.dumps({"id": 1, "type": "ping"}))
        await assert_alive(bob)
        for bad in BAD_FRAMES:
            reply = await next_reply(mallory)
            try:
                check_error_reply(reply, bad)
            except AssertionError as error:
                raise AssertionError(f"reply to {bad.case}: {error}") from None
        check_error_reply(await next_reply(mallory), BINARY)
        await assert_alive(mallory)
        # Good requests on the abused connection still work too.
        hold = await mallory.ok("hold", event_id=event_id, seat_ids=["A-3"])
        await mallory.ok("release", event_id=event_id, hold_id=hold["hold_id"])

        await assert_alive(bob)
        await mallory.send(padded_ping(mallory.welcome["max_frame_bytes"] + 100))
        with pytest.raises(ConnectionClosed):
            await mallory.recv(timeout=5)
        assert mallory.ws.close_code == 1009

    hold = await bob.ok("hold", event_id=event_id, seat_ids=["A-1", "A-2"])
    assert hold["user_id"] == "bob"
    released = await bob.ok("release", event_id=event_id, hold_id=hold["hold_id"])
    assert sorted(released["seat_ids"]) == ["A-1", "A-2"]
    summary = await bob.ok("get_event", event_id=event_id)
    assert (summary["available"], summary["held"], summary["reserved"]) == (3, 0, 0)


# --- the handshake -----------------------------------------------------------------------------


async def refused(url: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(url, open_timeout=5, **kwargs):
            pass
    return excinfo.value


@pytest.mark.parametrize(
    ("query", "message_part"),
    [
        pytest.param("?token=not-a-jwt", "invalid token", id="garbage-token"),
        pytest.param(
            "?token=" + TokenAuthority(SECRET).mint("alice", "user", ttl_s=-60),
            "expired",
            id="expired-token",
        ),
        pytest.param(
            "?token="
            + TokenAuthority("another-secret-0123456789abcdef-0123").mint("alice", "user"),
            "invalid token",
            id="wrong-secret",
        ),
        pytest.param(
            "?token="
            + jwt.encode({"sub": "alice", "role": "root", "exp": 4102444800}, SECRET, "HS256"),
            "role",
            id="unknown-role",
        ),
        pytest.param(
            "?token=" + jwt.encode({"sub": "alice", "role": "user"}, SECRET, "HS256"),
            "invalid token",
            id="no-expiry",
        ),
    ],
)
async def test_handshake_with_an_invalid_token_is_401(
    server: RunningServer, query: str, message_part: str
) -> None:
    error = await refused(server.url + query, subprotocols=["seatd.v1"])
    response = error.response
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    body = orjson.loads(response.body)
    assert body["error"] == "unauthenticated"
    assert message_part in body["message"], body


async def test_handshake_with_bearer_header(server: RunningServer) -> None:
    async with connect(
        server.url,
        subprotocols=["seatd.v1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token('alice', 'agent')}"},
        open_timeout=5,
    ) as ws:
        welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (welcome["type"], welcome["user_id"], welcome["role"]) == (
            "welcome",
            "alice",
            "agent",
        )


async def test_unsupported_subprotocol_is_400(server: RunningServer) -> None:
    error = await refused(f"{server.url}?token={token('alice')}", subprotocols=["seatd.v999"])
    assert error.response.status_code == 400


async def welcome_of(ws: ClientConnection) -> dict[str, Any]:
    welcome: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome", welcome
    return welcome


async def test_v1_among_offered_subprotocols_is_chosen(server: RunningServer) -> None:
    async with connect(
        f"{server.url}?token={token('alice')}",
        subprotocols=["seatd.v999", "seatd.v1"],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == "seatd.v1"
        assert (await welcome_of(ws))["protocol"] == "seatd.v1"


async def test_no_subprotocol_is_accepted_as_v1(server: RunningServer) -> None:
    async with connect(f"{server.url}?token={token('alice')}", open_timeout=5) as ws:
        assert ws.subprotocol is None
        welcome = await welcome_of(ws)
        assert (welcome["protocol"], welcome["user_id"]) == ("seatd.v1", "alice")
        await ws.send(json.dumps({"id": "p", "type": "ping"}))
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (reply["id"], reply["ok"]) == ("p", True)


# --- health probes -----------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return (
                response.status,
                response.headers.get("Content-Type", ""),
                json.loads(response.read()),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), json.loads(error.read())


async def test_healthz(server: RunningServer) -> None:
    status, content_type, body = await asyncio.to_thread(http_get, server.http_url("/healthz"))
    assert (status, content_type, body) == (200, "application/json", {"status": "ok"})


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "OPTIONS"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_the_http_endpoints_answer_get_and_head_only(
    server: RunningServer, path: str, method: str
) -> None:
    # Without a body: websockets itself closes on a request that has one (it reads none).
    request = urllib.request.Request(server.http_url(path), method=method)
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    with refused.value as error:
        assert error.code == 405
        assert error.headers["Allow"] == "GET, HEAD"
        assert json.loads(error.read())["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_head_gets_what_get_gets_without_the_body(server: RunningServer, path: str) -> None:
    def fetch(method: str) -> tuple[int, str | None, bytes]:
        request = urllib.request.Request(server.http_url(path), method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Length"], response.read()

    get = await asyncio.to_thread(fetch, "GET")
    head = await asyncio.to_thread(fetch, "HEAD")
    assert get[0] == head[0] == 200 and get[2]
    assert head[1] == get[1] == str(len(get[2])) and head[2] == b""


async def test_readyz(server: RunningServer) -> None:
    status, content_type, body = await asyncio.to_thread(http_get, server.http_url("/readyz"))
    assert (status, content_type) == (200, "application/json")
    assert body == {
        "status": "ready",
        "checks": {"postgres": "ok", "redis": "ok", "accepting": "yes"},
    }


# --- found by the fuzzer (tests/fuzz): each once broke a connection, a batch or a request ---


@pytest.mark.parametrize("frame", ['{"type": []}', '{"id": null, "type": {}}', '{"type": {}}'])
async def test_an_unhashable_type_without_an_id_is_an_error_not_a_crash(
    alice: RawClient, frame: str
) -> None:
    await alice.send(frame)
    reply = await alice.recv()
    assert (reply["id"], reply["error"]["code"]) == (None, "invalid_request")
    assert "type" not in reply
    assert (await alice.request("ping"))["ok"] is True  # the connection lives on


async def test_control_characters_in_a_retry_key_are_refused_before_the_database(
    admin: RawClient, alice: RawClient, bob: RawClient
) -> None:
    """A NUL reached PostgreSQL, which refused the whole batch: every request of the event
    (other users' too) failed with a temporary error."""
    event_id = (await create_event(admin, seats=4))["event_id"]
    bad = await alice.error("hold", event_id=event_id, seat_ids=["A-1"], idempotency_key="k\x00")
    assert bad["code"] == "invalid_request" and bad["details"]["path"] == "$.idempotency_key"
    created = await admin.error(
        "create_event", name="N", seats=[{"seat_id": "s"}], idempotency_key="\x00"
    )
    assert created["code"] == "invalid_request"
    assert (await bob.ok("hold", event_id=event_id, seat_ids=["A-2"]))["seat_ids"] == ["A-2"]


@pytest.mark.parametrize("starts_at", ["9999-12-31T23:59:59-00:01", "0001-01-01T00:30:00+01:00"])
async def test_a_start_time_outside_utc_years_1_to_9999_is_invalid(
    admin: RawClient, starts_at: str
) -> None:
    error = await admin.error(
        "create_event", name="Edge", starts_at=starts_at, seats=[{"seat_id": "s"}]
    )
    assert error["code"] == "invalid_request" and error["details"]["path"] == "$.starts_at"


@pytest.mark.parametrize(
    "starts_at",
    [
        "20261212T200000Z",  # ISO 8601 basic format
        "2026-W50-6T20:00:00Z",  # ISO week date
        "2026-12-12T20:00Z",  # no seconds
        "2026-12-12T20Z",
        "2026-12-12T20:00:00+0100",  # offset without a colon
        "2026-12-12T20:00:00+01",
        "2026-12-12T20:00:00+01:00:30",  # offset with seconds
        "2026-12-12T20:00:00,5Z",  # decimal comma
    ],
)
async def test_a_start_time_that_is_not_rfc_3339_is_invalid(
    admin: RawClient, starts_at: str
) -> None:
    """PROTOCOL.md asks for RFC 3339 with a ``Z`` or ``±hh:mm`` offset; other ISO 8601 forms
    Python happens to parse are refused, not silently read."""
    error = await admin.error(
        "create_event", name="Edge", starts_at=starts_at, seats=[{"seat_id": "s"}]
    )
    assert error["code"] == "invalid_request" and error["details"] == {"path": "$.starts_at"}


@pytest.mark.parametrize(
    ("starts_at", "sent_back"),
    [
        ("2026-12-12T20:00:00+01:00", "2026-12-12T19:00:00.000Z"),
        ("2026-12-12t19:00:00.1234567z", "2026-12-12T19:00:00.123Z"),
        ("2026-12-12T19:00:00-00:00", "2026-12-12T19:00:00.000Z"),
    ],
)
async def test_rfc_3339_start_times_are_accepted(
    admin: RawClient, starts_at: str, sent_back: str
) -> None:
    created = await admin.ok(
        "create_event", name="Edge", starts_at=starts_at, seats=[{"seat_id": "s"}]
    )
    assert created["starts_at"] == sent_back
