"""The owner's side of forwarding: what it accepts from another instance and how it answers."""

from __future__ import annotations

from typing import Any, cast

import orjson

from seatd.core import Policy
from seatd.gateway.broadcast import Broadcaster
from seatd.gateway.forward import Router
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import SystemClock
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
