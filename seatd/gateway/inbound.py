"""A WebSocket server connection that hands each inbound message straight to a callback.

websockets queues every message for ``recv()`` and wakes the task reading it: a future, a
queue and a task step per request, about a tenth of the server's CPU in a closed-loop run
(BENCHMARKS.md). A ``MessageConnection`` assembles messages itself, in the protocol's own
callback, and calls the sink the connection's session installed, in that session's context
(its log bindings). Until a sink is installed (the first message may have to authenticate the
session) messages wait in a short queue read by ``first_message``.

Ping, pong and close frames are still websockets' own business; only data frames change path.
Every frame's arrival is noted (``last_seen``) for the gateway's keep-alive (keepalive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

__all__ = ["Message", "MessageConnection", "text_frame_header"]

Message = str | bytes
# Messages queued before a sink is installed beyond which the socket stops being read.
_EARLY_LIMIT = 16
# A message split into more frames than this is refused (as websockets' own reader does).
_MAX_FRAGMENTS = 1024
_FIN_TEXT = 0x81
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def text_frame_header(length: int) -> bytes:
    """The header of a server's (unmasked) final text frame carrying ``length`` bytes
    (RFC 6455, section 5.2)."""
    if length < 126:
        return bytes((_FIN_TEXT, length))
    if length < 1 << 16:
        return _LENGTH_16.pack(_FIN_TEXT, 126, length)
    return _LENGTH_64.pack(_FIN_TEXT, 127, length)


class MessageConnection(ServerConnection):
    """``ServerConnection`` whose data messages go to ``deliver_to``'s sink, in order."""

    # Slots, not more keys in the instance's dict: a bigger dict per connection, ~1 KiB.
    __slots__ = (
        "_early",
        "_early_paused",
        "_early_waiter",
        "_fragments",
        "_fragments_text",
        "_session_paused",
        "_sink",
        "_sink_context",
        "last_seen",
        "ping_sent",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # For the gateway's keep-alive (keepalive.py): when a frame last arrived, and when the
        # last keep-alive ping went out (loop time).
        self.last_seen = self.loop.time()
        self.ping_sent = 0.0
        self._sink: Callable[[Message], None] | None = None
        self._sink_context: contextvars.Context | None = None
        # Created for a message that arrives before the sink: most sessions never need it.
        self._early: deque[Message] | None = None
        self._early_waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        # Who stopped reading the socket: the early queue (full) or the session (at its
        # in-flight limit). Reading resumes only when neither holds it.
        self._early_paused = False
        self._session_paused = False

    # --- for the session -------------------------------------------------------------------

    def deliver_to(self, sink: Callable[[Message], None]) -> None:
        """From now on call ``sink`` with each message, in the caller's context (messages
        already queued first, in order)."""
        self._sink_context = contextvars.copy_context()
        self._sink = sink
        early, self._early = self._early, None
        while early and self._sink is not None:
            self._deliver(early.popleft())
        self._early_drained()

    async def first_message(self) -> Message:
        """The next message, for a session without a sink yet; ConnectionClosed if none."""
        while not self._early:
            if self.connection_lost_waiter.done():
                raise self.close_exc
            waiter = self._early_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._early_waiter = None
        message = self._early.popleft()
        if len(self._early) < _EARLY_LIMIT:
            self._early_drained()
        return message

    def pause_reading(self) -> None:
        """Stop reading the socket (TCP then pushes back on the client)."""
        self._session_paused = True
        self._pause_transport()

    def resume_reading(self) -> None:
        self._session_paused = False
        if not self._early_paused:
            self._resume_transport()

    def write_text(self, data: bytes) -> None:
        """Send ``data`` (UTF-8) as one text frame, now, on an open connection.

        The frame is built here: websockets' ``send_text`` makes a ``Frame`` object, serializes
        it and queues it for ``send_data``, ~0.7 us per reply on the hottest path. Without
        extensions (compression is off) a server's text frame is a header and the payload;
        anything unusual (an extension, websockets' own data still queued, a fragmented send)
        goes websockets' way, so frames keep their order."""
        protocol = self.protocol
        if protocol.extensions or protocol.writes or protocol.expect_continuation_frame:
            protocol.send_text(data)
            self.send_data()
            return
        self.transport.write(text_frame_header(len(data)) + data)

    def send_keepalive_ping(self, now: float) -> None:
        """A ping whose pong nobody awaits: any frame that arrives afterwards will do."""
        self.ping_sent = now
        if self.protocol.state is State.OPEN:
            self.protocol.send_ping(b"")
            with contextlib.suppress(Exception):  # the socket is gone: connection_lost follows
                self.send_data()

    # --- websockets' callbacks -------------------------------------------------------------

    def process_event(self, event: Any) -> None:
        self.last_seen = self.loop.time()
        if not isinstance(event, Frame):  # the handshake request
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._message(bytes(event.data), opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(event.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:  # the protocol parser refuses this; never here
                return
            fragments.append(bytes(event.data))
            if event.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._fragments_text)
            elif len(fragments) > _MAX_FRAGMENTS:
                self._fragments = None
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
        else:
            super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- internals -------------------------------------------------------------------------

    def _message(self, data: bytes, text: bool) -> None:
        message: Message = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as error:
                self._fail(CloseCode.INVALID_DATA, f"{error.reason} at position {error.start}")
                return
        if self._sink is not None:
            self._deliver(message)
            return
        early = self._early
        if early is None:
            early = self._early = deque()
        early.append(message)
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(early) >= _EARLY_LIMIT and not self._early_paused:
            self._early_paused = True
            self._pause_transport()

    def _early_drained(self) -> None:
        """The early queue has room again: read on, unless the session paused reading (early
        messages it was handed may have taken it to its in-flight limit)."""
        if self._early_paused:
            self._early_paused = False
            if not self._session_paused:
                self._resume_transport()

    def _pause_transport(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.pause_reading()

    def _resume_transport(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.resume_reading()

    def _deliver(self, message: Message) -> None:
        assert self._sink is not None and self._sink_context is not None
        try:
            self._sink_context.run(self._sink, message)
        except Exception:  # a bug in the session: close like websockets does for a handler
            self.logger.error("message handler failed", exc_info=True)
            self._sink = None
            self._fail(CloseCode.INTERNAL_ERROR, "")

    def _fail(self, code: CloseCode, reason: str) -> None:
        self.protocol.fail(code, reason)
        with contextlib.suppress(Exception):  # the socket is gone: connection_lost follows
            self.send_data()
