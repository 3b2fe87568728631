"""Authentication end to end: first-message tokens, expiry in band, refresh, origins, and the
handshake-side limits. One server with short timeouts and strict settings for the module."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest
from support.client import client, create_event, send_at_once
from support.server import SECRET, RunningServer, base_env, in_process_server, token
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocol.client import SeatClient, TokenExpiring
from protocol.errors import CloseCode

ORIGIN = "https://tickets.example.com"


@pytest.fixture(scope="module")
async def strict(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    env = base_env(
        service_env,
        SEATD_AUTH_TIMEOUT="0.5",
        SEATD_HANDSHAKE_TIMEOUT="0.5",
        SEATD_ALLOWED_ORIGINS=f"{ORIGIN}, https://box-office.example.com",
        SEATD_MAX_SEATS_PER_HOLD="2",
        SEATD_CLIENT_ADDRESS_HEADER="X-Forwarded-For",
    )
    async with in_process_server(env) as running:
        yield running


async def _open(server: RunningServer, **kwargs: Any) -> ClientConnection:
    return await connect(
        server.url,
        subprotocols=["seatd.v1"],  # type: ignore[list-item]
        open_timeout=5,
        **kwargs,
    )


def _text(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


async def _frame(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def _closed(ws: ClientConnection, timeout: float = 5) -> int | None:
    """Read until the server closes; its close code."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


# --- a token in the first message ------------------------------------------------------------


async def test_an_authorization_header_of_another_scheme_is_no_token(strict: RunningServer) -> None:
    """A proxy's own Basic credentials pass through: the client authenticates in band."""
    ws = await _open(strict, additional_headers={"Authorization": f"Basic {token('ann')}"})
    try:
        await ws.send(_text({"id": 1, "type": "authenticate", "token": token("bob")}))
        assert (await _frame(ws))["result"]["user_id"] == "bob"
    finally:
        await ws.close()


async def test_the_first_message_can_carry_the_token(strict: RunningServer) -> None:
    ws = await _open(strict)
    try:
        await ws.send(_text({"id": 1, "type": "authenticate", "token": token("ann")}))
        reply = await _frame(ws)
        assert reply["ok"] is True and reply["result"]["user_id"] == "ann", reply
        assert reply["result"]["role"] == "user" and reply["result"]["token_expires_at"]
        welcome = await _frame(ws)
        assert (welcome["type"], welcome["user_id"]) == ("welcome", "ann")
        await ws.send(_text({"id": 2, "type": "ping"}))
        assert (await _frame(ws))["ok"] is True
    finally:
        await ws.close()


@pytest.mark.parametrize(
    "first",
    [
        {"id": 1, "type": "ping"},
        {"id": 1, "type": "hold", "event_id": "e1", "seat_ids": ["A-1"]},
        {"id": 1, "type": "authenticate", "token": "not-a-jwt"},
    ],
    ids=["ping", "hold", "bad-token"],
)
async def test_anything_else_first_is_refused_and_closed(
    strict: RunningServer, first: dict[str, Any]
) -> None:
    ws = await _open(strict)
    await ws.send(_text(first))
    reply = await _frame(ws)
    assert (reply["id"], reply["ok"], reply["error"]["code"]) == (1, False, "unauthenticated")
    assert reply["type"] == first["type"]
    assert await _closed(ws) == CloseCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("first", "code"),
    [("{not json", "invalid_json"), ('{"id": 1, "type": {}}', "invalid_request")],
    ids=["garbage", "bad-type"],
)
async def test_an_undecodable_first_frame_gets_its_error_and_a_close(
    strict: RunningServer, first: str, code: str
) -> None:
    ws = await _open(strict)
    await ws.send(first)
    assert (await _frame(ws))["error"]["code"] == code
    assert await _closed(ws) == CloseCode.UNAUTHENTICATED


async def test_a_token_naming_a_user_with_control_characters_is_refused(
    strict: RunningServer,
) -> None:
    bad = token("a\x00b")
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict, additional_headers={"Authorization": f"Bearer {bad}"})
    assert refused.value.response.status_code == 401


async def test_a_silent_connection_without_a_token_is_closed(strict: RunningServer) -> None:
    ws = await _open(strict)
    assert await _closed(ws, timeout=3) == CloseCode.UNAUTHENTICATED
    assert ws.close_reason is not None and "authenticate" in ws.close_reason


# --- expiry and refresh ----------------------------------------------------------------------


