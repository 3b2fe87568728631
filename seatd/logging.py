"""structlog setup: JSON lines for machines, readable lines on a terminal.

Connection, request and event ids travel in contextvars (``bind_contextvars``), so every line
logged while serving a request carries them without being passed around.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import structlog

__all__ = ["ThrottledWarning", "configure_logging", "detached"]


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The libraries log through the standard library: route it to stderr at the same level.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(message)s"
    )


class ThrottledWarning:
    """A warning logged at most once per ``interval`` seconds, with how many times it happened
    since the last line (``times``): while PostgreSQL or Redis is out of reach every request
    fails, and a line each flooded the log (1,999 in 11 s under load, found by fault injection)."""

    def __init__(self, event: str, interval: float = 1.0, logger: str = "seatd") -> None:
        self._log = structlog.get_logger(logger)
        self._event = event
        self._interval = interval
        self._next = 0.0
        self._times = 0

    def warn(self, **fields: Any) -> None:
        self._times += 1
        now = time.monotonic()
        if now >= self._next:
            self._log.warning(self._event, times=self._times, **fields)
            self._times = 0
            self._next = now + self._interval


# What the service binds for its whole life (seatd/app.py); everything else is a request's.
_SERVICE_KEYS = frozenset({"instance"})


def detached(**bind: Any) -> contextvars.Context:
    """A context for background work started while serving a request: the service's log
    fields and ``bind``, without the request's. A task copies the context it is created in, so
    an actor activated by a client's command logged that client's session on every line for
    the rest of its life."""
    context = contextvars.copy_context()
    context.run(_keep_service_fields, bind)
    return context


def _keep_service_fields(bind: dict[str, Any]) -> None:
    kept = {k: v for k, v in structlog.contextvars.get_contextvars().items() if k in _SERVICE_KEYS}
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**kept, **bind)
