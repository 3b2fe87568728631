"""What the fuzz tests share: settings, the server under fuzz, the world the fuzzers act in,
a well-behaved SDK client running alongside, and the checks made after a run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz.engine import Fuzzer, FuzzRun, Recorder
from fuzz.schema_check import SchemaOracle, load_schema
from fuzz.strategies import Slot, Template, World, corpus, family_counts, template
from support.client import client, create_event
from support.history import Entry, History, summarise
from support.server import ServerProcess, base_env, token

from protocol.client import SeatClient

__all__ = [
    "FrameRecorder",
    "FuzzSettings",
    "GoodClient",
    "ServerUnderFuzz",
    "draw_corpus",
    "flood_corpus",
    "fuzz",
    "fuzz_env",
    "health_problems",
    "log_problems",
    "make_world",
]


@dataclass(frozen=True, slots=True)
class FuzzSettings:
    frames: int
    seconds: float
    seed: int
    corpus: int
    rounds: int
    connections: int
    abuse_seconds: float = 8.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FuzzSettings:
        seed = env.get("SEATD_FUZZ_SEED")
        return cls(
            frames=int(env.get("SEATD_FUZZ_FRAMES", "100000").replace("_", "")),
            seconds=float(env.get("SEATD_FUZZ_SECONDS", "60")),
            seed=int(seed) if seed else random.SystemRandom().randrange(2**32),
            corpus=int(env.get("SEATD_FUZZ_CORPUS", "1200")),
            rounds=max(1, int(env.get("SEATD_FUZZ_ROUNDS", "1"))),
            connections=int(env.get("SEATD_FUZZ_CONNECTIONS", "6")),
            abuse_seconds=float(env.get("SEATD_FUZZ_ABUSE_SECONDS", "8")),
        )


def fuzz_env(service_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """A fuzz server's settings: warnings and errors logged (as JSON), and rate and connection
    limits generous enough that the fuzzers mostly reach the request handling (a server that
    does not know a variable ignores it)."""
    settings = {
        "LOG_LEVEL": "warning",
        "SEATD_RATE_PER_CONNECTION": "100000",
        "SEATD_BURST_PER_CONNECTION": "100000",
        "SEATD_RATE_PER_USER": "100000",
        "SEATD_BURST_PER_USER": "100000",
        "SEATD_MAX_CONNECTIONS_PER_USER": "1000",
        "SEATD_MAX_CONNECTIONS_PER_ADDRESS": "10000",
        **overrides,
    }
    return base_env(service_env, **settings)


@dataclass
class ServerUnderFuzz:
    process: ServerProcess
    log_path: Path

    @property
    def url(self) -> str:
        return self.process.url

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.process.port}{path}"

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# --- the world --------------------------------------------------------------------------------

ROWS = "ABC"
SEATS_PER_ROW = 10
FUZZ_SEATS = tuple(f"{row}-{n}" for row in ROWS for n in range(1, SEATS_PER_ROW + 1))


async def make_world(url: str, *, read_only: Sequence[str] = (), hold_duration_s: int = 3) -> World:
    """Two small events for the fuzzers (holds expire after ``hold_duration_s``, so the
    expiry paths and their pushes run too), and a third whose per-user limit is 1."""
    async with client(url, "fuzz-admin", "admin") as admin:
        events = [
            (
                await create_event(
                    admin,
                    seats=SEATS_PER_ROW,
                    rows=len(ROWS),
                    hold_duration_s=hold_duration_s,
                    event_id=f"fz-{tag}-{uuid.uuid4().hex[:8]}",
                    **extra,
                )
            )["event_id"]
            for tag, extra in (("a", {}), ("b", {}), ("c", {"max_seats_per_user": 1}))
        ]
    return World.from_schema(
        load_schema(), events=tuple(events), seats=FUZZ_SEATS, read_only_events=tuple(read_only)
    )


# --- running ----------------------------------------------------------------------------------


@dataclass
class FuzzResult:
    run: FuzzRun
    templates: Counter[str] = field(default_factory=Counter)
    corpus_seconds: float = 0.0

    def report(self) -> list[str]:
        run = self.run
        lines = [run.summary()]
        lines.append(
            f"  corpus: {sum(self.templates.values())} templates drawn in "
            f"{self.corpus_seconds:.1f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.templates.items()))
        )
        top = ", ".join(f"{k} {v}" for k, v in run.labels.most_common(12))
        lines.append(f"  frames sent by family (top 12): {top}")
        lines.append(f"  replay: SEATD_FUZZ_SEED={run.seed}")
        return lines


async def fuzz(
    url: str,
    world: World,
    settings: FuzzSettings,
    *,
    frames: int | None = None,
    seconds: float | None = None,
    connections: int | None = None,
    recorder: Recorder | None = None,
    oracle: SchemaOracle | None = None,
    corpus_size: int | None = None,
    first_corpus: Sequence[Template] | None = None,
) -> FuzzResult:
    """Fuzz the server at ``url``: ``settings.rounds`` rounds, each with a corpus of its own
    (the first may be drawn beforehand: ``first_corpus``), until ``frames`` frames are sent or
    ``seconds`` have passed."""
    frames = settings.frames if frames is None else frames
    seconds = settings.seconds if seconds is None else seconds
    connections = settings.connections if connections is None else connections
    roles = ("user", "agent", "admin", "user", "agent", "user")
    result: FuzzResult | None = None
    fuzzers: list[Fuzzer] = []
    run: FuzzRun | None = None
    for round_no in range(settings.rounds):
        started = time.monotonic()
        if round_no == 0 and first_corpus is not None:
            templates = list(first_corpus)
        else:
            templates = await draw_corpus(world, settings, round_no, corpus_size)
        corpus_seconds = time.monotonic() - started
        if run is None:
            run = FuzzRun(
                url,
                templates,
                frames,
                settings.seed,
                token,
                max_frame_bytes=world.max_frame_bytes,
                recorder=recorder,
                oracle=oracle or SchemaOracle(),
            )
            run.deadline = time.monotonic() + seconds
            result = FuzzResult(run)
            fuzzers = [
                Fuzzer(run, n, f"fuzz-{n}", roles[n % len(roles)]) for n in range(connections)
            ]
        else:
            run.corpus = templates
        assert result is not None
        result.corpus_seconds += corpus_seconds
        result.templates.update(family_counts(templates))
        run.frames = frames * (round_no + 1) // settings.rounds
        await asyncio.gather(*(f.run_until_done() for f in fuzzers))
    assert run is not None and result is not None
    run.finished = time.monotonic()
    if run.background:
        await asyncio.wait(run.background, timeout=60)
    return result


async def draw_corpus(
    world: World, settings: FuzzSettings, round_no: int = 0, size: int | None = None
) -> list[Template]:
    """The templates of one round, drawn in a child process so the event loop keeps serving.

    Not a thread: Hypothesis refuses a draw during which the global ``random`` state changed,
    and the event loop changes it meanwhile (websockets draws its ping payloads from it)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return await asyncio.get_running_loop().run_in_executor(
            pool, corpus, world, size or settings.corpus, settings.seed + round_no
        )