async def test_an_expiring_token_is_announced_then_the_connection_closed_with_4001(
    strict: RunningServer,
) -> None:
    ws = await _open(
        strict, additional_headers={"Authorization": f"Bearer {token('eve', ttl_s=2)}"}
    )
    welcome = await _frame(ws)
    assert welcome["token_expires_at"]
    expiring = await _frame(ws, timeout=3)
    assert expiring == {"type": "token_expiring", "expires_at": welcome["token_expires_at"]}
    assert await _closed(ws, timeout=3) == CloseCode.TOKEN_EXPIRED


async def test_requests_sent_after_the_token_expired_are_not_served(
    strict: RunningServer,
) -> None:
    """The 4001 close ends what the token allows: a client that ignores the close frame and
    keeps sending while the close handshake runs gets nothing done."""
    async with client(strict.url, "admin-expiry", "admin") as admin:
        event_id = (await create_event(admin, seats=2))["event_id"]
        ws = await _open(
            strict, additional_headers={"Authorization": f"Bearer {token('mal', ttl_s=2)}"}
        )
        await _frame(ws)  # welcome
        ws.transport.pause_reading()  # never sees the server's close frame
        await asyncio.sleep(2.5)  # past the token's expiry: the server has started closing
        hold = {"id": 1, "type": "hold", "event_id": event_id, "seat_ids": ["A-1"]}
        send_at_once(ws, [hold])
        await asyncio.sleep(0.3)
        assert (await admin.ok("get_event", event_id=event_id))["held"] == 0
        ws.transport.resume_reading()
        assert await _closed(ws) == CloseCode.TOKEN_EXPIRED


async def test_a_fresh_token_in_band_keeps_the_connection(strict: RunningServer) -> None:
    ws = await _open(
        strict, additional_headers={"Authorization": f"Bearer {token('kim', ttl_s=2)}"}
    )
    try:
        await _frame(ws)  # welcome
        await ws.send(_text({"id": 1, "type": "authenticate", "token": token("kim")}))
        reply = await _frame(ws)
        assert reply["ok"] is True and reply["result"]["user_id"] == "kim", reply
        await asyncio.sleep(2.5)  # past the first token's expiry
        await ws.send(_text({"id": 2, "type": "ping"}))
        assert (await _frame(ws))["id"] == 2
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("sub", "role"), [("someone-else", "user"), ("kim", "admin")], ids=["user", "role"]
)
async def test_a_token_for_another_principal_is_refused_in_band(
    strict: RunningServer, sub: str, role: Any
) -> None:
    async with client(strict.url, "kim") as kim:
        refused = await kim.error("authenticate", token=token(sub, role))
        assert refused["code"] == "forbidden"
        held = await kim.error("create_event", name="x", event_id="nope-1")
        assert held["code"] == "forbidden"  # still a user, not an admin


async def test_the_sdk_renews_its_token_before_expiry(strict: RunningServer) -> None:
    minted: list[str] = []
    pushes: list[object] = []

    def fresh() -> str:
        minted.append(token("sdk-user", ttl_s=2 if not minted else 3600))
        return minted[-1]

    async with SeatClient(strict.url, token=fresh, on_push=pushes.append) as sdk:
        await asyncio.sleep(3)  # the first token has expired by now
        await sdk.ping()
        assert sdk.connections == 1, "renewed in band, not by reconnecting"
    assert len(minted) == 2 and any(isinstance(p, TokenExpiring) for p in pushes)


# --- origins and handshake -------------------------------------------------------------------


async def test_origins_outside_the_list_are_refused(strict: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict, origin="https://evil.example.com")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    for allowed in (ORIGIN, ORIGIN + "/"):
        ws = await _open(
            strict,
            origin=allowed.rstrip("/"),  # type: ignore[arg-type]
            additional_headers={"Authorization": f"Bearer {token('ann')}"},
        )
        assert (await _frame(ws))["type"] == "welcome"
        await ws.close()


async def test_a_repeated_origin_header_is_refused_with_403(strict: RunningServer) -> None:
    """Two ``Origin`` headers name no single origin to check: refused, not an HTTP 500."""
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict, additional_headers=[("Origin", ORIGIN), ("Origin", ORIGIN)])
    assert refused.value.response.status_code == 403


