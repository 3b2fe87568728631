"""The WebSocket and HTTP endpoint: handshake checks, health probes, connections, drain.

Before the upgrade: ``GET /healthz`` (the process is alive) and ``GET /readyz`` (dependencies:
503 when PostgreSQL is down or the server is draining, 200 with ``"degraded"`` when only Redis
is down, because holds still expire on time without it), and ``GET /metrics``
(``seatd.gateway.metrics``; 404 unless SEATD_METRICS=on). A token on the upgrade
(``Authorization: Bearer`` header or ``?token=`` query parameter) is checked before it (HTTP 401
when invalid); an upgrade without one is accepted and must authenticate in its first message
(browsers cannot set headers). An ``Origin`` not in SEATD_ALLOWED_ORIGINS gets HTTP 403. The
subprotocol is ``seatd.v1``; a client offering only other versions is refused with HTTP 400, a
client offering none gets v1.

Buffers are bounded: ``max_size`` caps a frame, ``max_queue`` caps frames read ahead, and
permessage-deflate is off (a small compressed frame can inflate enormously).
"""

from __future__ import annotations

import asyncio
import http
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from protocol.errors import CloseCode
from protocol.messages import PROTOCOL_VERSION
from seatd.auth import Identity, TokenAuthority
from seatd.errors import Unauthenticated
from seatd.gateway.connection import Connection, GatewayContext
from seatd.gateway.inbound import MessageConnection
from seatd.gateway.keepalive import Keepalive
from seatd.gateway.metrics import CONTENT_TYPE, Gauges, render

__all__ = ["Gateway", "Readiness"]

log = structlog.get_logger("seatd.gateway")


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    degraded: bool
    checks: dict[str, str]