# --- a well-behaved client alongside ----------------------------------------------------------


class GoodClient:
    """An SDK client doing what a kiosk does, on an event of its own: look for seats, hold,
    refresh, reserve or release, look at the event, and watch it; no retries, so any error
    it gets is an error it saw."""

    def __init__(self, url: str, event_id: str, name: str = "good-agent") -> None:
        self.url = url
        self.event_id = event_id
        self.name = name
        self.errors: list[str] = []
        self.ops: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.connections = 0
        self.watch_problem: str | None = None

    async def run(self) -> None:
        rng = random.Random(self.name)
        async with SeatClient(
            self.url, token=token(self.name, "agent"), max_retries=0, request_timeout=10
        ) as sdk:
            async with sdk.watch(self.event_id) as watch:
                await self._call("watch", watch.synced())
                n = 0
                while not self.stop.is_set():
                    n += 1
                    await self._cycle(sdk, rng, f"good-customer-{n % 7}")
                    await asyncio.sleep(rng.uniform(0.005, 0.02))
                await self._converged(sdk, watch)
            self.connections = sdk.connections

    async def _call(self, what: str, call: Any) -> Any:
        try:
            result = await call
        except Exception as error:
            self.errors.append(f"{what}: {type(error).__name__}: {error}")
            return None
        self.ops[what] += 1
        return result

    async def _cycle(self, sdk: SeatClient, rng: random.Random, customer: str) -> None:
        page = await self._call("list_available", sdk.list_available(self.event_id, limit=20))
        if page is None or not page.seats:
            return
        seats = [
            s.seat_id for s in rng.sample(page.seats, min(len(page.seats), rng.choice((1, 2))))
        ]
        key = str(uuid.uuid4())
        hold = await self._call(
            "hold", sdk.hold(self.event_id, seats, on_behalf_of=customer, idempotency_key=key)
        )
        if hold is None:
            return
        if rng.random() < 0.3:
            await self._call(
                "refresh", sdk.refresh(self.event_id, hold.hold_id, on_behalf_of=customer)
            )
        if rng.random() < 0.3:
            await self._call(
                "reserve", sdk.reserve(self.event_id, hold.hold_id, on_behalf_of=customer)
            )
        else:
            await self._call(
                "release", sdk.release(self.event_id, hold.hold_id, on_behalf_of=customer)
            )
        if rng.random() < 0.2:
            await self._call("get_event", sdk.get_event(self.event_id))

    async def _converged(self, sdk: SeatClient, watch: Any) -> None:
        """The watch ends up showing what the server says (version and seat counts)."""
        deadline = time.monotonic() + 10
        while True:
            event = await self._call("get_event", sdk.get_event(self.event_id))
            if event is None:
                return
            states = Counter(watch.seats.values())
            seen = (watch.version, states["held"], states["reserved"])
            wanted = (event.version, event.held, event.reserved)
            if seen == wanted:
                return
            if time.monotonic() > deadline:
                self.watch_problem = (
                    f"the watch shows (version, held, reserved) {seen}, the event {wanted}"
                )
                return
            await asyncio.sleep(0.1)

    def problems(self) -> list[str]:
        out = [f"the well-behaved client got {e}" for e in self.errors[:10]]
        if len(self.errors) > 10:
            out.append(f"... and {len(self.errors) - 10} more errors")
        if self.watch_problem:
            out.append(self.watch_problem)
        if self.connections > 1:
            out.append(f"the well-behaved client had to reconnect ({self.connections} connections)")
        if sum(self.ops.values()) < 20:
            out.append(f"the well-behaved client did too little to count: {dict(self.ops)}")
        return out


