"""The coordinator's own connection: creates events and reads them back before and after a run.

Why a separate, plain client: set-up traffic is small and must be simple and obviously
correct; it uses ``websockets`` (a core dependency) with one reader task and a future per
request, and pipelines requests so creating a thousand events takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from seatd.auth import TokenAuthority

__all__ = ["AdminClient", "RequestFailed"]


class RequestFailed(RuntimeError):
    def __init__(self, request_type: str, error: dict[str, Any]) -> None:
        self.code = str(error.get("code"))
        super().__init__(f"{request_type} failed: {self.code}: {error.get('message')}")


class AdminClient:
    """An admin connection with ``call`` (one request) and ``call_many`` (pipelined)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, secret: str, subject: str = "bench-admin") -> AdminClient:
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        token = TokenAuthority(secret).mint(subject, "admin", ttl_s=86400)
        ws = await connect(
            url,
            subprotocols=[Subprotocol("seatd.v1")],
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=None,
            open_timeout=15,
        )
        await ws.recv()  # welcome
        return cls(ws)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in self._ws:
                msg = orjson.loads(frame)
                future = self._waiting.pop(msg.get("id"), None) if "id" in msg else None
                if future is not None and not future.done():
                    future.set_result(msg)
        except ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("admin connection closed"))
                    future.exception()
            self._waiting.clear()

    async def _send(self, request_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        await self._ws.send(orjson.dumps({"id": rid, "type": request_type, **fields}).decode())
        return await future

    async def call(self, request_type: str, **fields: Any) -> dict[str, Any]:
        """The request's result; ``RequestFailed`` if the server answered an error."""
        reply = await asyncio.wait_for(self._send(request_type, fields), 120)
        if not reply.get("ok"):
            raise RequestFailed(request_type, reply.get("error") or {})
        result: dict[str, Any] = reply["result"]
        return result

    async def call_many(
        self, request_type: str, requests: Sequence[dict[str, Any]], window: int = 16
    ) -> list[dict[str, Any]]:
        """The same request type many times, ``window`` in flight; results in order."""
        gate = asyncio.Semaphore(window)

        async def one(fields: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                return await self.call(request_type, **fields)

        return list(await asyncio.gather(*(one(f) for f in requests)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        with contextlib.suppress(Exception):
            await self._reader
