"""A WebSocket server connection that hands each inbound message straight to a callback.

websockets queues every message for ``recv()`` and wakes the task reading it: a future, a
queue and a task step per request, about a tenth of the server's CPU in a closed-loop run
(BENCHMARKS.md). A ``MessageConnection`` assembles messages itself, in the protocol's own
callback, and calls the sink the connection's session installed, in that session's context
(its log bindings). Until a sink is installed (the first message may have to authenticate the
session) messages wait in a short queue read by ``first_message``.

Ping, pong and close frames are still websockets' own business; only data frames change path.
Every frame's arrival is noted (``last_seen``) for the gateway's keep-alive (keepalive.py).

The common read, whole data frames and nothing else, skips websockets' parser too
(``data_received``): reading the headers here and unmasking in C costs about a tenth of what
its generators, frame objects and events do.

Messages are not handled in the read itself but a few dozen at a time, in turns of the event
loop (``_Inbox``): a single read callback per socket, thousands of them in one turn at an
on-sale's opening, kept an actor's commit waiting that long (up to a quarter of a second)
after PostgreSQL had answered; handled in turns, the commit's continuation waits at most one
turn's share (BENCHMARKS.md, round 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import struct
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Protocol, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["Message", "MessageConnection", "text_frame_header"]

Message = str | bytes
# Messages queued before a sink is installed beyond which the socket stops being read.
_EARLY_LIMIT = 16
# Messages read from one connection and not yet handled beyond which its socket stops being
# read (until half of them are handled).
_QUEUED_LIMIT = 32
# Messages handled per turn of the event loop, all connections together: about 3 ms of work.
# 16 and 256 made an on-sale's latencies worse (BENCHMARKS.md, round 8).
_PER_TURN = 64
# A message split into more frames than this is refused (as websockets' own reader does).
_MAX_FRAGMENTS = 1024
# The first header byte of a final TEXT or BINARY frame without reserved bits (read here;
# replies are final TEXT frames).
_TEXT_FIRST = 0x80 | Opcode.TEXT
_BINARY_FIRST = 0x80 | Opcode.BINARY
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def text_frame_header(length: int) -> bytes:
    """The header of a server's (unmasked) final text frame carrying ``length`` bytes
    (RFC 6455, section 5.2)."""
    if length < 126:
        return bytes((_TEXT_FIRST, length))
    if length < 1 << 16:
        return _LENGTH_16.pack(_TEXT_FIRST, 126, length)
    return _LENGTH_64.pack(_TEXT_FIRST, 127, length)


class MessageConnection(ServerConnection):
    """``ServerConnection`` whose data messages go to ``deliver_to``'s sink, in order."""

    # Slots, not more keys in the instance's dict: a bigger dict per connection, ~1 KiB.
    __slots__ = (
        "_early",
        "_early_paused",
        "_early_waiter",
        "_fragments",
        "_fragments_text",
        "_inbox",
        "_owed",
        "_partial",
        "_pending",
        "_queue_paused",
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
        self._queue_paused = False
        # Messages read and not yet handled, while the connection waits in the loop's inbox
        # (a list made per read: most connections are idle, and a deque is 0.6 KiB).
        self._pending: list[Message] | None = None
        self._inbox = _inbox_of(self.loop)
        # Where websockets' parser is in the byte stream (``_follow``): bytes still due of the
        # frame it is reading (-1: the handshake request has not ended yet), and the bytes
        # of a frame header, or of the request's end, that arrived without the rest.
        self._owed = -1
        self._partial = b""

    # --- for the session -------------------------------------------------------------------

    def deliver_to(self, sink: Callable[[Message], None]) -> None:
        """From now on call ``sink`` with each message, in the caller's context (messages
        already queued first, in order)."""
        self._sink_context = contextvars.copy_context()
        self._sink = sink
        early, self._early = self._early, None
        while early and self._sink is not None:
            self._handle(early.popleft())
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
        if not (self._early_paused or self._queue_paused):
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

    def data_received(self, data: bytes) -> None:
        """Read ``data`` here when it is only whole data frames; else hand it to websockets.

        Here means exactly what websockets would do, so only when that is certain: the
        connection open with no extension and no fragmented message under way, websockets'
        parser between two frames (nothing buffered, ``_follow``), and every frame in ``data``
        complete, final, TEXT or BINARY, masked, without reserved bits and within the size
        limit. Anything else (a control frame, a fragment, a frame cut between reads, any
        protocol error) goes to websockets whole: its pongs, close handshake and close codes
        are unchanged, and so is the order of everything in a read.
        """
        protocol = self.protocol
        frames = None
        if (
            self._owed == 0
            and not self._partial
            and protocol.state is State.OPEN
            and not protocol.extensions
            and protocol.current_size is None
            and self._fragments is None
            and not protocol.reader.buffer
        ):
            frames = _data_frames(data, _size_limit(protocol))
        if frames is None:
            # websockets' parser calls ``process_event``, which handles each message at once
            # (a failure it finds further on closes the connection as the read ends).
            self.take_pending()
            self._follow(data)
            super().data_received(data)
            return
        # The rest of websockets' data_received: it sends what the protocol has queued (data
        # frames queue nothing and every writer sends at once, so this is only a safety net),
        # and it starts the close timer if a close is expected, which it never is while OPEN.
        if protocol.writes:
            try:
                self.send_data()
            except Exception as exc:
                self.set_connection_exc(exc)
        self.last_seen = self.loop.time()
        # All of them, as websockets handles every frame of a read even if the first ones
        # pause reading (or close the connection).
        for start, end, text in frames:
            self._message(apply_mask(data[start:end], data[start - 4 : start]), text, later=True)

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

    def _follow(self, data: bytes) -> None:
        """Follow websockets' parser through ``data``, which it is handed: where in a frame it
        will be, so that the next read can be known to start with a frame. Its buffer being
        empty does not tell: it takes a header before the mask and payload have arrived.

        Frame lengths only: a frame websockets refuses fails the connection, after which
        nothing is read here anyway (the state is no longer OPEN).
        """
        owed = self._owed
        if owed < 0:  # the handshake request, which ends at its first empty line
            data = self._partial + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._partial = data[-3:]
                return
            data = data[end + 4 :]  # frames sent behind the request
            owed = 0
        elif owed >= len(data):
            self._owed = owed - len(data)
            return
        elif self._partial:  # then owed is 0: the rest of a header
            data = self._partial + data
        pos, size = owed, len(data)
        while pos < size:
            end = _frame_end(data, pos)
            if end < 0:
                self._owed, self._partial = 0, data[pos:]
                return
            pos = end
        self._owed, self._partial = pos - size, b""

    def _message(self, data: bytes, text: bool, *, later: bool = False) -> None:
        """Hand a message on: to the inbox (``later``) or the sink once a session has one,
        else to the early queue."""
        message: Message = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as error:
                self.take_pending()  # what came before is answered first
                self._fail(CloseCode.INVALID_DATA, f"{error.reason} at position {error.start}")
                return
        if self._sink is not None:
            if not later:
                self._handle(message)
                return
            pending = self._pending
            if pending is None:
                self._pending = [message]
                self._inbox.put(self)
                return
            pending.append(message)
            if len(pending) >= _QUEUED_LIMIT and not self._queue_paused:
                self._queue_paused = True
                self._pause_transport()
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
            if not (self._session_paused or self._queue_paused):
                self._resume_transport()

    def _pause_transport(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.pause_reading()

    def _resume_transport(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.resume_reading()

    def take_pending(self) -> int:
        """Handle the messages read and not yet handled, now (the inbox's turn, or before
        anything that must come after them); how many there were."""
        pending = self._pending
        if pending is None:
            return 0
        self._pending = None
        if self._queue_paused:
            self._queue_paused = False
            if not (self._early_paused or self._session_paused):
                self._resume_transport()
        for message in pending:
            if self._sink is None:  # the session failed on one of them: the rest go too
                break
            self._handle(message)
        return len(pending)

    def _handle(self, message: Message) -> None:
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


class _Inbox:
    """The event loop's connections with messages read and not yet handled, in the order they
    were read, handled about ``_PER_TURN`` messages at a time: each turn ends by asking for
    another at the back of the loop's queue, behind what became ready meanwhile (an actor's
    commit that PostgreSQL answered, a reply to send)."""

    __slots__ = ("_connections", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the loop keys the inbox in ``_INBOXES``, which a strong reference would
        # keep alive with every loop that ever had a connection (tests run many).
        self._loop = weakref.ref(loop)
        self._connections: deque[MessageConnection] = deque()
        self._scheduled = False

    def put(self, conn: MessageConnection) -> None:
        self._connections.append(conn)
        if not self._scheduled:
            self._next_turn()

    def _next_turn(self) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():  # nothing will run them (nor let them go)
            self._connections.clear()
            self._scheduled = False
            return
        self._scheduled = True
        loop.call_soon(self._turn)

    def _turn(self) -> None:
        connections = self._connections
        try:
            left = _PER_TURN
            while connections and left > 0:
                left -= connections.popleft().take_pending()
        finally:  # never left unscheduled with messages waiting, whatever a session did
            if connections:
                self._next_turn()
            else:
                self._scheduled = False


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


def _inbox_of(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _INBOXES.get(loop)
    if inbox is None:
        inbox = _INBOXES[loop] = _Inbox(loop)
    return inbox


def _size_limit(protocol: Protocol) -> int | None:
    """The largest frame websockets' parser accepts as a new message (None: no limit)."""
    limit = protocol.max_message_size
    fragment = protocol.max_fragment_size
    if fragment is not None and (limit is None or fragment < limit):
        limit = fragment
    return limit


def _data_frames(data: bytes, limit: int | None) -> list[tuple[int, int, bool]] | None:
    """Where each frame's payload starts and ends in ``data``, and whether it is text, when
    ``data`` is whole frames that are final, masked TEXT or BINARY without reserved bits, none
    over ``limit`` bytes; else None. The mask is the four bytes before the payload."""
    frames = []
    pos, size = 0, len(data)
    while pos < size:
        if size - pos < 6:
            return None
        first, second = data[pos], data[pos + 1]
        if (first != _TEXT_FIRST and first != _BINARY_FIRST) or not second & 0x80:
            return None
        length = second & 0x7F
        if length < 126:
            start = pos + 6
        elif length == 126:
            start = pos + 8
            if start > size:
                return None
            length = int.from_bytes(data[pos + 2 : pos + 4])
        else:
            start = pos + 14
            if start > size:
                return None
            length = int.from_bytes(data[pos + 2 : pos + 10])
        end = start + length
        if end > size or (limit is not None and length > limit):
            return None
        frames.append((start, end, first == _TEXT_FIRST))
        pos = end
    return frames


def _frame_end(data: bytes, pos: int) -> int:
    """Where the frame that starts at ``pos`` ends (maybe past ``data``), or -1 when its header
    has not all arrived."""
    size = len(data)
    if size - pos < 2:
        return -1
    second = data[pos + 1]
    length = second & 0x7F
    extra = 2 if length == 126 else 8 if length == 127 else 0
    start = pos + 2 + extra + (4 if second & 0x80 else 0)
    if start > size:
        return -1
    if extra:
        length = int.from_bytes(data[pos + 2 : pos + 2 + extra])
    return start + length
