"""``seatd bench``: parse options, set up the stack, run the scenarios, report, exit status.

Exit status: 0 when every run's verification passed, 1 when one found a violation (a lost
acknowledgement, a double booking, a subscriber that missed a version), 2 when the bench could
not run (bad options, missing tools, a server that did not start), 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

from seatd.bench.options import Options, parse_options, scenario_params
from seatd.bench.stack import BenchError, Services, new_secret
from seatd.bench.workers import raise_nofile_limit

__all__ = ["main"]

_EXTRA_HINT = "install the bench extra: pip install -e '.[bench]' (or make venv)"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    out: TextIO = sys.stderr if options.json else sys.stdout
    from seatd.bench.workers import WorkerError

    try:
        return asyncio.run(_cancel_on_sigterm(_main(options, out)))
    except BenchError as error:
        print(f"seatd bench: {error}", file=sys.stderr)
        return 2
    except WorkerError as error:
        print(f"seatd bench: {_worker_failure(str(error))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("seatd bench: interrupted; the throwaway services were stopped", file=sys.stderr)
        return 130


def _worker_failure(message: str) -> str:
    """One line for a load worker's failure (its message ends with the worker's traceback)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    head, last = lines[0], lines[-1]
    line = head if head == last else f"{head} {last}"
    if "429" in last:
        line += (
            " (HTTP 429: the server refused more connections from this address or user; "
            "a seatd started by the bench has those limits off, a running one keeps "
            "SEATD_MAX_CONNECTIONS_PER_ADDRESS, default 1000: raise it there or use fewer "
            "--connections)"
        )
    return line


