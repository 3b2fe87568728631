"""The SDK against a real seatd: every typed method, typed errors, idempotent retries after a
lost reply (checked in PostgreSQL), pushes, and a watch that resumes after its connection is cut."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sdk_support import FAST, until
from support.server import RunningServer, token
from websockets.asyncio.client import ClientConnection

from protocol.client import (
    AccessError,
    ConflictError,
    HoldExpired,
    HoldExpiring,
    InvalidRequestError,
    Location,
    NotFoundError,
    Push,
    SeatBlock,
    SeatClient,
    SeatSpec,
    Welcome,
)
from seatd.devstack import PostgresServer


def new_event_id() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}"


async def ten_seats(admin: SeatClient, **fields: Any) -> str:
    """An event with seats A-1 .. A-10."""
    event = await admin.create_event(
        "SDK test",
        event_id=new_event_id(),
        blocks=[SeatBlock(rows=("A",), seats_per_row=10)],
        **fields,
    )
    return event.event_id


# --- every method ------------------------------------------------------------------------------


async def test_ping(alice: SeatClient) -> None:
    pong = await alice.ping()
    assert pong.server_time.endswith("Z")
    assert alice.welcome is not None and alice.welcome.user_id == "sdk-alice"


async def test_create_get_and_list_events(admin: SeatClient, alice: SeatClient) -> None:
    event_id = new_event_id()
    created = await admin.create_event(
        "Gala",
        event_id=event_id,
        seats=[SeatSpec("VIP-1", section="VIP", category="gold", number=1, x=1.5, y=2.0)],
        blocks=[SeatBlock(rows=("A", "B"), seats_per_row=3, section="S", category="std")],
        starts_at=datetime(2031, 5, 1, 19, 30, tzinfo=UTC),
        venue="Hall",
        location=(48.8566, 2.3522),
        hold_duration_s=120,
        max_seats_per_user=4,
    )
    assert (created.event_id, created.total_seats, created.available, created.version) == (
        event_id,
        7,
        7,
        0,
    )
    assert created.starts_at == "2031-05-01T19:30:00.000Z"
    assert created.location == Location(48.8566, 2.3522)
    assert (created.hold_duration_s, created.max_seats_per_user) == (120.0, 4)

    fetched = await alice.get_event(event_id)
    assert fetched == created

    page = await alice.list_events(near=Location(48.8566, 2.3522), radius_m=50, limit=200)
    mine = [e for e in page.events if e.event_id == event_id]
    assert len(mine) == 1 and mine[0].distance_m is not None and mine[0].distance_m < 1

    with pytest.raises(AccessError) as forbidden:
        await alice.create_event("Not mine")
    assert forbidden.value.code == "forbidden"
    with pytest.raises(ConflictError) as exists:
        await admin.create_event("Again", event_id=event_id, seats=[SeatSpec("X")])
    assert exists.value.code == "event_exists"
    with pytest.raises(NotFoundError) as missing:
        await alice.get_event(new_event_id())
    assert missing.value.code == "event_not_found"
    with pytest.raises(InvalidRequestError) as invalid:
        await alice.list_events(radius_m=10)
    assert invalid.value.details == {"path": "$.radius_m"}


async def test_concurrent_calls_on_one_client_each_get_their_own_reply(
    admin: SeatClient, alice: SeatClient
) -> None:
    """README: calls may run concurrently on one client; they share its connection."""
    event_id = await ten_seats(admin, max_seats_per_user=10)
    seats = [f"A-{n}" for n in range(1, 7)]
    holds = await asyncio.gather(*(alice.hold(event_id, [seat]) for seat in seats))
    assert [hold.seat_ids for hold in holds] == [(seat,) for seat in seats]
    assert len({hold.hold_id for hold in holds}) == len(seats)
    summary, free, reservation = await asyncio.gather(
        alice.get_event(event_id),
        alice.list_available(event_id),
        alice.reserve(event_id, holds[0].hold_id),
    )
    assert summary.held + summary.reserved == len(seats)
    assert [seat.seat_id for seat in free.seats] == ["A-7", "A-8", "A-9", "A-10"]
    assert (reservation.hold_id, reservation.seat_ids) == (holds[0].hold_id, ("A-1",))


async def test_hold_refresh_release_reserve(
    admin: SeatClient, alice: SeatClient, bob: SeatClient
) -> None:
    event_id = await ten_seats(admin)
    hold = await alice.hold(event_id, ["A-1", "A-2"])
    assert (hold.event_id, hold.user_id, hold.seat_ids) == (event_id, "sdk-alice", ("A-1", "A-2"))

    with pytest.raises(ConflictError) as taken:
        await bob.hold(event_id, ["A-2", "A-3"])
    assert taken.value.code == "seat_unavailable"
    assert taken.value.details == {
        "conflicts": [{"seat_id": "A-2", "state": "held", "yours": False}]
    }
    assert not taken.value.temporary

    with pytest.raises(NotFoundError) as unknown:
        await bob.hold(event_id, ["Z-9"])
    assert (unknown.value.code, unknown.value.details["seat_ids"]) == ("unknown_seat", ["Z-9"])

    refreshed = await alice.refresh(event_id, hold.hold_id)
    assert refreshed.hold_id == hold.hold_id and refreshed.expires_at >= hold.expires_at
    with pytest.raises(AccessError):
        await bob.refresh(event_id, hold.hold_id, on_behalf_of="sdk-alice")

    second = await alice.hold(event_id, ["A-5"])
    released = await alice.release(event_id, second.hold_id)
    assert (released.hold_id, released.seat_ids) == (second.hold_id, ("A-5",))
    with pytest.raises(NotFoundError) as gone:
        await alice.reserve(event_id, second.hold_id)
    assert gone.value.code == "hold_not_found"

    reservation = await alice.reserve(event_id, hold.hold_id)
    assert (reservation.hold_id, reservation.seat_ids) == (hold.hold_id, ("A-1", "A-2"))
    summary = await bob.get_event(event_id)
    assert (summary.reserved, summary.held, summary.available) == (2, 0, 8)

    with pytest.raises(InvalidRequestError) as invalid:
        await alice.release(event_id, "not-a-uuid")
    assert invalid.value.details == {"path": "$.hold_id"}


async def test_list_available_pages(admin: SeatClient, alice: SeatClient) -> None:
    event_id = await ten_seats(admin)
    await alice.hold(event_id, ["A-2"])
    first = await alice.list_available(event_id, limit=5)
    assert [s.seat_id for s in first.seats] == ["A-1", "A-3", "A-4", "A-5", "A-6"]
    assert first.total_available == 9 and first.next_after == "A-6"
    rest = await alice.list_available(event_id, after=first.next_after)
    assert [s.seat_id for s in rest.seats] == ["A-7", "A-8", "A-9", "A-10"]
    assert rest.next_after is None
    assert rest.seats[0].row == "A" and rest.seats[0].number == 7
    with pytest.raises(NotFoundError):
        await alice.list_available(new_event_id())


async def test_a_request_larger_than_the_servers_frame_limit_fails_at_once(
    sdk_server: RunningServer,
) -> None:
    """A request that cannot fit the server's ``max_frame_bytes`` is refused before it is sent,
    with ``InvalidRequestError``: the connection, and every call and watch on it, carries on
    (sent, it would close the connection with 1009, again on every reconnect)."""
    async with SeatClient(
        sdk_server.url, token=token("sdk-admin", "admin"), backoff=FAST, request_timeout=3
    ) as c:
        assert c.welcome is not None
        seats = [SeatSpec(f"seat-{n}", section="floor") for n in range(4000)]
        with pytest.raises(InvalidRequestError) as too_big:
            await c.create_event("Too big", event_id=new_event_id(), seats=seats)
        assert too_big.value.details["max_frame_bytes"] == c.welcome.max_frame_bytes
        assert (await c.ping()).server_time
        assert c.connections == 1


# --- idempotency -------------------------------------------------------------------------------


async def test_a_callers_idempotency_key_replays_the_first_outcome(
    admin: SeatClient, alice: SeatClient
) -> None:
    event_id = await ten_seats(admin)
    first = await alice.hold(event_id, ["A-1"], idempotency_key="cart-42")
    again = await alice.hold(event_id, ["A-1"], idempotency_key="cart-42")
    assert again == first
    with pytest.raises(ConflictError) as mismatch:
        await alice.hold(event_id, ["A-2"], idempotency_key="cart-42")
    assert mismatch.value.code == "idempotency_mismatch"
    assert mismatch.value.details == {"idempotency_key": "cart-42"}


class LosesOneReply(SeatClient):
    """Drops the connection the moment the first reply of ``request_type`` arrives, unread."""

    def __init__(self, *args: Any, request_type: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_type = request_type
        self.lost: list[dict[str, Any]] = []

    def _dispatch(self, ws: ClientConnection, data: str | bytes) -> None:
        frame = orjson.loads(data)
        if not self.lost and "ok" in frame and frame.get("type") == self.request_type:
            self.lost.append(frame)
            ws.transport.abort()
            return
        super()._dispatch(ws, data)


async def test_a_lost_reserve_reply_is_retried_and_reserves_once(
    sdk_server: RunningServer, admin: SeatClient, postgres: PostgresServer
) -> None:
    event_id = await ten_seats(admin)
    async with LosesOneReply(
        sdk_server.url, token=token("sdk-lossy"), backoff=FAST, request_type="reserve"
    ) as lossy:
        hold = await lossy.hold(event_id, ["A-3", "A-4"])
        reservation = await lossy.reserve(event_id, hold.hold_id)
        assert lossy.connections == 2  # it reconnected and sent the reserve again
        [lost] = lossy.lost
    # The first attempt was applied; the retry got its stored answer, not a second reservation.
    assert lost["ok"] is True and lost["result"]["reservation_id"] == reservation.reservation_id
    conn = await asyncpg.connect(postgres.dsn)
    try:
        rows = await conn.fetch(
            "SELECT seat_id, reservation_id::text AS rid FROM reservations WHERE event_id = $1",
            event_id,
        )
        keys = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE event_id = $1 AND user_id = 'sdk-lossy'",
            event_id,
        )
    finally:
        await conn.close()
    assert sorted((r["seat_id"], r["rid"]) for r in rows) == [
        ("A-3", reservation.reservation_id),
        ("A-4", reservation.reservation_id),
    ]
    assert keys == 2  # the hold's and the reserve's


class CutsAfterSending(SeatClient):
    """Aborts the connection right after writing the first frame of ``request_type``."""

    def __init__(self, *args: Any, request_type: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_type = request_type
        self.sent: list[dict[str, Any]] = []

    def _install(self, ws: ClientConnection, welcome: Welcome) -> None:
        send = ws.send

        async def send_then_cut(message: Any, text: bool | None = None) -> None:
            await send(message, text=text)
            frame = orjson.loads(message)
            if frame.get("type") == self.request_type:
                self.sent.append(frame)
                if len(self.sent) == 1:
                    ws.transport.abort()

        setattr(ws, "send", send_then_cut)  # noqa: B010 (patching a method of this instance)
        super()._install(ws, welcome)


async def test_a_reserve_cut_off_after_sending_is_retried_and_reserves_once(
    sdk_server: RunningServer, admin: SeatClient, postgres: PostgresServer
) -> None:
    event_id = await ten_seats(admin)
    async with CutsAfterSending(
        sdk_server.url, token=token("sdk-cut"), backoff=FAST, request_type="reserve"
    ) as cut_client:
        hold = await cut_client.hold(event_id, ["A-5"])
        reservation = await cut_client.reserve(event_id, hold.hold_id)
        assert cut_client.connections == 2
    first, again = cut_client.sent
    assert first["idempotency_key"] == again["idempotency_key"]
    conn = await asyncpg.connect(postgres.dsn)
    try:
        rows = await conn.fetch(
            "SELECT seat_id, reservation_id::text AS rid FROM reservations WHERE event_id = $1",
            event_id,
        )
    finally:
        await conn.close()
    assert [(r["seat_id"], r["rid"]) for r in rows] == [("A-5", reservation.reservation_id)]


# --- pushes ------------------------------------------------------------------------------------


async def test_hold_expiry_pushes_reach_on_push(
    sdk_server: RunningServer, admin: SeatClient
) -> None:
    event_id = await ten_seats(admin, hold_duration_s=1)
    pushes: list[Push] = []
    async with SeatClient(sdk_server.url, token=token("sdk-pushed"), on_push=pushes.append) as c:
        hold = await c.hold(event_id, ["A-1"])
        await until(lambda: len(pushes) >= 2)
    assert pushes == [
        HoldExpiring(event_id, hold.hold_id, ("A-1",), hold.expires_at),
        HoldExpired(event_id, hold.hold_id, ("A-1",)),
    ]


# --- watching ----------------------------------------------------------------------------------


async def test_a_watch_follows_every_change(
    admin: SeatClient, alice: SeatClient, bob: SeatClient
) -> None:
    event_id = await ten_seats(admin)
    early = await bob.hold(event_id, ["A-9"])
    async with alice.watch(event_id) as watch:
        await watch.synced()
        assert dict(watch.seats) == {"A-9": "held"}
        assert dict(watch.expires_at) == {"A-9": early.expires_at}
        assert watch.total_seats == 10
        first = await anext(watch)
        assert (first.kind, first.version) == ("snapshot", 1)

        hold = await bob.hold(event_id, ["A-1", "A-2"])
        await bob.reserve(event_id, hold.hold_id)
        await bob.release(event_id, early.hold_id)
        # Changes committed within the server's push interval may arrive merged in one update.
        updates = []
        async with asyncio.timeout(5):
            while not updates or updates[-1].version < 4:
                updates.append(await anext(watch))
        assert {u.kind for u in updates} == {"delta"}
        versions = [u.version for u in updates]
        assert versions == sorted(set(versions)) and versions[-1] == 4
        merged: dict[str, str] = {}
        for update in updates:
            merged.update({c.seat_id: c.state for c in update.changes})
        assert merged == {"A-1": "reserved", "A-2": "reserved", "A-9": "available"}
        assert dict(watch.seats) == {"A-1": "reserved", "A-2": "reserved"}
        # A second watch of the same event starts from the current map.
        async with alice.watch(event_id) as twin:
            current = await anext(twin)
            assert (current.kind, current.version) == ("snapshot", 4)
            assert {c.seat_id: c.state for c in current.changes} == dict(watch.seats)
    assert watch.closed


async def test_watching_an_unknown_event_raises(alice: SeatClient) -> None:
    watch = alice.watch(new_event_id())
    with pytest.raises(NotFoundError):
        await watch.synced()
    with pytest.raises(NotFoundError):
        await anext(watch)


def cut(sdk_server: RunningServer, client: SeatClient) -> None:
    """Drop the client's connection from the server side, without a close handshake."""
    assert sdk_server.app is not None and client.welcome is not None
    [conn] = [
        c for c in sdk_server.app.gateway.connections if c.session_id == client.welcome.session_id
    ]
    conn.ws.transport.abort()


