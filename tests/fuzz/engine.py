"""The fuzz engine: hostile frames pipelined over several live connections, each checked.

Each ``Fuzzer`` owns one connection slot: it connects (usually with a token in the query, now
and then without one, fuzzing the first frame instead), keeps up to ``window`` requests in
flight, and reconnects whenever the server closes. A frame is a ``Template`` from the corpus
with fresh values in its ``Slot``s: a new request id, a live (or ended, or someone else's) hold
of this connection, a version it has seen, a new or reused idempotency key, a token.

The oracle, for every frame (``Expect`` is what PROTOCOL.md "How a frame is checked" says the
server must do with it, computed from the very bytes sent, parsed by the same JSON parser):

- exactly one reply, valid against ``protocol/seatd.v1.schema.json``; matched by ``id`` when
  the frame had a usable id, else an ``"id": null`` error (in the order of those frames, which
  the server answers as it reads them); with the error code the frame's defect calls for
  (``invalid_json``, ``invalid_request`` on ``$.id`` or ``$.type``, ``unknown_type``) and the
  frame's ``type`` when it named a request type;
- or, for a frame that must close the connection (invalid UTF-8: 1007, too big: 1009, a
  framing violation: 1002), that close and no reply; it is sent when nothing else is in flight
  so that the close can be told apart;
- never a reply with a traceback, a source path or an exception repr in it, never
  ``internal_error``, and never ``unavailable`` or ``shutting_down`` (PostgreSQL is up and
  nothing is shutting down); no reply to an id that is not in flight, no reply missing after
  ``reply_timeout``;
- a close the run did not ask for is accepted with a documented close code (and counted),
  but not with 1011 or 1012, nor without a close frame (1006): then the frames that were in
  flight are replayed one by one on fresh connections to find the one that does it.

The first frame of a connection opened without a token must be ``authenticate``: anything
else must get an error reply and close 4501 (PROTOCOL.md, "Authentication").

Pushes are validated against the schema too (``goaway`` is a violation: nothing restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from fuzz.schema_check import SchemaOracle
from fuzz.strategies import ID_MARKER, LEAK_MARKERS, RAW_VIOLATIONS, Slot, Template, dumps
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import Opcode
from websockets.speedups import apply_mask

from protocol.errors import CloseCode
from protocol.messages import REQUEST_TYPES

__all__ = ["Expect", "FuzzRun", "Fuzzer", "Recorder", "expect_for"]

# Codes that say the server is broken (or going away) rather than refusing a bad request.
FORBIDDEN_CODES = frozenset({"internal_error", "unavailable", "shutting_down"})
# Closes that are a server fault whatever the client sent (1006: no close frame at all).
FAULT_CLOSES = frozenset({1006, int(CloseCode.INTERNAL_ERROR), int(CloseCode.SERVICE_RESTART)})
DOCUMENTED_CLOSES = frozenset(int(code) for code in CloseCode)
MUTATING = frozenset({"hold", "refresh", "release", "reserve"})
INT64 = 2**63


@dataclass(frozen=True, slots=True)
class Expect:
    """What the server must do with one frame (PROTOCOL.md, "How a frame is checked")."""

    close: tuple[int, ...] = ()  # the frame must close the connection with one of these
    request_id: Any = None  # the usable id the reply carries (None: the reply's id is null)
    null_id: bool = False
    request_type: str | None = None  # the type the reply carries (None: no type key)
    code: str | None = None  # the error code the reply must have (None: any reply)
    path: str | None = None  # its details.path
    parsed: Any = None  # the frame as the server parsed it (a request dict, when it is one)


def _usable_id(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= 64
    return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64


def expect_for(data: bytes, *, binary: bool, max_frame_bytes: int) -> Expect:
    """The server's duty for ``data`` sent as one text (or binary) message."""
    if len(data) > max_frame_bytes:
        return Expect(close=(int(CloseCode.MESSAGE_TOO_BIG),))
    if binary:
        return Expect(null_id=True, code="invalid_json")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return Expect(close=(int(CloseCode.INVALID_DATA),))
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Expect(null_id=True, code="invalid_json")
    if not isinstance(parsed, dict):
        return Expect(null_id=True, code="invalid_json")
    raw_id, raw_type = parsed.get("id"), parsed.get("type")
    named = raw_type if isinstance(raw_type, str) and raw_type in REQUEST_TYPES else None
    if not _usable_id(raw_id):
        return Expect(null_id=True, request_type=named, code="invalid_request", path="$.id")
    if not isinstance(raw_type, str):
        return Expect(request_id=raw_id, code="invalid_request", path="$.type")
    if named is None:
        return Expect(request_id=raw_id, code="unknown_type")
    return Expect(request_id=raw_id, request_type=named, parsed=parsed)


