"""idle, worker side: many quiet connections, many events activated once."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from seatd.bench.layout import Frames
from seatd.bench.loads.conn import (
    GET,
    Conn,
    close_all,
    close_codes,
    connect_all,
    error_code,
    wait_until,
)
from seatd.bench.stats import OpRecorder
from seatd.bench.workers import Control, WorkerSpec, cpu_seconds

_loads = orjson.loads
_perf = time.perf_counter


class IdleConn(Conn):
    __slots__ = ("on_reply",)

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.on_reply: Callable[[IdleConn, tuple[Any, ...], dict[str, Any]], None] | None = None

    def on_frame(self, data: bytes) -> None:
        if self.on_reply is None:
            return
        msg = _loads(data)
        entry = self.pending.pop(msg.get("id"), None)
        if entry is not None:
            self.on_reply(self, entry, msg)


async def _activate(
    conns: list[IdleConn], event_ids: list[str], pipeline: int, control: Control
) -> OpRecorder:
    """``get_event`` every event once (which loads it into the server's memory)."""
    recorder = OpRecorder(_perf(), 0.25)
    todo = deque(event_ids)
    outstanding = 0

    def send_next(conn: IdleConn) -> None:
        nonlocal outstanding
        if not todo or conn.closed:
            return
        rid = conn.take_id()
        conn.pending[rid] = (GET, _perf())
        outstanding += 1
        conn.send(Frames(todo.popleft()).get_event(rid))

    def on_reply(conn: IdleConn, entry: tuple[Any, ...], msg: dict[str, Any]) -> None:
        nonlocal outstanding
        now = _perf()
        outstanding -= 1
        recorder.record(now - entry[1], now, None if msg.get("ok") else error_code(msg))
        control.progress(1)
        send_next(conn)

    for conn in conns:
        conn.on_reply = on_reply
        for _ in range(pipeline):
            send_next(conn)
    await wait_until(lambda: not todo and outstanding <= 0, 3600, 0.01)
    for conn in conns:
        conn.on_reply = None
    return recorder


async def idle_load(spec: WorkerSpec, control: Control) -> dict[str, Any]:
    p = spec.params
    offset = int(p["conn_offset"])
    conns = [IdleConn(f"{p['user_prefix']}-i{offset + i}") for i in range(int(p["connections"]))]
    await connect_all(spec, conns, control, concurrency=64)
    control.send("ready", len(conns))
    cpu0 = cpu_seconds()
    while True:
        kind, order = await control.recv_any("activate", "close")
        if kind == "close":
            break
        started = cpu_seconds()
        event_ids = [f"{order['prefix']}{i}" for i in range(int(order["lo"]), int(order["hi"]))]
        active = conns[: max(1, min(len(conns), int(order["connections"])))]
        recorder = await _activate(active, event_ids, int(order["pipeline"]), control)
        control.send("activated", {"get_event": recorder.data(), "cpu_s": cpu_seconds() - started})
    still_open = sum(1 for c in conns if not c.closed)
    closed = close_codes(conns)
    await close_all(conns)
    return {"open_at_end": still_open, "closed": closed, "cpu_s": cpu_seconds() - cpu0}