async def _preflight(url: str, secret: str) -> None:
    """One connection before the load, so that a wrong URL or secret is said in one line and
    not as a worker's traceback once the run has begun."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    from seatd.auth import TokenAuthority

    token = TokenAuthority(secret).mint("bench-preflight", "user", ttl_s=60)
    try:
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=["seatd.v1"],  # type: ignore[list-item]
            open_timeout=10,
        ) as ws:
            welcome = await asyncio.wait_for(ws.recv(), 10)
    except InvalidStatus as error:
        status = error.response.status_code
        if status == 401:
            raise BenchError(
                f"{url} refused the bench's token (HTTP 401): --secret (or SEATD_JWT_SECRET) "
                "must be that server's SEATD_JWT_SECRET"
            ) from None
        raise BenchError(f"{url} refused the WebSocket handshake: HTTP {status}") from None
    except (WebSocketException, TimeoutError, EOFError) as error:  # a bad URL, a close, ...
        raise BenchError(f"{url} does not answer as a seatd server: {error}") from None
    except OSError as error:
        raise BenchError(f"cannot reach {url}: {error}") from None
    if b'"welcome"' not in (welcome if isinstance(welcome, bytes) else welcome.encode()):
        raise BenchError(f"{url} does not answer as a seatd server (no welcome)")


async def _cancel_on_sigterm(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; SIGTERM cancels it like Ctrl-C does, so every ``finally`` runs and the
    throwaway PostgreSQL, Redis and seatd are stopped (the default action would leave them)."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _check_requirements(options: Options) -> str:
    """The client to use; BenchError naming what is missing."""
    for module in ("hdrh", "psutil"):
        try:
            __import__(module)
        except ImportError:
            raise BenchError(f"the '{module}' module is missing: {_EXTRA_HINT}") from None
    if options.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchError(f"--plot needs matplotlib: {_EXTRA_HINT}") from None
    from seatd.bench.wsclient import client_name

    try:
        return client_name(None if options.client == "auto" else options.client)
    except ImportError:
        raise BenchError(f"--client picows: picows is not installed: {_EXTRA_HINT}") from None


def _check_files_limit(options: Options) -> None:
    """Each connection needs a file descriptor in a worker and one in the server."""
    biggest = max(int(scenario_params(options, s)["connections"]) for s in options.scenarios)
    per_process = biggest // options.workers + 256
    needed = biggest + 512  # the server holds every connection (it inherits our limit)
    soft, hard = raise_nofile_limit(needed)
    if soft < max(per_process, needed if options.url is None else 0):
        raise BenchError(
            f"the open files limit is {soft} (hard limit {hard}) but this run needs about "
            f"{max(per_process, needed)}: raise the hard limit (ulimit -Hn, LimitNOFILE= in "
            "systemd, --ulimit nofile=... in docker) or use fewer --connections"
        )


async def _start_services(wal_ready_mb: int) -> Services:
    """Start the throwaway services in a thread; stopped again if cancelled meanwhile."""
    starting = asyncio.ensure_future(asyncio.to_thread(Services.start_own, wal_ready_mb))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            (await starting).stop()
        raise


async def _main(options: Options, out: TextIO) -> int:
    from seatd.bench.report import (
        baseline_json,
        format_baseline,
        format_forwarding,
        format_instances,
        format_run,
        forwarding_json,
        instances_json,
        plot_path,
        write_plot,
    )
    from seatd.bench.scenarios import (
        SCENARIO_RUNNERS,
        Harness,
        RunResult,
        run_baseline,
        run_forwarding,
    )
    from seatd.bench.verify import overall

    client = _check_requirements(options)
    _check_files_limit(options)
    progress = options.progress
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.monotonic()
    services: Services | None = None
    if options.url is not None:
        secret = options.secret or os.environ.get("SEATD_JWT_SECRET", "")
        if len(secret.encode()) < 32:
            raise BenchError("--url needs the server's secret: --secret or SEATD_JWT_SECRET")
        await _preflight(options.url, secret)
    else:
        secret = new_secret()
        print(
            "starting "
            + (
                "seatd on the services named by POSTGRES_*/REDIS_*"
                if options.use_services
                else "a throwaway PostgreSQL (durable, "
                + (
                    f"{options.wal_ready_mb} MB of WAL ready for reuse"
                    if options.wal_ready_mb
                    else "a brand-new cluster"
                )
                + ") and Redis"
            )
            + " ...",
            file=out,
            flush=True,
        )
        services = (
            Services.from_env(os.environ)
            if options.use_services
            else await _start_services(options.wal_ready_mb)
        )
    results: list[RunResult] = []
    document: dict[str, Any] = {
        "bench": "seatd",
        "scenario": options.scenario,
        "preset": options.preset,
        "target": options.url or ("services from env" if options.use_services else "throwaway"),
        "server_env": dict(options.server_env),
    }
    if services is not None and services.mode == "own":
        document["postgres_wal_ready_mb"] = options.wal_ready_mb
    try:
        harness = Harness(
            secret=secret,
            client=client,
            services=services,
            url=options.url,
            server_pid=options.server_pid,
            progress=progress,
            group_commit=not options.no_group_commit,
            retry_keys=options.retry_keys,
            server_env=dict(options.server_env),
        )
        for scenario in options.scenarios:
            counts = options.instance_counts(scenario)
            params = scenario_params(options, scenario, counts[0])
            if options.baseline or options.via_non_owner:
                # Two runs side by side: group commit on/off, or clients on/off the owner.
                run, describe, as_json, name = (
                    (run_baseline, format_baseline, baseline_json, "baseline")
                    if options.baseline
                    else (run_forwarding, format_forwarding, forwarding_json, "forwarding")
                )
                first, second = await run(harness, params)
                for result in (first, second):
                    results.append(result)
                    print(format_run(result), file=out, flush=True)
                print(describe(first, second), file=out, flush=True)
                document[name] = as_json(first, second)
                continue
            compared: list[RunResult] = []
            for count in counts:
                params = scenario_params(options, scenario, count)
                result = await SCENARIO_RUNNERS[scenario](harness, params)
                if options.server_env:
                    settings = " ".join(f"{k}={v}" for k, v in options.server_env)
                    result.notes.insert(0, f"server settings: {settings}")
                results.append(result)
                compared.append(result)
                print(format_run(result), file=out, flush=True)
            if len(compared) > 1:
                print(format_instances(compared), file=out, flush=True)
                document.setdefault("instances", {})[scenario] = instances_json(compared)
    finally:
        if services is not None and services.mode == "own":
            await asyncio.to_thread(services.stop)
    if options.plot:
        for result in results:
            path = plot_path(options.plot, result, len(results) > 1)
            write_plot(result, path)
            print(f"plot: {path}", file=out)
    ok = all(r.verdict.ok for r in results)
    unverified = any(r.verdict.error for r in results)
    total = time.monotonic() - started
    summary = ", ".join(f"{r.scenario} {r.wall_s:.1f}s" for r in results)
    verdict = overall([r.verdict for r in results])
    print(
        f"== {verdict}: {len(results)} run(s) in {total:.1f}s ({summary})",
        file=out,
        flush=True,
    )
    if options.json:
        document.update(
            ok=ok and not unverified, wall_s=round(total, 2), runs=[r.as_json() for r in results]
        )
        print(json.dumps(document))
    return 1 if not ok else 2 if unverified else 0
