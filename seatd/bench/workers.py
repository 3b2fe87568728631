"""Load-generator processes: started with 'spawn', each with its own event loop.

Why processes: one Python process saturates one core long before seatd does, and the GIL
makes threads useless for this. Each worker owns a share of the connections and runs one load
function from ``seatd.bench.loads``; it talks to the coordinator over a pipe with small
``(kind, payload)`` messages ("ready", "go", "result", ...) and reports progress through a
shared counter array, so the coordinator can draw a progress bar without any extra traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from seatd.gctune import tune_garbage_collector

__all__ = [
    "Control",
    "WorkerError",
    "WorkerPool",
    "WorkerSpec",
    "cpu_seconds",
    "raise_nofile_limit",
]


class WorkerError(RuntimeError):
    """A worker failed or went silent; the message carries its traceback."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs (picklable): which load to run, where, and its share."""

    index: int
    load: str
    url: str
    secret: str
    client: str
    params: dict[str, Any] = field(default_factory=dict)


def raise_nofile_limit(needed: int = 0) -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit; return (soft, hard) after.

    Each connection is a file descriptor, so the default soft limit (often 1024) caps a run
    long before the machine does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- worker side ----------------------------------------------------------------------------


class Control:
    """The worker's end of the pipe, readable from its event loop without a thread."""

    def __init__(self, pipe: Connection, progress: Any, index: int) -> None:
        self._pipe = pipe
        self._progress = progress
        self.index = index
        self._inbox: deque[tuple[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self._pipe.fileno(), self._readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._pipe.fileno())
        os.set_blocking(self._pipe.fileno(), True)

    def _readable(self) -> None:
        try:
            while self._pipe.poll():
                self._inbox.append(self._pipe.recv())
        except EOFError:  # the coordinator is gone: stop
            self._inbox.append(("abort", "coordinator closed the pipe"))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self, kind: str) -> Any:
        """The payload of the next message of this kind (an "abort" raises)."""
        return (await self.recv_any(kind))[1]

    async def recv_any(self, *kinds: str) -> tuple[str, Any]:
        """The next message of one of these kinds, as (kind, payload)."""
        while True:
            for i, (got, payload) in enumerate(self._inbox):
                if got == "abort":
                    raise WorkerError(f"aborted: {payload}")
                if got in kinds:
                    del self._inbox[i]
                    return got, payload
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def poll(self, kind: str) -> Any | None:
        """The payload of a message of this kind if one arrived, else None (no waiting)."""
        for i, (got, payload) in enumerate(self._inbox):
            if got == kind:
                del self._inbox[i]
                return payload
        return None

    def send(self, kind: str, payload: Any = None) -> None:
        """Send a message, blocking until it is written.

        The event loop made the pipe non-blocking when it started watching it, and a large
        message (a result with its histograms) would then fail half-written.
        """
        fd = self._pipe.fileno()
        was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, True)
        try:
            self._pipe.send((kind, payload))
        finally:
            os.set_blocking(fd, was_blocking)

    def progress(self, n: int = 1) -> None:
        """Count ``n`` units of work (shown by the coordinator's progress bar)."""
        self._progress[self.index] += n


def worker_main(spec: WorkerSpec, pipe: Connection, progress: Any) -> None:
    """Entry point of a worker process."""
    # The coordinator handles Ctrl-C and ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    tune_garbage_collector()  # thousands of long-lived connections: as in the server
    control = Control(pipe, progress, spec.index)
    try:
        try:
            import uvloop
        except ImportError:
            payload = asyncio.run(_run(spec, control))
        else:
            payload = uvloop.run(_run(spec, control))
        pipe.send(("result", payload))
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


async def _run(spec: WorkerSpec, control: Control) -> Any:
    from seatd.bench.loads import LOADS

    loop = asyncio.get_running_loop()
    control.attach(loop)
    try:
        return await LOADS[spec.load](spec, control)
    finally:
        control.detach(loop)


# --- coordinator side -----------------------------------------------------------------------


class WorkerPool:
    """Starts the workers, exchanges messages with them, and always cleans up."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.specs = list(specs)
        self.progress: Any = self._ctx.Array("q", len(self.specs), lock=False)
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        self._backlog: list[deque[tuple[str, Any]]] = [deque() for _ in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def start(self) -> None:
        for spec in self.specs:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=worker_main,
                args=(spec, child, self.progress),
                name=f"seatd-bench-{spec.load}-{spec.index}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def progress_total(self, indices: Sequence[int] | None = None) -> int:
        chosen = range(len(self.specs)) if indices is None else indices
        return sum(int(self.progress[i]) for i in chosen)

    def reset_progress(self) -> None:
        for i in range(len(self.specs)):
            self.progress[i] = 0

    def send(self, index: int, kind: str, payload: Any = None) -> None:
        self._pipes[index].send((kind, payload))

    def broadcast(
        self, kind: str, payload: Any = None, indices: Sequence[int] | None = None
    ) -> None:
        for i in range(len(self.specs)) if indices is None else indices:
            self.send(i, kind, payload)

    async def expect(
        self,
        kind: str,
        *,
        indices: Sequence[int] | None = None,
        timeout: float,
        tick: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Wait for one ``kind`` message from each chosen worker; payloads in index order.

        A worker that sends "error" or dies raises ``WorkerError``; ``tick`` runs about four
        times a second while waiting (progress bar, resource sampling).
        """
        chosen = list(range(len(self.specs)) if indices is None else indices)
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while len(got) < len(chosen):
            for i in chosen:
                if i in got:
                    continue
                message = self._take(i, kind)
                if message is not None:
                    got[i] = message[1]
            if len(got) == len(chosen):
                break
            now = time.monotonic()
            if now > deadline:
                missing = [self.specs[i].load + f"#{i}" for i in chosen if i not in got]
                raise WorkerError(f"no '{kind}' from {', '.join(missing)} within {timeout:.0f}s")
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + 0.25
            await asyncio.sleep(0.02)
        if tick is not None:
            tick()
        return [got[i] for i in chosen]

    def _take(self, index: int, kind: str) -> tuple[str, Any] | None:
        backlog = self._backlog[index]
        pipe = self._pipes[index]
        gone = False
        try:
            while pipe.poll():
                backlog.append(pipe.recv())
        except (EOFError, OSError):
            gone = True  # the worker closed its end: it exited, or is exiting
        for position, message in enumerate(backlog):
            if message[0] == "error":
                raise WorkerError(
                    f"worker {index} ({self.specs[index].load}) failed:\n{message[1]}"
                )
            if message[0] == kind:
                del backlog[position]
                return message
        proc = self._procs[index]
        if gone or not proc.is_alive():
            proc.join(2)
            raise WorkerError(
                f"worker {index} ({self.specs[index].load}) exited with code {proc.exitcode}"
                f" before sending '{kind}'"
            )
        return None

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for the workers to exit; end the stragglers."""
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)
            proc.close()
        for pipe in self._pipes:
            pipe.close()
        self._procs.clear()
        self._pipes.clear()

    def abort(self) -> None:
        """Tell every worker to stop now (best effort)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("abort", "coordinator stopped"))
