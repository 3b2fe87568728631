"""The client's protocol state machine, without I/O: frames in, frames and events out.

The session allocates request ids, remembers the requests waiting for a reply (so they can be
sent again on a new connection), gives every mutation an idempotency key that stays the same
across all attempts of that mutation, turns reply frames into results or typed exceptions, and
keeps one seat map per watched event, checking that availability versions follow each other.
Keeping this free of asyncio makes every rule testable with plain function calls.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from protocol._validate import ValidationError
from protocol.client._decode import tolerant_decoder
from protocol.client._errors import ProtocolViolationError
from protocol.client._seatmap import SeatMap, SeatUpdate
from protocol.codec import encode_request
from protocol.errors import ERROR_CODES, RemoteError, TemporaryError, error_class_for
from protocol.messages import (
    REQUEST_TYPES,
    Authenticated,
    Availability,
    AvailableSeats,
    EventPage,
    EventView,
    GoAway,
    HoldExpired,
    HoldExpiring,
    HoldView,
    Pong,
    Released,
    Request,
    ReservationView,
    Subscribe,
    Subscribed,
    TokenExpiring,
    Unsubscribed,
    Welcome,
)

__all__ = [
    "MUTATIONS",
    "RESULT_TYPES",
    "Call",
    "Failed",
    "Ignored",
    "Inbound",
    "Push",
    "Pushed",
    "Replied",
    "ResyncNeeded",
    "SeatsChanged",
    "Session",
    "Subscription",
    "remote_error",
]

log = logging.getLogger("seatd.client")
R = TypeVar("R")
# The pushes a client application sees (``welcome`` is consumed by the connection itself).
Push = GoAway | HoldExpiring | HoldExpired | TokenExpiring

RESULT_TYPES: dict[str, type[Any]] = {
    "ping": Pong,
    "authenticate": Authenticated,
    "create_event": EventView,
    "get_event": EventView,
    "list_events": EventPage,
    "hold": HoldView,
    "refresh": HoldView,
    "release": Released,
    "reserve": ReservationView,
    "list_available": AvailableSeats,
    "subscribe": Subscribed,
    "unsubscribe": Unsubscribed,
}
MUTATIONS = frozenset({"create_event", "hold", "refresh", "release", "reserve"})
_TYPE_OF: dict[type[Any], str] = {cls: name for name, cls in REQUEST_TYPES.items()}
_PUSH_ENVELOPE = frozenset({"type"})
_RESULT_DECODERS: dict[type[Any], Callable[[object], Any]] = {
    cls: tolerant_decoder(cls) for cls in RESULT_TYPES.values()
}
_PUSHES: dict[str, Callable[[object], Any]] = {
    "welcome": tolerant_decoder(Welcome, ignore=_PUSH_ENVELOPE),
    "goaway": tolerant_decoder(GoAway, ignore=_PUSH_ENVELOPE),
    "hold_expiring": tolerant_decoder(HoldExpiring, ignore=_PUSH_ENVELOPE),
    "hold_expired": tolerant_decoder(HoldExpired, ignore=_PUSH_ENVELOPE),
    "token_expiring": tolerant_decoder(TokenExpiring, ignore=_PUSH_ENVELOPE),
}
_decode_availability = tolerant_decoder(Availability, ignore=_PUSH_ENVELOPE)


@dataclass(eq=False, slots=True)
class Call(Generic[R]):
    """One logical request. Every attempt sends the same ``message`` (and so the same
    idempotency key); only ``request_id`` changes between attempts."""

    request_type: str
    message: Request
    decode: Callable[[object], R]
    request_id: int | None = None
    attempts: int = 0

    @property
    def idempotency_key(self) -> str | None:
        key: str | None = getattr(self.message, "idempotency_key", None)
        return key


# --- what a received frame means ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replied:
    call: Call[Any]
    result: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """The call's attempt failed: an error reply, or a reply the SDK could not decode."""

    call: Call[Any]
    error: Exception


@dataclass(frozen=True, slots=True)
class Pushed:
    message: Push | Welcome


@dataclass(frozen=True, slots=True)
class SeatsChanged:
    update: SeatUpdate


@dataclass(frozen=True, slots=True)
class ResyncNeeded:
    """The event's seat map missed something: subscribe again (``Session.subscribe_call``)."""

    event_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


Inbound = Replied | Failed | Pushed | SeatsChanged | ResyncNeeded | Ignored


