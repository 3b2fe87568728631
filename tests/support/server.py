"""seatd under test: in this process (fast, most tests) or as a real child process (kill tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from seatd.app import App
from seatd.auth import Role, TokenAuthority
from seatd.config import Settings
from seatd.devstack import free_port
from seatd.gateway.connection import Connection
from support.waiting import until

SECRET = "test-secret-0123456789abcdef-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


# SEATD_MAX_INFLIGHT of the e2e tests' "narrow" server (tests/e2e/conftest.py).
NARROW_INFLIGHT = 3


def base_env(service_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """Settings for a test server: the test services, quiet logs, a known secret."""
    env = {
        **service_env,
        "SEATD_JWT_SECRET": SECRET,
        "PORT": "0",
        "SEATD_HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        "SEATD_SHUTDOWN_TIMEOUT": "5",
    }
    env.update(overrides)
    return env


def token(sub: str, role: Role = "user", ttl_s: float = 3600) -> str:
    return TokenAuthority(SECRET).mint(sub, role, ttl_s=ttl_s)


@dataclass
class RunningServer:
    port: int
    app: App | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def session(self, user_id: str) -> Connection:
        """The server side of the one open connection of ``user_id`` (once authenticated)."""
        assert self.app is not None
        connections = self.app.gateway.connections

        def found() -> list[Connection]:
            return [
                c
                for c in connections
                if getattr(c, "identity", None) and c.identity.user_id == user_id
            ]

        await until(lambda: len(found()) == 1, what=f"the session of {user_id}")
        return found()[0]


@contextlib.asynccontextmanager
async def in_process_server(env: Mapping[str, str]) -> AsyncIterator[RunningServer]:
    """An App in the current event loop; stopped (gracefully) on exit."""
    app = App(Settings.from_env(env))
    task = asyncio.get_running_loop().create_task(app.run())
    started = asyncio.get_running_loop().create_task(app.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # raises the start-up error
    assert started in done, "server did not start within 30 s"
    try:
        yield RunningServer(app.gateway.port, app)
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)


class ServerProcess:
    """``python -m seatd serve`` as a child process, for restarts and kill -9."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seatd", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"seatd exited with {self.proc.returncode}:\n{log_tail}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"seatd did not start:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
