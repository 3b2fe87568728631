"""A minimal callback-style WebSocket client: ``picows`` when installed, else ``websockets``.

Why callbacks and not ``await ws.recv()``: a load generator with thousands of connections on
one core cannot afford a task and a few awaits per frame. picows hands each frame to a
callback straight from its C parser; the ``websockets`` fallback emulates the same interface
(one reader task per connection) so the scenarios do not care which one runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["SUBPROTOCOL", "Link", "OnClose", "OnMessage", "client_name", "connect"]

SUBPROTOCOL = "seatd.v1"

OnMessage = Callable[[bytes], None]
OnClose = Callable[[int | None], None]


class Link(Protocol):
    """One open connection: send text frames, close it."""

    def send(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


def client_name(preferred: str | None = None) -> str:
    """``picows`` if importable (and not overridden), else ``websockets``."""
    if preferred == "websockets":
        return "websockets"
    try:
        import picows  # noqa: F401
    except ImportError:
        if preferred == "picows":
            raise
        return "websockets"
    return "picows"


async def connect(
    url: str,
    token: str,
    on_message: OnMessage,
    on_close: OnClose,
    *,
    client: str = "picows",
    timeout: float = 10.0,
) -> Link:
    """Open a connection; ``on_message`` gets every text frame's payload (the welcome first)."""
    if client == "picows":
        return await _picows_connect(url, token, on_message, on_close, timeout)
    return await _websockets_connect(url, token, on_message, on_close, timeout)


# --- picows -------------------------------------------------------------------------------


class _PicowsLink:
    __slots__ = ("_text", "_transport")

    def __init__(self, transport: Any, text: Any) -> None:
        self._transport = transport
        self._text = text

    def send(self, data: bytes) -> None:
        self._transport.send(self._text, data)

    async def close(self) -> None:
        transport = self._transport
        if not transport.is_disconnected():
            from picows import WSCloseCode

            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        await transport.wait_disconnected()


@functools.cache
def _picows_listener_class() -> type[Any]:
    from picows import WSListener, WSMsgType

    text, continuation, close = WSMsgType.TEXT, WSMsgType.CONTINUATION, WSMsgType.CLOSE

    class Listener(WSListener):
        """Hands complete text messages to ``on_message``; answers a close frame."""

        def __init__(self, on_message: OnMessage, on_close: OnClose) -> None:
            super().__init__()
            self.on_message = on_message
            self.on_close = on_close
            self.close_code: int | None = None
            self.parts: list[bytes] | None = None

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            kind = frame.msg_type
            if kind == text:
                if frame.fin:
                    self.on_message(frame.get_payload_as_bytes())
                else:
                    self.parts = [frame.get_payload_as_bytes()]
            elif kind == continuation and self.parts is not None:
                self.parts.append(frame.get_payload_as_bytes())
                if frame.fin:
                    payload, self.parts = b"".join(self.parts), None
                    self.on_message(payload)
            elif kind == close:
                self.close_code = int(frame.get_close_code())
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.on_close(self.close_code)

    return Listener


async def _picows_connect(
    url: str, token: str, on_message: OnMessage, on_close: OnClose, timeout: float
) -> Link:
    from picows import WSMsgType, ws_connect

    listener_class = _picows_listener_class()
    transport, _ = await ws_connect(
        lambda: listener_class(on_message, on_close),
        url,
        websocket_handshake_timeout=timeout,
        extra_headers={"Authorization": f"Bearer {token}", "Sec-WebSocket-Protocol": SUBPROTOCOL},
        enable_auto_pong=True,
        max_frame_size=64 * 1024 * 1024,
    )
    return _PicowsLink(transport, WSMsgType.TEXT)


# --- websockets (fallback) ----------------------------------------------------------------


class _WebsocketsLink:
    def __init__(self, ws: Any, on_message: OnMessage, on_close: OnClose) -> None:
        self._ws = ws
        self._on_message = on_message
        self._on_close = on_close
        self._sends: set[asyncio.Task[None]] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self._ws:
                self._on_message(message.encode() if isinstance(message, str) else message)
        except ConnectionClosed:
            pass
        finally:
            self._on_close(self._ws.close_code)

    def send(self, data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._ws.send(data, text=True))
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled():
            task.exception()  # a send on a closed connection: the reader reports the close

    async def close(self) -> None:
        await self._ws.close()
        await self._reader


async def _websockets_connect(
    url: str, token: str, on_message: OnMessage, on_close: OnClose, timeout: float
) -> Link:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.typing import Subprotocol

    ws = await ws_connect(
        url,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_size=None,
        max_queue=None,
        open_timeout=timeout,
        ping_interval=None,
    )
    return _WebsocketsLink(ws, on_message, on_close)
