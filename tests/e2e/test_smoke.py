from __future__ import annotations

from support.client import RawClient, create_event


async def test_hold_then_reserve(admin: RawClient, alice: RawClient) -> None:
    event = await create_event(admin, seats=5)
    hold = await alice.ok("hold", event_id=event["event_id"], seat_ids=["A-1", "A-2"])
    assert hold["seat_ids"] == ["A-1", "A-2"]
    reservation = await alice.ok("reserve", event_id=event["event_id"], hold_id=hold["hold_id"])
    assert reservation["seat_ids"] == ["A-1", "A-2"]
    summary = await alice.ok("get_event", event_id=event["event_id"])
    assert (summary["available"], summary["reserved"]) == (3, 2)
