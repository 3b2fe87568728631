"""Background work logs as the service, not as the request that happened to start it.

A task copies the context it is created in: an actor activated by a client's command logged
that client's session and user on every line for the rest of its life, lease renewals
included."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from support.events import new_event
from support.waiting import until

from seatd.adapters.postgres import PostgresStore
from seatd.core import GetEvent, Policy
from seatd.logging import detached
from seatd.runtime.actor import ActorSettings
from seatd.runtime.ports import SystemClock
from seatd.runtime.registry import Registry

POLICY = Policy(hold_duration=300, max_seats_per_user=8, max_hold_lifetime=1800)


def test_a_detached_context_keeps_the_service_fields_only() -> None:
    structlog.contextvars.bind_contextvars(instance="i1", session_id="s9", user_id="u9")
    try:
        context = detached(event_id="e1")
        fields = context.run(structlog.contextvars.get_contextvars)
        assert fields == {"instance": "i1", "event_id": "e1"}
        # The caller's own context is left as it was.
        assert structlog.contextvars.get_contextvars()["session_id"] == "s9"
    finally:
        structlog.contextvars.clear_contextvars()


async def test_an_actor_started_by_a_request_logs_without_that_request(
    store: PostgresStore,
) -> None:
    registry = Registry(store, SystemClock(), POLICY, ActorSettings(idle_timeout=0.2))
    seen: list[dict[str, Any]] = []
    registry.stop_listeners.append(lambda _: seen.append(structlog.contextvars.get_contextvars()))
    event_id = await new_event(store, "ctx")

    async def request() -> None:  # a connection's task, with its fields bound
        structlog.contextvars.bind_contextvars(instance="i1", session_id="s9", user_id="u9")
        await registry.ask(event_id, GetEvent())

    try:
        await asyncio.create_task(request())
        await until(lambda: bool(seen), 5, "the idle actor to stop")
        assert seen == [{"instance": "i1", "event_id": event_id}]
    finally:
        await registry.close()