# --- after a run ------------------------------------------------------------------------------


def _http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:200]
    except OSError as error:
        return 0, repr(error)


async def health_problems(server: ServerUnderFuzz) -> list[str]:
    """The process is alive, /healthz answers, and a fresh client is served."""
    problems = []
    if not server.alive():
        code = server.process.proc.returncode if server.process.proc else None
        return [f"the server process exited ({code})"]
    status, body = await asyncio.to_thread(_http_get, server.http("/healthz"))
    if status != 200:
        problems.append(f"/healthz answered {status}: {body!r}")
    try:
        async with client(server.url, "fresh-after-fuzz") as fresh:
            reply = await fresh.request("ping", id="after-fuzz")
            if reply.get("ok") is not True:
                problems.append(f"a fresh client's ping got {reply}")
    except Exception as error:
        problems.append(f"a fresh client could not ping: {type(error).__name__}: {error}")
    return problems


def log_problems(log: str, limit: int = 6) -> list[str]:
    """What the server logged at error level, and its tracebacks: one line per distinct event
    (JSON entries by event name and exception; plain-text tracebacks by their last line)."""
    seen: dict[str, int] = {}
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") not in ("error", "critical") and "exception" not in entry:
                continue
            trace = str(entry.get("exception", "")).strip().splitlines()
            key = f"{entry.get('event')}: {trace[-1] if trace else entry.get('level')}"
        elif line.startswith("Traceback"):
            context = lines[index - 1].strip() if index else ""
            last = next(
                (x for x in lines[index + 1 :] if x and not x[0].isspace()), "(no exception line)"
            )
            key = f"{context}: {last}" if context else last
        else:
            continue
        seen[key] = seen.get(key, 0) + 1
    problems = [f"server log: {key} ({count}x)" for key, count in list(seen.items())[:limit]]
    if len(seen) > limit:
        problems.append(f"server log: ... and {len(seen) - limit} more kinds of errors")
    return problems


