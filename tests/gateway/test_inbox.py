"""The loop's inbox: messages read are handled a bounded share per turn of the event loop, so
what becomes ready meanwhile (an actor's commit that PostgreSQL answered) waits one share, not
every message thousands of sockets delivered in the same turn."""

from __future__ import annotations

import asyncio
from typing import Any

from support.waiting import until

from seatd.gateway.inbound import _PER_TURN, _Inbox


class _Conn:
    """A connection with ``count`` messages waiting; ``take_pending`` is what the inbox calls."""

    def __init__(self, name: int, handled: list[int], count: int = 1) -> None:
        self.name, self.handled, self.count = name, handled, count

    def take_pending(self) -> int:
        self.handled.append(self.name)
        return self.count


async def test_a_callback_ready_meanwhile_runs_after_one_turns_share() -> None:
    loop = asyncio.get_running_loop()
    inbox, handled, seen = _Inbox(loop), [], []
    for n in range(5 * _PER_TURN):
        inbox.put(_Conn(n, handled))
    loop.call_soon(lambda: seen.append(len(handled)))
    await until(lambda: len(handled) == 5 * _PER_TURN, what="every connection's turn")
    assert handled == list(range(5 * _PER_TURN))  # in the order they were read
    assert seen == [_PER_TURN]


async def test_a_share_counts_messages_not_connections() -> None:
    loop = asyncio.get_running_loop()
    inbox, handled, seen = _Inbox(loop), [], []
    for n in range(100):
        inbox.put(_Conn(n, handled, count=10))
    loop.call_soon(lambda: seen.append(len(handled)))
    await until(lambda: len(handled) == 100, what="every connection's turn")
    assert seen == [-(-_PER_TURN // 10)]  # connections until the share is used up


async def test_a_failing_connection_does_not_stop_the_others() -> None:
    """The inbox asks for its next turn whatever happens in this one."""
    loop = asyncio.get_running_loop()
    inbox, handled = _Inbox(loop), []

    class _Broken(_Conn):
        def take_pending(self) -> int:
            raise RuntimeError("a bug")

    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        inbox.put(_Broken(-1, handled))
        for n in range(3 * _PER_TURN):
            inbox.put(_Conn(n, handled))
        await until(lambda: len(handled) == 3 * _PER_TURN, what="the others' turns")
    finally:
        loop.set_exception_handler(None)
    assert [type(e.get("exception")) for e in errors] == [RuntimeError]
