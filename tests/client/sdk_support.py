"""Helpers of the SDK tests, above all a scripted seatd.v1 server: the test reads each request
and decides the answer, for the client behaviours a real server will not produce on demand
(temporary errors, gaps in the availability stream, terminal close codes, a 401 on reconnect).
"""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol.client import Backoff

# Reconnect fast in tests: at most 50 ms between attempts.
FAST = Backoff(base=0.01, cap=0.05)

WELCOME = {
    "type": "welcome",
    "protocol": "seatd.v1",
    "user_id": "fake-user",
    "role": "user",
    "server_time": "2026-01-01T00:00:00.000Z",
    "max_frame_bytes": 65536,
    "max_inflight": 256,
    "max_seats_per_hold": 100,
}


@dataclass
class Received:
    conn: ServerConnection
    frame: dict[str, Any]

    @property
    def type(self) -> str:
        value: str = self.frame["type"]
        return value

    async def ok(self, result: dict[str, Any]) -> None:
        reply = {"id": self.frame["id"], "type": self.type, "ok": True, "result": result}
        await self.conn.send(orjson.dumps(reply).decode())

    async def error(
        self, code: str, *, temporary: bool, retry_after_ms: int | None = None, **details: Any
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": code, "temporary": temporary}
        if retry_after_ms is not None:
            error["retry_after_ms"] = retry_after_ms
        if details:
            error["details"] = details
        reply = {"id": self.frame["id"], "type": self.type, "ok": False, "error": error}
        await self.conn.send(orjson.dumps(reply).decode())


@dataclass
class FakeSeatd:
    requests: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    connections: list[ServerConnection] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    refuse_with: http.HTTPStatus | None = None  # answer handshakes with this status
    retry_after: str | None = None  # ...and this Retry-After header
    welcome: dict[str, Any] = field(default_factory=dict)  # overrides for the next welcomes
    handshakes: list[float] = field(default_factory=list)  # when each arrived (monotonic)
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def next(self, timeout: float = 5) -> Received:
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def push(self, conn: ServerConnection, push_type: str, **fields: Any) -> None:
        await conn.send(orjson.dumps({"type": push_type, **fields}).decode())

    async def wait_connections(self, count: int, timeout: float = 5) -> ServerConnection:
        await until(lambda: len(self.connections) >= count, timeout)
        return self.connections[count - 1]

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        self.tokens.append(request.headers.get("Authorization", ""))
        self.handshakes.append(time.monotonic())
        if self.refuse_with is not None:
            response = conn.respond(
                self.refuse_with, '{"error":"unauthenticated","message":"no"}\n'
            )
            if self.retry_after is not None:
                response.headers["Retry-After"] = self.retry_after
            return response
        return None

    async def _serve(self, conn: ServerConnection) -> None:
        self.connections.append(conn)
        session_id = f"s{len(self.connections)}"
        welcome = {**WELCOME, "session_id": session_id, **self.welcome}
        await conn.send(orjson.dumps(welcome).decode())
        try:
            async for data in conn:
                self.requests.put_nowait(Received(conn, orjson.loads(data)))
        except ConnectionClosed:
            pass


@asynccontextmanager
async def fake_seatd() -> AsyncIterator[FakeSeatd]:
    fake = FakeSeatd()
    async with serve(
        fake._serve, "127.0.0.1", 0, process_request=fake._check, compression=None
    ) as server:
        fake.server = server
        yield fake


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll ``condition`` until it holds (TimeoutError after ``timeout`` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the condition did not come true in time")
        await asyncio.sleep(0.005)
