"""Failures on the client's side of the protocol (the server's error replies are RemoteErrors).

Kept apart from ``protocol.errors`` because these never travel on the wire: they describe the
connection (closed for good) or a server frame the SDK could not make sense of.
"""

from __future__ import annotations

__all__ = ["ClientClosedError", "ProtocolViolationError", "SeatClientError"]


class SeatClientError(Exception):
    """Base of the SDK's own failures."""


class ClientClosedError(SeatClientError):
    """The client will not reach the server any more: closed by ``close()``, by a terminal
    close code (4500-4999), or refused at a reconnect in a way retrying cannot fix."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (close code {code})")
        self.reason = reason
        self.code = code


class ProtocolViolationError(SeatClientError):
    """The server sent a frame that does not follow seatd.v1 (e.g. a result of the wrong shape)."""
