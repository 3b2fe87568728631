"""Forwarding: what the owner accepts from another instance and how it answers, and what the
asker makes of a failed forward."""

from __future__ import annotations

import uuid
from typing import Any, cast

import orjson
import pytest

from seatd.auth import Identity
from seatd.core import PlaceHold, Policy
from seatd.errors import OwnedElsewhere
from seatd.gateway.broadcast import Broadcaster
from seatd.gateway.forward import Router
from seatd.runtime.actor import ActorSettings, Envelope
from seatd.runtime.ports import PeerLost, SystemClock
from seatd.runtime.registry import Registry

HOLD = b'{"id":1,"type":"hold","event_id":"e1","seat_ids":["A-1"]}'
ANN = {"e": "e1", "u": "ann", "ro": "user", "x": None}


async def _closed_router() -> Router:
    """A router whose instance is shutting down (no store is ever reached)."""
    registry = Registry(cast(Any, None), SystemClock(), Policy(300, 8, 1800), ActorSettings())
    await registry.close()
    return Router(registry, cast(Any, None), Broadcaster())


async def _error_code(router: Router, header: dict[str, Any], body: bytes) -> str:
    reply_header, reply = await router.serve(header, body)
    assert reply_header == {}
    answer = orjson.loads(reply)
    assert answer["ok"] is False, answer
    return str(answer["error"]["code"])


async def test_a_stopping_owner_sends_the_asker_elsewhere_not_away() -> None:
    # 'shutting_down' would make the asker's client leave its own, healthy server.
    assert await _error_code(await _closed_router(), ANN, HOLD) == "unavailable"


async def test_what_cannot_be_forwarded_is_refused() -> None:
    router = await _closed_router()
    cases = [
        (ANN, b'{"id":1,"type":"subscribe","event_id":"e1"}'),  # not a forwarded type
        ({**ANN, "e": "e2"}, HOLD),  # the frame names another event than the header
        ({**ANN, "ro": "root"}, HOLD),  # no such role
        ({"e": "e1"}, HOLD),  # no identity
        (ANN, b"{not json"),
    ]
    for header, body in cases:
        assert await _error_code(router, header, body) == "invalid_request", (header, body)


async def test_the_identity_is_checked_again_by_the_owner() -> None:
    spoof = b'{"id":1,"type":"hold","event_id":"e1","seat_ids":["A-1"],"on_behalf_of":"bob"}'
    assert await _error_code(await _closed_router(), ANN, spoof) == "forbidden"


class _LosingBus:
    """A bus whose every request fails with ``error``; counts the requests."""

    instance_id = "asker"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.requests = 0

    async def request(
        self, instance_id: str, header: dict[str, Any], body: bytes, timeout: float
    ) -> tuple[dict[str, Any], bytes]:
        self.requests += 1
        raise self.error


async def test_a_command_whose_owner_lost_its_events_meanwhile_is_not_run_again() -> None:
    """The owner may have run it before its lease ran out: the client hears 'unavailable' (may
    or may not have been applied), and the asker does not run it a second time itself."""
    registry = Registry(cast(Any, None), SystemClock(), Policy(300, 8, 1800), ActorSettings())
    await registry.close()  # running it here would fail otherwise (shutting_down)
    registry.remember_owner("e1", "owner")
    bus = _LosingBus(PeerLost("instance owner lost its events"))
    router = Router(registry, cast(Any, None), Broadcaster(), cast(Any, bus))
    command = PlaceHold("ann", ("A-1",), str(uuid.uuid4()))
    with pytest.raises(OwnedElsewhere) as raised:
        await router.ask("e1", Envelope(command), Identity("ann", "user"), HOLD.decode())
    assert raised.value.code == "unavailable"
    assert bus.requests == 1
