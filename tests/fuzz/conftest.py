"""Fixtures of the protocol fuzz tests: settings from the environment, seatd child processes,
and a summary of each fuzz run in a "fuzz" section at the end of the pytest output.

Settings (``make test`` uses the defaults; ``make fuzz`` raises them):

- ``SEATD_FUZZ_FRAMES``: frames the protocol fuzz run sends (default 100,000);
- ``SEATD_FUZZ_SECONDS``: the most seconds it may take to send them (default 60; stopped
  earlier, the run fails);
- ``SEATD_FUZZ_SEED``: replays a run (each result prints its seed);
- ``SEATD_FUZZ_CORPUS``: templates Hypothesis draws per round (default 1,200);
- ``SEATD_FUZZ_ROUNDS``: rounds, each with a corpus of its own (default 1);
- ``SEATD_FUZZ_CONNECTIONS``: fuzzing connections (default 6);
- ``SEATD_FUZZ_ABUSE_SECONDS``: how long the history test abuses its event (default 8).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz.harness import FuzzSettings, ServerUnderFuzz, fuzz_env
from support.server import ServerProcess
from support.services import running_postgres, running_redis
from support.services import service_env as build_service_env

from seatd.devstack import PostgresServer

_REPORTS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def fuzz_settings() -> FuzzSettings:
    return FuzzSettings.from_env()


@pytest.fixture(scope="session")
def fuzz_postgres() -> Iterator[PostgresServer]:
    """The fuzz servers' own PostgreSQL. The oracles judge a lone server, and the suite's
    shared services are not alone: the in-process server of tests/e2e lives for the whole
    session and runs whenever an async test does. Were it to load a fuzz event (its overdue
    sweep loads any event with holds nobody times), a fuzz server would rightly answer
    ``unavailable`` for it, which the oracles count as a violation."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def fuzz_service_env(fuzz_postgres: PostgresServer) -> Iterator[dict[str, str]]:
    """POSTGRES_* and REDIS_* of the fuzz servers' own PostgreSQL and Redis."""
    with running_redis() as redis:
        yield build_service_env(fuzz_postgres, redis)


@pytest.fixture
def fuzz_server(fuzz_service_env: dict[str, str], tmp_path: Path) -> Iterator[ServerUnderFuzz]:
    """``seatd serve`` as a child process (a crash is an exit code, and it runs on its own
    core), logging JSON at warning level to a file the test reads."""
    with _server(fuzz_env(fuzz_service_env), tmp_path / "seatd.log") as server:
        yield server


@pytest.fixture
def abuse_server(fuzz_service_env: dict[str, str], tmp_path: Path) -> Iterator[ServerUnderFuzz]:
    """Like ``fuzz_server``, with a per-user limit of 4 seats per event (the history test)."""
    env = fuzz_env(fuzz_service_env, MAX_SEATS_PER_USER="4")
    with _server(env, tmp_path / "seatd.log") as server:
        yield server


@contextlib.contextmanager
def _server(env: dict[str, str], log_path: Path) -> Iterator[ServerUnderFuzz]:
    process = ServerProcess(env, log_path)
    process.start()
    try:
        yield ServerUnderFuzz(process, log_path)
    finally:
        if process.proc is not None and process.proc.poll() is None:
            try:
                process.terminate(timeout=15)
            except Exception:
                process.kill()


@pytest.fixture
def fuzz_report(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines to show in the "fuzz" section at the end of the run (whatever the outcome)."""
    lines: list[str] = []
    yield lines
    if lines:
        reports = request.config.stash.setdefault(_REPORTS, [])
        reports.append(f"{request.node.nodeid}\n" + "\n".join(lines))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = terminalreporter.config.stash.get(_REPORTS, [])
    if reports:
        terminalreporter.section("fuzz")
        for report in reports:
            terminalreporter.write_line(report)
