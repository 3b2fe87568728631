"""Routing a command to the instance that owns its event, and serving commands routed here.

Any instance accepts any client. A command for an event whose actor runs here goes straight to
the actor; for an event leased by another instance it is forwarded, as the client's own request
frame plus the authenticated identity, to that instance's inbox on the message bus (Redis), and
the owner's answer, a reply body in the same form as a stored idempotent reply, is sent back to
the client unchanged. The owner decodes, authorises and runs the command exactly as for its own
connections; it never forwards again. If the event moved in the meantime it answers "moved" with
the new owner and the asker tries there (at most ``_HOPS`` times).

An owner that is gone (nobody reads its inbox) never got the command, so it runs elsewhere. An
owner silent past the forward timeout, or whose lease ran out while the command waited, may have
run it: the client gets ``unavailable`` (may or may not have been applied). Its retry is safe
with its idempotency key, and by then the lease of a dead owner has run out and an instance has
taken the event over.

While Redis is out of reach nothing can be forwarded: a command for an event that a living
instance owns gets ``unavailable`` (retry), and the owner's own clients are served as before
(the registry asks PostgreSQL who owns what, ``seatd/adapters/owners.py``).

Subscribers: an instance follows the pushes of every event its connections watch (see
``broadcast``), and takes the snapshot from the local actor or, when the event is owned
elsewhere, from PostgreSQL, which holds exactly the owner's committed state at its version.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import structlog

from protocol import messages as wire
from protocol.codec import DecodeError, decode_request
from seatd import core
from seatd.auth import Identity, Role
from seatd.errors import (
    EventNotFound,
    InternalFault,
    InvalidRequest,
    OwnedElsewhere,
    SeatdError,
    ShuttingDown,
)
from seatd.gateway.broadcast import Broadcaster
from seatd.gateway.translate import (
    idempotency_key,
    response_body,
    result_to_wire,
    to_command,
)
from seatd.logging import ThrottledWarning, detached
from seatd.runtime.actor import Envelope
from seatd.runtime.ports import (
    BusError,
    BusUnavailable,
    MessageBus,
    PeerGone,
    SeatStore,
    StoredReply,
)
from seatd.runtime.registry import Registry

__all__ = ["Router"]

log = structlog.get_logger("seatd.forward")
_HOPS = 3
# Every command for another instance's event fails while Redis is away: a line now and then.
_unreachable = ThrottledWarning("owner_unreachable", interval=5, logger="seatd.forward")
_ROLES: frozenset[Role] = frozenset(("admin", "agent", "user"))
_FORWARDED = (
    wire.HoldRequest,
    wire.Refresh,
    wire.Release,
    wire.Reserve,
    wire.ListAvailable,
    wire.GetEvent,
)


class Router:
    """Local actor or owning instance: where each event command runs."""

    def __init__(
        self,
        registry: Registry,
        store: SeatStore,
        broadcaster: Broadcaster,
        bus: MessageBus | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._registry = registry
        self._store = store
        self._broadcaster = broadcaster
        self._bus = bus
        self._timeout = timeout
        self._following: set[asyncio.Task[None]] = set()

    # --- asking side -----------------------------------------------------------------------

    async def ask(
        self, event_id: str, envelope: Envelope, identity: Identity, frame: str | None
    ) -> Any:
        """The command's answer: the local actor's result, or the owner's reply body as a
        ``StoredReply`` (``frame`` is the client's request, needed to forward it)."""
        registry, bus, gone = self._registry, self._bus, set[str]()
        if bus is None or frame is None:  # one instance, or not a forwardable request
            return await registry.ask(event_id, envelope.command, envelope)
        for _ in range(_HOPS):
            owner = registry.owner_hint(event_id)
            if owner is None or owner in gone:
                try:
                    return await registry.ask(event_id, envelope.command, envelope)
                except OwnedElsewhere as error:
                    if error.owner is None:
                        raise
                    if error.owner in gone:
                        raise OwnedElsewhere(
                            f"the instance serving event {event_id} stopped; it is being taken "
                            "over, retry",
                            retry_after_ms=500,
                        ) from None
                    owner = error.owner
            forwarded = {
                "e": event_id,
                "u": identity.user_id,
                "ro": identity.role,
                "x": identity.expires_at,
            }
            try:
                header, body = await bus.request(owner, forwarded, frame.encode(), self._timeout)
            except PeerGone:  # not delivered: safe to run elsewhere
                registry.forget_owner(event_id)
                gone.add(owner)
                continue
            except BusUnavailable:
                # Not sent, and the owner cannot be told apart from a dead one: the next
                # command asks again who owns the event (the registry then takes it over if
                # its owner stopped living).
                registry.forget_owner(event_id)
                _unreachable.warn(event_id=event_id, owner=owner)
                raise OwnedElsewhere(
                    f"event {event_id} is served by instance {owner}, which this instance "
                    "cannot reach while Redis is unavailable; retry",
                    retry_after_ms=1000,
                ) from None
            except BusError as error:  # it may have run: never run it again here
                registry.forget_owner(event_id)
                log.warning("forward_failed", event_id=event_id, owner=owner, error=str(error))
                raise OwnedElsewhere(
                    f"the instance serving event {event_id} did not answer; retry"
                ) from None
            moved = header.get("m")
            if isinstance(moved, str):  # the owner lost the event meanwhile: ask the new one
                registry.forget_owner(event_id)
                if moved != bus.instance_id:
                    registry.remember_owner(event_id, moved)
                continue
            return StoredReply(body)
        raise OwnedElsewhere(f"event {event_id} is changing hands; retry")

    async def snapshot(self, event_id: str) -> core.SeatSnapshot:
        """The event's seats for a new subscriber, once its later pushes cannot be missed."""
        if self._bus is not None:
            await self._bus.follow(event_id)
        try:
            result = await self._registry.ask(event_id, core.GetSnapshot())
        except OwnedElsewhere:
            snapshot = await self._store.read_snapshot(event_id)
            if snapshot is None:
                raise EventNotFound(
                    f"no event {event_id}", details={"event_id": event_id}
                ) from None
            return snapshot
        assert isinstance(result, core.SeatSnapshot)
        return result

    def lease_expired(self, event_id: str) -> None:
        """An owner stopped renewing a lease: it died or stalled. Commands waiting for its
        answer fail at once (as ``unavailable``: they may have run), and an instance here takes
        the event over (see the registry)."""
        owner = self._registry.owner_hint(event_id)
        if owner is not None and self._bus is not None:
            self._bus.abandon(owner)
        self._registry.lease_expired(event_id)

    def watched(self, event_id: str) -> None:
        """A connection here follows a hold of this event: hear its owner's hold news, unless
        the owner is this instance (its own news reaches the followers at commit)."""
        if self._registry.active(event_id) is None:
            self._follow(event_id)

    def actor_stopped(self, event_id: str) -> None:
        """The event left this instance: its hold news now comes from its next owner."""
        if self._broadcaster.follows_holds(event_id):
            self._follow(event_id)

    def _follow(self, event_id: str) -> None:
        if self._bus is not None:
            task = asyncio.get_running_loop().create_task(
                self._bus.follow(event_id), context=detached(event_id=event_id)
            )
            self._following.add(task)
            task.add_done_callback(self._following.discard)

    def unwatched(self, event_id: str) -> None:
        """The last subscriber here left: stop relaying; drop the topic unless owned here."""
        if self._bus is not None:
            self._bus.unfollow(event_id)
        if self._registry.active(event_id) is None:
            self._broadcaster.forget(event_id)

    # --- owner side ------------------------------------------------------------------------

    async def serve(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """Run a command another instance forwarded; answer with the reply body."""
        try:
            event_id, identity = _forwarded_identity(header)
            _, request_type, request = decode_request(body)
            if not isinstance(request, _FORWARDED) or request.event_id != event_id:
                raise InvalidRequest("this request cannot be forwarded")
            command = to_command(request, identity)
        except (DecodeError, SeatdError, KeyError, TypeError, ValueError) as error:
            log.warning("forwarded_request_refused", error=repr(error))
            refusal = error if isinstance(error, SeatdError) else InvalidRequest(str(error))
            return {}, response_body(_identity_result, refusal)
        to_wire = partial(result_to_wire, event_id, command)
        key = idempotency_key(identity, request_type, request, to_wire)
        try:
            result = await self._registry.ask(event_id, command, Envelope(command, idempotency=key))
        except OwnedElsewhere as error:
            if error.owner is not None:
                return {"m": error.owner}, b""
            return {}, response_body(to_wire, error)
        except ShuttingDown:
            # This instance is stopping, not the asker's: the client must not take it as its
            # own server going away; its retry finds the event's next owner.
            moving = OwnedElsewhere("the instance serving the event is restarting; retry")
            return {}, response_body(to_wire, moving)
        except SeatdError as error:
            return {}, response_body(to_wire, error)
        except Exception:
            log.exception("forwarded_request_failed", event_id=event_id)
            fault = InternalFault("the command failed unexpectedly; retry")
            return {}, response_body(to_wire, fault)
        if isinstance(result, StoredReply):
            return {}, result.response
        return {}, response_body(to_wire, result)


def _forwarded_identity(header: dict[str, Any]) -> tuple[str, Identity]:
    event_id, user_id, role = header["e"], header["u"], header["ro"]
    expires_at = header.get("x")
    if not isinstance(event_id, str) or not isinstance(user_id, str) or role not in _ROLES:
        raise ValueError("malformed forwarded request")
    return event_id, Identity(user_id, role, float(expires_at) if expires_at else None)


def _identity_result(result: object) -> object:
    return result
