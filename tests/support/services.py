"""Throwaway PostgreSQL and Redis servers for the test suite.

Every session gets its own instances on free ports (see seatd.devstack), so tests never touch
the system services on 5432/6379 and never share state with a developer's `make run` stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from seatd.devstack import SYSTEM_PORTS, PostgresServer, RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
INIT_SQL = REPO_ROOT / "init.sql"
TEST_DB = "seatd_test"
TEST_USER = "seatd"
TEST_PASSWORD = "seatd"


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster with init.sql applied as the app role, in database `seatd_test`;
    stopped and deleted on the way out, also when the tests using it failed."""
    server = PostgresServer(
        dbname=TEST_DB, user=TEST_USER, password=TEST_PASSWORD, init_sql=INIT_SQL
    )
    _assert_private(server.port)
    with server:
        yield server


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A fresh redis-server with expiry notifications on and no persistence; stopped on the
    way out."""
    server = RedisServer()
    _assert_private(server.port)
    with server:
        yield server


def service_env(postgres: PostgresServer, redis: RedisServer) -> dict[str, str]:
    """The POSTGRES_* and REDIS_* variables that point the service at the test servers."""
    env = {**postgres.env(), **redis.env()}
    _assert_private(int(env["POSTGRES_PORT"]))
    _assert_private(int(env["REDIS_PORT"]))
    return env


def _assert_private(port: int) -> None:
    assert port not in SYSTEM_PORTS, f"test servers must never use system port {port}"
