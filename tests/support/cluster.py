"""Several real seatd processes sharing one PostgreSQL and one Redis (scale-out tests).

Each instance is a ``ServerProcess`` with its own port, log file and ``SEATD_INSTANCE_ID``
(``seatd-0``, ``seatd-1``, ...), and a short ``SEATD_LEASE_TTL`` so that a dead or paused owner
loses its events quickly. The owner of an event is whoever holds its Redis lease
(``seatd:{EVENT}:owner`` = instance id).

``ROUTING`` says where clients connect: ``"spread"`` (client ``n`` talks to instance
``n % size``, whatever owns the event: the intended behaviour, which needs cross-instance
forwarding) or ``"owner"`` (every request goes to the instance owning the event; a development
aid while forwarding is not built). Flip it with ``SEATD_TEST_ROUTING=owner``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis

from seatd.adapters.redis import lease_key
from support.server import ServerProcess, base_env

__all__ = ["ROUTING", "Cluster", "Routing"]

Routing = Literal["spread", "owner"]
ROUTING: Routing = "owner" if os.environ.get("SEATD_TEST_ROUTING") == "owner" else "spread"


class Cluster:
    """``size`` seatd processes on the services of ``service_env`` (POSTGRES_*, REDIS_*)."""

    def __init__(
        self,
        service_env: Mapping[str, str],
        log_dir: Path,
        *,
        size: int = 3,
        lease_ttl: float = 2.0,
        routing: Routing = ROUTING,
        **env: str,
    ) -> None:
        self.routing = routing
        self.redis_host = service_env.get("REDIS_HOST", "127.0.0.1")
        self.redis_port = int(service_env["REDIS_PORT"])
        self.ids = [f"seatd-{n}" for n in range(size)]
        self.processes = [
            ServerProcess(
                base_env(
                    service_env,
                    LOG_LEVEL="info",
                    SEATD_INSTANCE_ID=instance_id,
                    SEATD_LEASE_TTL=str(lease_ttl),
                    SEATD_PG_POOL_SIZE="5",
                    **env,
                ),
                log_dir / f"{instance_id}.log",
            )
            for instance_id in self.ids
        ]
        self._stopped: set[int] = set()

    # --- addresses -------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.processes]

    def http_url(self, n: int, path: str) -> str:
        return f"http://127.0.0.1:{self.processes[n].port}{path}"

    def home(self, client: int) -> int:
        """The instance client number ``client`` connects to under ``"spread"`` routing."""
        return client % len(self.processes)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *which: int) -> None:
        """Start the given instances (all by default) in parallel; each waits for /healthz."""
        chosen = which or tuple(range(len(self.processes)))
        await asyncio.gather(*(asyncio.to_thread(self.processes[n].start) for n in chosen))

    def kill(self, n: int) -> None:
        """kill -9: no goodbye, no lease release, nothing flushed."""
        self.sigcont(n)  # a stopped process dies of SIGKILL too; this keeps the bookkeeping
        self.processes[n].kill()

    def sigstop(self, n: int) -> None:
        self._signal(n, signal.SIGSTOP)
        self._stopped.add(n)

    def sigcont(self, n: int) -> None:
        if n in self._stopped:
            self._signal(n, signal.SIGCONT)
            self._stopped.discard(n)

    def alive(self, n: int) -> bool:
        proc = self.processes[n].proc
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        """Kill every instance (tests end with kill -9: quick, and leaves nothing running)."""
        for n in range(len(self.processes)):
            self.kill(n)

    def _signal(self, n: int, sig: signal.Signals) -> None:
        proc = self.processes[n].proc
        assert proc is not None and proc.poll() is None, f"{self.ids[n]} is not running"
        proc.send_signal(sig)

    # --- ownership -------------------------------------------------------------------------

    async def owner(self, event_id: str) -> int | None:
        """The index of the instance holding the event's lease (None: nobody, or Redis down)."""
        client = aioredis.Redis(
            host=self.redis_host, port=self.redis_port, socket_timeout=1, socket_connect_timeout=1
        )
        try:
            value = await client.get(lease_key(event_id))
        except (aioredis.RedisError, OSError):
            return None
        finally:
            await client.aclose()
        if value is None:
            return None
        name = value.decode() if isinstance(value, bytes) else str(value)
        return self.ids.index(name) if name in self.ids else None

    async def wait_owner(
        self, event_id: str, *, other_than: int | None = None, timeout: float = 15
    ) -> int:
        """Wait until an instance (other than ``other_than``) owns the event; its index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owner = await self.owner(event_id)
            if owner is not None and owner != other_than:
                return owner
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no instance{'' if other_than is None else f' but {self.ids[other_than]}'} took "
            f"event {event_id} within {timeout} s (owner now: {await self.owner(event_id)})"
        )

    async def url_for(self, client: int, event_id: str) -> str:
        """Where client number ``client`` sends its next request for ``event_id``."""
        if self.routing == "owner":
            owner = await self.owner(event_id)
            if owner is not None and owner not in self._stopped and self.alive(owner):
                return self.urls[owner]
        return self.urls[self.home(client)]

    # --- observation -----------------------------------------------------------------------

    def readyz(self, n: int) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of instance ``n``'s /readyz (blocking: call via to_thread)."""
        try:
            with urllib.request.urlopen(self.http_url(n, "/readyz"), timeout=3) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read())

    def log(self, n: int) -> str:
        return self.processes[n].log_path.read_text(errors="replace")

    def log_records(self, n: int, event: str | None = None) -> list[dict[str, Any]]:
        """Instance ``n``'s JSON log lines (those named ``event`` only, if given)."""
        records = []
        for line in self.log(n).splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                records.append(record)
        return records

    def logs_tail(self, lines: int = 15, indices: Sequence[int] | None = None) -> str:
        """The last lines of each instance's log (for assertion messages)."""
        parts = []
        for n in indices if indices is not None else range(len(self.processes)):
            tail = "\n".join(self.log(n).splitlines()[-lines:])
            parts.append(f"--- {self.ids[n]} ---\n{tail}")
        return "\n".join(parts)