async def test_a_watch_resumes_after_its_connection_is_cut(
    sdk_server: RunningServer, admin: SeatClient, bob: SeatClient
) -> None:
    event_id = await ten_seats(admin)
    may_connect = asyncio.Event()
    may_connect.set()

    async def gated_token() -> str:
        await may_connect.wait()  # lets the test decide when the reconnect happens
        return token("sdk-watcher")

    async with SeatClient(sdk_server.url, token=gated_token, backoff=FAST) as watcher:
        watch = watcher.watch(event_id)
        await watch.synced()
        assert (await anext(watch)).version == 0
        may_connect.clear()
        cut(sdk_server, watcher)

        # Changes the watcher cannot see while it is disconnected.
        first = await bob.hold(event_id, ["A-1"])
        second = await bob.hold(event_id, ["A-2"])
        await bob.release(event_id, second.hold_id)
        await bob.reserve(event_id, first.hold_id)
        assert not watcher.connected
        may_connect.set()

        update = await asyncio.wait_for(anext(watch), 5)
        assert (update.kind, update.version) == ("resume", 4)
        assert {c.seat_id: c.state for c in update.changes} == {
            "A-2": "available",
            "A-1": "reserved",
        }
        assert dict(watch.seats) == {"A-1": "reserved"}
        assert watcher.connections == 2

        # Live again on the new connection.
        third = await bob.hold(event_id, ["A-3"])
        update = await asyncio.wait_for(anext(watch), 5)
        assert (update.kind, update.version) == ("delta", 5)
        assert dict(watch.seats) == {"A-1": "reserved", "A-3": "held"}
        assert watch.expires_at["A-3"] == third.expires_at


