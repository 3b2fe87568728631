"""One in-process seatd for the end-to-end tests, on the session's PostgreSQL and Redis.

Tests share the server but never an event: each creates its own (``new_event_id``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.client import RawClient, client
from support.server import NARROW_INFLIGHT, RunningServer, base_env, in_process_server

from protocol import messages as wire
from seatd.gateway import catalog
from seatd.logging import configure_logging


@pytest.fixture(scope="session")
async def server(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    configure_logging("warning", "json")
    async with in_process_server(base_env(service_env)) as running:
        yield running


@pytest.fixture(scope="module")
async def narrow(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    """A server that lets a connection have only NARROW_INFLIGHT requests in progress."""
    env = base_env(service_env, SEATD_MAX_INFLIGHT=str(NARROW_INFLIGHT))
    async with in_process_server(env) as running:
        yield running


@pytest.fixture
async def admin(server: RunningServer) -> AsyncIterator[RawClient]:
    async with client(server.url, "admin-1", "admin") as c:
        yield c


@pytest.fixture
async def alice(server: RunningServer) -> AsyncIterator[RawClient]:
    async with client(server.url, "alice", "user") as c:
        yield c


@pytest.fixture
async def bob(server: RunningServer) -> AsyncIterator[RawClient]:
    async with client(server.url, "bob", "user") as c:
        yield c


@pytest.fixture
def catalog_gate(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """``list_events`` stays in progress until this gate is set (events can still be made)."""
    gate = asyncio.Event()
    serve = catalog.serve

    async def gated(*args: Any) -> object:
        if isinstance(args[-1], wire.ListEvents):
            await gate.wait()
        return await serve(*args)

    monkeypatch.setattr(catalog, "serve", gated)
    return gate
