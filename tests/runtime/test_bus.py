"""The message bus between instances, on a real (private) Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from support.waiting import until

from seatd.adapters.bus import PEERS_CHANNEL, RedisBus, availability_channel
from seatd.devstack import RedisServer
from seatd.runtime.ports import BusError, PeerGone, PeerLost, PeerTimeout


@pytest.fixture
async def buses(redis: Redis) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    first, second = RedisBus(redis, "first", retry_interval=0.1), RedisBus(redis, "second")
    for bus in (first, second):
        bus.start()
    try:
        await until(lambda: first.healthy and second.healthy)
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_request_gets_the_answer_of_the_instance_it_names(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    first, second = buses
    seen: list[tuple[dict[str, Any], bytes]] = []

    async def echo(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        seen.append((header, body))
        await asyncio.sleep(0.01 * (body[-1] % 3))  # answers overtake each other
        return {"n": header["n"]}, body.upper()

    second.on_request = echo
    answers = await asyncio.gather(
        *(first.request("second", {"n": n}, f"frame\n{n}".encode(), 5.0) for n in range(20))
    )
    assert [(header["n"], body) for header, body in answers] == [
        (n, f"FRAME\n{n}".encode()) for n in range(20)
    ]
    assert all(header["r"] == "first" for header, _ in seen)


async def test_nobody_listening_fails_at_once(buses: tuple[RedisBus, RedisBus]) -> None:
    first, _ = buses
    with pytest.raises(PeerGone):
        async with asyncio.timeout(1.0):
            await first.request("nobody", {}, b"{}", 5.0)


async def test_a_silent_instance_times_out(buses: tuple[RedisBus, RedisBus]) -> None:
    first, second = buses

    async def stall(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        await asyncio.sleep(10)
        return {}, b""

    second.on_request = stall
    with pytest.raises(PeerTimeout):
        await first.request("second", {}, b"{}", 0.2)


async def test_a_request_to_an_instance_that_lost_its_events_may_have_run(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    """Abandoning an instance fails the requests waiting for it at once, but as ``PeerLost``,
    not ``PeerGone``: they were delivered and may have run, so they must not run elsewhere."""
    first, second = buses
    received = asyncio.Event()

    async def run_then_stall(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        received.set()
        await asyncio.sleep(10)
        return {}, b""

    second.on_request = run_then_stall
    request = asyncio.ensure_future(first.request("second", {}, b"{}", 5.0))
    await asyncio.wait_for(received.wait(), 5)
    first.abandon("second")
    with pytest.raises(PeerLost):
        async with asyncio.timeout(1.0):
            await request


async def test_pushes_reach_followers_only(buses: tuple[RedisBus, RedisBus]) -> None:
    first, second = buses
    received: list[tuple[str, bytes]] = []
    second.on_push = lambda event_id, frame: received.append((event_id, frame))
    await second.follow("ev-1")
    first.publish("ev-1", b'{"version":1}')
    first.publish("ev-2", b'{"version":1}')  # not followed
    first.publish("ev-1", b'{"version":2}')
    await until(lambda: len(received) == 2)
    assert received == [("ev-1", b'{"version":1}'), ("ev-1", b'{"version":2}')]
    second.unfollow("ev-1")
    await asyncio.sleep(0.1)
    first.publish("ev-1", b'{"version":3}')
    await asyncio.sleep(0.2)
    assert len(received) == 2


async def test_after_a_redis_restart_inbox_and_follows_come_back(
    buses: tuple[RedisBus, RedisBus], private_redis: RedisServer
) -> None:
    first, second = buses
    received: list[bytes] = []
    first.on_push = lambda _, frame: received.append(frame)
    heard: list[bool] = []
    first.on_statuses_heard = lambda: heard.append(True)  # lost notices are read back then
    await first.follow("ev-9")

    async def answer(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        return {}, b"pong"

    second.on_request = answer
    listening = first._pubsub
    private_redis.restart()
    # A new subscription, not "was unhealthy once": the bus may notice the restart and be back
    # between two polls (the restart blocks this loop until Redis is up again).
    await until(
        lambda: first._pubsub not in (None, listening) and first.healthy and second.healthy,
        timeout=10,
    )
    # A pooled connection from before the restart may fail the first publish on it: that
    # request gets a temporary error (callers retry it), a push is lost (a gap the client
    # repairs by subscribing again); the next ones go through.
    replies: list[bytes] = []

    async def asked() -> bool:
        try:
            replies.append((await first.request("second", {}, b"ping", 2.0))[1])
        except BusError:
            return False
        return True

    await until(asked, timeout=10, what="a request over the bus to be answered")
    assert replies == [b"pong"]
    assert heard, "the status channel's new subscription was not announced"

    async def pushed() -> bool:
        second.publish("ev-9", b"after")
        await asyncio.sleep(0.1)
        return bool(received)

    await until(pushed, timeout=10, what="a push to reach the follower")
    assert set(received) == {b"after"}


async def test_a_second_follower_also_waits_for_the_subscription(
    buses: tuple[RedisBus, RedisBus], redis: Redis
) -> None:
    """Both callers rely on 'no later push can be missed' before reading a snapshot, so a
    caller that finds the subscription on its way waits for Redis to confirm it too."""
    _, second = buses
    await redis.execute_command("CLIENT", "PAUSE", "400", "ALL")  # confirmations held back
    pending = asyncio.create_task(second.follow("ev-2"))
    await asyncio.sleep(0.05)  # the first caller has sent SUBSCRIBE
    started = time.monotonic()
    await second.follow("ev-2")
    assert time.monotonic() - started > 0.2, "returned before Redis confirmed"
    await pending


async def test_a_lone_instance_publishes_nothing_until_another_says_hello(redis: Redis) -> None:
    """Nobody could relay a lone instance's pushes, so it sends none; once another instance
    starts, its follow returns only when the owner publishes again."""
    lone, newcomer = RedisBus(redis, "lone"), RedisBus(redis, "newcomer")
    outsider = redis.pubsub()  # sees whatever is published on the event's channel
    await outsider.subscribe(availability_channel("ev-1"))
    assert (await outsider.get_message(timeout=1.0) or {}).get("type") == "subscribe"
    lone.start()
    try:
        await until(lambda: lone.healthy and not lone.publishes)
        lone.publish("ev-1", b"alone")
        assert await outsider.get_message(timeout=0.3) is None
        received: list[bytes] = []
        newcomer.on_push = lambda _, frame: received.append(frame)
        newcomer.start()
        await until(lambda: newcomer.healthy)
        await newcomer.follow("ev-1")
        assert lone.has_peers and newcomer.has_peers
        lone.publish("ev-1", b"together")
        await until(lambda: received == [b"together"])
    finally:
        await lone.close()
        await newcomer.close()
        await outsider.aclose()  # type: ignore[no-untyped-call]


async def test_a_peer_that_never_answers_delays_follow_only_briefly(redis: Redis) -> None:
    """An instance that heard the hello but is stalled (SIGSTOP) must not block the newcomer."""
    stalled = redis.pubsub()
    await stalled.subscribe(PEERS_CHANNEL)  # counted as a listener, never answers
    newcomer = RedisBus(redis, "newcomer")
    newcomer.start()
    try:
        await until(lambda: newcomer.healthy)
        started = time.monotonic()
        await asyncio.wait_for(newcomer.follow("ev-3"), 3.0)
        assert time.monotonic() - started < 2.0
        assert not newcomer.has_peers  # nobody answered: still publishes nothing
    finally:
        await newcomer.close()
        await stalled.aclose()  # type: ignore[no-untyped-call]


async def test_a_request_to_a_stopped_redis_fails_at_its_deadline(
    redis: Redis, private_redis: RedisServer
) -> None:
    """The deadline covers the publish too: a Redis that stopped reading (SIGSTOP, a dead
    route) must not hold the caller past it."""
    bus = RedisBus(redis, "asker", ping_interval=30.0)  # only the deadline can end the wait
    bus.start()
    process = private_redis._proc
    assert process is not None
    try:
        await until(lambda: bus.healthy)
        os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(PeerTimeout):
            await asyncio.wait_for(bus.request("owner", {}, b"{}", 0.5), 5)
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(process.pid, signal.SIGCONT)
        await bus.close()


async def test_follow_unfollow_follow_within_one_round_trip_stays_subscribed(
    buses: tuple[RedisBus, RedisBus], redis: Redis
) -> None:
    """The second follow finds the first one's SUBSCRIBE unconfirmed and an UNSUBSCRIBE sent
    after it: it must subscribe again, and return only once that is confirmed."""
    first, second = buses
    received: list[bytes] = []
    second.on_push = lambda _, frame: received.append(frame)
    await redis.execute_command("CLIENT", "PAUSE", "300", "ALL")  # type: ignore[no-untyped-call]
    following = asyncio.create_task(second.follow("ev-race"))
    await asyncio.sleep(0.05)  # its SUBSCRIBE is sent, not yet answered
    second.unfollow("ev-race")
    await second.follow("ev-race")
    await following
    first.publish("ev-race", b"after")
    await until(lambda: received == [b"after"], what="the push to the follower")
