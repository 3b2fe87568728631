"""One client connection: decode each frame, route it, and send the reply once it is durable.

Requests on one connection are pipelined: each message is handled in a callback shortly after
it is read (``inbound.MessageConnection`` hands the loop's messages over a bounded share per
turn), without waiting for earlier replies, up to
``max_inflight`` requests in progress (then the socket is not read, which pushes back on the
client through TCP). Commands for an active event go straight into the actor's
mailbox with no task per request; the reply is encoded in the future's callback. Every frame the
connection sends goes straight to the socket, or, when the socket is full, into one bounded queue
drained by a short-lived writer task: a client that does not read its replies is closed with 4000
(reconnect and resume) instead of growing server memory.

The connection also carries the client's subscriptions (see ``broadcast``) and watches the
holds it made, pushing ``hold_expiring`` shortly before one expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import structlog
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from protocol import messages as wire
from protocol.codec import (
    DecodeError,
    RequestId,
    decode_request,
    encode_error,
    encode_push,
    encode_result,
    encode_stored_reply,
    format_time,
)
from protocol.errors import CloseCode
from seatd import core
from seatd.auth import Identity, TokenAuthority
from seatd.core import Policy
from seatd.errors import (
    Forbidden,
    InvalidRequest,
    Overloaded,
    RateLimited,
    SeatdError,
    ShuttingDown,
    TooManyConnections,
    TooManySubscriptions,
    Unauthenticated,
)
from seatd.gateway import catalog
from seatd.gateway.broadcast import Broadcaster
from seatd.gateway.forward import Router
from seatd.gateway.holds import HoldFollower
from seatd.gateway.inbound import Message, MessageConnection
from seatd.gateway.limits import ConnectionCounter, InflightGauge, RateLimiter
from seatd.gateway.translate import (
    error_frame,
    idempotency_key,
    result_to_wire,
    to_command,
)
from seatd.runtime.actor import Envelope
from seatd.runtime.ports import SeatStore, StoredReply
from seatd.runtime.registry import Registry

__all__ = ["Connection", "GatewayContext"]

log = structlog.get_logger("seatd.gateway")
# Types for isinstance, as tuples made once: `A | B` in the call builds a union each time.
_CATALOG_REQUESTS = (wire.CreateEvent, wire.ListEvents)
_HOLD_COMMANDS = (core.PlaceHold, core.RefreshHold, core.ReleaseHold, core.Reserve)
# Bytes the socket may buffer before frames queue in user space (the server's write_limit).
_WRITE_LIMIT = 64 * 1024
_session_ids = itertools.count(1)


@dataclass(slots=True)
class GatewayContext:
    """What connections share: the registry, the store and the limits."""

    registry: Registry
    store: SeatStore
    policy: Policy
    clock: Callable[[], float]
    broadcaster: Broadcaster
    router: Router
    authority: TokenAuthority
    rates: RateLimiter
    connections: ConnectionCounter
    pending: InflightGauge
    max_frame_bytes: int
    max_inflight: int
    send_queue: int
    max_subscriptions: int = 64
    # Seconds before a hold expires that its holder is warned (at most a quarter of its life).
    hold_warning: float = 30.0
    max_seats_per_hold: int = wire.MAX_SEATS_PER_HOLD
    # Seconds a connection opened without a token has to send ``authenticate``.
    auth_timeout: float = 10.0
    draining: bool = False


@dataclass(slots=True)
class _Pending:
    """A request in progress: how to answer it when its future completes. Not frozen, though
    never changed: a frozen dataclass sets each field through object.__setattr__, ~65 ns a
    field, and one of these is made per request."""

    request_id: RequestId
    request_type: str
    to_wire: Callable[[Any], object] | None = None
    # Called with the wire result (or the stored reply) once sent, for follow-ups.
    after: Callable[[Any], None] | None = None
    on_error: Callable[[], None] | None = None


class Connection:
    # Thousands of idle connections per instance: no per-instance __dict__.
    __slots__ = (
        "_backlog",
        "_bucket",
        "_closing",
        "_drained",
        "_holds",
        "_needs_auth",
        "_outbound",
        "_started",
        "_subscribing",
        "_subscriptions",
        "_tasks",
        "_token_timer",
        "_writer",
        "counted_user",
        "ctx",
        "identity",
        "inflight",
        "session_id",
        "ws",
    )

    def __init__(
        self, ws: MessageConnection, identity: Identity | None, ctx: GatewayContext
    ) -> None:
        self.ws = ws
        # Unset until the first message authenticates a connection opened without a token.
        self.identity: Identity
        self._needs_auth = identity is None
        if identity is not None:
            self.identity = identity
        self._token_timer: asyncio.TimerHandle | None = None
        self._bucket = ctx.rates.connection_bucket()
        self._started = 0  # requests whose work started (each ends in ``_done``)
        # The user counted in the per-user connection limit (None until admitted).
        self.counted_user: str | None = None
        self.ctx = ctx
        self.session_id = f"s{next(_session_ids)}"
        self.inflight = 0
        # Messages read while ``max_inflight`` requests were in progress (reading is paused).
        self._backlog: deque[Message] | None = None
        # Created when first needed: most connections never queue a frame or spawn a task.
        self._outbound: deque[bytes] | None = None
        # Runs only while frames are queued (the socket was full): most connections, idle or
        # busy, never need one, which saves a task per connection.
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._closing = False
        # Made only while someone waits for the requests in flight to end (``wait_idle``): an
        # asyncio.Event per connection cost 1.1 KiB (its waiters' deque and its __dict__).
        self._drained: asyncio.Future[None] | None = None
        self._subscriptions: set[str] = set()
        # Per event, the subscribe whose reply is on its way (made on first use).
        self._subscribing: dict[str, asyncio.Task[Any]] | None = None
        self._holds = HoldFollower(self, ctx.broadcaster, ctx.clock, ctx.hold_warning)

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> None:
        if self._needs_auth and not await self._authenticate_first():
            return
        self.send(
            encode_push(
                "welcome",
                wire.Welcome(
                    protocol=wire.PROTOCOL_VERSION,
                    session_id=self.session_id,
                    user_id=self.identity.user_id,
                    role=self.identity.role,
                    server_time=format_time(self.ctx.clock()),
                    max_frame_bytes=self.ctx.max_frame_bytes,
                    max_inflight=self.ctx.max_inflight,
                    max_seats_per_hold=self.ctx.max_seats_per_hold,
                    token_expires_at=self._token_expiry(),
                ),
            )
        )
        self._watch_token()
        try:
            # Each message is handled in a callback, in the order read (``_receive``).
            self.ws.deliver_to(self._receive)
            await self.ws.wait_closed()
        finally:
            self._end()

    def _end(self) -> None:
        """Stop the session's work and forget what it registered. Requests that finish later
        (their tasks are cancelled, actors answer on their own time) start nothing: messages
        kept for later are dropped, as nobody reads their answers; ``_closing`` makes
        ``_on_frame`` serve nothing more."""
        self._closing = True
        self._backlog = None
        for task in self._tasks or ():
            task.cancel()
        if self._writer is not None:
            self._writer.cancel()
        self._forget_everything()

    def _forget_everything(self) -> None:
        if self._token_timer is not None:
            self._token_timer.cancel()
        broadcaster = self.ctx.broadcaster
        for event_id in self._subscriptions:
            broadcaster.cancel(event_id, self)
        self._subscriptions.clear()
        self._holds.close()

    async def go_away(self, reason: str, code: int = CloseCode.SERVICE_RESTART) -> None:
        """Answer what is still in progress, tell the client why, let queued replies flush,
        and close."""
        if self._closing:
            return
        self.ws.take_pending()  # requests read and not yet handled are answered too
        await self._stop_work()
        self.send(encode_push("goaway", wire.GoAway(reason=reason, reconnect=True)))
        self._closing = True
        await self._flush(timeout=2.0)
        await self.ws.close(code, reason)

    async def _stop_work(self) -> None:
        """Cancel the requests still running here (on PostgreSQL, another instance, a
        snapshot): each is answered ``shutting_down`` as it ends, before the goaway. Those
        queued on actors were answered when the registry closed."""
        running = [task for task in self._tasks or () if not task.done()]
        for task in running:
            task.cancel()
        if running:  # their answers (``_done``) run before this wait ends
            await asyncio.wait(running, timeout=2.0)

    # --- outbound --------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self._closing:
            return
        if self._writer is None and self._write_now(frame):
            return
        outbound = self._outbound
        if outbound is None:
            outbound = self._outbound = deque()
        if len(outbound) >= self.ctx.send_queue:
            self._closing = True
            log.warning("slow_consumer", session_id=self.session_id, queued=len(outbound))
            outbound.clear()
            self._spawn(
                self.ws.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resume")
            )
            return
        outbound.append(frame)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _write_now(self, frame: bytes) -> bool:
        """Hand the frame to the socket at once when nothing is queued and the socket's buffer
        has room: no writer wake-up per frame (a delta to 1,000 subscribers is 1,000 frames,
        and a task switch each cost more than the write). False: queue it for the writer."""
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return False
        if ws.transport.get_write_buffer_size() > _WRITE_LIMIT:
            return False
        try:
            ws.write_text(frame)
        except Exception:  # the socket broke: the reader sees the close and ends the session
            log.debug("write_failed", session_id=self.session_id)
        return True

    async def _write_loop(self) -> None:
        """Send what queued up, waiting for the socket to drain between frames; then end."""
        outbound, ws = self._outbound, self.ws
        assert outbound is not None  # the writer starts only once a frame was queued
        try:
            while outbound:
                await ws.send(outbound.popleft(), text=True)
        except ConnectionClosed:
            pass
        finally:
            self._writer = None

    async def _flush(self, timeout: float) -> None:
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)

    # --- inbound ---------------------------------------------------------------------------

    def _receive(self, frame: Message) -> None:
        """Handle a message, or keep it for later while at the in-flight limit: then the
        socket is not read, which pushes back on the client through TCP."""
        backlog = self._backlog
        if backlog is not None:
            backlog.append(frame)
            return
        self._on_frame(frame)
        if self.inflight >= self.ctx.max_inflight:
            self._backlog = deque()
            self.ws.pause_reading()

    def _take_backlog(self) -> None:
        """Handle what was kept while at the limit; read the socket again once it is done."""
        backlog = self._backlog
        assert backlog is not None
        limit = self.ctx.max_inflight
        while backlog and self.inflight < limit:
            self._on_frame(backlog.popleft())
        if not backlog and self.inflight < limit:
            self._backlog = None
            self.ws.resume_reading()

    def _on_frame(self, frame: str | bytes) -> None:
        # Closing (the token expired, a goaway) or ended: the peer may send until the close
        # ends, and what an ended session would register (a subscription, a hold) is never
        # forgotten.
        if self._closing:
            return
        # Every frame spends a token, well-formed or not; a refused one is not looked at
        # beyond its id (so the client can match the refusal).
        wait = self.ctx.rates.check(self.identity.user_id, self._bucket, time.monotonic())
        try:
            request_id, request_type, request = _decode(frame)
        except DecodeError as error:
            if wait > 0:
                self.send(error_frame(error.request_id, error.request_type, _rate_limited(wait)))
            else:
                self.send(error.reply())
            return
        if wait > 0:
            self.send(error_frame(request_id, request_type, _rate_limited(wait)))
            return
        if self.ctx.draining:
            self.send(
                error_frame(
                    request_id,
                    request_type,
                    ShuttingDown("the server is shutting down; reconnect and retry"),
                )
            )
            return
        if isinstance(request, wire.Ping):
            self.send(
                encode_result(request_id, request_type, wire.Pong(format_time(self.ctx.clock())))
            )
        elif isinstance(request, wire.Authenticate):
            self._reauthenticate(request_id, request_type, request)
        elif isinstance(request, wire.Unsubscribe):
            self._unsubscribe(request_id, request_type, request)
        elif not self.ctx.pending.enter():  # the rest takes work: shed it when at the limit
            overloaded = Overloaded("the server has too many requests in progress; retry")
            self.send(error_frame(request_id, request_type, overloaded))
        else:
            started = self._started
            try:
                self._dispatch(request_id, request_type, request, cast(str, frame))  # decoded
            finally:
                if self._started == started:  # answered at once: no work is in progress
                    self.ctx.pending.leave()

    def _dispatch(self, request_id: RequestId, request_type: str, request: Any, frame: str) -> None:
        """Start the work of a request; its answer comes when the work is done (``_done``)."""
        if isinstance(request, _CATALOG_REQUESTS):
            served = catalog.serve(self.ctx.store, self.ctx.policy, self.identity, request)
            self._track(self._spawn(served), _Pending(request_id, request_type))
        elif isinstance(request, wire.Subscribe):
            self._subscribe(request_id, request_type, request)
        else:
            self._to_actor(request_id, request_type, request, frame)

    def _to_actor(self, request_id: RequestId, request_type: str, request: Any, frame: str) -> None:
        try:
            if isinstance(request, wire.HoldRequest):
                self._check_hold_size(request)
            command = to_command(request, self.identity)
        except SeatdError as error:
            self.send(error_frame(request_id, request_type, error))
            return
        event_id: str = request.event_id
        to_wire = partial(result_to_wire, event_id, command)
        key = idempotency_key(self.identity, request_type, request, to_wire)
        follow = None  # only commands that place, extend or end a hold change what we follow
        if isinstance(command, _HOLD_COMMANDS):
            follow = partial(self._holds.follow, event_id, command)
        pending = _Pending(request_id, request_type, to_wire, follow)
        envelope = Envelope(command, idempotency=key)
        try:
            future: asyncio.Future[Any] | None = self.ctx.registry.submit_nowait(event_id, envelope)
        except SeatdError as error:
            self._fail(pending, error)
            return
        if future is None:  # not active here: activate it, or forward it to its owner
            future = self._spawn(self.ctx.router.ask(event_id, envelope, self.identity, frame))
        self._track(future, pending)

    async def wait_idle(self) -> None:
        """Return once no request of this connection is in progress (their replies sent)."""
        if self.inflight == 0:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)

    def _track(self, future: asyncio.Future[Any], pending: _Pending) -> None:
        self._started += 1
        self.inflight += 1
        future.add_done_callback(partial(self._done, pending))

    def _done(self, pending: _Pending, future: asyncio.Future[Any]) -> None:
        self.ctx.pending.leave()
        self.inflight -= 1
        try:
            self._answer(pending, future)
        finally:
            drained = self._drained
            if drained is not None and self.inflight == 0:
                self._drained = None
                if not drained.done():
                    drained.set_result(None)
        if self._backlog is not None:
            self._take_backlog()

    def _answer(self, pending: _Pending, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._fail(pending, ShuttingDown("the request was cancelled by a shutdown; retry"))
            return
        error = future.exception()
        if error is not None:
            self._fail(pending, error)
            return
        result = future.result()
        if isinstance(result, StoredReply):
            self.send(
                encode_stored_reply(pending.request_id, pending.request_type, result.response)
            )
        else:
            wire_result = pending.to_wire(result) if pending.to_wire else result
            self.send(encode_result(pending.request_id, pending.request_type, wire_result))
        if pending.after is not None:
            pending.after(result)

    def _fail(self, pending: _Pending, error: BaseException) -> None:
        if pending.on_error is not None:
            pending.on_error()
        if isinstance(error, SeatdError):
            self.send(error_frame(pending.request_id, pending.request_type, error))
            return
        log.error(
            "request_failed",
            request_id=pending.request_id,
            request_type=pending.request_type,
            exc_info=error,
        )
        self.send(
            encode_error(
                pending.request_id,
                pending.request_type,
                "internal_error",
                "unexpected server error; retry",
                temporary=True,
            )
        )

    def _check_hold_size(self, request: wire.HoldRequest) -> None:
        limit = self.ctx.max_seats_per_hold
        if len(request.seat_ids) > limit:
            raise InvalidRequest(
                f"a hold may name at most {limit} seats",
                details={"path": "$.seat_ids", "limit": limit},
            )

    # --- tokens ----------------------------------------------------------------------------

    async def _authenticate_first(self) -> bool:
        """A connection opened without a token: its first message must be ``authenticate``
        (within ``auth_timeout``); anything else is answered ``unauthenticated`` and closed."""
        try:
            async with asyncio.timeout(self.ctx.auth_timeout):
                frame = await self.ws.first_message()
        except TimeoutError:
            await self.ws.close(
                CloseCode.UNAUTHENTICATED, f"send authenticate within {self.ctx.auth_timeout:g} s"
            )
            return False
        except ConnectionClosed:
            return False
        request_id: RequestId | None = None
        request_type = "authenticate"
        try:
            request_id, request_type, request = _decode(frame)
            if not isinstance(request, wire.Authenticate):
                raise Unauthenticated(
                    "this connection has no token: send authenticate with one first"
                )
            identity = self.ctx.authority.verify(request.token)
        except DecodeError as error:
            self.send(error.reply())
            await self.ws.close(CloseCode.UNAUTHENTICATED, "authenticate first")
            return False
        except Unauthenticated as error:
            self.send(error_frame(request_id, request_type, error))
            await self.ws.close(CloseCode.UNAUTHENTICATED, "unauthenticated")
            return False
        if not self.ctx.connections.admit_user(identity.user_id):
            refusal = TooManyConnections("this user has too many connections open")
            self.send(error_frame(request_id, "authenticate", refusal))
            await self.ws.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
            return False
        self.counted_user = identity.user_id
        self.identity = identity
        self._authenticated(request_id, request_type)
        return True

    def _reauthenticate(
        self, request_id: RequestId, request_type: str, request: wire.Authenticate
    ) -> None:
        """A fresh token for the same user and role: the connection lives on until it expires."""
        try:
            identity = self.ctx.authority.verify(request.token)
            if (identity.user_id, identity.role) != (self.identity.user_id, self.identity.role):
                raise Forbidden(
                    "a connection keeps its user and role: open a new connection for another"
                )
        except SeatdError as error:
            self.send(error_frame(request_id, request_type, error))
            return
        self.identity = identity
        self._authenticated(request_id, request_type)
        self._watch_token()

    def _authenticated(self, request_id: RequestId, request_type: str) -> None:
        identity = self.identity
        result = wire.Authenticated(identity.user_id, identity.role, self._token_expiry())
        self.send(encode_result(request_id, request_type, result))

    def _token_expiry(self) -> str | None:
        expires_at = self.identity.expires_at
        return None if expires_at is None else format_time(expires_at)

    def _watch_token(self) -> None:
        """Warn before the token expires (a minute, or a quarter of its life), close at expiry.
        One timer at a time: the warning's schedules the close."""
        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None
        expires_at = self.identity.expires_at
        if expires_at is None:
            return
        left = expires_at - self.ctx.clock()
        self._token_timer = asyncio.get_running_loop().call_later(
            max(left - min(60.0, left / 4), 0.0), self._token_expiring, expires_at
        )

    def _token_expiring(self, expires_at: float) -> None:
        self.send(encode_push("token_expiring", wire.TokenExpiring(format_time(expires_at))))
        self._token_timer = asyncio.get_running_loop().call_later(
            max(expires_at - self.ctx.clock(), 0.0), self._token_expired
        )

    def _token_expired(self) -> None:
        if self._closing:
            return
        self._closing = True
        log.info("token_expired", session_id=self.session_id)
        self._spawn(
            self.ws.close(CloseCode.TOKEN_EXPIRED, "token expired: reconnect with a fresh one")
        )

    # --- subscriptions ---------------------------------------------------------------------

    def _subscribe(self, request_id: RequestId, request_type: str, request: wire.Subscribe) -> None:
        event_id = request.event_id
        limit = self.ctx.max_subscriptions
        if event_id not in self._subscriptions and len(self._subscriptions) >= limit:
            error = TooManySubscriptions(
                f"at most {limit} subscriptions per connection", details={"limit": limit}
            )
            self.send(error_frame(request_id, request_type, error))
            return
        broadcaster = self.ctx.broadcaster
        self._subscriptions.add(event_id)
        subscribing = self._subscribing
        if subscribing is None:
            subscribing = self._subscribing = {}
        earlier = subscribing.get(event_id)
        if earlier is None:
            broadcaster.begin(event_id, self)
            snapshot: Any = self.ctx.router.snapshot(event_id)
        else:
            snapshot = self._snapshot_after(earlier, event_id)
        newer: list[bytes] = []  # deltas committed after the snapshot, sent right after it

        def to_wire(snapshot: core.SeatSnapshot) -> wire.Subscribed:
            replay, buffered = broadcaster.complete(
                event_id, self, snapshot.version, request.since_version
            )
            newer.extend(buffered)
            if replay is not None:
                return wire.Subscribed(
                    event_id, snapshot.version, "resume", snapshot.total_seats, deltas=replay
                )
            held = tuple(
                wire.SeatChange(sid, "held", format_time(expires_at))
                for sid, expires_at in snapshot.held
            )
            return wire.Subscribed(
                event_id,
                snapshot.version,
                "snapshot",
                snapshot.total_seats,
                held,
                snapshot.reserved,
            )

        def after(_: object) -> None:
            for frame in newer:
                self.send(frame)

        def on_error() -> None:
            broadcaster.cancel(event_id, self)
            self._subscriptions.discard(event_id)

        pending = _Pending(request_id, request_type, to_wire, after, on_error)
        task = self._spawn(snapshot)
        subscribing[event_id] = task
        task.add_done_callback(partial(self._subscribed, event_id))
        self._track(task, pending)

    async def _snapshot_after(self, earlier: asyncio.Task[Any], event_id: str) -> Any:
        """A subscribe sent while another to the same event is on its way starts once that one
        is answered: the broadcaster goes live with the first snapshot, and the pushes it sent
        before the second reply could skip versions that reply then claims to precede."""
        await asyncio.wait([earlier])  # its answer (``_done``) is sent before this resumes
        if event_id in self._subscriptions:  # else unsubscribed meanwhile: a reply, no pushes
            self.ctx.broadcaster.begin(event_id, self)
        return await self.ctx.router.snapshot(event_id)

    def _subscribed(self, event_id: str, task: asyncio.Task[Any]) -> None:
        subscribing = self._subscribing
        if subscribing is not None and subscribing.get(event_id) is task:
            del subscribing[event_id]
            if not subscribing:
                self._subscribing = None  # a subscriber keeps no empty dict

    def _unsubscribe(
        self, request_id: RequestId, request_type: str, request: wire.Unsubscribe
    ) -> None:
        """Idempotent: unsubscribing from an event not watched is not an error."""
        self._subscriptions.discard(request.event_id)
        self.ctx.broadcaster.cancel(request.event_id, self)
        self.send(encode_result(request_id, request_type, wire.Unsubscribed(request.event_id)))

    def hold_changed(
        self, event_id: str, hold: core.Hold, ended: core.HoldEndReason | None
    ) -> None:
        self._holds.hold_changed(event_id, hold, ended)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _rate_limited(wait: float) -> RateLimited:
    return RateLimited(
        "too many requests: slow down", retry_after_ms=max(1, math.ceil(min(wait, 60.0) * 1000))
    )


def _decode(frame: str | bytes) -> tuple[RequestId, str, Any]:
    """A request from a text frame; binary frames are refused like malformed JSON."""
    if isinstance(frame, bytes):
        raise DecodeError("invalid_json", "send requests as text frames")
    return decode_request(frame)
