"""The system under test: throwaway PostgreSQL + Redis, and seatd as a child process.

Why a child process (``python -m seatd serve``) and not an in-process server: the bench must
measure the server as it runs in production, on its own interpreter and event loop, and read
its CPU and memory from the outside (psutil) without the load generator's mixed in.
PostgreSQL is started durable (fsync on), like production, so commit costs are real: group
commit only pays off when a commit costs something. And like a production server that has run a
while, it has WAL segments ready for reuse (``--fresh-wal``: without), so no commit waits for a
new WAL file to be made, which only a brand-new cluster does at every segment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchError",
    "ProcessMeter",
    "SeatdProcess",
    "Services",
    "find_init_sql",
    "listener_pid",
    "new_secret",
    "run_queue_wait",
    "summarize_log",
]

# Settings the bench decides; inherited values would make runs irreproducible.
_INHERITED_PREFIXES = ("SEATD_", "POSTGRES_", "REDIS_", "LOG_")
_INHERITED_NAMES = frozenset(
    {"PORT", "DEFAULT_HOLD_DURATION", "MAX_SEATS_PER_USER", "MAX_HOLD_LIFETIME"}
)


class BenchError(RuntimeError):
    """The bench cannot run (missing tool, server that does not start, bad options)."""


def new_secret() -> str:
    """A random JWT secret of 64 characters (seatd needs at least 32 bytes)."""
    return secrets.token_hex(32)


def find_init_sql() -> Path:
    """The schema file: the checkout's init.sql, or the copy packaged with seatd."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "init.sql", here / "sql" / "init.sql"):
        if candidate.is_file():
            return candidate
    raise BenchError("init.sql not found next to the seatd package")


@dataclass
class Services:
    """PostgreSQL and Redis: started here (``own``) or named by POSTGRES_*/REDIS_* (``env``)."""

    postgres_env: dict[str, str]
    redis_env: dict[str, str]
    mode: str
    _stoppers: list[Any] = field(default_factory=list)

    @classmethod
    def start_own(cls, wal_ready_mb: int = 0) -> Services:
        """Throwaway PostgreSQL (durable) and Redis; ``wal_ready_mb`` of WAL ready for reuse."""
        from seatd.devstack import DevstackError, PostgresServer, RedisServer

        pg = PostgresServer(
            dbname="seatd",
            user="seatd",
            password="seatd",
            init_sql=find_init_sql(),
            durable=True,
            wal_ready_mb=wal_ready_mb,
        )
        redis = RedisServer()
        services = cls(postgres_env={}, redis_env={}, mode="own")
        try:
            pg.start()
            services._stoppers.append(pg)
            redis.start()
            services._stoppers.append(redis)
        except DevstackError as error:
            services.stop()
            raise BenchError(f"cannot start the throwaway services: {error}") from error
        services.postgres_env = pg.env()
        services.redis_env = redis.env()
        return services

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Services:
        pg = {k: v for k, v in env.items() if k.startswith("POSTGRES_")}
        redis = {k: v for k, v in env.items() if k.startswith("REDIS_")}
        if "POSTGRES_PORT" not in pg or "REDIS_PORT" not in redis:
            raise BenchError(
                "--use-services needs POSTGRES_* and REDIS_* in the environment "
                '(e.g. eval "$(python -m seatd.devstack env)")'
            )
        return cls(postgres_env=pg, redis_env=redis, mode="env")

    @property
    def postgres_port(self) -> int | None:
        port = self.postgres_env.get("POSTGRES_PORT")
        return int(port) if port else None

    @property
    def redis_port(self) -> int | None:
        port = self.redis_env.get("REDIS_PORT")
        return int(port) if port else None

    def stop(self) -> None:
        while self._stoppers:
            with contextlib.suppress(Exception):
                self._stoppers.pop().stop()


