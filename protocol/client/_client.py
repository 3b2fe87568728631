"""``SeatClient``: typed requests over one WebSocket that survives disconnects.

One supervisor task owns the connection: it reads frames and hands them to the sans-I/O
``Session``, and when the connection drops it reconnects with backoff, sends again every request
still waiting for a reply (mutations carry their idempotency key, so none is applied twice) and
re-subscribes every watched event from the last version seen. Each watched event has one small
task that sends its subscribes and unsubscribes in order, so the server never sees an
unsubscribe overtake the subscribe it cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol.client._backoff import Backoff
from protocol.client._errors import ClientClosedError
from protocol.client._session import (
    Call,
    Failed,
    Ignored,
    Push,
    Pushed,
    Replied,
    ResyncNeeded,
    SeatsChanged,
    Session,
)
from protocol.client._transport import (
    RETRYABLE,
    TokenSource,
    open_connection,
    resolve_token,
    retry_after_ms,
    terminal_close,
)
from protocol.client._watch import Watch
from protocol.errors import InvalidRequestError, RemoteError, TemporaryError
from protocol.messages import (
    Authenticate,
    Authenticated,
    AvailableSeats,
    CreateEvent,
    EventPage,
    EventView,
    GetEvent,
    GoAway,
    HoldRequest,
    HoldView,
    ListAvailable,
    ListEvents,
    Location,
    Ping,
    Pong,
    Refresh,
    Release,
    Released,
    Request,
    ReservationView,
    Reserve,
    SeatBlock,
    SeatSpec,
    TokenExpiring,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)

__all__ = ["PushHandler", "SeatClient"]

log = logging.getLogger("seatd.client")
R = TypeVar("R")
PushHandler = Callable[[Push], object]
_Outcome = Replied | Failed
# A connection that lived this long resets the reconnect backoff; shorter ones keep growing it.
_STABLE_AFTER_S = 2.0


@dataclass(eq=False)
class _Watched:
    """The watches of one event and the task that keeps the server subscription in step."""

    event_id: str
    watches: list[Watch] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SeatClient:
    """A seatd.v1 client: ``async with SeatClient(url, token=...) as client: ...``.

    ``token`` is a string or a callable returning one (or an awaitable of one), called before
    every connection so reconnects can use a fresh token. ``request_timeout`` bounds each
    method call, retries and reconnect waits included (then ``TimeoutError``). Temporary
    error replies are retried up to ``max_retries`` times with ``backoff``. ``on_push`` is
    called (in the reader: keep it quick) with every ``hold_expiring``, ``hold_expired``,
    ``token_expiring`` and ``goaway`` push. ``watch_buffer`` bounds each watch's queue of updates.
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource,
        connect_timeout: float = 10.0,
        request_timeout: float = 15.0,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        on_push: PushHandler | None = None,
        watch_buffer: int = 64,
        max_frame_bytes: int | None = 32 * 1024 * 1024,
        goaway_grace: float = 2.0,
    ) -> None:
        self.url = url
        self._token = token
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._max_retries = max_retries
        self._backoff = backoff or Backoff()
        self._on_push = on_push
        self._watch_buffer = watch_buffer
        self._max_frame_bytes = max_frame_bytes
        self._goaway_grace = goaway_grace
        self._session = Session()
        self._conn: ClientConnection | None = None
        self._retiring = False  # the server said goaway: send nothing more on this connection
        self._retire_timer: asyncio.TimerHandle | None = None
        self._no_reconnect: str | None = None  # a goaway said not to come back, and why
        self._welcome: Welcome | None = None
        self._waiters: dict[Call[Any], asyncio.Future[_Outcome]] = {}
        self._watched: dict[str, _Watched] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._closing = False
        self._failure: Exception | None = None
        self.connections = 0  # successful connections so far (1 + reconnects)

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the first connection; failures raise here (fail fast on a bad URL or token)."""
        if self._supervisor is not None:
            raise RuntimeError("SeatClient.connect() was already called")
        token = await resolve_token(self._token)
        ws, welcome = await open_connection(
            self.url, token, timeout=self._connect_timeout, max_frame_bytes=self._max_frame_bytes
        )
        self._install(ws, welcome)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(ws))

    async def close(self) -> None:
        """Close for good: waiting calls raise ``ClientClosedError``, watches end."""
        if self._closing:
            return
        self._closing = True
        self._shut_down(ClientClosedError("the client was closed"), graceful=True)
        conn = self._conn
        if conn is not None:
            await conn.close()
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def welcome(self) -> Welcome | None:
        """The ``welcome`` of the current (or last) connection: user, role, server limits."""
        return self._welcome

    @property
    def connected(self) -> bool:
        return self._usable() is not None

    # --- requests ----------------------------------------------------------------------------

    async def ping(self) -> Pong:
        return await self._request(Ping(), Pong)

    async def authenticate(self, token: str | None = None) -> Authenticated:
        """Give the connection a fresh token (same user and role) before its token expires;
        by default one from the client's token source. Done by itself on ``token_expiring``
        when the token source is a callable."""
        fresh = token if token is not None else await resolve_token(self._token)
        return await self._request(Authenticate(fresh), Authenticated)

    async def create_event(
        self,
        name: str,
        *,
        event_id: str | None = None,
        seats: Iterable[SeatSpec] = (),
        blocks: Iterable[SeatBlock] = (),
        starts_at: str | datetime | None = None,
        venue: str | None = None,
        location: Location | tuple[float, float] | None = None,
        hold_duration_s: int | None = None,
        max_seats_per_user: int | None = None,
        idempotency_key: str | None = None,
    ) -> EventView:
        message = CreateEvent(
            name=name,
            event_id=event_id,
            starts_at=_rfc3339(starts_at),
            venue=venue,
            location=_location(location),
            hold_duration_s=hold_duration_s,
            max_seats_per_user=max_seats_per_user,
            seats=tuple(seats),
            blocks=tuple(blocks),
            idempotency_key=idempotency_key,
        )
        return await self._request(message, EventView)

    async def get_event(self, event_id: str) -> EventView:
        return await self._request(GetEvent(event_id), EventView)

    async def list_events(
        self,
        *,
        near: Location | tuple[float, float] | None = None,
        radius_m: float | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> EventPage:
        message = ListEvents(near=_location(near), radius_m=radius_m, limit=limit, after=after)
        return await self._request(message, EventPage)

    async def hold(
        self,
        event_id: str,
        seat_ids: Iterable[str],
        *,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> HoldView:
        message = HoldRequest(event_id, tuple(seat_ids), on_behalf_of, idempotency_key)
        return await self._request(message, HoldView)

    async def refresh(
        self,
        event_id: str,
        hold_id: str,
        *,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> HoldView:
        message = Refresh(event_id, hold_id, on_behalf_of, idempotency_key)
        return await self._request(message, HoldView)

    async def release(
        self,
        event_id: str,
        hold_id: str,
        *,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> Released:
        message = Release(event_id, hold_id, on_behalf_of, idempotency_key)
        return await self._request(message, Released)

    async def reserve(
        self,
        event_id: str,
        hold_id: str,
        *,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> ReservationView:
        message = Reserve(event_id, hold_id, on_behalf_of, idempotency_key)
        return await self._request(message, ReservationView)

    async def list_available(
        self,
        event_id: str,
        *,
        section: str | None = None,
        category: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> AvailableSeats:
        message = ListAvailable(event_id, section, category, limit, after)
        return await self._request(message, AvailableSeats)

    async def _request(self, message: Request, result: type[R]) -> R:
        call = self._session.call(message, result)
        async with asyncio.timeout(self._request_timeout):
            return await self._execute(call, self._max_retries)

    async def _execute(self, call: Call[R], retries: int | None) -> R:
        """Send ``call`` until it has an answer: resent after reconnects (by the supervisor),
        retried after temporary errors (up to ``retries`` times; None: no limit)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._raise_if_stopped()
                future: asyncio.Future[_Outcome] = loop.create_future()
                self._waiters[call] = future
                frame = self._session.send(call)
                self._check_size(frame)
                conn = self._usable()
                if conn is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await conn.send(frame, text=True)
                outcome = await future
                if isinstance(outcome, Replied):
                    result: R = outcome.result
                    return result
                error = outcome.error
                if not isinstance(error, TemporaryError):
                    raise error
                if retries is not None and call.attempts > retries:
                    raise error
                if error.code == "shutting_down" and conn is not None:
                    self._retire(conn)  # this server is going away: retry on the next one
                await self._sleep(self._backoff.delay(call.attempts - 1, error.retry_after_ms))
        finally:
            self._waiters.pop(call, None)
            self._session.forget(call)

    def _check_size(self, frame: bytes) -> None:
        """Refuse a frame the server would answer by closing the connection (1009): sent again
        after every reconnect, it would cut the connection over and over."""
        limit = self._welcome.max_frame_bytes if self._welcome is not None else None
        if limit is not None and len(frame) > limit:
            raise InvalidRequestError(
                "invalid_request",
                f"the request takes {len(frame)} bytes, more than the server's max_frame_bytes"
                f" ({limit}); send less (create_event: describe seats with blocks)",
                details={"path": "$", "max_frame_bytes": limit},
            )

    # --- watching ----------------------------------------------------------------------------

    def watch(self, event_id: str, *, buffer: int | None = None) -> Watch:
        """Watch an event's seats: ``async for update in client.watch(event_id)``.

        Subscribes in the background (``await watch.synced()`` waits for the first snapshot)
        and keeps the subscription across reconnects. Close with ``await watch.aclose()`` or
        ``async with client.watch(event_id) as watch``.
        """
        self._raise_if_stopped()
        subscription = self._session.watch(event_id)
        size = self._watch_buffer if buffer is None else buffer
        watch = Watch(subscription.seats, size, self._unwatch)
        entry = self._watched.get(event_id)
        if entry is None:
            entry = _Watched(event_id)
            self._watched[event_id] = entry
            entry.task = self._spawn(self._maintain(entry))
        else:
            current = subscription.seats.current()
            if current is not None:
                watch._deliver(current)
        entry.watches.append(watch)
        entry.wake.set()
        return watch

    async def _unwatch(self, watch: Watch) -> None:
        entry = self._watched.get(watch.event_id)
        if entry is None or watch not in entry.watches:
            return
        entry.watches.remove(watch)
        if entry.watches:
            return
        entry.released.clear()
        entry.wake.set()
        if self._usable() is not None:  # wait for the unsubscribe, when one can be sent
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._request_timeout):
                    await entry.released.wait()

    async def _maintain(self, entry: _Watched) -> None:
        """Keep the event's subscription in step with its watches, one request at a time."""
        session, event_id = self._session, entry.event_id
        error: BaseException | None = None
        try:
            while True:
                entry.wake.clear()
                if not entry.watches:
                    await self._unsubscribe(event_id)
                    entry.released.set()
                    if not entry.watches:
                        return
                    continue  # watched again meanwhile: re-subscribe (resume)
                self._raise_if_stopped()  # a live map gets no more changes: end its watches
                subscription = session.watch(event_id)
                if subscription.syncing:
                    await self._execute(session.subscribe_call(event_id), None)
                    continue
                await entry.wake.wait()
        except (RemoteError, ClientClosedError) as failure:
            error = failure
        except Exception as failure:
            log.exception("watch of %s failed", event_id)
            error = failure
        finally:
            if self._watched.get(event_id) is entry:
                del self._watched[event_id]
            session.unwatch(event_id)
            graceful = self._closing and isinstance(error, ClientClosedError)
            for watch in entry.watches:
                watch._end(None if graceful else error)
            entry.released.set()

    async def _unsubscribe(self, event_id: str) -> None:
        self._session.mark_unsynced(event_id)
        if self._usable() is None:
            return  # the server forgets subscriptions with the connection
        call = self._session.call(Unsubscribe(event_id), Unsubscribed)
        with contextlib.suppress(RemoteError, TimeoutError):
            async with asyncio.timeout(self._request_timeout):
                await self._execute(call, 0)

    # --- the connection ----------------------------------------------------------------------

    def _usable(self) -> ClientConnection | None:
        return None if self._retiring else self._conn

    def _install(self, ws: ClientConnection, welcome: Welcome) -> None:
        """Make ``ws`` the connection and send again what is still waiting for a reply."""
        self._conn, self._welcome, self._retiring = ws, welcome, False
        self.connections += 1
        frames: list[bytes] = []
        for call, frame in self._session.pending():
            try:
                self._check_size(frame)  # this server may take less than the last one
            except InvalidRequestError as error:
                self._session.forget(call)
                future = self._waiters.get(call)
                if future is not None and not future.done():
                    future.set_result(Failed(call, error))
                continue
            frames.append(frame)
        if frames:
            self._spawn(_send_all(ws, frames))

    async def _supervise(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            opened = loop.time()
            await self._read(ws)
            self._conn = None
            if self._retire_timer is not None:
                self._retire_timer.cancel()
                self._retire_timer = None
            if self._closing:
                return
            terminal = terminal_close(ws.close_code, ws.close_reason or "")
            if terminal is None and self._no_reconnect is not None:
                terminal = ClientClosedError(f"the server said goaway: {self._no_reconnect}")
            if terminal is not None:
                self._shut_down(terminal)
                return
            log.info("connection lost (close code %s); reconnecting", ws.close_code)
            for event_id in self._session.connection_lost():
                entry = self._watched.get(event_id)
                if entry is not None:
                    entry.wake.set()
            if loop.time() - opened >= _STABLE_AFTER_S:
                attempt = 0
            try:
                ws, welcome, attempt = await self._reconnect(attempt)
            except Exception as error:
                self._shut_down(error)
                return
            self._install(ws, welcome)

    async def _reconnect(self, attempt: int) -> tuple[ClientConnection, Welcome, int]:
        asked_ms: int | None = None  # the last refusal's Retry-After: a floor for the wait
        while True:
            await self._sleep(self._backoff.delay(attempt, asked_ms))
            attempt += 1
            self._raise_if_stopped()
            try:
                token = await resolve_token(self._token)
                ws, welcome = await open_connection(
                    self.url,
                    token,
                    timeout=self._connect_timeout,
                    max_frame_bytes=self._max_frame_bytes,
                )
            except RETRYABLE as error:
                log.info("reconnect attempt %d failed: %r", attempt, error)
                asked_ms = retry_after_ms(error)
                continue
            return ws, welcome, attempt

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in ws:
                try:
                    self._dispatch(ws, data)
                except Exception:  # a bug in a handler must not stop the reader
                    log.exception("failed to handle a frame")

    def _dispatch(self, ws: ClientConnection, data: str | bytes) -> None:
        for event in self._session.receive(data):
            if isinstance(event, Replied | Failed):
                future = self._waiters.pop(event.call, None)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, SeatsChanged):
                entry = self._watched.get(event.update.event_id)
                for watch in entry.watches if entry is not None else ():
                    watch._deliver(event.update)
            elif isinstance(event, ResyncNeeded):
                entry = self._watched.get(event.event_id)
                if entry is not None:
                    entry.wake.set()
            elif isinstance(event, Pushed):
                self._pushed(ws, event.message)
            elif isinstance(event, Ignored):
                log.debug("ignored %s", event.reason)

    def _pushed(self, ws: ClientConnection, message: Push | Welcome) -> None:
        if isinstance(message, Welcome):
            return  # only ever the first frame, read by open_connection
        if isinstance(message, GoAway):
            if not message.reconnect:
                self._no_reconnect = message.reason
            self._retire(ws)
        elif isinstance(message, TokenExpiring) and not isinstance(self._token, str):
            self._spawn(self._refresh_token())
        if self._on_push is not None:
            try:
                self._on_push(message)
            except Exception:
                log.exception("on_push callback failed")

    async def _refresh_token(self) -> None:
        try:
            await self.authenticate()
        except Exception as error:  # the server closes with 4001; the reconnect takes a new one
            log.warning("token refresh failed: %r", error)

    def _retire(self, ws: ClientConnection) -> None:
        """Stop sending on ``ws`` (the server is leaving); close it if the server does not."""
        if self._conn is not ws or self._retiring:
            return
        self._retiring = True
        self._retire_timer = asyncio.get_running_loop().call_later(
            self._goaway_grace, lambda: self._spawn(ws.close(1000, "goaway"))
        )

    # --- shutting down -----------------------------------------------------------------------

    def _raise_if_stopped(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _shut_down(self, error: Exception, *, graceful: bool = False) -> None:
        """No more connections: every waiting call fails with ``error``, watches end."""
        if self._failure is None:
            self._failure = error
        self._stopped.set()
        if not graceful:
            log.warning("seatd client stopped: %s", error)
        self._session.forget_all()
        for call, future in list(self._waiters.items()):
            if not future.done():
                future.set_result(Failed(call, error))
        for entry in self._watched.values():
            entry.wake.set()

    async def _sleep(self, delay: float) -> None:
        """Sleep, but wake up at once when the client stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopped.wait()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _send_all(ws: ClientConnection, frames: list[bytes]) -> None:
    with contextlib.suppress(ConnectionClosed):
        for frame in frames:
            await ws.send(frame, text=True)


def _rfc3339(value: str | datetime | None) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("starts_at needs a timezone (an aware datetime)")
        return value.isoformat()
    return value


def _location(value: Location | tuple[float, float] | None) -> Location | None:
    if value is None or isinstance(value, Location):
        return value
    latitude, longitude = value
    return Location(latitude, longitude)
