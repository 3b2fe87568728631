"""A lean Redis connection for the message bus's per-command traffic.

The bus publishes one message per forwarded command and per answer, and reads as many. Through
redis-py each of those is a pipeline entry (~13 µs to frame, send and read its reply) or a
``PubSub.get_message`` call (~11 µs); here a command is framed with one ``%`` format and every
reply that arrived is parsed by hiredis in one pass (~0.5 µs each). Only what the bus needs is
here: commands in order with their replies (``call``, ``send``), or a subscriber connection
whose every reply goes to one callback (``on_reply``). Commands given in one turn of the event
loop go out in one write, so a burst of publishes wakes Redis once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis

__all__ = ["RespConnection", "RespError", "encode_command", "open_like"]

Reply = Any
_NO_ANSWER = None  # a queue slot for a command whose reply nobody waits for
# Bytes written but not yet taken by Redis beyond which commands are refused: a stopped Redis
# must not make the process buffer every publish until the bus notices (a PING unanswered).
HIGH_WATER = 16 * 1024 * 1024


class RespError(ConnectionError):
    """The connection failed or was closed; what was in flight may or may not have run."""


def encode_command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class RespConnection(asyncio.Protocol):
    """One connection. Without ``on_reply``, each reply resolves its command's future in
    order; with it (a subscriber), every reply, pushed messages included, goes there."""

    def __init__(
        self, on_reply: Callable[[Reply], None] | None = None, *, high_water: int = HIGH_WATER
    ) -> None:
        self._on_reply = on_reply
        self._high_water = high_water
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Reply] | None] = deque()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self._fail(RespError(f"Redis sent something that is not RESP: {error}"))
                return
            if reply is False:
                return
            if self._on_reply is not None:
                self._on_reply(reply)
                continue
            if not self._waiting:  # a reply to nothing we sent: the stream is out of step
                self._fail(RespError(f"unexpected reply from Redis: {reply!r:.80}"))
                return
            answer = self._waiting.popleft()
            if answer is not None and not answer.done():
                answer.set_result(reply)  # a ReplyError is a reply too: the caller decides

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if isinstance(exc, RespError):
            error = exc
        else:
            error = RespError(f"connection to Redis lost: {exc!r}" if exc else "connection closed")
        while self._waiting:
            answer = self._waiting.popleft()
            if answer is not None and not answer.done():
                answer.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    # --- commands --------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def call(self, *args: bytes | str | int) -> asyncio.Future[Reply]:
        """Send a command; the future gets its reply (a ``hiredis.ReplyError`` for an error
        reply) or ``RespError`` if the connection ends first."""
        answer: asyncio.Future[Reply] = self._loop.create_future()
        self._write(encode_command(*args), answer)
        return answer

    def send(self, *args: bytes | str | int) -> None:
        """Send a command whose reply nobody waits for."""
        self._write(encode_command(*args), _NO_ANSWER)

    def _write(self, command: bytes, answer: asyncio.Future[Reply] | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise RespError("not connected to Redis")
        if transport.get_write_buffer_size() + self._out_bytes > self._high_water:
            raise RespError("Redis is not taking what is sent (it may be stopped)")
        if self._on_reply is None:
            self._waiting.append(answer)
        elif answer is not None:
            raise TypeError("a subscriber connection's replies go to on_reply")
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        self._out_bytes += len(command)

    def _flush(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if self._transport is not None and out:
            self._transport.write(b"".join(out))

    def close(self) -> None:
        """Drop the connection now, unsent data too, and fail every command still waiting:
        a graceful close would wait for Redis to take the buffer, which a stopped Redis
        never does, and leave its callers waiting with it."""
        self._fail(RespError("connection to Redis closed"))

    def _fail(self, error: Exception) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()  # its connection_lost comes later and finds nothing waiting
        self.connection_lost(error)


async def open_like(
    client: Redis,
    on_reply: Callable[[Reply], None] | None = None,
    *,
    high_water: int = HIGH_WATER,
) -> RespConnection:
    """A connection to the server ``client`` uses, authenticated as it is (its database does
    not matter: the bus only publishes and subscribes, and channels span databases)."""
    kwargs = client.connection_pool.connection_kwargs
    loop = asyncio.get_running_loop()
    timeout = kwargs.get("socket_connect_timeout") or 5.0
    connecting = RespConnection(high_water=high_water)  # plain replies until authenticated
    async with asyncio.timeout(timeout):
        if kwargs.get("path"):
            await loop.create_unix_connection(lambda: connecting, kwargs["path"])
        else:
            await loop.create_connection(
                lambda: connecting, kwargs.get("host", "localhost"), kwargs.get("port", 6379)
            )
        try:
            password, username = kwargs.get("password"), kwargs.get("username")
            if password:
                auth = ("AUTH", username, password) if username else ("AUTH", password)
                reply = await connecting.call(*auth)
                if isinstance(reply, hiredis.ReplyError):
                    raise RespError(f"Redis refused the password: {reply}")
        except BaseException:
            connecting.close()
            raise
    connecting._on_reply = on_reply
    return connecting