class Recorder(Protocol):
    """Told about every well-formed mutating request a fuzzer sends (the history test)."""

    def sent(self, fuzzer: Fuzzer, request: dict[str, Any]) -> object | None: ...

    def replied(self, token: object, reply: dict[str, Any]) -> None: ...

    def lost(self, token: object, why: str) -> None: ...


@dataclass(slots=True)
class Pending:
    data: bytes
    label: str
    expect: Expect
    sent_at: float
    record: object | None = None


@dataclass(slots=True)
class Violation:
    kind: str
    detail: str
    frame: bytes | None = None
    reply: str | None = None

    def render(self) -> str:
        text = f"{self.kind}: {self.detail}"
        if self.frame is not None:
            text += f"\n      frame: {_show(self.frame)}"
        if self.reply is not None:
            text += f"\n      reply: {self.reply[:400]}"
        return text


def _show(data: bytes, limit: int = 300) -> str:
    text = repr(data[:limit])
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


@dataclass
class FuzzRun:
    """Shared by the fuzzers of one run: settings, the oracle, statistics and violations."""

    url: str
    corpus: Sequence[Template]
    frames: int  # send this many frames in all (or stop at ``deadline``)
    seed: int
    token: Callable[..., str]  # (sub, role, ttl_s=...) -> JWT
    max_frame_bytes: int = 65536
    window: int = 64
    batch: int = 16  # frames written with one system call
    reply_timeout: float = 15.0
    deadline: float | None = None  # time.monotonic() after which no new frame is sent
    recorder: Recorder | None = None
    first_frame_share: float = 0.05  # connections opened without a token, first frame fuzzed
    oracle: SchemaOracle = field(default_factory=SchemaOracle)
    sent: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[Violation]] = field(default_factory=dict)
    violation_counts: Counter[str] = field(default_factory=Counter)
    shared_holds: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    replays_left: int = 4
    culprits: list[Violation] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def violation(
        self, kind: str, detail: str, frame: bytes | None = None, reply: Any = None
    ) -> None:
        self.violation_counts[kind] += 1
        examples = self.violations.setdefault(kind, [])
        if len(examples) < 5 and (frame is None or all(v.frame != frame for v in examples)):
            text = reply if isinstance(reply, str) or reply is None else repr(reply)
            examples.append(Violation(kind, detail, frame, text))

    def more(self) -> bool:
        if self.sent >= self.frames:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def problems(self) -> list[str]:
        """Everything the oracle found, one entry per kind with up to five examples."""
        out = []
        for kind, count in sorted(self.violation_counts.items()):
            examples = "\n    ".join(v.render() for v in self.violations.get(kind, []))
            out.append(f"{kind} ({count}x)\n    {examples}")
        out += [f"schema oracle disagrees with jsonschema: {d}" for d in self.oracle.disagreements]
        out += [f"culprit, replayed alone: {c.render()}" for c in self.culprits]
        out += [f"fuzz harness error: {e}" for e in self.harness_errors]
        return out

    def summary(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"fuzz seed {self.seed}: {self.sent} frames in {self.elapsed:.1f} s "
            f"({rate:,.0f} frames/s), {len(self.corpus)} templates, "
            f"{self.oracle.checked} server frames schema-checked "
            f"({self.oracle.cross_checked} also by jsonschema)",
            "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items())),
        ]
        if self.violation_counts:
            lines.append(
                "  VIOLATIONS: " + ", ".join(f"{k} {v}" for k, v in self.violation_counts.items())
            )
        return "\n".join(lines)


