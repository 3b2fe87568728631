"""Python SDK for seatd: typed requests and live seat maps over one ``seatd.v1`` WebSocket.

Needs only ``websockets`` and ``orjson``. Results are the protocol's own dataclasses
(``protocol.messages``); error replies raise the typed exceptions of ``protocol.errors``
(``ConflictError``, ``NotFoundError``, ... with ``.code``, ``.details``, ``.retry_after_ms``).

What the client does for you:

- **Reconnects** with exponential backoff and full jitter when the connection drops (except
  after ``close()``, a terminal close code 4500-4999, or HTTP 401/403 on a reconnect: then
  every waiting call raises ``AccessError`` for 4501/4503 and 401/403, ``ClientClosedError``
  for the other terminal codes). A refused handshake's ``Retry-After`` (503 or 429 while the
  server is full or draining) is a floor for the next wait. A ``goaway`` push makes it move to
  a new connection.
- **Resends** every request still waiting for a reply on the new connection. Each mutation
  (``create_event``, ``hold``, ``refresh``, ``release``, ``reserve``) carries an idempotency
  key (a fresh UUID per call unless you pass ``idempotency_key=``), the same on every attempt,
  so the server applies it once and replays its first answer.
- **Retries** temporary error replies (``unavailable``, ``overloaded``, ``rate_limited``,
  ``shutting_down``, ``internal_error``) up to ``max_retries`` times, never sooner than the
  server's ``retry_after_ms``; permanent errors raise at once. A request larger than the
  server's ``max_frame_bytes`` (from ``welcome``) raises ``InvalidRequestError`` without being
  sent: the server would close the connection (1009) instead of answering it. The same goes
  for a request waiting to be resent when the next server's limit is lower.
- **Watches**: ``client.watch(event_id)`` keeps a local seat map (``watch.seats``: seat id ->
  ``"held"``/``"reserved"``; absent means available) in step with the server: snapshot,
  then live deltas; a missed version or a reconnect re-subscribes from the last version seen
  (resume) or takes a new snapshot. ``watch.seats`` is always current; the queue of updates
  is bounded (``watch_buffer``) and a slow consumer gets intermediate updates folded into one
  (``update.coalesced``) rather than unbounded memory.
- **Pushes** ``hold_expiring``, ``hold_expired``, ``token_expiring`` and ``goaway`` go to the
  ``on_push`` callback. Hold pushes reach the connection that made (or last refreshed) a hold;
  after a reconnect, refresh a hold to be warned about it again.
- **Tokens**: pass ``token=`` a string, or a callable (sync or async) returning a fresh token.
  With a callable, the client renews the connection's token in band (``authenticate``) when
  the server announces ``token_expiring``, and takes a new one for every reconnect; with a
  string, the server closes the connection (4001) when the token expires.

Example::

    import asyncio

    from protocol.client import (
        ConflictError,
        HoldExpiring,
        Push,
        SeatBlock,
        SeatClient,
    )

    URL = "ws://localhost:8080/"


    def on_push(push: Push) -> None:
        if isinstance(push, HoldExpiring):
            print(f"hold {push.hold_id} expires at {push.expires_at}: refresh or reserve")


    async def main(admin_token: str, user_token: str) -> None:
        async with SeatClient(URL, token=admin_token) as admin:
            try:
                await admin.create_event(
                    "Winter Gala",
                    event_id="winter-gala",
                    blocks=[SeatBlock(rows=("A", "B"), seats_per_row=10)],
                )
            except ConflictError as error:  # event_exists: a second run of this example
                print(error.code)

        # token may also be a (sync or async) callable: it is called before every connection.
        async with SeatClient(URL, token=lambda: user_token, on_push=on_push) as client:
            async with client.watch("winter-gala") as watch:
                await watch.synced()  # first snapshot applied
                print(f"{len(watch.seats)} of {watch.total_seats} seats taken (v{watch.version})")
                try:
                    hold = await client.hold("winter-gala", ["A-1", "A-2"])
                except ConflictError as error:  # seat_unavailable, seat_limit_exceeded, ...
                    print(error.code, error.details.get("conflicts"))
                    return
                reservation = await client.reserve("winter-gala", hold.hold_id)
                print("reserved", reservation.seat_ids, "as", reservation.reservation_id)
                async for update in watch:  # live: version, net changes
                    for change in update.changes:
                        print(update.version, change.seat_id, change.state)
                    if watch.state("A-1") == "reserved":
                        break


    asyncio.run(main("<admin JWT>", "<user JWT>"))
"""

from __future__ import annotations

from protocol.client._backoff import Backoff
from protocol.client._client import PushHandler, SeatClient
from protocol.client._errors import ClientClosedError, ProtocolViolationError, SeatClientError
from protocol.client._seatmap import SeatState, SeatUpdate, UpdateKind
from protocol.client._session import Push
from protocol.client._transport import TokenSource
from protocol.client._watch import Watch
from protocol.errors import (
    AccessError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermanentError,
    RemoteError,
    TemporaryError,
)
from protocol.messages import (
    Authenticated,
    AvailableSeats,
    EventPage,
    EventView,
    GoAway,
    HoldExpired,
    HoldExpiring,
    HoldView,
    Location,
    Pong,
    Released,
    ReservationView,
    SeatBlock,
    SeatChange,
    SeatSpec,
    SeatView,
    TokenExpiring,
    Welcome,
)

__all__ = [
    "AccessError",
    "Authenticated",
    "AvailableSeats",
    "Backoff",
    "ClientClosedError",
    "ConflictError",
    "EventPage",
    "EventView",
    "GoAway",
    "HoldExpired",
    "HoldExpiring",
    "HoldView",
    "InvalidRequestError",
    "Location",
    "NotFoundError",
    "PermanentError",
    "Pong",
    "ProtocolViolationError",
    "Push",
    "PushHandler",
    "Released",
    "RemoteError",
    "ReservationView",
    "SeatBlock",
    "SeatChange",
    "SeatClient",
    "SeatClientError",
    "SeatSpec",
    "SeatState",
    "SeatUpdate",
    "SeatView",
    "TemporaryError",
    "TokenExpiring",
    "TokenSource",
    "UpdateKind",
    "Watch",
    "Welcome",
]