async def test_a_401_at_reconnect_fails_waiters_and_watches(
    sdk_server: RunningServer, admin: SeatClient
) -> None:
    event_id = await ten_seats(admin)
    tokens = iter([token("sdk-expiring"), "not-a-valid-token"])
    async with SeatClient(sdk_server.url, token=lambda: next(tokens), backoff=FAST) as c:
        watch = c.watch(event_id)
        await watch.synced()
        cut(sdk_server, c)
        with pytest.raises(AccessError) as refused:
            await c.get_event(event_id)
        assert refused.value.code == "unauthenticated"
        with pytest.raises(AccessError):
            async for _ in watch:
                pass


# --- the documented example --------------------------------------------------------------------


def _readme() -> str:
    return (Path(__file__).resolve().parents[2] / "README.md").read_text()


async def test_the_module_docstring_example_runs(
    sdk_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import protocol.client

    doc = protocol.client.__doc__ or ""
    example = textwrap.dedent(doc.split("Example::", 1)[1])
    assert 'URL = "ws://localhost:8080/"' in example
    assert example.strip() in _readme(), "README's SDK example differs from the module docstring's"
    assert example.rstrip().endswith('asyncio.run(main("<admin JWT>", "<user JWT>"))')
    event_id = new_event_id()
    code = (
        example.replace('URL = "ws://localhost:8080/"', f"URL = {sdk_server.url!r}")
        .replace('"winter-gala"', repr(event_id))
        .rstrip()
        .rsplit("\n", 1)[0]  # everything but asyncio.run(...): we are in a loop already
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, "protocol/client/__init__.py:example", "exec"), namespace)
    await namespace["main"](token("sdk-admin", "admin"), token("sdk-reader"))
    out = capsys.readouterr().out
    assert "0 of 20 seats taken (v0)" in out
    assert "reserved ('A-1', 'A-2') as " in out
