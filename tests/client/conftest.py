"""Fixtures for the SDK tests: one in-process seatd shared by the tests of this directory.

Tests never share an event: each creates its own (``new_event_id``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sdk_support import FAST
from support.server import RunningServer, base_env, in_process_server, token

from protocol.client import SeatClient
from seatd.logging import configure_logging


@pytest.fixture(scope="session")
async def sdk_server(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    configure_logging("warning", "json")
    async with in_process_server(base_env(service_env)) as running:
        yield running


@pytest.fixture
async def admin(sdk_server: RunningServer) -> AsyncIterator[SeatClient]:
    async with SeatClient(sdk_server.url, token=token("sdk-admin", "admin"), backoff=FAST) as c:
        yield c


@pytest.fixture
async def alice(sdk_server: RunningServer) -> AsyncIterator[SeatClient]:
    async with SeatClient(sdk_server.url, token=token("sdk-alice"), backoff=FAST) as c:
        yield c


@pytest.fixture
async def bob(sdk_server: RunningServer) -> AsyncIterator[SeatClient]:
    async with SeatClient(sdk_server.url, token=token("sdk-bob"), backoff=FAST) as c:
        yield c