def log_warnings(log: str) -> Counter[str]:
    """The warning events of the server log, by name (reported, not failed)."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if '"level": "warning"' in line:
            with contextlib.suppress(ValueError):
                counts[str(json.loads(line).get("event"))] += 1
    return counts


# --- the history test: every mutation of the checked event recorded ---------------------------


class FrameRecorder:
    """Records the fuzzers' and the flood's requests on one event in a ``History``, as the
    server sees them (parsed from the bytes sent): an invoke when sent, then ``ok`` with the
    result, ``fail`` for a permanent error (it had no effect), ``info`` for a temporary error
    or a connection closed first (it may or may not have had one). Requests the server cannot
    take for a hold, refresh, release or reserve of that event are not recorded: they cannot
    change it."""

    def __init__(self, history: History, event_id: str) -> None:
        self.history = history
        self.event_id = event_id
        self.recorded = 0

    def sent(self, fuzzer: Fuzzer, request: dict[str, Any]) -> object | None:
        if request.get("event_id") != self.event_id:
            return None
        kind = request.get("type")
        behalf = request.get("on_behalf_of")
        user = behalf if fuzzer.role != "user" and isinstance(behalf, str) else fuzzer.sub
        key = request.get("idempotency_key")
        args: dict[str, Any] = {"event_id": self.event_id, "key": key, "user": user}
        if kind == "hold":
            seats = request.get("seat_ids")
            if not isinstance(seats, list) or not all(isinstance(s, str) for s in seats):
                return None
            args["seat_ids"] = tuple(seats)
        else:
            hold_id = request.get("hold_id")
            if not isinstance(hold_id, str):
                return None
            with contextlib.suppress(ValueError):
                hold_id = str(uuid.UUID(hold_id))  # the server's spelling of it
            args["hold_id"] = hold_id
        self.recorded += 1
        return self.history.invoke(f"{fuzzer.sub}#{fuzzer.index}", str(kind), **args)

    def replied(self, token: object, reply: dict[str, Any]) -> None:
        assert isinstance(token, Entry)
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            self.history.ok(token, summarise(reply["result"]))
            return
        error = reply.get("error")
        code = str(error.get("code")) if isinstance(error, dict) else "?"
        if isinstance(error, dict) and error.get("temporary") is False:
            self.history.fail(token, code)
        else:
            self.history.info(token, code)

    def lost(self, token: object, why: str) -> None:
        assert isinstance(token, Entry)
        self.history.info(token, why)


def flood_corpus(
    event_id: str, seats: Sequence[str], customers: Sequence[str], seed: int, size: int = 400
) -> list[Template]:
    """What a client that sends as fast as it can sends: holds (for many customers), pages of
    available seats, and releases of its holds."""
    rng = random.Random(seed)
    templates = []
    for _ in range(size):
        roll = rng.random()
        body: dict[str, Any]
        if roll < 0.6:
            body = {
                "id": Slot("id"),
                "type": "hold",
                "event_id": event_id,
                "seat_ids": rng.sample(list(seats), rng.choice((1, 1, 2))),
                "on_behalf_of": rng.choice(customers),
            }
        elif roll < 0.9:
            body = {"id": Slot("id"), "type": "list_available", "event_id": event_id, "limit": 20}
        else:
            body = {
                "id": Slot("id"),
                "type": rng.choice(("release", "release", "reserve")),
                "event_id": event_id,
                "hold_id": Slot("hold", "live"),
                "on_behalf_of": rng.choice(customers),
            }
        templates.append(template("json", body, f"flood:{body['type']}"))
    return templates