class SeatdProcess:
    """``python -m seatd serve`` on a free port, with its log in a temporary file."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from seatd.devstack import free_port

        self.port = free_port()
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES
        }
        self.env = {
            **base,
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
            "SEATD_HOST": "127.0.0.1",
            "SEATD_SHUTDOWN_TIMEOUT": "5",
            "SEATD_INSTANCE_ID": f"bench-{self.port}",
            # The load generator is one address opening up to 10,000 connections and pipelining
            # as fast as the server answers: the per-client limits would only measure themselves.
            "SEATD_MAX_CONNECTIONS_PER_ADDRESS": "0",
            "SEATD_MAX_CONNECTIONS": "0",
            "SEATD_RATE_PER_CONNECTION": "0",
            "SEATD_RATE_PER_USER": "0",
            **env,
            "PORT": str(self.port),
        }
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="seatd-bench-server-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.final_log = ""  # the whole log, kept by stop() before the file is deleted

    @property
    def instance_id(self) -> str:
        return self.env["SEATD_INSTANCE_ID"]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seatd", "serve"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail, code = self.log_tail(), self.proc.returncode
                self.stop()  # deletes the log: its tail is in the error
                raise BenchError(f"seatd exited with {code}:\n{tail}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/readyz", timeout=2
                ) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise BenchError(f"seatd did not become ready within {timeout:.0f}s:\n{tail}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def problems(self) -> list[str]:
        """Error lines the server logged (it logs at warning level and above)."""
        lines = Path(self._log.name).read_text(errors="replace").splitlines()
        return [line for line in lines if '"level": "error"' in line or '"level":"error"' in line]

    def stop(self, timeout: float = 20.0) -> int | None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``); deletes the log."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
            self.proc = None
        self._log.close()
        with contextlib.suppress(OSError):
            self.final_log = Path(self._log.name).read_text(errors="replace")
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)
        return code


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on this TCP port, if it can be seen."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return int(conn.pid) if conn.pid is not None else None
    return None


class ProcessMeter:
    """CPU time and resident memory of a process (and optionally its children) over a window,
    and how long it was ready to run but waited for a core (Linux: ``/proc/PID/schedstat``).

    CPU is reported as percent of one core over the window, so 150% means one and a half of
    the machine's cores were busy with this process. The wait says what the machine's sharing
    costs it: on 2 cores with PostgreSQL, Redis and the load generator beside it, a server can
    spend a fifth of the window ready and unable to run, which latency shows and CPU does not.
    """

    def __init__(self, pid: int, *, children: bool = False, label: str = "") -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        self.label = label
        self._proc = psutil.Process(pid)
        self._children = children
        self._cpu0: dict[int, float] = {}
        self._wait0: dict[int, float] = {}
        self._t0 = 0.0
        self.cpu_s = 0.0
        self.wait_s: float | None = None  # None where the kernel does not say
        self.wall_s = 0.0
        self.rss_peak = 0
        self.rss_end = 0  # at stop()

    def _times(self) -> tuple[dict[int, float], dict[int, float] | None]:
        """CPU seconds by pid, and seconds spent waiting for a core by pid (None if unknown)."""
        import psutil  # type: ignore[import-untyped,unused-ignore]

        cpu: dict[int, float] = {}
        waits: dict[int, float] = {}
        procs = [self._proc]
        if self._children:
            with contextlib.suppress(psutil.Error):
                procs += self._proc.children(recursive=True)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
                # A child may be gone by now (a PostgreSQL backend, say): only the measured
                # process itself saying nothing means the kernel does not tell.
                if (wait := run_queue_wait(proc.pid)) is not None:
                    waits[proc.pid] = wait
        return cpu, waits if self._proc.pid in waits else None

    def rss(self) -> int:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        try:
            return int(self._proc.memory_info().rss)
        except psutil.Error:
            return 0

    def start(self) -> None:
        self._cpu0, waits = self._times()
        self._wait0 = waits or {}
        self._t0 = time.monotonic()
        self.rss_peak = self.rss()

    def sample(self) -> None:
        self.rss_peak = max(self.rss_peak, self.rss())

    def stop(self) -> None:
        cpu1, wait1 = self._times()
        self.wall_s = time.monotonic() - self._t0
        self.cpu_s = sum(max(0.0, t - self._cpu0.get(pid, 0.0)) for pid, t in cpu1.items())
        self.wait_s = None
        if wait1 is not None:
            self.wait_s = sum(max(0.0, t - self._wait0.get(pid, 0.0)) for pid, t in wait1.items())
        self.rss_end = self.rss()
        self.rss_peak = max(self.rss_peak, self.rss_end)

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def wait_percent(self) -> float | None:
        """Time spent ready to run but waiting for a core, as percent of the window."""
        if self.wait_s is None or self.wall_s <= 0:
            return None
        return 100.0 * self.wait_s / self.wall_s


def run_queue_wait(pid: int) -> float | None:
    """Seconds the process's main thread has spent ready to run, waiting for a core (the
    second field of ``/proc/PID/schedstat``); None where there is no such file."""
    try:
        with open(f"/proc/{pid}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def summarize_log(text: str, examples: int = 10) -> dict[str, Any]:
    """What a seatd log says at warning level and above: ``counts`` of ``level:event`` (JSON
    lines) and of ``unstructured`` lines (libraries, tracebacks), and the first line of each
    (``examples``, for the first few kinds)."""
    import json

    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key = "unstructured"
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            level = str(record.get("level", "?"))
            if level not in ("warning", "error", "critical"):
                continue
            key = f"{level}:{record.get('event', '?')}"
        if key not in counts and len(shown) < examples:
            shown[key] = line[:400]
        counts[key] = counts.get(key, 0) + 1
    return {"counts": counts, "examples": shown}
