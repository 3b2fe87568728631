"""Opening one seatd.v1 connection, and what the ways a connection ends mean for the client.

Everything here is about a single connection; reconnecting is the client's business.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import time
from collections.abc import Awaitable, Callable

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Subprotocol

from protocol._validate import ValidationError
from protocol.client._decode import tolerant_decoder
from protocol.client._errors import ClientClosedError, ProtocolViolationError
from protocol.errors import AccessError, CloseCode
from protocol.messages import PROTOCOL_VERSION, Welcome

__all__ = [
    "RETRYABLE",
    "TokenSource",
    "open_connection",
    "resolve_token",
    "retry_after_ms",
    "terminal_close",
]

# A token, or something that fetches a fresh one (called before every connection attempt).
TokenSource = str | Callable[[], str | Awaitable[str]]

# Failures of a connection attempt that may go away by themselves (server restarting, network).
RETRYABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError, WebSocketException)

_decode_welcome = tolerant_decoder(Welcome, ignore=frozenset({"type"}))
# Handshake statuses worth retrying: the server (or a proxy) is busy, restarting or draining.
_RETRY_STATUSES = frozenset({408, 425, 429})
# The longest Retry-After honoured: a misconfigured proxy must not park a client for a day.
_MAX_RETRY_AFTER_S = 300


async def resolve_token(source: TokenSource) -> str:
    if isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str):
        raise TypeError("the token provider must return a str")
    return token


async def open_connection(
    url: str, token: str, *, timeout: float, max_frame_bytes: int | None
) -> tuple[ClientConnection, Welcome]:
    """Connect, authenticate and read ``welcome``.

    Raises ``AccessError`` when the server refuses the token (HTTP 401/403), and
    ``ClientClosedError`` for other refusals that retrying cannot fix (wrong URL, protocol);
    anything in ``RETRYABLE`` may succeed later.
    """
    try:
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[Subprotocol(PROTOCOL_VERSION)],
            compression=None,
            open_timeout=timeout,
            max_size=max_frame_bytes,
        )
    except InvalidURI as error:
        raise ClientClosedError(f"invalid URL: {error}") from None
    except InvalidStatus as error:
        raise _refusal(error) from None
    try:
        async with asyncio.timeout(timeout):
            first = await ws.recv()
        frame = orjson.loads(first)
        if not isinstance(frame, dict) or frame.get("type") != "welcome":
            raise ProtocolViolationError("the first frame is not a welcome")
        welcome = _decode_welcome(frame)
        if welcome.protocol != PROTOCOL_VERSION:
            raise ProtocolViolationError(f"the server speaks {welcome.protocol}")
    except (orjson.JSONDecodeError, ValidationError) as error:
        await ws.close()
        raise ProtocolViolationError(f"malformed welcome: {error}") from None
    except BaseException:
        await ws.close()
        raise
    return ws, welcome


def _refusal(error: InvalidStatus) -> Exception:
    status = error.response.status_code
    message = f"HTTP {status}"
    try:
        body = orjson.loads(error.response.body or b"")
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]
    except orjson.JSONDecodeError:
        pass
    if status == 401:
        return AccessError("unauthenticated", message)
    if status == 403:
        return AccessError("forbidden", message)
    if 400 <= status < 500 and status not in _RETRY_STATUSES:
        return ClientClosedError(f"the server refused the connection: {message}")
    return error  # 5xx (e.g. 503 while draining): retry


def retry_after_ms(error: BaseException, now: float | None = None) -> int | None:
    """How long a refused handshake asked the client to wait (its ``Retry-After``: seconds
    or an HTTP date), in ms, at most ``_MAX_RETRY_AFTER_S``; None if it did not say."""
    if not isinstance(error, InvalidStatus):
        return None
    value = error.response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return round(min(max(seconds, 0.0), _MAX_RETRY_AFTER_S) * 1000)


def terminal_close(code: int | None, reason: str) -> Exception | None:
    """The error that ends the client for a close code, or None to reconnect.

    4500-4999 mean "do not reconnect before fixing the client or its credentials"; everything
    else (1000/1001 from the server, 1006 abnormal, 1011, 1012 restart, 4000-4499) reconnects.
    """
    if code is None or not 4500 <= code <= 4999:
        return None
    if code == CloseCode.UNAUTHENTICATED:
        return AccessError("unauthenticated", reason or "the server closed: unauthenticated")
    if code == CloseCode.FORBIDDEN:
        return AccessError("forbidden", reason or "the server closed: forbidden")
    return ClientClosedError(reason or "the server closed the connection for good", code)
