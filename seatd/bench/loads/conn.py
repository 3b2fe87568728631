"""What every load's connections share: connecting, the shared start, closing.

Why it looks like this: the load generator shares two cores with seatd, PostgreSQL and Redis,
so every byte of CPU it burns is taken from the system under test. Each connection is a
small object whose ``on_message`` callback is called straight from the WebSocket parser; a
request's follow-up (a ``reserve`` after a ``hold``) is sent from that callback, with no task
per request. Request frames are assembled from pre-encoded pieces (``layout.Frames``), replies
are parsed with orjson, and the availability pushes of the fan-out scenario, the bulk of its
traffic, are not parsed at all: the version is cut out of the bytes.

Every load: connect its share of connections, send "ready", wait for "go" (a wall-clock start
time shared by all workers), run, and return a picklable dict of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from seatd.bench.workers import Control, WorkerSpec
from seatd.bench.wsclient import Link, connect

_perf = time.perf_counter
_wall = time.time

HOLD, RESERVE, RELEASE, GET = 0, 1, 2, 3
TEMPORARY = frozenset({"overloaded", "unavailable", "shutting_down", "internal_error"})
# Errors after which the change may or may not have been applied (PROTOCOL.md, Retrying).
AMBIGUOUS = frozenset({"unavailable", "internal_error"})
DRAIN_TIMEOUT_S = 15.0
AVAILABILITY = b'{"type":"availability"'


# --- connections ----------------------------------------------------------------------------


class Conn:
    """One client connection; subclasses handle the frames after the welcome."""

    __slots__ = (
        "close_code",
        "closed",
        "instance",
        "link",
        "next_id",
        "pending",
        "user",
        "welcome",
    )

    def __init__(self, user: str) -> None:
        self.user = user
        self.instance = 0  # which seatd instance it is connected to (several: --instances)
        self.link: Link | None = None
        self.welcome: asyncio.Future[None] | None = None
        self.closed = False
        self.close_code: int | None = None
        self.next_id = 1
        self.pending: dict[int, tuple[Any, ...]] = {}

    def on_message(self, data: bytes) -> None:
        welcome = self.welcome
        if welcome is not None and not welcome.done():
            welcome.set_result(None)
            return
        self.on_frame(data)

    def on_frame(self, data: bytes) -> None:
        """A frame after the welcome."""

    def on_close(self, code: int | None) -> None:
        self.closed = True
        self.close_code = code
        if self.welcome is not None and not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before the welcome ({code})"))
            self.welcome.exception()
        self.on_lost()

    def on_lost(self) -> None:
        """The connection closed: settle what was pending on it."""

    def send(self, frame: bytes) -> None:
        assert self.link is not None
        self.link.send(frame)

    def take_id(self) -> int:
        rid = self.next_id
        self.next_id = rid + 1
        return rid


def keyed(params: dict[str, Any]) -> bool:
    """Whether mutations carry an idempotency_key (``--no-retry-keys`` turns it off)."""
    return bool(params.get("retry_keys", True))


def assign_targets(spec: WorkerSpec, conns: list[Any]) -> list[str]:
    """The URL of each connection; sets each one's ``instance``.

    ``targets`` (several instances): ``[(url, instance index), ...]``, dealt round-robin by the
    connection's run-wide number (``conn_offset`` + its position), like a load balancer would;
    without it every connection goes to ``spec.url``.
    """
    targets: list[tuple[str, int]] = spec.params.get("targets") or [(spec.url, 0)]
    offset = int(spec.params.get("conn_offset", 0))
    urls = []
    for position, conn in enumerate(conns):
        url, instance = targets[(offset + position) % len(targets)]
        conn.instance = instance
        urls.append(url)
    return urls


async def connect_all(
    spec: WorkerSpec, conns: list[Any], control: Control, concurrency: int = 48
) -> None:
    """Open every connection (bounded concurrency, a few retries) and wait for each welcome."""
    from seatd.auth import TokenAuthority

    authority = TokenAuthority(spec.secret)
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    urls = assign_targets(spec, conns)

    async def one(conn: Conn, url: str) -> None:
        token = authority.mint(conn.user, "user", ttl_s=86400)
        error: BaseException | None = None
        async with gate:
            for attempt in range(6):
                conn.welcome = loop.create_future()
                conn.closed = False
                try:
                    conn.link = await connect(
                        url, token, conn.on_message, conn.on_close, client=spec.client
                    )
                    await asyncio.wait_for(asyncio.shield(conn.welcome), 15)
                except Exception as exc:
                    error = exc
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                control.progress(1)
                return
        raise ConnectionError(f"could not connect {conn.user} to {url}: {error!r}")

    await asyncio.gather(*(one(c, u) for c, u in zip(conns, urls, strict=True)))


async def close_all(conns: list[Any]) -> None:
    async def one(conn: Conn) -> None:
        if conn.link is not None and not conn.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.link.close(), 5)

    await asyncio.gather(*(one(c) for c in conns))


async def start_clock(control: Control) -> tuple[float, float, dict[str, Any]]:
    """Wait for "go"; return (t0 on the perf clock, t0 wall, the go payload) at the start."""
    go: dict[str, Any] = await control.recv("go")
    t0_wall = float(go["t0"])
    delay = t0_wall - _wall()
    if delay > 0:
        await asyncio.sleep(delay)
    return _perf() + (t0_wall - _wall()), t0_wall, go


def close_codes(conns: list[Any]) -> dict[str, int]:
    return dict(Counter(str(c.close_code) for c in conns if c.closed))


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = _perf() + timeout
    while not predicate():
        if _perf() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def error_code(msg: dict[str, Any]) -> str:
    error = msg.get("error")
    return str(error.get("code", "unknown")) if isinstance(error, dict) else "unknown"
