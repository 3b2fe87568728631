"""How a connection reads its requests: in order, never more than ``max_inflight`` at once, and
nothing lost while it waits (messages sent before the welcome, or while at the limit).

Then the frames themselves, as raw bytes over TCP: however they are cut into reads (several in
one, one across several, some with the handshake), each message is read whole and answered in
order, and every frame WebSocket forbids closes the connection with its code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from support.client import RawClient, client, create_event, send_at_once
from support.rawsocket import (
    BINARY,
    CONT,
    PING,
    PONG,
    RSV1,
    RSV2,
    RSV3,
    TEXT,
    RawSocket,
    frame,
    request,
    settle,
)
from support.server import NARROW_INFLIGHT, RunningServer, base_env, in_process_server, token
from support.waiting import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from seatd.gateway.connection import Connection


async def _replies(c: RawClient, count: int) -> dict[Any, dict[str, Any]]:
    replies: dict[Any, dict[str, Any]] = {}
    while len(replies) < count:
        frame = await c.recv()
        if "id" in frame:
            replies[frame["id"]] = frame
    return replies


async def test_pipelined_requests_past_the_limit_wait_and_run_in_order(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    most = 0
    track = Connection._track

    def counting_track(self: Connection, future: Any, pending: Any) -> None:
        nonlocal most
        track(self, future, pending)
        most = max(most, self.inflight)

    async with client(narrow.url, "organiser", "admin") as admin:
        event = await create_event(admin, seats=40, max_seats_per_user=10)
    monkeypatch.setattr(Connection, "_track", counting_track)
    async with client(narrow.url, "queue-buyer") as buyer:
        # One seat per hold, all sent before any reply is read: in order, the first ten fit
        # the per-user limit and the other thirty are refused.
        for n in range(40):
            await buyer.send(
                {
                    "id": n,
                    "type": "hold",
                    "event_id": event["event_id"],
                    "seat_ids": [f"A-{n + 1}"],
                }
            )
        replies = await _replies(buyer, 40)
    codes = ["ok" if replies[n]["ok"] else replies[n]["error"]["code"] for n in range(40)]
    assert codes == ["ok"] * 10 + ["seat_limit_exceeded"] * 30, codes
    assert most == NARROW_INFLIGHT  # reached, never passed


async def test_messages_sent_before_the_welcome_are_all_answered(
    narrow: RunningServer,
) -> None:
    async with connect(narrow.url, subprotocols=["seatd.v1"]) as ws:  # type: ignore[list-item]
        frames = [{"id": 0, "type": "authenticate", "token": token("early-bird")}]
        frames += [{"id": n, "type": "ping"} for n in range(1, 30)]
        for frame in frames:  # without waiting for the authentication's answer
            await ws.send(orjson.dumps(frame).decode())
        seen: list[Any] = []
        async with asyncio.timeout(10):
            while len(seen) < len(frames):
                message = orjson.loads(await ws.recv())
                if "id" in message:
                    assert message["ok"] is True, message
                    seen.append(message["id"])
        assert seen == list(range(30))


async def test_messages_sent_before_the_welcome_leave_back_pressure_on(
    narrow: RunningServer, catalog_gate: asyncio.Event
) -> None:
    """Messages queued before the welcome that take the connection to its in-flight limit
    leave the socket unread: what the client sends next waits in TCP, not in server memory,
    and every request is still answered once the work moves on."""
    async with connect(narrow.url, subprotocols=["seatd.v1"]) as ws:  # type: ignore[list-item]
        first = [{"id": 0, "type": "authenticate", "token": token("early-flood")}]
        send_at_once(ws, first + [{"id": n, "type": "list_events"} for n in range(1, 21)])
        conn = await narrow.session("early-flood")
        await until(lambda: conn.inflight == NARROW_INFLIGHT, what="the in-flight limit")
        assert conn._backlog is not None
        kept = len(conn._backlog)
        send_at_once(ws, [{"id": n, "type": "list_events"} for n in range(21, 421)])
        await asyncio.sleep(0.3)
        assert not conn.ws.transport.is_reading()
        assert len(conn._backlog) == kept, "read past the in-flight limit"
        catalog_gate.set()
        replies: dict[Any, bool] = {}
        async with asyncio.timeout(20):
            while len(replies) < 421:
                message = orjson.loads(await ws.recv())
                if "id" in message:
                    replies[message["id"]] = message["ok"]
        assert replies == dict.fromkeys(range(421), True)


async def test_a_bug_handling_a_message_closes_the_connection_with_1011(
    narrow: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Connection, frame: Any) -> None:
        raise RuntimeError("a bug")

    async with client(narrow.url, "unlucky") as c:
        monkeypatch.setattr(Connection, "_on_frame", broken)
        await c.send({"id": 1, "type": "ping"})
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1011
    monkeypatch.undo()
    async with client(narrow.url, "lucky") as c:  # the server itself is fine
        assert (await c.request("ping"))["ok"] is True


# --- frames on the wire ------------------------------------------------------------------------

# The frame limit of the ``small`` server: an oversize frame still arrives in one read.
SMALL_FRAMES = 1024


@pytest.fixture(scope="module")
async def small(service_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    env = base_env(service_env, SEATD_MAX_FRAME_BYTES=str(SMALL_FRAMES))
    async with in_process_server(env) as running:
        yield running


@contextlib.asynccontextmanager
async def raw(server: RunningServer, user: str, **kwargs: Any) -> AsyncIterator[RawSocket]:
    sock = await RawSocket.connect(server.port, user, **kwargs)
    try:
        yield sock
    finally:
        await sock.aclose()


def padded_ping(size: int) -> bytes:
    """A ping request of exactly ``size`` bytes, padded with an (unknown) field."""
    head, tail = b'{"id":"big","type":"ping","pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def decoy(size: int) -> bytes | None:
    """A complete text frame of exactly ``size`` bytes, a ping with id "decoy" (None when no
    frame has that size)."""
    body = b'{"id":"decoy","type":"ping"}'
    for head in (6, 8):  # header and mask, with a 7-bit or a 16-bit length
        n = size - head
        if n >= len(body) and (n < 126) == (head == 6):
            return frame(TEXT, b" " * (n - len(body)) + body)
    return None


def frame_hiding_a_decoy(length: int, split: int) -> bytes:
    """A binary frame of ``length`` payload bytes whose bytes from ``split`` on are, whenever
    they can be, a complete frame of their own (``decoy``): a server that took the start of
    the next read for a frame boundary would answer the decoy instead of this frame."""
    plain = frame(BINARY, bytes(length))
    header = plain[: 2 if length < 126 else 4]
    hidden = decoy(len(plain) - split) if split >= len(header) else None
    if hidden is None:
        return plain
    return header + bytes(split - len(header)) + hidden  # the mask and payload are its bytes


async def test_frames_in_one_write_are_answered_in_order(small: RunningServer) -> None:
    frames = [
        request(0),
        request(1, pad="x" * 200),  # a 16-bit length; an unknown field: refused
        frame(TEXT, b""),  # not JSON: refused with a null id
        request(3),
        frame(BINARY, orjson.dumps({"id": 4, "type": "ping"})),  # binary: refused, null id
        *[request(n) for n in range(5, 40)],
    ]
    async with raw(small, "one-write") as s:
        s.write(b"".join(frames))
        assert await s.answers(40) == [
            (0, "ok"),
            (1, "invalid_request"),
            (None, "invalid_json"),
            (3, "ok"),
            (None, "invalid_json"),
            *((n, "ok") for n in range(5, 40)),
        ]


async def test_more_frames_in_one_read_than_a_connection_may_keep_are_all_answered(
    small: RunningServer,
) -> None:
    """Whole frames are handled in the loop's later turns; past the number one connection may
    keep unhandled its socket is not read until they are handled, and then it is read on."""
    async with raw(small, "many-in-one-write") as s:
        s.write(b"".join(request(n) for n in range(300)))
        assert await s.answers(300) == [(n, "ok") for n in range(300)]
        s.write(request(300))
        assert await s.answers(1) == [(300, "ok")]


@pytest.mark.parametrize("length", [40, 130], ids=["7-bit-length", "16-bit-length"])
async def test_a_frame_split_across_writes_anywhere_is_read_whole(
    small: RunningServer, length: int
) -> None:
    """Cut in the header (before, inside, after its length), in the mask, in the payload; after
    a complete frame and before the next one."""
    async with raw(small, f"splitter-{length}") as s:
        size = len(frame(BINARY, bytes(length)))
        for split in range(1, size):
            whole = frame_hiding_a_decoy(length, split)
            s.write(request(f"before-{split}") + whole[:split])
            await settle()
            s.write(whole[split:] + request(f"after-{split}"))
            assert await s.answers(3) == [
                (f"before-{split}", "ok"),
                (None, "invalid_json"),  # the binary frame
                (f"after-{split}", "ok"),
            ], f"split at byte {split}"


@pytest.mark.parametrize("split", [2, 6], ids=["before-the-mask", "after-the-mask"])
@pytest.mark.parametrize(
    "handshake_writes",
    [(), (-2,), (-40, -1)],
    ids=["handshake-in-one-write", "cut-in-its-last-crlf", "cut-twice"],
)
async def test_frames_sent_with_the_handshake_are_read(
    small: RunningServer, handshake_writes: tuple[int, ...], split: int
) -> None:
    """A client may send frames right behind its handshake request, before the response: a
    complete one and the start of another, finished once the connection is open."""
    whole = frame_hiding_a_decoy(40, split)
    then = request("early") + whole[:split]
    async with raw(small, "eager", handshake_writes=handshake_writes, then=then) as s:
        s.write(whole[split:] + request("after"))
        assert await s.answers(3) == [("early", "ok"), (None, "invalid_json"), ("after", "ok")]


async def test_a_ping_written_with_requests_is_answered_too(small: RunningServer) -> None:
    async with raw(small, "pinger") as s:
        s.write(request(1) + frame(PING, b"probe") + request(2))
        got = [await s.frame() for _ in range(3)]
        # The pong goes out as the write is read, before its messages are handled.
        assert [(op, data if op == PONG else orjson.loads(data)["id"]) for op, data in got] == [
            (PONG, b"probe"),
            (TEXT, 1),
            (TEXT, 2),
        ]


async def test_a_fragmented_message_is_read(small: RunningServer) -> None:
    text = orjson.dumps({"id": "frag", "type": "ping"})
    async with raw(small, "fragments") as s:
        s.write(
            request(1)
            + frame(TEXT, text[:5], fin=False)
            + frame(CONT, text[5:12], fin=False)
            + frame(CONT, text[12:])
            + request(2)
        )
        assert await s.answers(3) == [(1, "ok"), ("frag", "ok"), (2, "ok")]
        # A fragment per write, then a frame of its own.
        s.write(frame(TEXT, text[:5], fin=False))
        await settle()
        s.write(frame(CONT, text[5:]))
        await settle()
        s.write(request(3))
        assert await s.answers(2) == [("frag", "ok"), (3, "ok")]


async def test_a_new_message_inside_a_fragmented_one_closes_with_1002(
    small: RunningServer,
) -> None:
    async with raw(small, "interrupter") as s:
        s.write(frame(TEXT, b'{"id":', fin=False))
        await settle()
        s.write(request(1))  # complete, but a continuation frame was due
        assert await s.close_code() == 1002


async def test_invalid_utf8_closes_with_1007_after_what_came_before(small: RunningServer) -> None:
    async with raw(small, "garbler") as s:
        s.write(request(1) + frame(TEXT, b'{"id":2,"type":"ping","x":"\xff"}') + request(3))
        assert await s.answers(1) == [(1, "ok")]
        assert await s.close_code() == 1007


async def test_a_frame_at_the_size_limit_is_read(small: RunningServer) -> None:
    async with raw(small, "at-the-limit") as s:
        s.write(frame(TEXT, padded_ping(SMALL_FRAMES)) + request(1))
        assert await s.answers(2) == [("big", "invalid_request"), (1, "ok")]


async def test_a_frame_over_the_size_limit_closes_with_1009(small: RunningServer) -> None:
    async with raw(small, "over-the-limit") as s:
        s.write(frame(TEXT, padded_ping(SMALL_FRAMES + 1)) + request(1))
        assert await s.close_code() == 1009


PING_REQUEST = orjson.dumps({"id": 1, "type": "ping"})


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame(TEXT, PING_REQUEST, mask=None), id="unmasked"),
        # Four bytes more: read as if it had a mask, it would be a whole frame.
        pytest.param(frame(BINARY, PING_REQUEST, mask=None) + bytes(4), id="unmasked-4-bytes-on"),
        pytest.param(frame(TEXT, PING_REQUEST, flags=RSV1), id="rsv1"),
        pytest.param(frame(TEXT, PING_REQUEST, flags=RSV2), id="rsv2"),
        pytest.param(frame(BINARY, PING_REQUEST, flags=RSV3), id="rsv3"),
        pytest.param(frame(0x3, PING_REQUEST), id="reserved-opcode"),
    ],
)
async def test_a_framing_violation_closes_with_1002(small: RunningServer, bad: bytes) -> None:
    async with raw(small, "violator") as s:
        s.write(bad + request(2))
        assert await s.close_code() == 1002
