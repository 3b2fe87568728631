"""Requests served by PostgreSQL directly, without an event actor: create and list events."""

from __future__ import annotations

from protocol import messages as wire
from seatd import core
from seatd.auth import Identity
from seatd.core import Policy
from seatd.errors import IdempotencyMismatch, InvalidRequest
from seatd.gateway.translate import event_view, idempotency_key, new_event
from seatd.runtime.ports import NewEvent, SeatStore, StoredReply

__all__ = ["serve"]


async def serve(
    store: SeatStore,
    policy: Policy,
    identity: Identity,
    request: wire.CreateEvent | wire.ListEvents,
) -> object:
    if isinstance(request, wire.CreateEvent):
        return await _create_event(store, policy, identity, request)
    return await _list_events(store, policy, request)


async def _create_event(
    store: SeatStore, policy: Policy, identity: Identity, request: wire.CreateEvent
) -> object:
    identity.require_admin("create events")
    event = new_event(request)
    view = _created_view(policy, event)
    key = idempotency_key(identity, "create_event", request, lambda _: view)
    if key is None:
        await store.create_event(event)
        return view
    record = key.record(view)
    earlier = await store.create_event(event, record)
    if earlier is None:
        return StoredReply(record.response)
    if earlier.request_hash != key.request_hash:
        raise IdempotencyMismatch(
            f"idempotency key {key.key!r} was used for a different request",
            details={"idempotency_key": key.key},
        )
    return StoredReply(earlier.response)


def _created_view(policy: Policy, event: NewEvent) -> wire.EventView:
    rules = policy.for_event(event.info)
    total = len(event.seats)
    summary = core.EventSummary(
        event.info, total, total, 0, 0, 0, rules.hold_duration, rules.max_seats_per_user
    )
    return event_view(
        event.info,
        hold_duration=rules.hold_duration,
        max_seats_per_user=rules.max_seats_per_user,
        live=summary,
    )


async def _list_events(store: SeatStore, policy: Policy, request: wire.ListEvents) -> object:
    if request.radius_m is not None and request.near is None:
        raise InvalidRequest("radius_m needs near", details={"path": "$.radius_m"})
    near = (request.near.latitude, request.near.longitude) if request.near else None
    page = await store.list_events(
        near=near, radius_m=request.radius_m, limit=request.limit, after=request.after
    )
    views = []
    for info, distance in page.events:
        rules = policy.for_event(info)
        views.append(
            event_view(
                info,
                hold_duration=rules.hold_duration,
                max_seats_per_user=rules.max_seats_per_user,
                distance_m=distance,
            )
        )
    return wire.EventPage(tuple(views), page.next_after)
