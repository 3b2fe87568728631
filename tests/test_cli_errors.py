"""The ``seatd`` command says in one line what is wrong with its environment, and exits 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seatd.devstack import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "cli-test-secret-0123456789abcdef-0123456789"


def _seatd(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "REDIS_", "SEATD_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "seatd", *args],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_init_db_without_a_database_is_one_line_and_exit_1() -> None:
    port = free_port()  # nothing listens there
    done = _seatd("init-db", env={"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port)})
    assert done.returncode == 1
    assert done.stderr.startswith("seatd init-db: cannot reach PostgreSQL at 127.0.0.1:"), (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_on_a_port_in_use_exits_1_and_says_so(service_env: dict[str, str]) -> None:
    """It used to hang for ever: its Redis loops had started and swallowed the cancellation."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **service_env,
            "SEATD_JWT_SECRET": SECRET,
            "SEATD_HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
        }
        done = _seatd("serve", env=env, timeout=60)
    assert done.returncode == 1
    assert "seatd serve: " in done.stderr and "address already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_token_for_an_empty_subject_is_refused() -> None:
    done = _seatd("token", "--sub", "", env={"SEATD_JWT_SECRET": SECRET})
    assert done.returncode == 2
    assert "sub must be 1 to 128 printable characters" in done.stderr


def test_sigterm_while_waiting_for_postgres_stops_at_once() -> None:
    """Start-up waits up to SEATD_STARTUP_TIMEOUT for PostgreSQL; a stop must not wait too."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "SEATD_"))},
        "SEATD_JWT_SECRET": SECRET,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(free_port()),  # nothing listens there
        "SEATD_STARTUP_TIMEOUT": "60",
        "PORT": str(free_port()),
        "LOG_FORMAT": "json",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "seatd", "serve"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # the first retry: it is waiting now
                if "waiting_for_postgres" in line:
                    break
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            assert time.monotonic() - started < 5
            assert code == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rows", "0"], "rows: must have at least 1 item"),
        (["--seats-per-row", "0"], "seats_per_row: must be >= 1"),
        (["--event-id", "bad/id"], "$.event_id: must match"),
        (["--sections", "floor,floor"], "seat ids must be unique"),
        (["--rows", "400", "--seats-per-row", "1000"], "an event has at most"),
    ],
)
def test_create_event_with_a_bad_layout_is_one_line_and_exit_2(
    options: list[str], message: str
) -> None:
    """A layout the server would refuse is the user's mistake: refused before any connection
    (nothing listens at POSTGRES_PORT), in one line naming the problem, without a traceback."""
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(free_port())}
    done = _seatd("create-event", *options, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("seatd create-event: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf"])
def test_a_token_that_could_never_be_used_is_refused(ttl: str) -> None:
    """--ttl must give a token a future expiry: an expired one, or a crash, helps nobody."""
    done = _seatd("token", "--sub", "alice", "--ttl", ttl, env={"SEATD_JWT_SECRET": SECRET})
    assert done.returncode == 2, done.stderr
    assert "--ttl" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
