"""A deliberately plain test client: raw frames in, raw frames out, no SDK magic.

Tests read exactly what the server sent, so they check the protocol as PROTOCOL.md states it.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection, connect

from support.server import token

_ids = itertools.count(1)


class RawClient:
    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.pushes: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        data = orjson.dumps(frame).decode() if isinstance(frame, dict) else frame
        if RECORDERS:
            _record("sent", data)
        await self.ws.send(data)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if RECORDERS:
            _record("received", raw)
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    async def reply_to(self, request_id: Any, timeout: float = 10) -> dict[str, Any]:
        """The reply with this id; pushes that arrive first are kept in ``pushes``."""
        while True:
            frame = await self.recv(timeout)
            if "id" in frame and frame["id"] == request_id:
                return frame
            self.pushes.append(frame)

    async def request(self, request_type: str, **fields: Any) -> dict[str, Any]:
        request_id = fields.pop("id", None) or next(_ids)
        await self.send({"id": request_id, "type": request_type, **fields})
        return await self.reply_to(request_id)

    async def ok(self, request_type: str, **fields: Any) -> dict[str, Any]:
        """The result of a request that must succeed."""
        reply = await self.request(request_type, **fields)
        assert reply.get("ok") is True, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def error(self, request_type: str, **fields: Any) -> dict[str, Any]:
        """The error object of a request that must fail."""
        reply = await self.request(request_type, **fields)
        assert reply.get("ok") is False, reply
        error: dict[str, Any] = reply["error"]
        return error


@asynccontextmanager
async def client(
    url: str, sub: str = "alice", role: str = "user", ttl_s: float = 3600, **connect_kwargs: Any
) -> AsyncIterator[RawClient]:
    async with connect(
        f"{url}?token={token(sub, role, ttl_s=ttl_s)}",  # type: ignore[arg-type]
        subprotocols=["seatd.v1"],  # type: ignore[list-item]
        open_timeout=10,
        **connect_kwargs,
    ) as ws:
        raw_welcome = await asyncio.wait_for(ws.recv(), 10)
        if RECORDERS:
            _record("received", raw_welcome)
        welcome = orjson.loads(raw_welcome)
        assert welcome["type"] == "welcome", welcome
        yield RawClient(ws, welcome)


def send_at_once(ws: ClientConnection, frames: list[dict[str, Any]]) -> None:
    """Send the frames in one write, so the server reads them together."""
    for frame in frames:
        ws.protocol.send_text(orjson.dumps(frame))
    ws.transport.write(b"".join(ws.protocol.data_to_send()))


def new_event_id(prefix: str = "ev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_event(
    admin: RawClient,
    *,
    seats: int = 10,
    rows: int = 1,
    hold_duration_s: int | None = None,
    max_seats_per_user: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An event with ``rows`` x ``seats`` seats labelled 'A-1', 'A-2', ... (row letters)."""
    event_id = fields.pop("event_id", None) or new_event_id()
    request: dict[str, Any] = {
        "event_id": event_id,
        "name": fields.pop("name", "Test event"),
        "blocks": [{"rows": [chr(65 + r) for r in range(rows)], "seats_per_row": seats}],
        **fields,
    }
    if hold_duration_s is not None:
        request["hold_duration_s"] = hold_duration_s
    if max_seats_per_user is not None:
        request["max_seats_per_user"] = max_seats_per_user
    return await admin.ok("create_event", **request)


# --- traffic recording (opt-in) -------------------------------------------------------------
# Tests that check whole frames (e.g. against the JSON Schema) see every frame a RawClient
# sends or receives, raw, exactly as on the wire. Off by default: with no recorder registered
# the cost is one truthiness check per frame.

Direction = Literal["sent", "received"]
Recorder = Callable[[Direction, str | bytes], None]
RECORDERS: list[Recorder] = []


def _record(direction: Direction, data: str | bytes) -> None:
    for recorder in RECORDERS:
        recorder(direction, data)


@contextmanager
def recording() -> Iterator[list[tuple[Direction, str | bytes]]]:
    """Collect ``(direction, raw frame)`` of every RawClient frame while the block runs."""
    frames: list[tuple[Direction, str | bytes]] = []

    def recorder(direction: Direction, data: str | bytes) -> None:
        frames.append((direction, data))

    RECORDERS.append(recorder)
    try:
        yield frames
    finally:
        RECORDERS.remove(recorder)
