"""Redis pub/sub between seatd instances: forwarded commands and relayed availability pushes.

Channels:

- ``seatd:inbox:<instance>``: each instance's inbox. A request carries a correlation id and the
  sender's inbox; the answer is published to that inbox with the same id.
- ``seatd:{E}:availability``: each ``availability`` push of event E, published by its owner;
  every instance with subscribers to E listens (``follow``) and relays it to its connections.

Every message is a JSON header line, ``\\n``, then an opaque body (a request or reply frame, or
the push itself), so no frame is parsed or re-encoded on the way. Pub/sub delivers at most once:
a request nobody receives fails at once (``PeerGone``), one not answered in time fails with
``PeerTimeout``, one whose receiver lost its events meanwhile with ``PeerLost`` (both may have
run: the caller's idempotency key makes its retry safe), and a lost push shows up as
a version gap the client repairs by resubscribing (PROTOCOL.md).

- ``seatd:event-status``: every instance listens. ``seatd close-event`` announces there that it
  opened or closed an event in PostgreSQL, so that the event's actor, wherever it runs, stops
  (or resumes) taking holds at once (``status_notice``).
- ``seatd:instances``: every instance listens. On each (re)connection an instance says hello
  there; every instance that hears it answers in the newcomer's inbox. An instance that has
  never heard of another (``has_peers`` is False) publishes no pushes at all: nobody could relay
  them, and building and sending them cost a lone instance about a tenth of its throughput.
  A newcomer's ``follow`` waits for the answers of every instance that heard its hello, so an
  owner publishes before anyone there reads a snapshot.

The bus talks to Redis over two connections of its own (``resp``: one publishing, one
subscribed), not through redis-py, whose pipeline and pub/sub reader cost ~25 µs per message
against ~1 µs: each forwarded command is two messages each way. Publishes given in one turn of
the event loop go out in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import orjson
import redis.asyncio as aioredis
import structlog

from seatd.adapters.resp import RespConnection, RespError, open_like
from seatd.core import EVENT_STATUSES
from seatd.runtime.ports import BusError, BusUnavailable, PeerGone, PeerLost, PeerTimeout
from seatd.runtime.tasks import stop_tasks

__all__ = [
    "PEERS_CHANNEL",
    "STATUS_CHANNEL",
    "RedisBus",
    "availability_channel",
    "inbox_channel",
    "status_notice",
]

log = structlog.get_logger("seatd.bus")

Header = dict[str, Any]
RequestHandler = Callable[[Header, bytes], Awaitable[tuple[Header, bytes]]]
_AVAILABILITY = ("seatd:{", "}:availability")
_AVAILABILITY_BYTES = (_AVAILABILITY[0].encode(), _AVAILABILITY[1].encode())
PEERS_CHANNEL = "seatd:instances"
STATUS_CHANNEL = "seatd:event-status"
# How long a newcomer waits for the instances that heard its hello (one may be stalled).
_INTRODUCTION_TIMEOUT = 1.0
# Silence on the subscription for this long sends a PING; no answer for as long again: lost.
_PING_INTERVAL = 5.0
_PEERS = PEERS_CHANNEL.encode()
_STATUS = STATUS_CHANNEL.encode()


def inbox_channel(instance_id: str) -> str:
    return f"seatd:inbox:{instance_id}"


def availability_channel(event_id: str) -> str:
    return f"{_AVAILABILITY[0]}{event_id}{_AVAILABILITY[1]}"


def _event_of(channel: bytes) -> str | None:
    start, end = _AVAILABILITY_BYTES
    if channel.startswith(start) and channel.endswith(end):
        return channel[len(start) : -len(end)].decode()
    return None


def status_notice(event_id: str, status: str) -> bytes:
    """What ``seatd close-event`` publishes on ``STATUS_CHANNEL`` once the row is changed."""
    return _pack({"t": "status", "e": event_id, "s": status}, b"")


async def _receivers(published: Awaitable[Any]) -> int:
    """How many subscribers a PUBLISH reached, or BusError."""
    try:
        count = await published
    except RespError as error:
        raise BusError(f"could not reach Redis: {error}") from None
    if not isinstance(count, int):
        raise BusError(f"Redis refused a publish: {count!r}")
    return count


def _give_up(waits: tuple[asyncio.Future[Any], ...], why: str) -> None:
    for wait in waits:
        if not wait.done():
            wait.set_exception(PeerTimeout(why))


def _pack(header: Header, body: bytes) -> bytes:
    return orjson.dumps(header) + b"\n" + body


def _unpack(data: bytes) -> tuple[Header, bytes]:
    head, _, body = data.partition(b"\n")
    header = orjson.loads(head)
    if not isinstance(header, dict):
        raise ValueError("bus message header is not an object")
    return header, body


class RedisBus:
    """``MessageBus`` over Redis pub/sub; see the module docstring."""

    def __init__(
        self,
        client: aioredis.Redis,
        instance_id: str,
        *,
        retry_interval: float = 1.0,
        ping_interval: float = _PING_INTERVAL,
    ) -> None:
        self._client = client
        self.instance_id = instance_id
        self._inbox = inbox_channel(instance_id)
        self._retry_interval = retry_interval
        self._ping_interval = ping_interval
        self._ids = itertools.count(1)
        # Requests awaiting an answer: correlation id -> (the instance asked, the answer).
        self._waiting: dict[int, tuple[str, asyncio.Future[tuple[Header, bytes]]]] = {}
        self._followed: set[str] = set()
        # Subscriptions sent but not yet confirmed by Redis, by channel; and how many SUBSCRIBEs
        # of a channel are on their way (a follow, unfollow and follow sends two).
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._subscribing: dict[str, int] = {}
        self._pubsub: RespConnection | None = None  # subscribed: the inbox, peers, follows
        self._publisher: RespConnection | None = None
        self._inbox_bytes = self._inbox.encode()
        self._heard = 0.0  # when the subscription last received anything (loop time)
        # Kept: asyncio.get_running_loop() is a getpid() system call each time on Python 3.11,
        # and the bus needs the loop for every forwarded command and every message.
        self._loop = asyncio.get_running_loop()
        self._publish_failing = False  # a fire-and-forget publish failed (logged once)
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.on_request: RequestHandler | None = None
        self.on_push: Callable[[str, bytes], None] | None = None
        self.on_status: Callable[[str, str], None] | None = None  # (event id, status)
        # Redis confirmed the status channel (at start, and after every reconnection): notices
        # from now on arrive; one sent while not listening is lost, and must be read instead.
        self.on_statuses_heard: Callable[[], None] | None = None
        self.healthy = False
        self.has_peers = False  # another instance was heard from: publish pushes (never reset)
        self._introduced = asyncio.Event()  # the first hello was answered (or timed out)
        self._welcomes = 0
        self._welcomed = asyncio.Event()  # set by each answer to our hello

    def start(self) -> None:
        self._tasks = [self._loop.create_task(self._listen_forever(), name="bus:listen")]

    async def close(self) -> None:
        await stop_tasks([*self._tasks, *self._handlers])
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(BusError("the instance is shutting down"))

    # --- requests --------------------------------------------------------------------------

    async def request(
        self, instance_id: str, header: Header, body: bytes, timeout: float
    ) -> tuple[Header, bytes]:
        """Send a request to another instance's inbox and wait for its answer."""
        if not self.healthy:
            raise BusUnavailable("the message bus (Redis) is unavailable")
        correlation = next(self._ids)
        answer: asyncio.Future[tuple[Header, bytes]] = self._loop.create_future()
        message = _pack({**header, "t": "q", "c": correlation, "r": self.instance_id}, body)
        published = self._call_publish(inbox_channel(instance_id), message)
        self._waiting[correlation] = (instance_id, answer)
        # One deadline for the publish and the answer: a Redis that stopped reading must not
        # hold the caller longer than an owner that stopped answering. A bare timer, cheaper
        # than asyncio.timeout() on this per-command path.
        timer = self._loop.call_later(
            timeout,
            _give_up,
            (published, answer),
            f"instance {instance_id} did not answer in {timeout} s",
        )
        try:
            if await _receivers(published) == 0:
                raise PeerGone(f"instance {instance_id} is not listening")
            return await answer
        finally:
            timer.cancel()
            self._waiting.pop(correlation, None)
            for wait in (published, answer):  # failed by the timer but not awaited: seen
                if wait.done() and not wait.cancelled():
                    wait.exception()

    def abandon(self, instance_id: str) -> None:
        """That instance lost its leases (it died or stalled): fail what waits for its answers
        now rather than at their timeout, so the callers retry on the new owner at once. Not
        ``PeerGone``: these requests were delivered, and may have run before it stalled."""
        for asked, answer in self._waiting.values():
            if asked == instance_id and not answer.done():
                answer.set_exception(PeerLost(f"instance {instance_id} lost its events"))

    def _call_publish(self, channel: str, message: bytes) -> asyncio.Future[Any]:
        """Send a PUBLISH whose count is wanted (``_receivers``); BusError if it cannot go."""
        publisher = self._publisher
        if publisher is None:
            raise BusUnavailable("the message bus (Redis) is unavailable")
        try:
            return publisher.call(b"PUBLISH", channel, message)
        except RespError as error:
            raise BusUnavailable(f"could not reach Redis: {error}") from None

    def _serve(self, header: Header, body: bytes) -> None:
        handler = self.on_request
        reply_to, correlation = header.get("r"), header.get("c")
        if handler is None or not isinstance(reply_to, str) or not isinstance(correlation, int):
            return
        task = self._loop.create_task(self._answer(handler, header, body, reply_to, correlation))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _answer(
        self, handler: RequestHandler, header: Header, body: bytes, reply_to: str, corr: int
    ) -> None:
        try:
            reply_header, reply = await handler(header, body)
        except Exception:  # never leave the asker waiting for nothing: it times out instead
            log.exception("bus_request_failed", sender=reply_to)
            return
        self._send(inbox_channel(reply_to), _pack({**reply_header, "t": "a", "c": corr}, reply))

    # --- availability pushes ---------------------------------------------------------------

    @property
    def publishes(self) -> bool:
        """Whether pushes go out: once another instance was heard from, and until our first
        hello was answered (an instance starting beside others must not miss their follows)."""
        return self.has_peers or not self._introduced.is_set()

    def publish(self, event_id: str, frame: bytes) -> None:
        """Fire and forget: instances relaying the event receive the push."""
        if self.healthy and self.publishes:
            self._send(availability_channel(event_id), frame)

    async def follow(self, event_id: str) -> None:
        """Receive the event's pushes; returns once Redis confirmed the subscription (or at
        once when Redis is unavailable: the subscription is made when it is back)."""
        if self.healthy and not self._introduced.is_set():
            await self._introduced.wait()  # until then the owner may not publish for us
        channel = availability_channel(event_id)
        confirmed = self._acks.get(channel)
        if channel in self._followed:
            if confirmed is None:
                return  # confirmed earlier
        else:
            # Not followed, even if a SUBSCRIBE is still on its way: an unfollow may have sent
            # an UNSUBSCRIBE after it, which Redis would apply last. Subscribe again, and wait
            # for this SUBSCRIBE's confirmation (they come in order: see _take).
            self._followed.add(channel)
            pubsub = self._pubsub
            if pubsub is None or not self.healthy:
                return
            try:
                pubsub.send(b"SUBSCRIBE", channel)
            except RespError as error:  # the subscription is made again on reconnecting
                log.warning("bus_follow_unconfirmed", event_id=event_id, error=repr(error))
                return
            if confirmed is None:
                confirmed = self._acks[channel] = self._loop.create_future()
            self._subscribing[channel] = self._subscribing.get(channel, 0) + 1
        try:  # a second caller for the same channel waits for the same confirmation
            async with asyncio.timeout(2.0):
                await asyncio.shield(confirmed)
        except TimeoutError:
            log.warning("bus_follow_unconfirmed", event_id=event_id, error="timeout")
        finally:
            if self._acks.get(channel) is confirmed:  # given up on: later callers do not wait
                del self._acks[channel]
                self._subscribing.pop(channel, None)

    def unfollow(self, event_id: str) -> None:
        channel = availability_channel(event_id)
        if channel not in self._followed:
            return
        self._followed.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None and self.healthy:
            with contextlib.suppress(RespError):  # lost: a new subscription will not have it
                pubsub.send(b"UNSUBSCRIBE", channel)

    # --- the connections ---------------------------------------------------------------

    def _send(self, channel: str, message: bytes) -> None:
        """Publish without waiting for the count; dropped while Redis is unreachable."""
        publisher = self._publisher
        if publisher is None:
            return
        try:
            publisher.send(b"PUBLISH", channel, message)
        except RespError as error:
            if not self._publish_failing:  # once, not once per message, until it reconnects
                log.warning("bus_publish_failed", channel=channel, error=repr(error))
            self._publish_failing = True

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (OSError, TimeoutError) as error:  # RespError is a ConnectionError
                if self.healthy:
                    log.warning("bus_lost", error=repr(error))
            finally:
                self.healthy = False
                self._pubsub = self._publisher = None
            await asyncio.sleep(self._retry_interval)

    async def _listen(self) -> None:
        connections: list[RespConnection] = []
        introduction: asyncio.Task[None] | None = None
        try:
            connections.append(publisher := await open_like(self._client))
            connections.append(pubsub := await open_like(self._client, self._on_reply))
            self._subscribing.clear()  # a new connection: one SUBSCRIBE for everything
            heard = self._acks[PEERS_CHANNEL] = self._loop.create_future()
            pubsub.send(b"SUBSCRIBE", self._inbox, PEERS_CHANNEL, STATUS_CHANNEL, *self._followed)
            # Healthy once Redis answers, not once the kernel accepted the connection (it does
            # for a stopped Redis): until then requests fail at once rather than stall.
            try:
                await asyncio.wait_for(asyncio.shield(heard), self._ping_interval)
            except TimeoutError:
                raise RespError("Redis did not confirm the subscription") from None
            self._publisher, self._pubsub = publisher, pubsub
            self.healthy, self._publish_failing = True, False
            log.info("bus_listening", inbox=self._inbox, followed=len(self._followed))
            introduction = self._loop.create_task(self._introduce())
            await self._watch(publisher, pubsub)
        finally:
            self._acks.pop(PEERS_CHANNEL, None)
            if introduction is not None:
                introduction.cancel()
            for connection in connections:
                connection.close()

    async def _watch(self, publisher: RespConnection, pubsub: RespConnection) -> None:
        """Return when either connection ends; PING the subscription when it has been quiet,
        and the publisher every interval (its replies come in order, so a PING unanswered
        means nothing sent before it was answered either): either PING unanswered for an
        interval gives the connections up (a peer gone without a word, a stopped Redis)."""
        loop, interval = self._loop, self._ping_interval
        self._heard = pinged = loop.time()
        ended = (publisher.closed, pubsub.closed)
        pong: asyncio.Future[Any] | None = None
        pong_sent = 0.0
        try:
            while True:
                done, _ = await asyncio.wait(ended, timeout=interval / 2)
                if done:
                    raise RespError("connection to Redis closed")
                now = loop.time()
                if pong is None or pong.done():
                    if pong is not None and pong.exception() is not None:
                        raise RespError(f"the publishing connection failed: {pong.exception()!r}")
                    pong, pong_sent = publisher.call(b"PING"), now
                elif now - pong_sent >= interval:
                    raise RespError(f"Redis did not answer a PING in {interval} s (publishing)")
                if now - self._heard < interval:
                    continue
                if pinged > self._heard and now - pinged >= interval:
                    raise RespError(f"Redis did not answer a PING in {interval} s")
                if pinged <= self._heard:
                    pubsub.send(b"PING")
                    pinged = now
        finally:
            if pong is not None and not pong.done():
                pong.cancel()  # its connection is about to be closed: nobody will read it
            elif pong is not None and not pong.cancelled():
                pong.exception()  # seen (a failure is why we are leaving)

    async def _introduce(self) -> None:
        """Say hello (our subscription to the peers channel is confirmed: see _listen), then
        wait (briefly) for an answer from every other instance that heard it."""
        try:
            self._welcomes = 0
            hello = _pack({"t": "hello", "from": self.instance_id}, b"")
            heard_by = await _receivers(self._call_publish(PEERS_CHANNEL, hello))
            others = heard_by - 1  # we hear it too
            async with asyncio.timeout(_INTRODUCTION_TIMEOUT):
                while self._welcomes < others:
                    self._welcomed.clear()
                    await self._welcomed.wait()
        except (TimeoutError, BusError) as error:
            log.info("bus_introduction_incomplete", error=repr(error))
        finally:
            self._introduced.set()

    def _on_reply(self, reply: Any) -> None:
        """Everything the subscription receives: messages, confirmations, PING's answer. A
        message that breaks its handler is logged and dropped: raised here it would end the
        subscription (and a repeated one would keep ending it)."""
        self._heard = self._loop.time()
        try:
            self._take(reply)
        except Exception:
            log.exception("bus_message_failed", reply=repr(reply)[:200])

    def _take(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind, channel, data = reply
            if kind == b"message":
                self._dispatch(channel, data)
            elif kind == b"subscribe":
                name = channel.decode()
                waiting = self._subscribing.pop(name, 1) - 1
                if waiting > 0:  # a later SUBSCRIBE of this channel is still on its way
                    self._subscribing[name] = waiting
                    return
                confirmed = self._acks.pop(name, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
                if channel == _STATUS and self.on_statuses_heard is not None:
                    self.on_statuses_heard()
        elif isinstance(reply, hiredis.ReplyError):
            log.warning("bus_subscription_refused", error=str(reply))

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == self._inbox_bytes:
            try:
                header, body = _unpack(data)
            except ValueError:
                log.warning("bus_bad_message", size=len(data))
                return
            if header.get("t") == "w":
                self.has_peers = True
                self._welcomes += 1
                self._welcomed.set()
                return
            if header.get("t") == "a":
                waiting = self._waiting.get(header.get("c", -1))
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result((header, body))
            else:
                self._serve(header, body)
            return
        if channel == _PEERS:
            self._hello(data)
            return
        if channel == _STATUS:
            self._status(data)
            return
        event_id = _event_of(channel)
        if event_id is not None and self.on_push is not None:
            self.on_push(event_id, data)  # a failure is logged by _on_reply

    def _status(self, data: bytes) -> None:
        try:
            header, _ = _unpack(data)
        except ValueError:
            log.warning("bus_bad_message", size=len(data))
            return
        event_id, status = header.get("e"), header.get("s")
        if (
            header.get("t") != "status"
            or not isinstance(event_id, str)
            or status not in EVENT_STATUSES
        ):
            log.warning("bus_bad_message", size=len(data))
            return
        log.info("event_status_changed", event_id=event_id, status=status)
        if self.on_status is not None:
            self.on_status(event_id, status)

    def _hello(self, data: bytes) -> None:
        """Another instance (re)connected: from now on publish for it, and answer it."""
        try:
            header, _ = _unpack(data)
        except ValueError:
            return
        sender = header.get("from")
        if header.get("t") != "hello" or not isinstance(sender, str) or not sender:
            return
        if sender != self.instance_id:
            if not self.has_peers:
                log.info("bus_peer_joined", peer=sender)
            self.has_peers = True
            self._send(inbox_channel(sender), _pack({"t": "w", "from": self.instance_id}, b""))
