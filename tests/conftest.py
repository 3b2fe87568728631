"""Session-wide service fixtures: one private PostgreSQL and one private Redis per test run.

They are sync fixtures (starting servers is subprocess work) and are created only when a test
asks for them. Teardown stops and deletes both servers even when tests fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import uvloop
from support.services import running_postgres, running_redis
from support.services import service_env as build_service_env

from seatd.devstack import PostgresServer, RedisServer


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """``seatd serve`` runs on uvloop, whose transports are not asyncio's: so do the tests."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL (PostGIS + pg_cron) with init.sql applied, database `seatd_test`."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server on a free port (keyspace expiry notifications on)."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def service_env(postgres: PostgresServer, redis_server: RedisServer) -> dict[str, str]:
    """POSTGRES_* and REDIS_* environment variables for the two servers above."""
    return build_service_env(postgres, redis_server)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that stop it or must not share its notices."""
    with running_redis() as server:
        yield server
