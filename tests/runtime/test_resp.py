"""The bus's own Redis connection, on a real (private) Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis
from support.waiting import until

from seatd.adapters.bus import RedisBus
from seatd.adapters.redis import make_client
from seatd.adapters.resp import RespError, encode_command, open_like
from seatd.devstack import RedisServer


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command(b"PUBLISH", "ch", 12) == (
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\n12\r\n"
    )
    assert (
        encode_command("SET", "k", "é\r\n")
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\xc3\xa9\r\n\r\n"
    )


async def test_replies_reach_their_commands_in_order_and_one_turn_is_one_write(
    redis: Redis,
) -> None:
    connection = await open_like(redis)
    try:
        flushes = 0
        flush = connection._flush

        def counted() -> None:
            nonlocal flushes
            flushes += 1
            flush()

        connection._flush = counted  # type: ignore[method-assign]
        replies = [connection.call("ECHO", f"n{n}") for n in range(100)]
        assert await asyncio.gather(*replies) == [f"n{n}".encode() for n in range(100)]
        assert flushes == 1
    finally:
        connection.close()


async def test_an_error_reply_goes_to_its_caller_and_the_connection_goes_on(redis: Redis) -> None:
    connection = await open_like(redis)
    try:
        refused = connection.call("NOSUCHCOMMAND")
        connection.send("SET", "k", "v")  # nobody waits for this one's reply
        after = connection.call("GET", "k")
        assert isinstance(await refused, hiredis.ReplyError)
        assert await after == b"v"
    finally:
        connection.close()


async def test_a_lost_connection_fails_what_waits_and_says_so(redis: Redis) -> None:
    connection = await open_like(redis)
    assert await connection.call("CLIENT", "SETNAME", "doomed") == b"OK"
    waiting = connection.call("BLPOP", "nothing-here", "0")  # answered only by the loss
    await redis.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")  # type: ignore[no-untyped-call]
    with pytest.raises(RespError):
        await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(connection.closed, 5)
    assert not connection.open
    with pytest.raises(RespError):
        connection.call("PING")


async def test_a_stopped_redis_makes_commands_fail_instead_of_piling_up(
    private_redis: RedisServer, redis: Redis
) -> None:
    """Once more than the high-water mark waits unread, new commands are refused at once."""
    connection = await open_like(redis, high_water=1 << 20)
    process = private_redis._proc
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        chunk = b"x" * 100_000
        with pytest.raises(RespError, match="not taking what is sent"):
            async with asyncio.timeout(10):
                while True:  # the kernel's buffers first, then ours
                    connection.send("PUBLISH", "nowhere", chunk)
                    await asyncio.sleep(0)
        buffered = connection._transport.get_write_buffer_size() if connection._transport else 0
        assert 1 << 20 < buffered < (1 << 20) + 2 * len(chunk) + 100
    finally:
        os.kill(process.pid, signal.SIGCONT)
        connection.close()


async def test_a_subscriber_hears_messages_and_confirmations(redis: Redis) -> None:
    heard: list[Any] = []
    subscriber = await open_like(redis, heard.append)
    try:
        subscriber.send("SUBSCRIBE", "news")
        await until(lambda: heard == [[b"subscribe", b"news", 1]])
        assert await redis.publish("news", b"\x00binary\r\n") == 1
        await until(lambda: len(heard) == 2)
        assert heard[1] == [b"message", b"news", b"\x00binary\r\n"]
        with pytest.raises(TypeError):
            subscriber.call("PING")  # its replies all go to the callback
    finally:
        subscriber.close()


async def test_it_authenticates_as_the_client_does(
    redis: Redis, private_redis: RedisServer
) -> None:
    await redis.config_set("requirepass", "s3cret")
    right = make_client("127.0.0.1", private_redis.port, 0, "s3cret")
    wrong = make_client("127.0.0.1", private_redis.port, 0, "guess")
    try:
        connection = await open_like(right)
        assert await connection.call("PING") == b"PONG"
        connection.close()
        with pytest.raises(RespError, match="refused the password"):
            await open_like(wrong)
    finally:
        await right.config_set("requirepass", "")
        await right.aclose()
        await wrong.aclose()


async def test_the_bus_gives_up_a_redis_that_stops_answering(redis: Redis) -> None:
    """A connection that stays open but carries nothing (a stalled Redis, a dead route) is
    found by an unanswered PING, and the bus connects again once Redis answers."""
    bus = RedisBus(redis, "watched", retry_interval=0.1, ping_interval=0.2)
    bus.start()
    try:
        await until(lambda: bus.healthy)
        await redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # type: ignore[no-untyped-call]
        paused = time.monotonic()
        await until(lambda: not bus.healthy, timeout=2)
        assert time.monotonic() - paused < 1.2
        await until(lambda: bus.healthy, timeout=5)
    finally:
        await bus.close()