def _respell(hold_id: str, rng: random.Random) -> str:
    """Another spelling of the same UUID (PROTOCOL.md: any form of a UUID names the hold)."""
    u = uuid.UUID(hold_id)
    return rng.choice(
        [str(u).upper(), "{" + str(u) + "}", "urn:uuid:" + str(u), u.hex, u.hex.upper()]
    )


class Fuzzer:
    """One connection slot of a fuzz run: connect, pipeline, check, reconnect."""

    def __init__(self, run: FuzzRun, index: int, sub: str, role: str) -> None:
        self.run = run
        self.index = index
        self.sub = sub
        self.role = role
        self.rng = random.Random(run.seed * 1000 + index)
        self.ids = itertools.count(1)
        self.live_holds: dict[str, str] = {}  # hold id -> event id
        self.ended_holds: deque[str] = deque(maxlen=50)
        self.keys: deque[str] = deque(maxlen=50)
        self.versions: dict[str, int] = {}
        self.new_event = f"fz-{uuid.uuid4().hex[:12]}"
        self.connections = 0
        self._by_id: dict[Any, Pending] = {}
        self._null: deque[Pending] = deque()
        self._room = asyncio.Event()
        self._ended = asyncio.Event()  # the server's close frame arrived, or the connection ended
        self._idle = asyncio.Event()
        self._closed = asyncio.Event()
        self._expected_close: tuple[int, ...] = ()
        self._client_closing = False
        self._closing_seen = False
        self._last_sent: deque[Pending] = deque(maxlen=8)

    # --- the loop --------------------------------------------------------------------------

    async def run_until_done(self) -> None:
        while self.run.more():
            try:
                await self._session()
            except (OSError, TimeoutError, WebSocketException) as error:
                self.run.violation("connect_failed", f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.2)

    async def _session(self) -> None:
        run = self.run
        in_band = self.rng.random() < run.first_frame_share
        url = run.url if in_band else f"{run.url}?token={run.token(self.sub, self.role)}"
        ws = await connect(
            url,
            subprotocols=["seatd.v1"],  # type: ignore[list-item]
            open_timeout=10,
            max_size=None,
            compression=None,
            ping_interval=None,
            close_timeout=2,
            create_connection=_Connection,
        )
        assert isinstance(ws, _Connection)
        ws.on_close_frame = self._close_frame
        self.connections += 1
        self._by_id.clear()
        self._null.clear()
        self._room.set()
        self._idle.set()
        self._closed.clear()
        self._ended.clear()
        self._closing_seen = False
        self._expected_close = ()
        self._client_closing = False
        reader = asyncio.create_task(self._read(ws))
        try:
            if in_band and not await self._first_frame(ws):
                await self._await_close()
                return
            await self._pipeline(ws)
        finally:
            if self._closing_seen and not reader.done():
                # The server closed: read what arrived before its close frame, then stop
                # waiting for its TCP close (it may wait 5 s for ours behind a full pipeline).
                await asyncio.sleep(0.01)
                ws.transport.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(reader), 3)
            if not reader.done():
                self._client_closing = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 3)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader, 3)
            reader.cancel()

    async def _pipeline(self, ws: ClientConnection) -> None:
        """Keep the window full: render frames in batches and write each batch at once (one
        system call for up to 16 frames; the WebSocket layer would make one per frame)."""
        run, rng, corpus, transport = self.run, self.rng, self.run.corpus, ws.transport
        while run.more() and not (self._closed.is_set() or self._closing_seen):
            if not await self._wait_room(ws):
                return
            chunks: list[bytes] = []
            closing: Template | None = None
            for _ in range(min(run.window - self._in_flight(), run.batch)):
                if not run.more():
                    break
                t = corpus[rng.randrange(len(corpus))]
                if t.kind in CLOSING_KINDS:
                    closing = t
                    break
                data, binary = self._render(t)
                expect = expect_for(data, binary=binary, max_frame_bytes=run.max_frame_bytes)
                if expect.close:  # rendered over the size limit: a closing frame after all
                    closing = Template("oversize", data, t.label)
                    break
                if not expect.null_id and expect.request_id in self._by_id:
                    continue  # an odd id ("-0" is 0) equal to one in flight: replies would mix
                self._track(data, t.label, expect)
                if t.kind == "fragments":
                    chunks += _fragments(data, t.pieces, rng)
                else:
                    chunks.append(ws_frame(OP_BINARY if binary else OP_TEXT, data, rng))
            if chunks:
                transport.write(b"".join(chunks))
            if closing is not None:
                await self._closing(ws, closing)
                return
            await ws.drain()  # the transport's back-pressure (high-water mark)
            await asyncio.sleep(0)  # let the replies in
        if not (self._closed.is_set() or self._closing_seen):  # the run is over
            await self._drain(run.reply_timeout)

    def _close_frame(self) -> None:
        """The server's close frame arrived: nothing more will be answered; stop waiting."""
        self._closing_seen = True
        self._ended.set()
        self._room.set()
        self._idle.set()

    def _in_flight(self) -> int:
        return len(self._by_id) + len(self._null)

    async def _wait_room(self, ws: ClientConnection) -> bool:
        """Room in the window; False when the connection closed, or when nothing was answered
        for ``reply_timeout`` (a stall: the oldest requests are reported, the connection
        dropped)."""
        if self._in_flight() >= self.run.window:
            self._room.clear()
            if self._closing_seen:
                return False
            try:
                await asyncio.wait_for(self._room.wait(), self.run.reply_timeout)
            except TimeoutError:
                oldest = sorted(
                    list(self._by_id.values()) + list(self._null), key=lambda p: p.sent_at
                )
                for pending in oldest[:3]:
                    self.run.violation(
                        "no_reply",
                        f"no reply within {self.run.reply_timeout:g} s ({pending.label})",
                        pending.data,
                    )
                self._client_closing = True
                ws.transport.abort()
                return False
        return not (self._closed.is_set() or self._closing_seen)

    def _track(self, data: bytes, label: str, expect: Expect) -> Pending:
        run = self.run
        run.sent += 1
        run.labels[label.split("~")[0]] += 1
        record = None
        parsed = expect.parsed
        if run.recorder is not None and parsed is not None and expect.request_type in MUTATING:
            record = run.recorder.sent(self, parsed)
        pending = Pending(data, label, expect, time.monotonic(), record)
        if expect.null_id:
            self._null.append(pending)
        else:
            self._by_id[expect.request_id] = pending
        self._idle.clear()
        self._last_sent.append(pending)
        return pending

    # --- rendering -------------------------------------------------------------------------

    def _fresh_id(self) -> str | int:
        while True:
            n = next(self.ids)
            fresh: str | int = n if n % 3 else f"f{self.index}-{n}"
            if fresh not in self._by_id:
                return fresh

    def _render(self, t: Template) -> tuple[bytes, bool]:
        if t.kind == "text":
            text: str = t.body
            if ID_MARKER in text:
                text = text.replace(ID_MARKER, orjson.dumps(self._fresh_id()).decode())
            return text.encode(), False
        if t.kind == "binary":
            body: bytes = t.body
            return body.replace(ID_MARKER.encode(), str(next(self.ids)).encode()), True
        body_value = t.body
        if isinstance(body_value, dict):
            frame = dict(body_value)
            for key, value in body_value.items():
                if isinstance(value, Slot):
                    frame[key] = self._fill(value, frame)
            odd = frame.get("id")
            if type(odd) in (str, int) and odd in self._by_id:
                frame["id"] = self._fresh_id()  # an odd but usable id already in flight
            if self.rng.random() < 0.1:
                self._crossover(frame)
            return dumps(frame, raw=t.raw), False
        return dumps(body_value, raw=t.raw), False

    def _crossover(self, frame: dict[str, Any]) -> None:
        """One field taken from another template of the same request type (cheap variety)."""
        other = self.run.corpus[self.rng.randrange(len(self.run.corpus))].body
        if not isinstance(other, dict) or other.get("type") != frame.get("type"):
            return
        keys = [k for k in other if k not in ("id", "type") and not isinstance(other[k], Slot)]
        if keys:
            key = self.rng.choice(keys)
            frame[key] = other[key]

    def _fill(self, slot: Slot, frame: dict[str, Any]) -> Any:
        rng = self.rng
        if slot.name == "id":
            return self._fresh_id()
        if slot.name == "hold":
            variant = slot.variant
            if variant in ("live", "respelled") and self.live_holds:
                hold = rng.choice(list(self.live_holds))
                return _respell(hold, rng) if variant == "respelled" else hold
            if variant == "ended" and self.ended_holds:
                return rng.choice(self.ended_holds)
            if variant == "foreign" and self.run.shared_holds:
                return rng.choice(self.run.shared_holds)
            return str(uuid.uuid4())
        if slot.name == "version":
            seen = self.versions.get(str(frame.get("event_id")), 0)
            if slot.variant == "ahead":
                return seen + rng.choice((1, 2, 1000))
            if slot.variant == "behind":
                return max(0, seen - rng.choice((1, 255, 256, 257, 10_000)))
            return seen
        if slot.name == "key":
            if slot.variant == "reuse" and self.keys:
                return rng.choice(self.keys)
            key = uuid.uuid4().hex
            self.keys.append(key)
            return key
        if slot.name == "token":
            token = self.run.token
            if slot.variant == "same":
                return token(self.sub, self.role)
            if slot.variant == "other":
                return token(f"{self.sub}-other", rng.choice(("user", "agent", "admin")))
            if slot.variant == "expired":
                return token(self.sub, self.role, ttl_s=-60)
            real = token(self.sub, self.role)
            return rng.choice(
                (
                    "not-a-jwt",
                    real[:-3],
                    real + "x",
                    real.replace(".", "..", 1),
                    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiIsInJvbGUiOiJhZG1pbiJ9.",
                    "Bearer " + real,
                )
            )
        # new_event: the event a create_event of this connection creates (maybe still in flight)
        if frame.get("type") == "create_event":
            self.new_event = f"fz-{uuid.uuid4().hex[:12]}"
        return self.new_event

    # --- receiving -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        except Exception as error:  # a bug of the fuzzer itself: fail loudly, not silently
            self.run.harness_errors.append(f"reader of fuzzer {self.index}: {error!r}")
            self._client_closing = True
            ws.transport.abort()
            raise
        finally:
            try:
                self._on_closed(ws)
            except Exception as error:
                self.run.harness_errors.append(f"close of fuzzer {self.index}: {error!r}")

    def _on_message(self, message: str | bytes) -> None:
        run = self.run
        if isinstance(message, bytes):
            run.violation("binary_reply", "the server sent a binary frame", reply=repr(message))
            return
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            run.violation("invalid_json_reply", "not JSON", reply=message)
            return
        problem = run.oracle.check(frame)
        if problem is not None:
            run.violation("schema", problem, reply=message)
        if not isinstance(frame, dict):
            return
        if "ok" not in frame:
            self._on_push(frame, message)
            return
        pending = self._match(frame, message)
        if pending is None:
            return
        self._check_reply(pending, frame, message)
        if pending.record is not None and run.recorder is not None:
            run.recorder.replied(pending.record, frame)
        in_flight = self._in_flight()
        if in_flight < self.run.window:
            self._room.set()
        if not in_flight:
            self._idle.set()

    def _on_push(self, frame: dict[str, Any], message: str) -> None:
        kind = frame.get("type")
        self.run.stats[f"push:{kind}"] += 1
        if kind == "goaway":
            self.run.violation("goaway", "the server said goaway during the run", reply=message)
        if kind == "availability":
            event = str(frame.get("event_id"))
            version = frame.get("version")
            if isinstance(version, int):
                self.versions[event] = max(self.versions.get(event, 0), version)
        if kind == "hold_expired":
            hold = str(frame.get("hold_id"))
            if self.live_holds.pop(hold, None) is not None:
                self.ended_holds.append(hold)

    def _match(self, frame: dict[str, Any], message: str) -> Pending | None:
        reply_id = frame.get("id")
        if reply_id is None:
            if not self._null:
                self.run.violation(
                    "unexpected_null_id", "an id-null reply to no such frame", reply=message
                )
                return None
            return self._null.popleft()
        pending = self._by_id.pop(reply_id, None) if _usable_id(reply_id) else None
        if pending is None:
            self.run.violation(
                "unknown_id", f"a reply to id {reply_id!r}, not in flight", reply=message
            )
        return pending

    def _check_reply(self, pending: Pending, frame: dict[str, Any], message: str) -> None:
        run, expect = self.run, pending.expect
        error = frame.get("error") if frame.get("ok") is False else None
        code = error.get("code") if isinstance(error, dict) else None
        request_type = expect.request_type
        run.stats[f"error:{code}" if code else f"ok:{frame.get('type')}"] += 1
        if any(marker in message for marker in LEAK_MARKERS):
            leaked = [m for m in LEAK_MARKERS if m in message and m.encode() not in pending.data]
            if leaked:
                run.violation("leak", f"the reply contains {leaked}", pending.data, message)
        if code in FORBIDDEN_CODES:
            family = pending.label.split("~")[0]
            run.violation(
                f"error:{code} ({family})",
                f"a {pending.label} frame got {code}",
                pending.data,
                message,
            )
        if code in ("rate_limited", "overloaded"):
            return  # load shedding may answer any frame before looking at it
        if expect.null_id != (frame.get("id") is None):
            run.violation("wrong_id", "id null / not null", pending.data, message)
        if expect.code is not None and code != expect.code:
            run.violation(
                f"wrong_code:{expect.code}",
                f"expected {expect.code}, got {code}",
                pending.data,
                message,
            )
        if expect.path is not None and isinstance(error, dict):
            details = error.get("details")
            if not isinstance(details, dict) or details.get("path") != expect.path:
                run.violation(
                    "wrong_path", f"expected details.path {expect.path}", pending.data, message
                )
        # The first frame of a connection without a token is answered as an authenticate.
        first = pending.label.startswith("first:") and code == "unauthenticated"
        if frame.get("type") != request_type and not (
            first and frame.get("type") == "authenticate"
        ):
            run.violation("wrong_type", f"expected type {request_type!r}", pending.data, message)
        if code is None and frame.get("ok") is True:
            self._learn(frame, expect)

    def _learn(self, frame: dict[str, Any], expect: Expect) -> None:
        result = frame.get("result")
        if not isinstance(result, dict):
            return
        kind = frame.get("type")
        if kind == "hold":
            hold = str(result.get("hold_id"))
            self.live_holds[hold] = str(result.get("event_id"))
            self.run.shared_holds.append(hold)
        elif kind in ("release", "reserve"):
            hold = str(result.get("hold_id"))
            if self.live_holds.pop(hold, None) is not None:
                self.ended_holds.append(hold)
        elif kind in ("subscribe", "get_event"):
            version = result.get("version")
            if isinstance(version, int):
                event = str(result.get("event_id"))
                self.versions[event] = max(self.versions.get(event, 0), version)

    def _on_closed(self, ws: ClientConnection) -> None:
        """The connection is gone: was that expected, and what happened to the frames?"""
        run = self.run
        self._closed.set()
        self._ended.set()
        received = ws.protocol.close_rcvd
        code = received.code if received is not None else 1006
        in_flight = list(self._by_id.values()) + list(self._null)
        for pending in in_flight:
            if pending.record is not None and run.recorder is not None:
                run.recorder.lost(pending.record, f"connection closed {code}")
        self._by_id.clear()
        self._null.clear()
        self._room.set()
        self._idle.set()
        if self._client_closing:
            run.stats["close:by_client"] += 1
            return
        run.stats[f"close:{code}"] += 1
        if self._expected_close:
            if code not in self._expected_close:
                run.violation(
                    f"wrong_close:{self._expected_close}",
                    f"closed with {code}",
                    self._last_sent[-1].data if self._last_sent else None,
                )
            return
        if code in FAULT_CLOSES or code not in DOCUMENTED_CLOSES:
            run.violation(
                f"close:{code}",
                f"the server closed with {code}, {len(in_flight)} requests in flight (the last "
                "one below; the frames replayed alone that close a connection are listed apart)",
                in_flight[-1].data if in_flight else None,
            )
            if in_flight and run.replays_left > 0:
                run.replays_left -= 1
                suspects = [p.data for p in in_flight]
                task = asyncio.get_running_loop().create_task(self._replay(suspects, code))
                run.background.add(task)
                task.add_done_callback(run.background.discard)

    async def _drain(self, timeout: float) -> None:
        """Wait until every request in flight is answered (or the server closes)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            for pending in list(self._by_id.values()) + list(self._null):
                self.run.violation(
                    "no_reply", f"no reply within {timeout:g} s ({pending.label})", pending.data
                )

    async def _await_close(self, timeout: float = 5.0) -> None:
        """Wait for the server's close frame (the TCP close may come seconds later)."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except TimeoutError:
            self.run.violation(
                f"no_close:{self._expected_close}",
                f"the connection stayed open {timeout:g} s",
                self._last_sent[-1].data if self._last_sent else None,
            )

    # --- frames that close -----------------------------------------------------------------

    async def _closing(self, ws: ClientConnection, t: Template) -> None:
        await self._drain(self.run.reply_timeout)
        if self._closed.is_set() or self._closing_seen:
            return
        if t.kind == "abandon":
            await self._abandon(ws, int(t.body))
            return
        if t.kind == "raw":
            data, codes = RAW_VIOLATIONS[str(t.body)]
            await self._send_closing(ws, data, t.label, codes, raw=True)
            return
        code = CloseCode.INVALID_DATA if t.kind == "bad_utf8" else CloseCode.MESSAGE_TOO_BIG
        await self._send_closing(ws, t.body, t.label, (int(code),), text=True)

    async def _send_closing(
        self,
        ws: ClientConnection,
        data: bytes,
        label: str,
        codes: tuple[int, ...],
        *,
        text: bool = False,
        raw: bool = False,
    ) -> None:
        await self._drain(self.run.reply_timeout)
        self.run.sent += 1
        self.run.labels[label.split("~")[0]] += 1
        self._expected_close = codes
        self._last_sent.append(Pending(data, label, Expect(close=codes), time.monotonic()))
        ws.transport.write(
            data if raw else ws_frame(OP_TEXT if text else OP_BINARY, data, self.rng)
        )
        await self._await_close()

    async def _abandon(self, ws: ClientConnection, burst: int) -> None:
        """Pipeline a burst of requests and drop the TCP connection under them."""
        for _ in range(burst):
            t = self.run.corpus[self.rng.randrange(len(self.run.corpus))]
            if t.kind not in ("json", "text"):
                continue
            data, binary = self._render(t)
            expect = expect_for(data, binary=binary, max_frame_bytes=self.run.max_frame_bytes)
            if expect.close or (not expect.null_id and expect.request_id in self._by_id):
                continue
            self._track(data, "abandon:" + t.label, expect)
            ws.transport.write(ws_frame(OP_BINARY if binary else OP_TEXT, data, self.rng))
        self._expected_close = (1006,)
        ws.transport.abort()
        await self._await_close()

    # --- the first frame of a connection without a token -----------------------------------

    async def _first_frame(self, ws: ClientConnection) -> bool:
        """Without a token the first frame must be ``authenticate``: half the time it is (and
        the session goes on), half the time it is a frame of the corpus (and the server must
        answer it with an error and close with 4501, or close as the frame demands)."""
        run = self.run
        if self.rng.random() < 0.5:
            request = {
                "id": self._fresh_id(),
                "type": "authenticate",
                "token": run.token(self.sub, self.role),
            }
            data = orjson.dumps(request)
            expect = expect_for(data, binary=False, max_frame_bytes=run.max_frame_bytes)
            self._track(data, "first:authenticate", expect)
            ws.transport.write(ws_frame(OP_TEXT, data, self.rng))
            return True
        t = run.corpus[self.rng.randrange(len(run.corpus))]
        if t.kind not in ("json", "text", "binary"):
            t = run.corpus[0]
        data, binary = self._render(t)
        expect = expect_for(data, binary=binary, max_frame_bytes=run.max_frame_bytes)
        if expect.close:
            await self._send_closing(ws, data, "first:" + t.label, expect.close, text=True)
            return False
        parsed = expect.parsed
        if (
            isinstance(parsed, dict)
            and parsed.get("type") == "authenticate"
            and expect.request_type == "authenticate"
        ):
            # An authenticate with whatever token the template had: it may succeed.
            self._track(data, "first:" + t.label, expect)
            ws.transport.write(ws_frame(OP_TEXT, data, self.rng))
            try:
                await asyncio.wait_for(self._idle.wait(), self.run.reply_timeout)
            except TimeoutError:
                self.run.violation("no_reply", "first-frame authenticate unanswered", data)
                return False
            await asyncio.sleep(0.05)
            return not self._closed.is_set()
        self._track(data, "first:" + t.label, expect)
        self._expected_close = (int(CloseCode.UNAUTHENTICATED),)
        ws.transport.write(ws_frame(OP_BINARY if binary else OP_TEXT, data, self.rng))
        return False

    # --- finding the frame that broke a connection -----------------------------------------

    async def _replay(self, suspects: list[bytes], code: int) -> None:
        """Send each suspect alone, then a ping, on a fresh connection: the one after which
        the server closes with ``code`` instead of answering the ping is the culprit."""
        token = self.run.token(f"{self.sub}-replay", self.role)
        for data in suspects:
            try:
                async with connect(
                    f"{self.run.url}?token={token}",
                    subprotocols=["seatd.v1"],  # type: ignore[list-item]
                    open_timeout=10,
                    max_size=None,
                ) as ws:
                    await ws.recv()  # welcome
                    await ws.send(data, text=True)
                    await ws.send('{"id":"replay-ping","type":"ping"}')
                    async with asyncio.timeout(5):
                        while True:
                            reply = orjson.loads(await ws.recv())
                            if reply.get("id") == "replay-ping":
                                break
            except ConnectionClosed as closed:
                got = closed.rcvd.code if closed.rcvd is not None else 1006
                if got == code:
                    if all(c.frame != data for c in self.run.culprits):
                        self.run.culprits.append(
                            Violation(f"close:{code}", "this frame alone closes a connection", data)
                        )
                    return
            except (OSError, TimeoutError, InvalidStatus):
                continue


OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
CLOSING_KINDS = frozenset({"bad_utf8", "oversize", "raw", "abandon"})


class _Connection(ClientConnection):
    """A client connection that says at once when the server's close frame arrives (the
    connection itself only ends after the TCP close)."""

    on_close_frame: Callable[[], None] | None = None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if getattr(event, "opcode", None) is Opcode.CLOSE and self.on_close_frame is not None:
            self.on_close_frame()


def ws_frame(opcode: int, payload: bytes, rng: random.Random, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 5.2), written under the WebSocket layer so that a
    batch of frames costs one system call."""
    mask = rng.randbytes(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


def _fragments(data: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    """``data`` as one text message in fragments cut at random byte offsets (maybe inside a
    UTF-8 sequence: still a valid message)."""
    if len(data) < 2 or pieces < 2:
        return [ws_frame(OP_TEXT, data, rng)]
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [
        ws_frame(OP_TEXT if i == 0 else OP_CONTINUATION, part, rng, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]
