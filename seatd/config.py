"""Settings, read once from the environment and validated before anything starts.

Every variable is listed in ``VARIABLES`` with its default and meaning; the README's
configuration table is this list. A bad value stops the service with a message naming the
variable, the value and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["VARIABLES", "ConfigError", "Settings", "Variable"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    field: str
    default: str | None
    parse: Callable[[str], Any]
    help: str


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return value

    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _on_off(raw: str) -> bool:
    return _choice("off", "on")(raw) == "on"


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "null" and "://" not in origin:
            raise ValueError(f"{origin!r} is not an origin like https://tickets.example.com")
    return origins


def _header_name(raw: str) -> str:
    name = raw.strip()
    if name and not all(c.isalnum() or c == "-" for c in name):
        raise ValueError("must be an HTTP header name such as X-Forwarded-For, or empty")
    return name


def _secret(raw: str) -> str:
    if len(raw.encode()) < 32:
        raise ValueError(
            "must be at least 32 bytes (HS256 needs a 256-bit key): use a long random string"
        )
    return raw


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "PORT", "port", "8080", _int_range(0, 65535), "TCP port of the WebSocket and HTTP endpoint."
    ),
    Variable("SEATD_HOST", "host", "0.0.0.0", _text, "Address to listen on."),
    Variable("POSTGRES_HOST", "postgres_host", "localhost", _text, "PostgreSQL host."),
    Variable("POSTGRES_PORT", "postgres_port", "5432", _int_range(1, 65535), "PostgreSQL port."),
    Variable("POSTGRES_USER", "postgres_user", "seatd", _text, "PostgreSQL user."),
    Variable("POSTGRES_PASSWORD", "postgres_password", "", str, "PostgreSQL password."),
    Variable("POSTGRES_DB", "postgres_db", "seatd", _text, "PostgreSQL database."),
    Variable(
        "SEATD_PG_POOL_SIZE",
        "pg_pool_size",
        "10",
        _int_range(1, 200),
        "Most PostgreSQL connections this instance opens; up to SEATD_PG_WRITERS + 1 of them stay "
        "open while it runs, however long they idle (the others close after five idle minutes).",
    ),
    Variable(
        "SEATD_PG_WRITERS",
        "pg_writers",
        "2",
        _int_range(1, 100),
        "Batch writes in flight at once (each on its own connection of the pool); batches of "
        "other events that find them all busy share the next transaction.",
    ),
    Variable(
        "SEATD_PG_QUERY_TIMEOUT",
        "pg_query_timeout",
        "15",
        _seconds(1, 600),
        "Seconds a PostgreSQL statement may take before it fails and its connection is dropped: "
        "how long requests wait for an answer (`unavailable`) when PostgreSQL stops answering.",
    ),
    Variable("REDIS_HOST", "redis_host", "localhost", _text, "Redis host."),
    Variable("REDIS_PORT", "redis_port", "6379", _int_range(1, 65535), "Redis port."),
    Variable("REDIS_DB", "redis_db", "0", _int_range(0, 1000), "Redis database number."),
    Variable("REDIS_PASSWORD", "redis_password", "", str, "Redis password (empty: none)."),
    Variable(
        "DEFAULT_HOLD_DURATION",
        "default_hold_duration",
        "300",
        _seconds(1, 86400),
        "Seconds a hold lasts (and a refresh extends it by), unless the event overrides it.",
    ),
    Variable(
        "MAX_SEATS_PER_USER",
        "max_seats_per_user",
        "8",
        _int_range(1, 10000),
        "Seats one user may hold plus reserve per event, unless the event overrides it.",
    ),
    Variable(
        "MAX_HOLD_LIFETIME",
        "max_hold_lifetime",
        "1800",
        _seconds(1, 86400),
        "Longest total life of a hold, however often refreshed (at least the hold duration).",
    ),
    Variable(
        "SEATD_JWT_SECRET",
        "jwt_secret",
        None,
        _secret,
        "HS256 secret that signs access tokens (required).",
    ),
    Variable(
        "SEATD_ACTOR_IDLE_TIMEOUT",
        "actor_idle_timeout",
        "60",
        _seconds(0.05, 86400),
        "Seconds an event stays in memory without commands.",
    ),
    Variable(
        "SEATD_MAX_BATCH",
        "max_batch",
        "512",
        _int_range(1, 100_000),
        "Most commands one event commits in one transaction.",
    ),
    Variable(
        "SEATD_MAILBOX_LIMIT",
        "mailbox_limit",
        "10000",
        _int_range(1, 10_000_000),
        "Most commands queued per event before new ones are refused (overloaded).",
    ),
    Variable(
        "SEATD_MAX_FRAME_BYTES",
        "max_frame_bytes",
        "65536",
        _int_range(256, 64 * 1024 * 1024),
        "Largest WebSocket frame a client may send.",
    ),
    Variable(
        "SEATD_MAX_INFLIGHT",
        "max_inflight",
        "256",
        _int_range(1, 100_000),
        "Requests one connection may have in progress; the server stops reading past it.",
    ),
    Variable(
        "SEATD_SEND_QUEUE",
        "send_queue",
        "1024",
        _int_range(8, 1_000_000),
        "Messages queued for one connection before it is closed as a slow consumer.",
    ),
    Variable(
        "SEATD_MAX_SUBSCRIPTIONS",
        "max_subscriptions",
        "64",
        _int_range(1, 10_000),
        "Events one connection may subscribe to at once.",
    ),
    Variable(
        "SEATD_INSTANCE_ID",
        "instance_id",
        "",
        str,
        "This instance's name in event leases; default host:PORT. Unique per running instance.",
    ),
    Variable(
        "SEATD_LEASE_TTL",
        "lease_ttl",
        "10",
        _seconds(1, 600),
        "Seconds an instance's claim on an event lasts without renewal (renewed every third).",
    ),
    Variable(
        "SEATD_FORWARD_TIMEOUT",
        "forward_timeout",
        "5",
        _seconds(0.1, 60),
        "Seconds to wait for the owning instance's answer to a forwarded command before "
        "answering `unavailable` (temporary).",
    ),
    Variable(
        "SEATD_DELTA_HISTORY",
        "delta_history",
        "256",
        _int_range(0, 100_000),
        "Deltas kept per watched event for clients that resume (older gaps get a snapshot).",
    ),
    Variable(
        "SEATD_DELTA_INTERVAL",
        "delta_interval",
        "0.02",
        _seconds(0, 10),
        "Seconds within which an event's changes are merged into one availability push.",
    ),
    Variable(
        "SEATD_HOLD_WARNING",
        "hold_warning",
        "30",
        _seconds(0, 3600),
        "Seconds before expiry a holder gets hold_expiring (at most a quarter of the hold's life).",
    ),
    # --- hostile clients: every limit answers clearly (SECURITY.md) ---
    Variable(
        "SEATD_ALLOWED_ORIGINS",
        "allowed_origins",
        "",
        _origins,
        "Comma-separated browser origins allowed to connect (an upgrade with another Origin "
        "header gets HTTP 403); empty: any. Clients that send no Origin are not affected.",
    ),
    Variable(
        "SEATD_HANDSHAKE_TIMEOUT",
        "handshake_timeout",
        "10",
        _seconds(0.1, 120),
        "Seconds a client has to complete the WebSocket handshake.",
    ),
    Variable(
        "SEATD_PING_INTERVAL",
        "ping_interval",
        "20",
        _seconds(0.1, 3600),
        "Seconds without a frame from a client after which it gets a WebSocket ping.",
    ),
    Variable(
        "SEATD_PING_TIMEOUT",
        "ping_timeout",
        "20",
        _seconds(0.1, 3600),
        "Seconds a pinged client has to send anything (its pong will do) before it is closed "
        "with 1011.",
    ),
    Variable(
        "SEATD_AUTH_TIMEOUT",
        "auth_timeout",
        "10",
        _seconds(0.1, 120),
        "Seconds a connection opened without a token has to send `authenticate` (else 4501).",
    ),
    Variable(
        "SEATD_MAX_SEATS_PER_HOLD",
        "max_seats_per_hold",
        "100",
        _int_range(1, 100),
        "Most seats one hold request may name (the protocol's ceiling is 100).",
    ),
    Variable(
        "SEATD_MAX_CONNECTIONS",
        "max_connections",
        "20000",
        _int_range(0, 1_000_000),
        "Open connections per instance; beyond it upgrades get HTTP 503 (0: no limit).",
    ),
    Variable(
        "SEATD_MAX_CONNECTIONS_PER_ADDRESS",
        "max_connections_per_address",
        "1000",
        _int_range(0, 1_000_000),
        "Open connections per client address; beyond it upgrades get HTTP 429 (0: no limit).",
    ),
    Variable(
        "SEATD_MAX_CONNECTIONS_PER_USER",
        "max_connections_per_user",
        "100",
        _int_range(0, 1_000_000),
        "Open connections per user (token subject) per instance; beyond it HTTP 429, or "
        "`too_many_connections` and close 1013 after an in-band `authenticate` (0: no limit).",
    ),
    Variable(
        "SEATD_CLIENT_ADDRESS_HEADER",
        "client_address_header",
        "",
        _header_name,
        "Behind a trusted proxy: the header carrying the client's address (X-Forwarded-For: its "
        "last entry, the one the proxy added); empty: the socket's peer address.",
    ),
    Variable(
        "SEATD_RATE_PER_CONNECTION",
        "rate_per_connection",
        "500",
        _seconds(0, 1_000_000),
        "Requests per second one connection may send on average (token bucket; 0: no limit).",
    ),
    Variable(
        "SEATD_BURST_PER_CONNECTION",
        "burst_per_connection",
        "1000",
        _seconds(1, 1_000_000),
        "Requests one connection may send at once above its rate (the bucket's size).",
    ),
    Variable(
        "SEATD_RATE_PER_USER",
        "rate_per_user",
        "1000",
        _seconds(0, 1_000_000),
        "Requests per second one user may send over all its connections to an instance "
        "(0: no limit).",
    ),
    Variable(
        "SEATD_BURST_PER_USER",
        "burst_per_user",
        "2000",
        _seconds(1, 1_000_000),
        "Requests one user may send at once above its rate.",
    ),
    Variable(
        "SEATD_MAX_PENDING",
        "max_pending",
        "50000",
        _int_range(0, 10_000_000),
        "Requests in progress on an instance (all connections); beyond it new requests get "
        "`overloaded` at once instead of queueing (0: no limit).",
    ),
    Variable(
        "SEATD_SHUTDOWN_TIMEOUT",
        "shutdown_timeout",
        "10",
        _seconds(0, 600),
        "Seconds to finish in-flight work on SIGTERM before closing anyway.",
    ),
    Variable(
        "SEATD_STARTUP_TIMEOUT",
        "startup_timeout",
        "30",
        _seconds(0, 3600),
        "Seconds to wait for PostgreSQL at start.",
    ),
    Variable(
        "SEATD_METRICS",
        "metrics",
        "off",
        _on_off,
        "on: serve `GET /metrics` (Prometheus text: connections, requests in progress, loaded "
        "events, batch sizes and commit times) on PORT (off: 404); keep it off the public "
        "address.",
    ),
    Variable(
        "LOG_LEVEL", "log_level", "info", _choice("debug", "info", "warning", "error"), "Log level."
    ),
    Variable(
        "LOG_FORMAT",
        "log_format",
        "auto",
        _choice("auto", "json", "console"),
        "json, console, or auto (console on a terminal).",
    ),
)


# Never echoed, not even in the message that says they are malformed.
_SECRETS = frozenset({"SEATD_JWT_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD"})


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    host: str
    postgres_host: str
    postgres_port: int
    postgres_user: str
    postgres_password: str
    postgres_db: str
    pg_pool_size: int
    pg_writers: int
    redis_host: str
    redis_port: int
    redis_db: int
    redis_password: str
    default_hold_duration: float
    max_seats_per_user: int
    max_hold_lifetime: float
    jwt_secret: str
    actor_idle_timeout: float
    max_batch: int
    mailbox_limit: int
    max_frame_bytes: int
    max_inflight: int
    send_queue: int
    max_subscriptions: int
    lease_ttl: float
    instance_id: str
    forward_timeout: float
    delta_history: int
    delta_interval: float
    hold_warning: float
    allowed_origins: tuple[str, ...]
    handshake_timeout: float
    ping_interval: float
    ping_timeout: float
    auth_timeout: float
    max_seats_per_hold: int
    max_connections: int
    max_connections_per_address: int
    max_connections_per_user: int
    client_address_header: str
    rate_per_connection: float
    burst_per_connection: float
    rate_per_user: float
    burst_per_user: float
    max_pending: int
    shutdown_timeout: float
    pg_query_timeout: float
    startup_timeout: float
    metrics: bool
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise ConfigError listing all problems."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for var in VARIABLES:
            raw = source.get(var.name)
            if raw is None or (raw == "" and var.default not in (None, "")):
                raw = var.default
            if raw is None:
                problems.append(f"{var.name} is required: {var.help}")
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as error:
                shown = "(the value is not shown)" if var.name in _SECRETS else repr(raw)
                problems.append(f"{var.name}={shown} is invalid: {error}")
        if not problems and values["max_hold_lifetime"] < values["default_hold_duration"]:
            problems.append(
                f"MAX_HOLD_LIFETIME ({values['max_hold_lifetime']:g}) must be at least "
                f"DEFAULT_HOLD_DURATION ({values['default_hold_duration']:g})"
            )
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)

    @property
    def postgres_connection(self) -> dict[str, Any]:
        """What asyncpg needs to reach POSTGRES_* (``connect``, ``connect_pool``)."""
        return {
            "host": self.postgres_host,
            "port": self.postgres_port,
            "user": self.postgres_user,
            "password": self.postgres_password,
            "database": self.postgres_db,
        }

    def public(self) -> dict[str, Any]:
        """Settings safe to log (secrets masked)."""
        masked = {v.field for v in VARIABLES if v.name in _SECRETS}
        return {
            f.name: ("***" if f.name in masked else getattr(self, f.name)) for f in fields(self)
        }
