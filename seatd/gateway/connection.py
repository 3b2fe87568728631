"""One client connection: decode each frame, route it, and send the reply once it is durable.

Requests on one connection are pipelined: the reader does not wait for a reply before reading
the next frame, up to ``max_inflight`` requests in progress (then it stops reading, which pushes
back on the client through TCP). Commands for an active event go straight into the actor's
mailbox with no task per request; the reply is encoded in the future's callback. Every frame the
connection sends goes through one bounded queue drained by a writer task: a client that does not
read its replies is closed with 4000 (reconnect and resume) instead of growing server memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

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
from seatd.auth import Identity
from seatd.core import Policy
from seatd.errors import IdempotencyMismatch, InvalidRequest, SeatdError, ShuttingDown
from seatd.gateway.translate import (
    error_frame,
    event_view,
    idempotency_key,
    new_event,
    result_to_wire,
    to_command,
)
from seatd.runtime.actor import Envelope
from seatd.runtime.ports import NewEvent, SeatStore, StoredReply
from seatd.runtime.registry import Registry

__all__ = ["Connection", "GatewayContext"]

log = structlog.get_logger("seatd.gateway")
_session_ids = itertools.count(1)


@dataclass(slots=True)
class GatewayContext:
    """What connections share: the registry, the store and the limits."""

    registry: Registry
    store: SeatStore
    policy: Policy
    clock: Callable[[], float]
    max_frame_bytes: int
    max_inflight: int
    send_queue: int
    draining: bool = False


class Connection:
    def __init__(self, ws: ServerConnection, identity: Identity, ctx: GatewayContext) -> None:
        self.ws = ws
        self.identity = identity
        self.ctx = ctx
        self.session_id = f"s{next(_session_ids)}"
        self.inflight = 0
        self._capacity = asyncio.Event()
        self._outbound: deque[bytes] = deque()
        self._outbound_ready = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing is waiting to be written
        self._drained.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.idle = asyncio.Event()
        self.idle.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write_loop())
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
                    max_seats_per_hold=wire.MAX_SEATS_PER_HOLD,
                ),
            )
        )
        try:
            async for frame in self.ws:
                self._on_frame(frame)
                if self.inflight >= self.ctx.max_inflight:
                    self._capacity.clear()
                    await self._capacity.wait()
        except ConnectionClosed:
            pass
        finally:
            for task in self._tasks:
                task.cancel()
            writer.cancel()

    async def go_away(self, reason: str, code: int = CloseCode.SERVICE_RESTART) -> None:
        """Tell the client why, let queued replies flush, and close."""
        if self._closing:
            return
        self.send(encode_push("goaway", wire.GoAway(reason=reason, reconnect=True)))
        self._closing = True
        await self._flush(timeout=2.0)
        await self.ws.close(code, reason)

    # --- outbound --------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self._closing:
            return
        if len(self._outbound) >= self.ctx.send_queue:
            self._closing = True
            log.warning("slow_consumer", session_id=self.session_id, queued=len(self._outbound))
            self._outbound.clear()
            self._spawn(
                self.ws.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resume")
            )
            return
        self._outbound.append(frame)
        self._outbound_ready.set()
        self._drained.clear()

    async def _write_loop(self) -> None:
        outbound, ready, ws = self._outbound, self._outbound_ready, self.ws
        try:
            while True:
                await ready.wait()
                ready.clear()
                while outbound:
                    await ws.send(outbound.popleft(), text=True)
                self._drained.set()
        except ConnectionClosed:
            pass

    async def _flush(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)

    # --- inbound ---------------------------------------------------------------------------

    def _on_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self.send(
                encode_error(
                    None, None, "invalid_json", "send requests as text frames", temporary=False
                )
            )
            return
        try:
            request_id, request_type, request = decode_request(frame)
        except DecodeError as error:
            self.send(
                encode_error(
                    error.request_id,
                    error.request_type,
                    error.code,
                    error.message,
                    temporary=False,
                    details=error.details,
                )
            )
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
        elif isinstance(request, wire.CreateEvent | wire.ListEvents):
            self._track(request_id, request_type, self._spawn(self._serve_store(request)))
        else:
            self._to_actor(request_id, request_type, request)

    def _to_actor(self, request_id: RequestId, request_type: str, request: Any) -> None:
        try:
            command = to_command(request, self.identity)
        except SeatdError as error:
            self.send(error_frame(request_id, request_type, error))
            return
        event_id: str = request.event_id
        to_wire = partial(result_to_wire, event_id, command)
        envelope = Envelope(
            command, idempotency=idempotency_key(self.identity, request_type, request, to_wire)
        )
        registry = self.ctx.registry
        try:
            future: asyncio.Future[Any] | None = registry.submit_nowait(event_id, envelope)
        except SeatdError as error:
            self.send(error_frame(request_id, request_type, error))
            return
        if future is None:
            future = self._spawn(registry.ask(event_id, command, envelope))
        self._track(request_id, request_type, future, to_wire)

    def _track(
        self,
        request_id: RequestId,
        request_type: str,
        future: asyncio.Future[Any],
        to_wire: Callable[[Any], object] | None = None,
    ) -> None:
        self.inflight += 1
        self.idle.clear()
        future.add_done_callback(partial(self._done, request_id, request_type, to_wire))

    def _done(
        self,
        request_id: RequestId,
        request_type: str,
        to_wire: Callable[[Any], object] | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.inflight -= 1
        if self.inflight < self.ctx.max_inflight:
            self._capacity.set()
        if self.inflight == 0:
            self.idle.set()
        if future.cancelled():
            error: BaseException | None = ShuttingDown(
                "the request was cancelled by a shutdown; retry"
            )
        else:
            error = future.exception()
        if error is None:
            result = future.result()
            if isinstance(result, StoredReply):
                self.send(encode_stored_reply(request_id, request_type, result.response))
                return
            self.send(
                encode_result(request_id, request_type, to_wire(result) if to_wire else result)
            )
        elif isinstance(error, SeatdError):
            self.send(error_frame(request_id, request_type, error))
        else:
            log.error(
                "request_failed",
                session_id=self.session_id,
                request_type=request_type,
                exc_info=error,
            )
            self.send(
                encode_error(
                    request_id,
                    request_type,
                    "internal_error",
                    "unexpected server error; retry",
                    temporary=True,
                )
            )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- requests served without an actor --------------------------------------------------

    async def _serve_store(self, request: wire.CreateEvent | wire.ListEvents) -> object:
        if isinstance(request, wire.CreateEvent):
            return await self._create_event(request)
        if request.radius_m is not None and request.near is None:
            raise InvalidRequest("radius_m needs near", details={"path": "$.radius_m"})
        near = (request.near.latitude, request.near.longitude) if request.near else None
        page = await self.ctx.store.list_events(
            near=near, radius_m=request.radius_m, limit=request.limit, after=request.after
        )
        views = []
        for info, distance in page.events:
            rules = self.ctx.policy.for_event(info)
            views.append(
                event_view(
                    info,
                    hold_duration=rules.hold_duration,
                    max_seats_per_user=rules.max_seats_per_user,
                    distance_m=distance,
                )
            )
        return wire.EventPage(tuple(views), page.next_after)

    async def _create_event(self, request: wire.CreateEvent) -> object:
        self.identity.require_admin("create events")
        event = new_event(request)
        view = self._created_view(event)
        key = idempotency_key(self.identity, "create_event", request, lambda _: view)
        if key is None:
            await self.ctx.store.create_event(event)
            return view
        record = key.record(view)
        earlier = await self.ctx.store.create_event(event, record)
        if earlier is None:
            return StoredReply(record.response)
        if earlier.request_hash != key.request_hash:
            raise IdempotencyMismatch(
                f"idempotency key {key.key!r} was used for a different request",
                details={"idempotency_key": key.key},
            )
        return StoredReply(earlier.response)

    def _created_view(self, event: NewEvent) -> wire.EventView:
        rules = self.ctx.policy.for_event(event.info)
        total = len(event.seats)
        summary = core.EventSummary(
            event.info, total, total, 0, 0, 0, rules.hold_duration, rules.max_seats_per_user
        )
        return event_view(
            event.info,
            hold_duration=rules.hold_duration,
            max_seats_per_user=rules.max_seats_per_user,
            live=summary,
        )
