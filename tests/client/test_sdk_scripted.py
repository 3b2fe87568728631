"""Client behaviour against a scripted server: retries, resends, goaway, gaps, terminal closes."""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sdk_support import FakeSeatd, Received, fake_seatd, until

from protocol.client import (
    AccessError,
    Backoff,
    ClientClosedError,
    ConflictError,
    GoAway,
    HoldExpiring,
    InvalidRequestError,
    Push,
    SeatChange,
    SeatClient,
    TemporaryError,
)

FAST = Backoff(base=0.001, cap=0.01)
HOLD_ID = "6f1c3a52-4b9e-4d47-9a1e-0d6c1f1b2a33"
HOLD = {
    "hold_id": HOLD_ID,
    "event_id": "gala",
    "user_id": "fake-user",
    "seat_ids": ["A-1"],
    "expires_at": "2026-01-01T00:05:00.000Z",
    "max_expires_at": "2026-01-01T00:30:00.000Z",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSeatd]:
    async with fake_seatd() as server:
        yield server


def client_for(fake: FakeSeatd, **options: Any) -> SeatClient:
    options.setdefault("backoff", FAST)
    options.setdefault("request_timeout", 5)
    return SeatClient(fake.url, token="t0k3n", **options)


async def test_temporary_errors_are_retried_with_the_same_key_after_retry_after(
    fake: FakeSeatd,
) -> None:
    async with client_for(fake) as c:
        started = time.monotonic()
        call = asyncio.create_task(c.hold("gala", ["A-1"]))
        attempts: list[Received] = []
        for _ in range(2):
            attempt = await fake.next()
            attempts.append(attempt)
            await attempt.error("overloaded", temporary=True, retry_after_ms=150)
        last = await fake.next()
        await last.ok(HOLD)
        hold = await call
    assert hold.hold_id == HOLD_ID and hold.seat_ids == ("A-1",)
    assert time.monotonic() - started >= 0.3  # two waits of at least retry_after_ms
    frames = [a.frame for a in (*attempts, last)]
    assert len({f["id"] for f in frames}) == 3  # a new request id per attempt
    assert len({f["idempotency_key"] for f in frames}) == 1  # one logical mutation
    assert fake.tokens == ["Bearer t0k3n"]  # the token went in the Authorization header


async def test_retries_stop_after_max_retries(fake: FakeSeatd) -> None:
    async with client_for(fake, max_retries=2) as c:
        call = asyncio.create_task(c.get_event("gala"))
        for _ in range(3):
            await (await fake.next()).error("unavailable", temporary=True, retry_after_ms=1)
        with pytest.raises(TemporaryError) as raised:
            await call
        assert raised.value.code == "unavailable"
        assert fake.requests.empty()