async def test_a_repeated_origin_header_is_refused_with_403_when_origins_are_not_checked(
    server: RunningServer,
) -> None:
    """Without an allow list too, as JSON: websockets would refuse it with a plain-text 400."""
    with pytest.raises(InvalidStatus) as refused:
        await _open(
            server, additional_headers=[("Origin", ORIGIN), ("Origin", "https://b.example")]
        )
    assert refused.value.response.status_code == 403
    assert orjson.loads(refused.value.response.body)["error"] == "forbidden"


async def test_a_repeated_authorization_header_is_refused_with_401(
    strict: RunningServer,
) -> None:
    """Which of two tokens would count is ambiguous: the handshake is refused as
    unauthenticated, not failed with HTTP 500."""
    bearer = f"Bearer {token('ann')}"
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict, additional_headers=[("Authorization", bearer)] * 2)
    assert refused.value.response.status_code == 401
    assert orjson.loads(refused.value.response.body)["error"] == "unauthenticated"


@pytest.mark.parametrize("query", ["token={a}&token={b}", "access_token={a}&access_token={b}"])
async def test_a_repeated_token_parameter_is_refused_with_401(
    strict: RunningServer, query: str
) -> None:
    """As with two Authorization headers, which of two tokens counts would be a guess."""
    url = strict.url + "?" + query.format(a=token("ann"), b=token("bob"))
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, subprotocols=["seatd.v1"], open_timeout=5)  # type: ignore[list-item]
    assert refused.value.response.status_code == 401
    assert "more than one" in orjson.loads(refused.value.response.body)["message"]


async def test_a_repeated_client_address_header_counts_its_last_entry(
    strict: RunningServer,
) -> None:
    """The trusted proxy's address header, repeated, still names one address: the last."""
    headers = [
        ("X-Forwarded-For", "203.0.113.1"),
        ("X-Forwarded-For", "198.51.100.7"),
        ("Authorization", f"Bearer {token('ann')}"),
    ]
    ws = await _open(strict, additional_headers=headers)
    assert (await _frame(ws))["type"] == "welcome"
    await ws.close()


async def test_a_stalled_handshake_is_cut(strict: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
    await writer.drain()
    async with asyncio.timeout(3):
        assert await reader.read() == b""  # closed by the server
    writer.close()


async def test_a_hold_may_name_only_so_many_seats(strict: RunningServer) -> None:
    async with client(strict.url, "admin", "admin") as admin, client(strict.url, "ann") as ann:
        event_id = (await create_event(admin, seats=5))["event_id"]
        welcome_limit = ann.welcome["max_seats_per_hold"]
        assert welcome_limit == 2
        error = await ann.error("hold", event_id=event_id, seat_ids=["A-1", "A-2", "A-3"])
        assert error["code"] == "invalid_request"
        assert error["details"] == {"path": "$.seat_ids", "limit": 2}
        await ann.ok("hold", event_id=event_id, seat_ids=["A-1", "A-2"])


def _signed(**claims: object) -> str:
    return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256")


# An expiry in milliseconds (a common issuer mistake), and one too large for a double.
_UNREPRESENTABLE_EXPIRIES = [int(time.time() * 1000) + 3_600_000, 10**400]


@pytest.mark.parametrize("exp", _UNREPRESENTABLE_EXPIRIES, ids=["milliseconds", "huge"])
async def test_a_token_expiring_after_year_9999_is_refused_at_the_handshake(
    strict: RunningServer, exp: int
) -> None:
    """Every expiry is sent back as an RFC 3339 time, so one past year 9999 is an invalid
    token (401), not a failed connection."""
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict, additional_headers={"Authorization": f"Bearer {_signed(exp=exp)}"})
    assert refused.value.response.status_code == 401
    assert b"invalid token" in refused.value.response.body


@pytest.mark.parametrize("exp", _UNREPRESENTABLE_EXPIRIES, ids=["milliseconds", "huge"])
async def test_a_token_expiring_after_year_9999_is_refused_in_band(
    strict: RunningServer, exp: int
) -> None:
    """As a first message it gets an ``unauthenticated`` reply and the 4501 close; as a
    replacement, an ``unauthenticated`` reply on a connection that lives on."""
    ws = await _open(strict)
    await ws.send(_text({"id": 1, "type": "authenticate", "token": _signed(exp=exp)}))
    assert (await _frame(ws))["error"]["code"] == "unauthenticated"
    assert await _closed(ws) == CloseCode.UNAUTHENTICATED
    async with client(strict.url, "alice") as alice:
        assert (await alice.error("authenticate", token=_signed(exp=exp)))["code"] == (
            "unauthenticated"
        )
        assert (await alice.request("ping"))["ok"] is True