class Gateway:
    def __init__(
        self,
        ctx: GatewayContext,
        authority: TokenAuthority,
        readiness: Callable[[], Awaitable[Readiness]],
        *,
        allowed_origins: Sequence[str] = (),
        handshake_timeout: float = 10.0,
        address_header: str = "",
        metrics: bool = False,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
    ) -> None:
        self.ctx = ctx
        self._metrics = metrics
        self._allowed_origins = frozenset(allowed_origins)
        self._handshake_timeout = handshake_timeout
        self._address_header = address_header
        self._authority = authority
        self._readiness = readiness
        # Filled by the handshake, read by the handler; weak, so a handshake that fails after
        # the token check (bad subprotocol) leaves nothing behind.
        self._identities: weakref.WeakKeyDictionary[ServerConnection, Identity] = (
            weakref.WeakKeyDictionary()
        )
        self.connections: set[Connection] = set()
        self._server: Server | None = None
        self._keepalive = Keepalive(
            lambda: (c.ws for c in self.connections), interval=ping_interval, timeout=ping_timeout
        )

    async def start(self, host: str, port: int) -> Server:
        self._server = await serve(
            self._handle,
            host,
            port,
            subprotocols=[Subprotocol(PROTOCOL_VERSION)],
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            compression=None,
            max_size=self.ctx.max_frame_bytes,
            max_queue=8,
            write_limit=64 * 1024,
            ping_interval=None,  # the gateway's own keep-alive: one task, not one per connection
            open_timeout=self._handshake_timeout,
            close_timeout=5,
            server_header=None,
            create_connection=MessageConnection,
        )
        self._keepalive.start()
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    def _metrics_page(self, ws: ServerConnection) -> Response:
        gauges = Gauges(
            connections=len(self.connections),
            requests_in_progress=self.ctx.pending.count,
            events_loaded=len(self.ctx.registry),
        )
        page = render(gauges, self.ctx.registry.stats)
        return _response(ws, http.HTTPStatus.OK, page.encode(), CONTENT_TYPE)

    # --- handshake -------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in _HTTP_PATHS:
            if request.method not in ("GET", "HEAD"):
                # As websockets refuses other methods on the upgrade path: a POST /readyz must
                # not read as a readiness answer.
                response = _json_response(
                    ws,
                    http.HTTPStatus.METHOD_NOT_ALLOWED,
                    {"error": "method_not_allowed", "message": f"{path} answers GET and HEAD"},
                )
                response.headers["Allow"] = "GET, HEAD"
                return response
            response = await self._http_page(ws, path)
            if request.method == "HEAD":  # what a GET gets, headers and status, without the body
                response.body = b""
            return response
        if self.ctx.draining:
            return _json_response(
                ws, http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "shutting_down"}
            )
        # A header sent twice is read as all its values: Headers.get raises on a repeated one.
        # Two name no single origin, whether or not origins are checked (websockets itself
        # would refuse them later with a plain-text 400).
        origins = request.headers.get_all("Origin")
        allowed = self._allowed_origins
        if len(origins) > 1 or (allowed and origins and origins[0].rstrip("/") not in allowed):
            origin = ", ".join(origins)
            return _json_response(
                ws,
                http.HTTPStatus.FORBIDDEN,
                {"error": "forbidden", "message": f"origin {origin!r} is not allowed"},
            )
        identity = None
        try:
            token = _token_from(request)
            if token is not None:  # else the first message must be `authenticate`
                identity = self._authority.verify(token)
        except Unauthenticated as error:
            return _unauthorized(ws, error.message)
        # Only a check: the connection is counted once it is open (see _handle).
        counter = self.ctx.connections
        address = _client_address(ws, request, self._address_header)
        refusal = counter.admit_address(address)
        if refusal is not None:
            return _too_many(ws, refusal)
        user_ok = identity is None or counter.admit_user(identity.user_id)
        counter.leave(address, identity.user_id if identity is not None and user_ok else None)
        if not user_ok:
            return _too_many(ws, "user")
        if identity is not None:
            self._identities[ws] = identity
        return None

    async def _http_page(self, ws: ServerConnection, path: str) -> Response:
        """The answer to a GET of one of _HTTP_PATHS."""
        if path == "/healthz":
            return _json_response(ws, http.HTTPStatus.OK, {"status": "ok"})
        if path == "/readyz":
            state = await self._readiness()
            status = http.HTTPStatus.OK if state.ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            label = (
                "degraded"
                if state.ready and state.degraded
                else ("ready" if state.ready else "unavailable")
            )
            return _json_response(ws, status, {"status": label, "checks": state.checks})
        # /metrics
        if not self._metrics:  # say why, rather than a failed WebSocket handshake
            return _json_response(
                ws,
                http.HTTPStatus.NOT_FOUND,
                {"error": "not_found", "message": "metrics are off (SEATD_METRICS=on)"},
            )
        return self._metrics_page(ws)

    # --- connections -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        identity = self._identities.pop(ws, None)  # None: authenticates in its first message
        counter = self.ctx.connections
        address = _client_address(ws, ws.request, self._address_header)
        if counter.admit_address(address) is not None:  # filled up since the handshake's check
            await ws.close(CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        connection = Connection(cast(MessageConnection, ws), identity, self.ctx)  # see start
        if identity is not None:
            if not counter.admit_user(identity.user_id):
                counter.leave(address)
                await ws.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
                return
            connection.counted_user = identity.user_id
        self.connections.add(connection)
        structlog.contextvars.bind_contextvars(
            session_id=connection.session_id, user_id=identity.user_id if identity else None
        )
        log.info(
            "connected", role=identity.role if identity else None, remote=str(ws.remote_address)
        )
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            counter.leave(address, connection.counted_user)
            if connection.counted_user is not None:
                self.ctx.rates.release(connection.counted_user, time.monotonic())
            log.info("disconnected", code=ws.close_code)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, answer everything in flight, tell clients, close them (1012)."""
        self.ctx.draining = True
        if self._server is not None:
            self._server.server.close()  # stop accepting; open connections stay for now
        pending = [c.wait_idle() for c in self.connections if c.inflight]
        if pending:
            _, still = await asyncio.wait(
                [asyncio.ensure_future(p) for p in pending], timeout=timeout
            )
            for task in still:
                task.cancel()

    async def close(self) -> None:
        await self._keepalive.close()
        closing: Sequence[Awaitable[None]] = [
            c.go_away("server restart", CloseCode.SERVICE_RESTART) for c in list(self.connections)
        ]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        if self._server is not None:
            self._server.close(
                close_connections=True, code=CloseCode.SERVICE_RESTART, reason="server restart"
            )
            await self._server.wait_closed()


def _select_subprotocol(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    if not offered:
        return None  # plain clients (browsers' dev tools, CLI tools) speak v1
    if PROTOCOL_VERSION in offered:
        return Subprotocol(PROTOCOL_VERSION)
    raise NegotiationError(f"unsupported subprotocol; this server speaks {PROTOCOL_VERSION}")


def _token_from(request: Request) -> str | None:
    headers = request.headers.get_all("Authorization")
    if len(headers) > 1:  # which one counts would be a guess
        raise Unauthenticated("invalid token: more than one Authorization header")
    header = headers[0] if headers else None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = parse_qs(urlsplit(request.path).query)
    values = query.get("token") or query.get("access_token")
    if values and len(values) > 1:  # as with two headers: which one counts would be a guess
        raise Unauthenticated("invalid token: more than one token parameter")
    return values[0] if values else None


# The paths answered over plain HTTP; every other one is a WebSocket upgrade.
_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _json_response(
    ws: ServerConnection, status: http.HTTPStatus, body: dict[str, object]
) -> Response:
    return _response(ws, status, orjson.dumps(body) + b"\n", "application/json")


def _response(
    ws: ServerConnection, status: http.HTTPStatus, payload: bytes, content_type: str
) -> Response:
    response = ws.respond(status, "")
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(response.status_code, response.reason_phrase, headers, payload)


def _client_address(ws: ServerConnection, request: Request | None, header: str) -> str:
    """The client's address: from the trusted proxy's header when configured (the last entry
    of X-Forwarded-For is the one the proxy itself added), else the socket's peer."""
    if header and request is not None:
        values = request.headers.get_all(header)
        if values and values[-1]:
            return values[-1].rsplit(",", 1)[-1].strip()
    peer = ws.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _too_many(ws: ServerConnection, refusal: str) -> Response:
    body: dict[str, object]
    if refusal == "total":
        status, body = (
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            {"error": "overloaded", "message": "the server has too many connections"},
        )
    else:
        status, body = (
            http.HTTPStatus.TOO_MANY_REQUESTS,
            {"error": "too_many_connections", "message": f"too many connections per {refusal}"},
        )
    response = _json_response(ws, status, body)
    response.headers["Retry-After"] = "5"
    return response


def _unauthorized(ws: ServerConnection, message: str) -> Response:
    response = _json_response(
        ws, http.HTTPStatus.UNAUTHORIZED, {"error": "unauthenticated", "message": message}
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="seatd"'
    return response