async def test_permanent_errors_raise_at_once(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        call = asyncio.create_task(c.hold("gala", ["A-1"]))
        await (await fake.next()).error(
            "seat_unavailable", temporary=False, conflicts=[{"seat_id": "A-1", "state": "held"}]
        )
        with pytest.raises(ConflictError) as raised:
            await call
        assert raised.value.details == {"conflicts": [{"seat_id": "A-1", "state": "held"}]}
        await asyncio.sleep(0.05)
        assert fake.requests.empty()


async def test_requests_in_flight_are_resent_on_the_next_connection(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        reserve = asyncio.create_task(c.reserve("gala", HOLD_ID))
        ping = asyncio.create_task(c.ping())
        first = [await fake.next(), await fake.next()]
        first[0].conn.transport.abort()  # both replies are lost
        second = {r.type: r for r in [await fake.next(), await fake.next()]}
        assert second["reserve"].conn is fake.connections[1]
        # The same requests: same ids on the new connection, same idempotency key.
        assert sorted(r.frame["id"] for r in first) == sorted(
            r.frame["id"] for r in second.values()
        )
        assert second["reserve"].frame == next(r.frame for r in first if r.type == "reserve")
        await second["ping"].ok({"server_time": "2026-01-01T00:00:00.000Z"})
        await second["reserve"].ok(
            {
                "reservation_id": "r-1",
                "hold_id": HOLD_ID,
                "event_id": "gala",
                "user_id": "fake-user",
                "seat_ids": ["A-1"],
                "reserved_at": "2026-01-01T00:00:01.000Z",
            }
        )
        assert (await reserve).reservation_id == "r-1"
        assert (await ping).server_time == "2026-01-01T00:00:00.000Z"
        assert c.connections == 2 and c.welcome is not None and c.welcome.session_id == "s2"


async def test_a_request_too_large_for_the_new_server_fails_instead_of_being_resent(
    fake: FakeSeatd,
) -> None:
    async with client_for(fake) as c:
        big = asyncio.create_task(c.list_available("gala", section="x" * 2000))
        small = asyncio.create_task(c.ping())
        first = [await fake.next(), await fake.next()]
        assert {r.frame["type"] for r in first} == {"list_available", "ping"}
        fake.welcome = {"max_frame_bytes": 1024}  # the next server takes less
        first[0].conn.transport.abort()
        with pytest.raises(InvalidRequestError) as raised:
            await big
        assert raised.value.details["max_frame_bytes"] == 1024
        resent = await fake.next()
        assert resent.frame["type"] == "ping"  # only what still fits went again
        await resent.ok({"server_time": "2026-01-01T00:00:00.000Z"})
        await small
        with pytest.raises(asyncio.TimeoutError):
            await fake.next(timeout=0.2)


async def test_a_timed_out_request_is_not_resent(fake: FakeSeatd) -> None:
    async with client_for(fake, request_timeout=0.2) as c:
        with pytest.raises(TimeoutError):
            await c.get_event("gala")
        (await fake.next()).conn.transport.abort()
        await fake.wait_connections(2)
        ping = asyncio.create_task(c.ping())
        assert (await fake.next()).type == "ping"  # nothing but the new request
        ping.cancel()


async def test_goaway_moves_new_requests_to_a_new_connection(fake: FakeSeatd) -> None:
    pushes: list[Push] = []
    async with client_for(fake, on_push=pushes.append, goaway_grace=5) as c:
        old = fake.connections[0]
        await fake.push(old, "goaway", reason="server restart", reconnect=True)
        await until(lambda: bool(pushes))
        assert pushes == [GoAway("server restart", True)]
        assert not c.connected
        call = asyncio.create_task(c.get_event("gala"))
        await asyncio.sleep(0.05)
        assert fake.requests.empty()  # not sent on the connection that is going away
        await old.close(1012, "server restart")
        request = await fake.next()
        assert request.conn is fake.connections[1]
        await request.error("event_not_found", temporary=False)
        with pytest.raises(Exception, match="event_not_found"):
            await call


async def test_goaway_without_a_close_is_closed_by_the_client(fake: FakeSeatd) -> None:
    async with client_for(fake, goaway_grace=0.05) as c:
        await fake.push(fake.connections[0], "goaway", reason="bye", reconnect=True)
        await fake.wait_connections(2)
        await until(lambda: c.connected)
        assert fake.connections[0].close_code == 1000


async def test_goaway_without_reconnect_stops_the_client(fake: FakeSeatd) -> None:
    async with client_for(fake, goaway_grace=0.05) as c:
        call = asyncio.create_task(c.ping())
        request = await fake.next()
        await fake.push(request.conn, "goaway", reason="decommissioned", reconnect=False)
        with pytest.raises(ClientClosedError, match="decommissioned"):
            await call
        await asyncio.sleep(0.05)
        assert len(fake.connections) == 1


async def test_shutting_down_is_retried_on_the_next_connection(fake: FakeSeatd) -> None:
    async with client_for(fake, goaway_grace=0.05) as c:
        call = asyncio.create_task(c.release("gala", HOLD_ID))
        first = await fake.next()
        await first.error("shutting_down", temporary=True)
        retry = await fake.next()
        assert retry.conn is fake.connections[1]
        assert retry.frame["idempotency_key"] == first.frame["idempotency_key"]
        await retry.ok({"hold_id": HOLD_ID, "event_id": "gala", "seat_ids": ["A-1"]})
        assert (await call).seat_ids == ("A-1",)


@pytest.mark.parametrize(
    ("code", "error"), [(4500, ClientClosedError), (4501, AccessError), (4503, AccessError)]
)
async def test_terminal_close_codes_stop_the_client(
    fake: FakeSeatd, code: int, error: type[Exception]
) -> None:
    async with client_for(fake) as c:
        watch = c.watch("gala")
        call = asyncio.create_task(c.get_event("gala"))
        await fake.next()
        await fake.next()
        await fake.connections[0].close(code, "go away for good")
        with pytest.raises(error):
            await call
        with pytest.raises(error):
            await watch.synced()
        with pytest.raises(error):
            await c.ping()
        await asyncio.sleep(0.05)
        assert len(fake.connections) == 1  # no reconnect


async def test_a_401_at_reconnect_is_terminal(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        call = asyncio.create_task(c.ping())
        request = await fake.next()
        fake.refuse_with = http.HTTPStatus.UNAUTHORIZED
        request.conn.transport.abort()
        with pytest.raises(AccessError) as raised:
            await call
        assert raised.value.code == "unauthenticated"
        assert len(fake.tokens) == 2


async def test_5xx_at_reconnect_is_retried(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        call = asyncio.create_task(c.ping())
        request = await fake.next()
        fake.refuse_with = http.HTTPStatus.SERVICE_UNAVAILABLE
        request.conn.transport.abort()
        await until(lambda: len(fake.tokens) >= 3)
        fake.refuse_with = None
        retry = await fake.next()
        await retry.ok({"server_time": "2026-01-01T00:00:00.000Z"})
        assert (await call).server_time == "2026-01-01T00:00:00.000Z"


async def test_a_refused_reconnect_waits_as_long_as_retry_after_says(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:  # its own backoff waits at most 10 ms
        call = asyncio.create_task(c.ping())
        request = await fake.next()
        fake.refuse_with, fake.retry_after = http.HTTPStatus.SERVICE_UNAVAILABLE, "1"
        request.conn.transport.abort()
        await until(lambda: len(fake.handshakes) >= 2)
        fake.refuse_with = None
        retry = await fake.next(timeout=5)
        await retry.ok({"server_time": "2026-01-01T00:00:00.000Z"})
        await call
    refused, accepted = fake.handshakes[1], fake.handshakes[2]
    assert len(fake.handshakes) == 3  # no attempt in between
    assert accepted - refused >= 0.95


async def test_the_token_provider_is_called_for_every_connection(fake: FakeSeatd) -> None:
    issued: list[str] = []

    async def fresh_token() -> str:
        issued.append(f"token-{len(issued)}")
        return issued[-1]

    async with SeatClient(fake.url, token=fresh_token, backoff=FAST):
        fake.connections[0].transport.abort()
        await fake.wait_connections(2)
    assert fake.tokens == ["Bearer token-0", "Bearer token-1"]


async def test_a_gap_resubscribes_from_the_last_version(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        watch = c.watch("gala")
        subscribe = await fake.next()
        assert subscribe.frame == {
            "id": subscribe.frame["id"],
            "type": "subscribe",
            "event_id": "gala",
        }
        await subscribe.ok(_subscribed(5, reserved=["B-1"]))
        conn = subscribe.conn
        await fake.push(
            conn, "availability", event_id="gala", from_version=6, version=6, changes=[_held("A-1")]
        )
        await fake.push(
            conn, "availability", event_id="gala", from_version=8, version=8, changes=[_held("A-3")]
        )
        resync = await fake.next()
        assert resync.frame["type"] == "subscribe" and resync.frame["since_version"] == 6
        await resync.ok(
            _subscribed(
                8,
                "resume",
                deltas=[
                    {
                        "event_id": "gala",
                        "from_version": 7,
                        "version": 7,
                        "changes": [_held("A-2")],
                    },
                    {
                        "event_id": "gala",
                        "from_version": 8,
                        "version": 8,
                        "changes": [_held("A-3")],
                    },
                ],
            )
        )
        updates = [await anext(watch) for _ in range(3)]
        assert [(u.kind, u.version) for u in updates] == [
            ("snapshot", 5),
            ("delta", 6),
            ("resume", 8),
        ]
        assert updates[2].changes == (SeatChange(**_held("A-2")), SeatChange(**_held("A-3")))
        assert dict(watch.seats) == {"B-1": "reserved", "A-1": "held", "A-2": "held", "A-3": "held"}
        # Closing the watch unsubscribes.
        closing = asyncio.create_task(watch.aclose())
        unsubscribe = await fake.next()
        assert unsubscribe.frame["type"] == "unsubscribe"
        await unsubscribe.ok({"event_id": "gala"})
        await closing
        assert await anext(watch, None) is None


async def test_a_reconnect_resubscribes_every_watch(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        watch = c.watch("gala")
        await (await fake.next()).ok(_subscribed(5))
        await watch.synced()
        fake.connections[0].transport.abort()
        resubscribe = await fake.next()
        assert resubscribe.conn is fake.connections[1]
        assert resubscribe.frame["since_version"] == 5
        await resubscribe.ok(_subscribed(9, held=[_held("A-1")]))  # too far behind: a snapshot
        updates = [await anext(watch) for _ in range(2)]
        assert [(u.kind, u.version) for u in updates] == [("snapshot", 5), ("snapshot", 9)]
        assert dict(watch.seats) == {"A-1": "held"} and watch.version == 9


async def test_a_failed_subscription_ends_its_watches(fake: FakeSeatd) -> None:
    async with client_for(fake) as c:
        watch = c.watch("nope")
        await (await fake.next()).error("event_not_found", temporary=False)
        with pytest.raises(Exception, match="event_not_found"):
            await watch.synced()
        with pytest.raises(Exception, match="event_not_found"):
            await anext(watch)


async def test_a_slow_consumer_gets_coalesced_updates(fake: FakeSeatd) -> None:
    async with client_for(fake, watch_buffer=2) as c:
        watch = c.watch("gala")
        subscribe = await fake.next()
        await subscribe.ok(_subscribed(0))
        for version in range(1, 6):
            change = (
                _held(f"A-{version}") if version != 4 else {"seat_id": "A-1", "state": "reserved"}
            )
            await fake.push(
                subscribe.conn,
                "availability",
                event_id="gala",
                from_version=version,
                version=version,
                changes=[change],
            )
        await until(lambda: watch.version == 5)
        assert dict(watch.seats) == {"A-1": "reserved", "A-2": "held", "A-3": "held", "A-5": "held"}
        first, second = await anext(watch), await anext(watch)
        assert (first.kind, first.version, first.coalesced) == ("snapshot", 0, 1)
        assert (second.version, second.coalesced) == (5, 5)
        assert {ch.seat_id: ch.state for ch in second.changes} == {
            "A-1": "reserved",
            "A-2": "held",
            "A-3": "held",
            "A-5": "held",
        }
        assert watch.coalesced == 4


async def test_hold_pushes_reach_on_push(fake: FakeSeatd) -> None:
    pushes: list[Push] = []
    async with client_for(fake, on_push=pushes.append):
        await fake.push(
            fake.connections[0],
            "hold_expiring",
            event_id="gala",
            hold_id=HOLD_ID,
            seat_ids=["A-1"],
            expires_at="2026-01-01T00:05:00.000Z",
        )
        await until(lambda: bool(pushes))
    assert pushes == [HoldExpiring("gala", HOLD_ID, ("A-1",), "2026-01-01T00:05:00.000Z")]


async def test_close_fails_waiting_calls_and_ends_watches(fake: FakeSeatd) -> None:
    c = client_for(fake)
    await c.connect()
    watch = c.watch("gala")
    call = asyncio.create_task(c.get_event("gala"))
    await fake.next()
    await fake.next()
    await c.close()
    with pytest.raises(ClientClosedError):
        await call
    assert await anext(watch, None) is None
    with pytest.raises(ClientClosedError):
        await c.ping()


# --- helpers -------------------------------------------------------------------------------------


def _held(seat: str) -> dict[str, Any]:
    return {"seat_id": seat, "state": "held", "expires_at": "2026-01-01T00:05:00.000Z"}


def _subscribed(version: int, mode: str = "snapshot", **fields: Any) -> dict[str, Any]:
    return {"event_id": "gala", "version": version, "mode": mode, "total_seats": 10, **fields}


@pytest.mark.parametrize("ending", ["terminal close", "goaway without reconnect"])
async def test_a_synced_watch_ends_when_the_client_stops_for_good(
    fake: FakeSeatd, ending: str
) -> None:
    """A watch that is live when the server ends the client (a terminal close code, or a
    goaway that says not to come back) raises that error instead of waiting forever."""
    async with client_for(fake, goaway_grace=0.05) as c:
        watch = c.watch("gala")
        await (await fake.next()).ok(_subscribed(5))
        await watch.synced()
        assert (await anext(watch)).version == 5
        expected: type[Exception] = AccessError
        if ending == "terminal close":
            await fake.connections[0].close(4501, "unauthenticated")
        else:
            await fake.push(fake.connections[0], "goaway", reason="gone", reconnect=False)
            expected = ClientClosedError
        with pytest.raises(expected):
            await asyncio.wait_for(anext(watch), 2)
        assert watch.closed
