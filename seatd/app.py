"""Composition root: wires PostgreSQL, Redis, the actors and the gateway; runs until a signal.

Shutdown on SIGTERM/SIGINT: stop accepting connections, refuse new requests with
``shutting_down``, let every request in flight finish (its batch commits and it is answered),
stop the actors, say goodbye to each client (``goaway`` push, close 1012), close the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid

import structlog
from redis.asyncio import Redis

from seatd.adapters.bus import RedisBus
from seatd.adapters.owners import PostgresOwners
from seatd.adapters.postgres import PostgresStore, close_pool, connect_pool
from seatd.adapters.redis import ExpiryListener, RedisLeases, RedisMirror, make_client
from seatd.auth import TokenAuthority
from seatd.config import Settings
from seatd.core import Policy
from seatd.errors import StoreUnavailable
from seatd.gateway.broadcast import Broadcaster
from seatd.gateway.connection import GatewayContext
from seatd.gateway.forward import Router
from seatd.gateway.limits import ConnectionCounter, InflightGauge, RateLimiter
from seatd.gateway.server import Gateway, Readiness
from seatd.runtime.actor import ActorSettings
from seatd.runtime.leases import FailoverLeases
from seatd.runtime.ports import Clock, SystemClock
from seatd.runtime.registry import Registry
from seatd.runtime.writer import BatchWriter

__all__ = ["App", "mirror_events", "run"]

log = structlog.get_logger("seatd.app")
# How long a stopping instance waits for PostgreSQL to take its connections' goodbyes.
_POOL_CLOSE_TIMEOUT = 2.0


class App:
    """One running seatd instance."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        # Stable across restarts (host and port by default), so a restarted instance takes its
        # events' leases back at once instead of waiting for them to run out.
        self.instance_id = settings.instance_id or (
            f"{socket.gethostname()}:{settings.port}" if settings.port else uuid.uuid4().hex[:12]
        )

    async def _connect_postgres(self) -> PostgresStore | None:
        """The store, once PostgreSQL answers (within SEATD_STARTUP_TIMEOUT); None if told to
        stop while waiting for it."""
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout
        while True:
            try:
                pool = await connect_pool(
                    **s.postgres_connection,
                    max_size=s.pg_pool_size,
                    # The batch writers' connections and one for loads and lookups stay open
                    # and prepared: an on-sale after a quiet spell starts on them.
                    min_size=s.pg_writers + 1,
                    warm=True,
                    query_timeout=s.pg_query_timeout,
                )
                self._pool = pool
                return PostgresStore(pool, self.instance_id, s.lease_ttl)
            except StoreUnavailable as error:
                if time.monotonic() >= deadline:
                    raise
                log.warning("waiting_for_postgres", error=error.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
                if self._stop.is_set():
                    return None

    async def run(self) -> None:
        """Serve until ``stop()``. Whatever started is closed again on the way out, also when
        starting fails half-way (the port is taken, say): a background task left running
        would keep the process from exiting."""
        store = await self._connect_postgres()
        if store is None:
            log.info("stopped", before="postgres_answered")
            return
        async with contextlib.AsyncExitStack() as running:
            running.callback(log.info, "stopped")
            running.push_async_callback(close_pool, self._pool, _POOL_CLOSE_TIMEOUT)
            await self._serve(store, running)

    async def _serve(self, store: PostgresStore, running: contextlib.AsyncExitStack) -> None:
        s = self.settings
        policy = Policy(s.default_hold_duration, s.max_seats_per_user, s.max_hold_lifetime)
        redis = make_client(s.redis_host, s.redis_port, s.redis_db, s.redis_password or None)
        running.push_async_callback(redis.aclose)
        # Leases in Redis; PostgreSQL says who owns what while Redis is out of reach.
        owners = PostgresOwners(self._pool, self.instance_id, s.lease_ttl)
        await owners.start()
        running.push_async_callback(owners.close)
        leases = FailoverLeases(
            RedisLeases(redis, self.instance_id, s.lease_ttl), owners, probe=redis.ping
        )
        running.push_async_callback(leases.close)
        registry = Registry(
            store,
            self.clock,
            policy,
            ActorSettings(
                max_batch=s.max_batch,
                mailbox_limit=s.mailbox_limit,
                idle_timeout=s.actor_idle_timeout,
            ),
            coordinator=leases,
            lease_ttl=s.lease_ttl,
            # Never the whole pool: loads, snapshots and lookups need connections too.
            writer=BatchWriter(store, concurrency=max(1, min(s.pg_writers, s.pg_pool_size - 1))),
        )
        self.registry = registry
        structlog.contextvars.bind_contextvars(instance=self.instance_id)
        mirror = mirror_events(registry, redis)
        listener = ExpiryListener(
            redis, s.redis_db, registry.hint_expiry, lease_expired=lambda e: router.lease_expired(e)
        )
        mirror.start()
        running.push_async_callback(mirror.close)
        listener.start()
        running.push_async_callback(listener.close)
        # Between instances: forwarded commands, and availability pushes relayed to watchers.
        bus = RedisBus(redis, self.instance_id)
        broadcaster = Broadcaster(
            history=s.delta_history,
            interval=s.delta_interval,
            publish=bus.publish,
            publishing=lambda: bus.publishes,
            watched=lambda event_id: router.watched(event_id),
            unwatched=lambda event_id: router.unwatched(event_id),
            instance_id=self.instance_id,
        )
        router = Router(registry, store, broadcaster, bus, s.forward_timeout)
        bus.on_request = router.serve
        bus.on_status = registry.status_changed
        bus.on_statuses_heard = registry.recheck_statuses
        bus.on_push = broadcaster.relayed
        bus.start()
        running.push_async_callback(bus.close)
        registry.observers.append(broadcaster)
        registry.keep_alive = broadcaster.has_subscribers
        registry.stop_listeners.append(broadcaster.forget)
        registry.stop_listeners.append(router.actor_stopped)
        authority = TokenAuthority(s.jwt_secret)
        ctx = GatewayContext(
            broadcaster=broadcaster,
            router=router,
            authority=authority,
            rates=RateLimiter(
                (s.rate_per_connection, s.burst_per_connection), (s.rate_per_user, s.burst_per_user)
            ),
            connections=ConnectionCounter(
                s.max_connections_per_address, s.max_connections_per_user, s.max_connections
            ),
            pending=InflightGauge(s.max_pending),
            auth_timeout=s.auth_timeout,
            max_seats_per_hold=s.max_seats_per_hold,
            max_subscriptions=s.max_subscriptions,
            hold_warning=s.hold_warning,
            registry=registry,
            store=store,
            policy=policy,
            clock=self.clock.now,
            max_frame_bytes=s.max_frame_bytes,
            max_inflight=s.max_inflight,
            send_queue=s.send_queue,
        )

        async def readiness() -> Readiness:
            pg_ok = await store.ping()
            redis_ok = mirror.healthy and listener.healthy and bus.healthy
            checks = {
                "postgres": "ok" if pg_ok else "unavailable",
                "redis": "ok" if redis_ok else "unavailable",
                "accepting": "no" if ctx.draining else "yes",
            }
            return Readiness(ready=pg_ok and not ctx.draining, degraded=not redis_ok, checks=checks)

        gateway = Gateway(
            ctx,
            authority,
            readiness,
            allowed_origins=s.allowed_origins,
            handshake_timeout=s.handshake_timeout,
            address_header=s.client_address_header,
            metrics=s.metrics,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
        )
        self.gateway = gateway

        async def shut_down() -> None:
            """Stop accepting, finish what is in flight, stop the actors, say goodbye. Draining
            and stopping share SEATD_SHUTDOWN_TIMEOUT: what the drain used, the actors lack."""
            log.info("shutting_down", connections=len(gateway.connections), events=len(registry))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + s.shutdown_timeout
            await gateway.drain(s.shutdown_timeout)
            await registry.close(max(0.0, deadline - loop.time()))
            await gateway.close()

        running.push_async_callback(shut_down)
        # Holds left by a previous run expire on time even if nobody uses their event.
        registry.wake_at(await store.earliest_expiries())
        # And holds that nobody timed since (their owner died): a lease late, every three.
        registry.start_sweeping(interval=3 * s.lease_ttl, overdue_by=s.lease_ttl)
        await gateway.start(s.host, s.port)
        settings = {**s.public(), "instance_id": self.instance_id}
        log.info("serving", host=s.host, port=gateway.port, settings=settings)
        self.started.set()
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


def mirror_events(registry: Registry, redis: Redis, **options: float) -> RedisMirror:
    """A Redis mirror of the registry's events, told of every commit and every load (not
    started: ``mirror.start()``)."""
    mirror = RedisMirror(
        redis, lambda: [(a.event_id, a.state) for a in registry.actors()], **options
    )
    registry.observers.append(mirror)
    registry.load_listeners.append(mirror.loaded)
    return mirror


async def run(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = App(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, app.stop)
    await app.run()
