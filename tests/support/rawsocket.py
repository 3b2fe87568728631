"""A WebSocket client that controls every byte: a real handshake over a plain TCP socket, then
frames written exactly as built (any split across writes, any flag, masked or not) and the
server's frames read one at a time, pings included (nothing is answered automatically).

For tests of how the server reads frames; everyday tests use ``support.client``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import struct
from typing import Any

import orjson
from websockets.speedups import apply_mask

from support.server import token as make_token

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
MASK = b"\x5a\xc3\x17\xe9"


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    flags: int = 0,
    mask: bytes | None = MASK,
) -> bytes:
    """One client frame (RFC 6455 5.2), masked with ``mask`` unless it is None."""
    n = len(payload)
    first = (0x80 if fin else 0) | flags | opcode
    masked = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", first, masked | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, masked | 126, n)
    else:
        head = struct.pack("!BBQ", first, masked | 127, n)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def request(request_id: Any, request_type: str = "ping", **fields: Any) -> bytes:
    """A request as one masked text frame."""
    return frame(TEXT, orjson.dumps({"id": request_id, "type": request_type, **fields}))


class RawSocket:
    """One connection; ``welcome`` is the server's first message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls, port: int, user: str, *, handshake_writes: tuple[int, ...] = (), then: bytes = b""
    ) -> RawSocket:
        """Open a session for ``user``. The handshake request is written cut at the offsets
        in ``handshake_writes`` (negative: from its end; one write by default), and ``then``
        is written with its last piece, before the server's response."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET /?token={make_token(user)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: seatd.v1\r\n"
            "\r\n"
        ).encode()
        cuts = [0, *sorted(cut % len(handshake) for cut in handshake_writes)]
        for start, end in itertools.pairwise(cuts):
            writer.write(handshake[start:end])
            await settle()
        writer.write(handshake[cuts[-1] :] + then)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert response.startswith(b"HTTP/1.1 101 "), response
        raw = cls(reader, writer)
        raw.welcome = await raw.message()
        assert raw.welcome["type"] == "welcome", raw.welcome
        return raw

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """The server's next frame: (opcode, payload)."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            assert first & 0xF0 == 0x80, f"server frame with FIN/RSV bits {first:#x}"
            assert not second & 0x80, "masked server frame"
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(n)

    async def message(self, timeout: float = 5) -> dict[str, Any]:
        """The server's next message (its keep-alive pings are skipped)."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == PING:
                continue
            assert opcode == TEXT, (opcode, payload)
            message: dict[str, Any] = orjson.loads(payload)
            return message

    async def answers(self, count: int) -> list[tuple[Any, str]]:
        """The next ``count`` replies as (id, "ok" or the error code), in arrival order."""
        seen: list[tuple[Any, str]] = []
        while len(seen) < count:
            reply = await self.message()
            seen.append((reply["id"], "ok" if reply["ok"] else reply["error"]["code"]))
        return seen

    async def close_code(self) -> int:
        """Read on to the server's close frame, failing on any message before it: its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return int(code)
            assert opcode == PING, f"a frame before the close: {opcode:#x} {payload[:200]!r}"

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def settle() -> None:
    """Give the server (in this process) time to read what was just written, on its own."""
    await asyncio.sleep(0.005)
