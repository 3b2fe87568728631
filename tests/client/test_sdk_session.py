"""The sans-I/O session: ids, idempotency keys, reply classification, seat maps and gaps."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson
import pytest

from protocol.client import (
    AccessError,
    ConflictError,
    EventView,
    GoAway,
    HoldExpired,
    HoldExpiring,
    HoldView,
    InvalidRequestError,
    NotFoundError,
    PermanentError,
    Pong,
    ProtocolViolationError,
    Released,
    RemoteError,
    ReservationView,
    SeatChange,
    SeatUpdate,
    TemporaryError,
    Welcome,
)
from protocol.client._session import (
    Call,
    Failed,
    Ignored,
    Pushed,
    Replied,
    ResyncNeeded,
    SeatsChanged,
    Session,
)
from protocol.messages import (
    CreateEvent,
    GetEvent,
    HoldRequest,
    Ping,
    Release,
    Request,
    Reserve,
    Subscribed,
)

HOLD = "6f1c3a52-4b9e-4d47-9a1e-0d6c1f1b2a33"


def keyed_session() -> Session:
    counter = itertools.count(1)
    return Session(new_key=lambda: f"key-{next(counter)}")


def pending_frames(session: Session) -> list[bytes]:
    """The frames a new connection would be sent, in order."""
    return [frame for _, frame in session.pending()]


def sent(frame: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(frame)
    return body


def reply(call: Call[Any], result: dict[str, Any]) -> bytes:
    assert call.request_id is not None
    return orjson.dumps(
        {"id": call.request_id, "type": call.request_type, "ok": True, "result": result}
    )


def error_reply(call: Call[Any], **error: Any) -> bytes:
    return orjson.dumps({"id": call.request_id, "ok": False, "error": error})


# --- requests and idempotency keys ---------------------------------------------------------------


def test_request_ids_increase_and_frames_carry_the_fields() -> None:
    session = Session()
    first = session.call(Ping(), Pong)
    second = session.call(GetEvent("gala"), EventView)
    frames = [sent(session.send(first)), sent(session.send(second))]
    assert frames == [
        {"id": 1, "type": "ping"},
        {"id": 2, "type": "get_event", "event_id": "gala"},
    ]


@pytest.mark.parametrize(
    ("message", "result", "keyed"),
    [
        (CreateEvent(name="Gala"), EventView, True),
        (HoldRequest("gala", ("A-1",)), HoldView, True),
        (Release("gala", HOLD), Released, True),
        (Reserve("gala", HOLD), ReservationView, True),
        (GetEvent("gala"), EventView, False),
        (Ping(), Pong, False),
    ],
)
def test_mutations_get_an_idempotency_key(message: Request, result: type[Any], keyed: bool) -> None:
    call = Session().call(message, result)
    if keyed:
        assert call.idempotency_key is not None
        assert uuid.UUID(call.idempotency_key).version == 4
    else:
        assert call.idempotency_key is None


def test_the_key_is_kept_across_retries_and_reconnects_but_not_across_calls() -> None:
    session = keyed_session()
    call = session.call(Reserve("gala", HOLD), ReservationView)
    other = session.call(Reserve("gala", HOLD), ReservationView)
    assert (call.idempotency_key, other.idempotency_key) == ("key-1", "key-2")

    first = sent(session.send(call))
    # The connection drops: the same attempt is sent again, same id, same key.
    assert [sent(f) for f in pending_frames(session)] == [first]
    # A temporary error: a new attempt (new id), same key and fields.
    session.receive(error_reply(call, code="unavailable", message="db down", temporary=True))
    retry = sent(session.send(call))
    assert retry["id"] != first["id"]
    assert retry == {**first, "id": retry["id"]}
    assert retry["idempotency_key"] == "key-1"
    assert call.attempts == 2


def test_a_callers_key_is_kept() -> None:
    call = Session().call(HoldRequest("gala", ("A-1",), idempotency_key="mine"), HoldView)
    assert call.idempotency_key == "mine"


def test_the_result_class_must_match_the_request() -> None:
    with pytest.raises(TypeError):
        Session().call(Ping(), EventView)


def test_pending_frames_follow_send_order_and_forget_drops() -> None:
    session = Session()
    calls = [session.call(GetEvent(f"e{n}"), EventView) for n in range(3)]
    for call in calls:
        session.send(call)
    session.forget(calls[1])
    assert [sent(f)["event_id"] for f in pending_frames(session)] == ["e0", "e2"]


# --- replies -------------------------------------------------------------------------------------


def test_a_result_is_decoded_into_its_dataclass() -> None:
    session = Session()
    call = session.call(Ping(), Pong)
    session.send(call)
    [event] = session.receive(reply(call, {"server_time": "2026-01-01T00:00:00.000Z"}))
    assert event == Replied(call, Pong("2026-01-01T00:00:00.000Z"))
    assert pending_frames(session) == []


@pytest.mark.parametrize(
    ("code", "temporary", "cls"),
    [
        ("invalid_request", False, InvalidRequestError),
        ("unknown_type", False, InvalidRequestError),
        ("unauthenticated", False, AccessError),
        ("forbidden", False, AccessError),
        ("event_not_found", False, NotFoundError),
        ("hold_not_found", False, NotFoundError),
        ("seat_unavailable", False, ConflictError),
        ("idempotency_mismatch", False, ConflictError),
        ("unavailable", True, TemporaryError),
        ("overloaded", True, TemporaryError),
        ("shutting_down", True, TemporaryError),
        ("some_future_code", True, TemporaryError),
        ("another_future_code", False, PermanentError),
    ],
)
def test_error_replies_become_typed_exceptions(
    code: str, temporary: bool, cls: type[RemoteError]
) -> None:
    session = Session()
    call = session.call(HoldRequest("gala", ("A-1",)), HoldView)
    session.send(call)
    details = {"conflicts": [{"seat_id": "A-1", "state": "held"}]}
    frame = error_reply(
        call,
        code=code,
        message="no",
        temporary=temporary,
        retry_after_ms=250,
        details=details,
    )
    [event] = session.receive(frame)
    assert isinstance(event, Failed) and event.call is call
    error = event.error
    assert type(error) is cls
    assert isinstance(error, RemoteError)
    assert (error.code, error.message, error.retry_after_ms) == (code, "no", 250)
    assert error.details == details
    assert error.temporary is temporary


@pytest.mark.parametrize(
    "result",
    [
        {"server_time": 5},  # wrong type
        {},  # missing field
        {"server_time": None},  # null where a string is required
    ],
)
def test_a_malformed_result_is_a_protocol_violation(result: dict[str, Any]) -> None:
    session = Session()
    call = session.call(Ping(), Pong)
    session.send(call)
    [event] = session.receive(reply(call, result))
    assert isinstance(event, Failed) and isinstance(event.error, ProtocolViolationError)


def test_keys_this_sdk_does_not_know_are_ignored_at_any_depth() -> None:
    """PROTOCOL.md: a server may add fields within seatd.v1; clients ignore unknown keys."""
    session = Session()
    call = session.subscribe_call("gala")
    session.send(call)
    result = {
        "event_id": "gala",
        "version": 3,
        "mode": "snapshot",
        "total_seats": 10,
        "new_top_level": {"anything": [1, 2]},
        "held": [{"seat_id": "A-1", "state": "held", "expires_at": T1, "holder_tier": "gold"}],
        "reserved": ["B-1"],
    }
    events = session.receive(reply(call, result))
    assert isinstance(events[-1], Replied)
    assert events[-1].result == Subscribed(
        "gala", 3, "snapshot", 10, (SeatChange("A-1", "held", T1),), ("B-1",)
    )
    [push] = session.receive(
        orjson.dumps({"type": "goaway", "reason": "r", "reconnect": True, "eta_ms": 5})
    )
    assert push == Pushed(GoAway("r", True))
    [changed] = session.receive(
        orjson.dumps(
            {
                "type": "availability",
                "event_id": "gala",
                "from_version": 4,
                "version": 4,
                "changes": [{"seat_id": "A-2", "state": "reserved", "price": 10}],
                "cause": "reserve",
            }
        )
    )
    assert changed == SeatsChanged(SeatUpdate("gala", 4, (SeatChange("A-2", "reserved"),), "delta"))


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id": 999, "type": "ping", "ok": true, "result": {"server_time": "t"}}',
        b'{"id": null, "ok": false, "error": {"code": "invalid_json", "message": "x", "temporary": false}}',
        b'{"id": "1", "type": "ping", "ok": true, "result": {"server_time": "t"}}',
        b"not json",
        b"[1, 2]",
        b'{"type": "something_new", "x": 1}',
        b'{"type": "hold_expired", "event_id": "gala"}',
    ],
)
def test_frames_that_answer_nothing_are_ignored(frame: bytes) -> None:
    session = Session()
    session.send(session.call(Ping(), Pong))  # id 1 is waiting
    [event] = session.receive(frame)
    assert isinstance(event, Ignored)
    assert len(pending_frames(session)) == 1


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            {"type": "goaway", "reason": "server restart", "reconnect": True},
            GoAway("server restart", True),
        ),
        (
            {
                "type": "hold_expiring",
                "event_id": "gala",
                "hold_id": HOLD,
                "seat_ids": ["A-1"],
                "expires_at": "2026-01-01T00:00:00.000Z",
            },
            HoldExpiring("gala", HOLD, ("A-1",), "2026-01-01T00:00:00.000Z"),
        ),
        (
            {"type": "hold_expired", "event_id": "gala", "hold_id": HOLD, "seat_ids": ["A-1"]},
            HoldExpired("gala", HOLD, ("A-1",)),
        ),
        (
            {
                "type": "welcome",
                "protocol": "seatd.v1",
                "session_id": "s1",
                "user_id": "u",
                "role": "user",
                "server_time": "2026-01-01T00:00:00.000Z",
                "max_frame_bytes": 65536,
                "max_inflight": 256,
                "max_seats_per_hold": 100,
            },
            Welcome("seatd.v1", "s1", "u", "user", "2026-01-01T00:00:00.000Z", 65536, 256, 100),
        ),
    ],
)
def test_pushes_are_decoded(frame: dict[str, Any], message: object) -> None:
    assert Session().receive(orjson.dumps(frame)) == [Pushed(message)]  # type: ignore[arg-type]


# --- seat maps -----------------------------------------------------------------------------------

T1, T2 = "2026-01-01T00:05:00.000Z", "2026-01-01T00:10:00.000Z"


def held(seat: str, expires_at: str = T1) -> dict[str, Any]:
    return {"seat_id": seat, "state": "held", "expires_at": expires_at}


def delta(version: int, *changes: dict[str, Any], event_id: str = "gala") -> bytes:
    return orjson.dumps(
        {
            "type": "availability",
            "event_id": event_id,
            "from_version": version,
            "version": version,
            "changes": changes,
        }
    )


def subscribed(call: Call[Any], version: int, mode: str = "snapshot", **fields: Any) -> bytes:
    return reply(
        call, {"event_id": "gala", "version": version, "mode": mode, "total_seats": 10, **fields}
    )


def synced_session(version: int = 5, **snapshot: Any) -> Session:
    """A session watching 'gala', synced by a snapshot at ``version``."""
    session = Session()
    call = session.subscribe_call("gala")
    session.send(call)
    session.receive(subscribed(call, version, **snapshot))
    return session


def seats_of(session: Session) -> dict[str, str]:
    subscription = session.subscription("gala")
    assert subscription is not None
    return dict(subscription.seats.states)


def version_of(session: Session) -> int | None:
    subscription = session.subscription("gala")
    assert subscription is not None
    return subscription.seats.version


def test_a_snapshot_fills_the_map() -> None:
    session = Session()
    call = session.subscribe_call("gala")
    assert sent(session.send(call)) == {"id": 1, "type": "subscribe", "event_id": "gala"}
    events = session.receive(subscribed(call, 7, held=[held("A-1")], reserved=["B-1", "B-2"]))
    assert events[0] == SeatsChanged(
        SeatUpdate(
            "gala",
            7,
            (
                SeatChange("B-1", "reserved"),
                SeatChange("B-2", "reserved"),
                SeatChange("A-1", "held", T1),
            ),
            "snapshot",
        )
    )
    assert isinstance(events[1], Replied) and isinstance(events[1].result, Subscribed)
    subscription = session.subscription("gala")
    assert subscription is not None
    assert seats_of(session) == {"A-1": "held", "B-1": "reserved", "B-2": "reserved"}
    assert dict(subscription.seats.expires_at) == {"A-1": T1}
    assert (subscription.seats.version, subscription.seats.total_seats) == (7, 10)
    assert subscription.seats.state("C-9") == "available"


def test_an_empty_first_snapshot_still_reports_the_version() -> None:
    session = Session()
    call = session.subscribe_call("gala")
    session.send(call)
    events = session.receive(subscribed(call, 0))
    assert events[0] == SeatsChanged(SeatUpdate("gala", 0, (), "snapshot"))


@pytest.mark.parametrize(
    ("frames", "expected_seats", "expected_version", "outcomes"),
    [
        # consecutive deltas apply in order
        (
            [delta(6, held("A-1")), delta(7, {"seat_id": "A-1", "state": "reserved"})],
            {"A-1": "reserved"},
            7,
            ["changed", "changed"],
        ),
        # a seat coming back
        (
            [delta(6, held("A-1")), delta(7, {"seat_id": "A-1", "state": "available"})],
            {},
            7,
            ["changed", "changed"],
        ),
        # a duplicate is ignored
        (
            [delta(6, held("A-1")), delta(6, held("A-2"))],
            {"A-1": "held"},
            6,
            ["changed", "ignored"],
        ),
        ([delta(5, held("A-2"))], {}, 5, ["ignored"]),
        # a gap asks for a resync; later deltas wait for it
        ([delta(7, held("A-1")), delta(8, held("A-2"))], {}, 5, ["resync", "ignored"]),
        # another event's delta is not ours
        ([delta(6, held("A-1"), event_id="other")], {}, 5, ["ignored"]),
    ],
)
def test_live_deltas(
    frames: list[bytes],
    expected_seats: dict[str, str],
    expected_version: int,
    outcomes: list[str],
) -> None:
    session = synced_session(5)
    kinds = {SeatsChanged: "changed", Ignored: "ignored", ResyncNeeded: "resync"}
    seen = []
    for frame in frames:
        [event] = session.receive(frame)
        seen.append(kinds[type(event)])
    assert seen == outcomes
    assert seats_of(session) == expected_seats
    assert version_of(session) == expected_version


def test_a_gap_resyncs_from_the_last_version_seen() -> None:
    session = synced_session(5)
    session.receive(delta(6, held("A-1")))
    assert session.receive(delta(9, held("A-2"))) == [ResyncNeeded("gala")]
    call = session.subscribe_call("gala")
    assert sent(session.send(call))["since_version"] == 6
    # Live deltas before the reply are covered by it: ignored.
    assert isinstance(session.receive(delta(9, held("A-2")))[0], Ignored)
    resume = {
        "deltas": [
            {"event_id": "gala", "from_version": 7, "version": 7, "changes": [held("A-2")]},
            {
                "event_id": "gala",
                "from_version": 8,
                "version": 8,
                "changes": [{"seat_id": "A-1", "state": "available"}],
            },
            {"event_id": "gala", "from_version": 9, "version": 9, "changes": [held("A-3", T2)]},
        ]
    }
    events = session.receive(subscribed(call, 9, "resume", **resume))
    assert events[0] == SeatsChanged(
        SeatUpdate(
            "gala",
            9,
            (
                SeatChange("A-2", "held", T1),
                SeatChange("A-1", "available"),
                SeatChange("A-3", "held", T2),
            ),
            "resume",
        )
    )
    assert seats_of(session) == {"A-2": "held", "A-3": "held"}
    # Live again: the next delta must be 10.
    [event] = session.receive(delta(10, {"seat_id": "A-2", "state": "reserved"}))
    assert isinstance(event, SeatsChanged)
    assert seats_of(session) == {"A-2": "reserved", "A-3": "held"}


def test_a_resync_by_snapshot_replaces_the_map() -> None:
    session = synced_session(5, held=[held("A-1")], reserved=["B-1"])
    assert session.receive(delta(8)) == [ResyncNeeded("gala")]
    call = session.subscribe_call("gala")
    session.send(call)
    events = session.receive(subscribed(call, 12, held=[held("A-1", T2)], reserved=["B-1", "C-1"]))
    update = events[0]
    assert isinstance(update, SeatsChanged)
    assert update.update.kind == "snapshot"
    assert set(update.update.changes) == {
        SeatChange("A-1", "held", T2),  # refreshed: a new expiry
        SeatChange("C-1", "reserved"),
    }
    assert seats_of(session) == {"A-1": "held", "B-1": "reserved", "C-1": "reserved"}
    # Seats gone from the snapshot come back as available.
    session.receive(delta(14))  # gap again
    call = session.subscribe_call("gala")
    session.send(call)
    [update, _] = session.receive(subscribed(call, 15, reserved=["B-1"]))
    assert isinstance(update, SeatsChanged)
    assert set(update.update.changes) == {
        SeatChange("A-1", "available"),
        SeatChange("C-1", "available"),
    }
    assert seats_of(session) == {"B-1": "reserved"}


@pytest.mark.parametrize(
    "deltas",
    [
        [
            {"event_id": "gala", "from_version": 7, "version": 7, "changes": []}
        ],  # starts past since + 1
        [
            {"event_id": "gala", "from_version": 6, "version": 6, "changes": []},
            {"event_id": "gala", "from_version": 8, "version": 8, "changes": []},
        ],  # a hole
        [],  # claims version 8 without the deltas
    ],
)
def test_a_resume_that_does_not_fit_asks_for_a_snapshot(deltas: list[dict[str, Any]]) -> None:
    session = synced_session(5, reserved=["B-1"])
    session.receive(delta(9))
    call = session.subscribe_call("gala")
    session.send(call)
    events = session.receive(subscribed(call, 8, "resume", deltas=deltas))
    assert events[0] == ResyncNeeded("gala")
    assert seats_of(session) == {"B-1": "reserved"}
    assert "since_version" not in sent(session.send(session.subscribe_call("gala")))


def test_an_up_to_date_resume_changes_nothing() -> None:
    session = synced_session(5, reserved=["B-1"])
    session.connection_lost()
    call = session.subscribe_call("gala")
    assert sent(session.send(call))["since_version"] == 5
    events = session.receive(subscribed(call, 5, "resume"))
    assert [type(e) for e in events] == [Replied]
    assert seats_of(session) == {"B-1": "reserved"}
    assert isinstance(session.receive(delta(6, held("A-1")))[0], SeatsChanged)


def test_connection_lost_resyncs_every_watch_and_keeps_subscribes_in_flight() -> None:
    session = synced_session(5)
    pending = session.subscribe_call("other")
    session.send(pending)
    assert session.connection_lost() == ["gala"]
    # While re-syncing, deltas of the old connection no longer count.
    assert isinstance(session.receive(delta(6, held("A-1")))[0], Ignored)
    # The subscribe in flight is resent as it was.
    assert [sent(f) for f in pending_frames(session)] == [
        {"id": pending.request_id, "type": "subscribe", "event_id": "other"}
    ]


def test_a_superseded_subscribe_reply_is_not_applied() -> None:
    session = synced_session(5, reserved=["B-1"])
    session.receive(delta(7))
    call = session.subscribe_call("gala")
    session.send(call)
    # A temporary error: the client waits before retrying, and meanwhile the connection drops,
    # so the map must be re-based by a new subscribe, not by this call's late answer.
    session.receive(error_reply(call, code="overloaded", message="busy", temporary=True))
    assert session.connection_lost() == ["gala"]
    session.send(call)
    events = session.receive(subscribed(call, 9, reserved=["Z-1"]))
    assert [type(e) for e in events] == [Ignored, Replied]
    assert seats_of(session) == {"B-1": "reserved"}
    assert version_of(session) == 5
    fresh = session.subscribe_call("gala")
    session.send(fresh)
    session.receive(subscribed(fresh, 9, reserved=["Z-1"]))
    assert seats_of(session) == {"Z-1": "reserved"}


def test_unwatch_forgets_the_map_and_its_subscribe() -> None:
    session = Session()
    call = session.subscribe_call("gala")
    session.send(call)
    session.unwatch("gala")
    assert session.subscription("gala") is None
    assert pending_frames(session) == []
    assert isinstance(session.receive(delta(1, held("A-1")))[0], Ignored)


# --- updates -------------------------------------------------------------------------------------


def test_merging_updates_keeps_net_changes_in_order() -> None:
    first = SeatUpdate(
        "gala", 6, (SeatChange("A-1", "held", T1), SeatChange("A-2", "held", T1)), "delta"
    )
    second = SeatUpdate("gala", 7, (SeatChange("A-1", "reserved"),), "resume")
    third = SeatUpdate("gala", 8, (SeatChange("A-3", "held", T2),), "delta")
    merged = first.merge(second).merge(third)
    assert merged == SeatUpdate(
        "gala",
        8,
        (
            SeatChange("A-2", "held", T1),
            SeatChange("A-1", "reserved"),
            SeatChange("A-3", "held", T2),
        ),
        "resume",
        3,
    )


@pytest.mark.parametrize(
    ("from_version", "version", "outcome"),
    [
        (6, 8, "applied"),  # a merged delta right after the map's version
        (4, 7, "applied"),  # overlapping: states are absolute, so it still applies
        (3, 5, "ignored"),  # nothing newer than the map
        (7, 9, "resync"),  # version 6 was never seen
    ],
)
def test_merged_deltas_apply_by_their_version_range(
    from_version: int, version: int, outcome: str
) -> None:
    session = synced_session(5)
    frame = orjson.dumps(
        {
            "type": "availability",
            "event_id": "gala",
            "from_version": from_version,
            "version": version,
            "changes": [held("A-1")],
        }
    )
    [event] = session.receive(frame)
    if outcome == "applied":
        assert isinstance(event, SeatsChanged) and event.update.version == version
    elif outcome == "ignored":
        assert isinstance(event, Ignored)
    else:
        assert event == ResyncNeeded("gala")