# --- subscriptions ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Subscription:
    """A watched event: its seat map and where its synchronisation stands.

    While ``syncing``, live deltas are ignored: the reply to the subscribe in flight covers
    every change the server sent before it (the server sends newer ones after that reply).
    """

    seats: SeatMap
    syncing: bool = True
    synced_once: bool = False
    want_snapshot: bool = False  # a resume did not fit: ask for a full snapshot
    call: Call[Subscribed] | None = None


# --- the session -------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """The protocol state of one client, across all its connections (``new_key`` makes the
    idempotency keys; tests inject a predictable one)."""

    new_key: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    _ids: itertools.count[int] = field(init=False, default_factory=lambda: itertools.count(1))
    _pending: dict[int, Call[Any]] = field(init=False, default_factory=dict)
    _subscriptions: dict[str, Subscription] = field(init=False, default_factory=dict)

    # --- requests ------------------------------------------------------------------------

    def call(self, message: Request, result: type[R]) -> Call[R]:
        """A logical request; a mutation without an idempotency key gets a fresh one."""
        request_type = _TYPE_OF[type(message)]
        if RESULT_TYPES[request_type] is not result:
            raise TypeError(f"{request_type} answers {RESULT_TYPES[request_type].__name__}")
        if request_type in MUTATIONS and getattr(message, "idempotency_key", None) is None:
            keyed: Any = message  # every mutation class has the field
            message = dataclasses.replace(keyed, idempotency_key=self.new_key())
        decode: Callable[[object], R] = _RESULT_DECODERS[result]
        return Call(request_type, message, decode)

    def send(self, call: Call[Any]) -> bytes:
        """A new attempt of ``call``: a fresh request id, registered as waiting for its reply."""
        if call.request_id is not None:
            self._pending.pop(call.request_id, None)
        call.request_id = next(self._ids)
        call.attempts += 1
        self._pending[call.request_id] = call
        return self.frame(call)

    @staticmethod
    def frame(call: Call[Any]) -> bytes:
        assert call.request_id is not None
        return encode_request(call.request_id, call.request_type, call.message)

    def is_pending(self, call: Call[Any]) -> bool:
        return call.request_id is not None and self._pending.get(call.request_id) is call

    def pending(self) -> list[tuple[Call[Any], bytes]]:
        """Every request still waiting for a reply and its frame, in the order sent: for a new
        connection.

        Resending is safe: mutations carry their idempotency key, the rest only read (or
        subscribe, which a second time just re-bases the seat map)."""
        return [(call, self.frame(call)) for _, call in sorted(self._pending.items())]

    def forget(self, call: Call[Any]) -> None:
        """Stop waiting for ``call`` (timed out, cancelled): never resend it."""
        if call.request_id is not None and self._pending.get(call.request_id) is call:
            del self._pending[call.request_id]

    def forget_all(self) -> list[Call[Any]]:
        calls = list(self._pending.values())
        self._pending.clear()
        return calls

    # --- subscriptions -------------------------------------------------------------------

    def watch(self, event_id: str) -> Subscription:
        subscription = self._subscriptions.get(event_id)
        if subscription is None:
            subscription = Subscription(SeatMap(event_id))
            self._subscriptions[event_id] = subscription
        return subscription

    def subscription(self, event_id: str) -> Subscription | None:
        return self._subscriptions.get(event_id)

    def unwatch(self, event_id: str) -> None:
        subscription = self._subscriptions.pop(event_id, None)
        if subscription is not None and subscription.call is not None:
            self.forget(subscription.call)

    def subscribe_call(self, event_id: str) -> Call[Subscribed]:
        """The subscribe that brings the event's map up to date: a resume from the last version
        seen when there is one, else a snapshot."""
        subscription = self.watch(event_id)
        since = None if subscription.want_snapshot else subscription.seats.version
        subscription.want_snapshot = False
        subscription.syncing = True
        call = self.call(Subscribe(event_id, since_version=since), Subscribed)
        subscription.call = call
        return call

    def mark_unsynced(self, event_id: str) -> None:
        """Live deltas of the event are no longer expected (unsubscribing)."""
        subscription = self._subscriptions.get(event_id)
        if subscription is not None:
            subscription.syncing = True

    def connection_lost(self) -> list[str]:
        """The connection dropped: every map must be re-synced on the next one. Returns the
        events that need a new subscribe (the others have one in flight, which is resent)."""
        stale = []
        for event_id, subscription in self._subscriptions.items():
            subscription.syncing = True
            if subscription.call is None or not self.is_pending(subscription.call):
                subscription.call = None
                stale.append(event_id)
        return stale

    # --- inbound frames ------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Inbound]:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [Ignored("a frame that is not JSON")]
        if not isinstance(frame, dict):
            return [Ignored("a frame that is not a JSON object")]
        if "id" in frame or "ok" in frame:
            return self._reply(frame)
        return self._push(frame)

    def _reply(self, frame: dict[str, Any]) -> list[Inbound]:
        request_id = frame.get("id")
        call = self._pending.pop(request_id, None) if type(request_id) is int else None
        if call is None:
            error = frame.get("error")
            return [Ignored(f"a reply to no waiting request (id {request_id!r}): {error!r}")]
        if frame.get("ok") is True:
            try:
                result = call.decode(frame.get("result"))
            except ValidationError as error:
                return [Failed(call, ProtocolViolationError(f"{call.request_type} result {error}"))]
            if isinstance(result, Subscribed):
                return [*self._subscribed(call, result), Replied(call, result)]
            return [Replied(call, result)]
        return [Failed(call, remote_error(frame.get("error")))]

    def _push(self, frame: dict[str, Any]) -> list[Inbound]:
        push_type = frame.get("type")
        try:
            if push_type == "availability":
                return self._delta(_decode_availability(frame))
            decode = _PUSHES.get(push_type) if isinstance(push_type, str) else None
            if decode is None:
                return [Ignored(f"a push of unknown type {push_type!r}")]
            return [Pushed(decode(frame))]
        except ValidationError as error:
            return [Ignored(f"a malformed {push_type} push: {error}")]

    def _delta(self, delta: Availability) -> list[Inbound]:
        subscription = self._subscriptions.get(delta.event_id)
        if subscription is None or subscription.syncing:
            return [Ignored("a delta while (re)subscribing")]
        seats = subscription.seats
        assert seats.version is not None  # synced implies a version
        if delta.version <= seats.version:
            return [Ignored("a delta already applied")]
        if delta.from_version > seats.version + 1:  # versions in between were missed
            subscription.syncing = True
            return [ResyncNeeded(delta.event_id)]
        return [SeatsChanged(seats.apply_deltas((delta,), "delta", delta.version))]

    def _subscribed(self, call: Call[Any], result: Subscribed) -> list[Inbound]:
        subscription = self._subscriptions.get(result.event_id)
        if subscription is None or subscription.call is not call:
            return [Ignored("a reply to a superseded subscribe")]
        subscription.call = None
        seats = subscription.seats
        if result.mode == "snapshot":
            update: SeatUpdate | None = seats.apply_snapshot(result)
        else:
            assert isinstance(call.message, Subscribe)
            since = call.message.since_version
            if since is None or since != seats.version or not _chain(since, result):
                subscription.want_snapshot = True  # the replay does not fit the map
                return [ResyncNeeded(result.event_id)]
            moved = result.version != seats.version
            update = seats.apply_deltas(result.deltas, "resume", result.version)
            if not moved and not update.changes:
                update = None
        seats.total_seats = result.total_seats
        subscription.syncing = False
        first = not subscription.synced_once
        subscription.synced_once = True
        if update is not None and (first or update.changes or update.kind == "snapshot"):
            return [SeatsChanged(update)]
        return []


def remote_error(error: object) -> Exception:
    """The typed exception for an error object (``RemoteError`` subclasses by code)."""
    if not isinstance(error, dict):
        return ProtocolViolationError(f"an error reply without an error object: {error!r}")
    code, message = error.get("code"), error.get("message", "")
    retry_after = error.get("retry_after_ms")
    details = error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return ProtocolViolationError(f"a malformed error object: {error!r}")
    cls = error_class_for(code)
    if code not in ERROR_CODES and error.get("temporary") is True:
        cls = TemporaryError  # a newer server's code: trust its flag
    exc: RemoteError = cls(
        code,
        message,
        retry_after_ms=retry_after if type(retry_after) is int else None,
        details=details if isinstance(details, dict) else None,
    )
    return exc


def _chain(since: int, result: Subscribed) -> bool:
    """Whether a resume's deltas lead, without a hole, from ``since`` to ``result.version``."""
    reached = since
    for delta in result.deltas:
        if delta.from_version > reached + 1 or delta.version <= reached:
            return False
        reached = delta.version
    return reached == result.version
