"""Command-line options and the size presets of each scenario (full, ``--quick``, ``--smoke``).

Why presets: the full sizes (the ones the scenarios are named after: 5,000 buyers, 1,000
subscribers, 10,000 idle connections) take minutes; ``--quick`` runs every scenario in well
under a minute on a 2-core machine (``make bench``), and ``--smoke`` is a seconds-long
correctness run for the test suite. Any explicit option overrides the preset.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.messages import MAX_SEATS_PER_EVENT

__all__ = [
    "MULTI_INSTANCE_SCENARIOS",
    "SCENARIOS",
    "Options",
    "build_parser",
    "parse_options",
    "scenario_params",
]

SCENARIOS = ("throughput", "rush", "events", "fanout", "idle")
# Scenarios that can run on several seatd instances (--instances); idle measures one server's
# memory per connection and per event, which several instances would only split.
MULTI_INSTANCE_SCENARIOS = ("throughput", "rush", "events", "fanout")
# Scenarios whose load can hold without reserving (--holds-only).
HOLDS_ONLY_SCENARIOS = ("throughput", "events")
# WAL the throwaway PostgreSQL keeps ready for reuse (its min_wal_size, written at start): what
# a server that has run a while keeps, and the size README recommends for an on-sale. A durable
# hold writes about 1.2 KB of WAL, so this is some 850,000 holds before a checkpoint recycles.
# --quick's runs of seconds write less than a quarter of it, and make bench starts twice.
WAL_READY_MB = 1024
WAL_READY_MB_QUICK = 256

# scenario -> preset -> parameters. ``connections`` is per scenario what its name says:
# purchasing connections, rush buyers, fan-out subscribers, idle connections.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "throughput": {
        "full": {"duration": 30.0, "connections": 200, "pipeline": 1, "seats": 100_000},
        "quick": {"duration": 8.0, "connections": 100, "pipeline": 1, "seats": 100_000},
        "smoke": {"duration": 1.5, "connections": 8, "pipeline": 2, "seats": 5_000},
    },
    "events": {
        "full": {"duration": 30.0, "connections": 200, "pipeline": 1, "events": 1000, "seats": 500},
        "quick": {"duration": 8.0, "connections": 100, "pipeline": 1, "events": 100, "seats": 500},
        "smoke": {"duration": 1.5, "connections": 8, "pipeline": 2, "events": 10, "seats": 400},
    },
    "rush": {
        "full": {"duration": 120.0, "connections": 5000, "seats": 2000},
        "quick": {"duration": 60.0, "connections": 500, "seats": 200},
        "smoke": {"duration": 20.0, "connections": 40, "seats": 30},
    },
    "fanout": {
        "full": {"duration": 30.0, "connections": 1000, "rate": 500.0, "writers": 4},
        "quick": {"duration": 8.0, "connections": 100, "rate": 500.0, "writers": 4},
        "smoke": {"duration": 1.5, "connections": 10, "rate": 100.0, "writers": 2},
    },
    "idle": {
        "full": {
            "connections": 10_000,
            "events": 100_000,
            # Loading 100,000 events takes minutes on 2 cores: they must all stay loaded.
            "idle_timeout": 300.0,
            "settle": 2.0,
            "rounds": 1,
        },
        "quick": {
            "connections": 1000,
            "events": 5000,
            "idle_timeout": 8.0,
            "settle": 1.0,
            "rounds": 2,
        },
        "smoke": {"connections": 20, "events": 50, "idle_timeout": 0.5, "settle": 0.2, "rounds": 1},
    },
}


@dataclass(frozen=True, slots=True)
class Options:
    scenario: str
    preset: str
    duration: float | None
    connections: int | None
    rate: float | None
    workers: int
    pipeline: int | None
    seats: int | None
    events: int | None
    writers: int | None
    idle_timeout: float | None
    server_env: tuple[tuple[str, str], ...]
    no_group_commit: bool
    # Mutations carry an idempotency_key, as the bundled SDK sends one on every call.
    retry_keys: bool
    # throughput, events: hold and never reserve (durable holds/s, not purchases/s).
    holds_only: bool
    baseline: bool
    # Instance counts to run each scenario on, in turn (``--instances 1,3``); idle always one.
    instances: tuple[int, ...]
    via_non_owner: bool
    url: str | None
    secret: str | None
    server_pid: int | None
    use_services: bool
    # The throwaway PostgreSQL as a brand-new cluster: no WAL segments ready for reuse.
    fresh_wal: bool
    json: bool
    plot: str | None
    progress: bool | None
    client: str
    seed: int

    @property
    def scenarios(self) -> tuple[str, ...]:
        return SCENARIOS if self.scenario == "all" else (self.scenario,)

    def instance_counts(self, scenario: str) -> tuple[int, ...]:
        return self.instances if scenario in MULTI_INSTANCE_SCENARIOS else (1,)

    @property
    def wal_ready_mb(self) -> int:
        """WAL the throwaway PostgreSQL keeps ready for reuse; none for a smoke run, whose
        figures nobody reads, so that it starts in seconds."""
        if self.fresh_wal or self.preset == "smoke":
            return 0
        return WAL_READY_MB_QUICK if self.preset == "quick" else WAL_READY_MB


def scenario_params(options: Options, scenario: str, instances: int = 1) -> dict[str, Any]:
    """The preset of this scenario with the explicit options laid over it, on ``instances``
    seatd instances."""
    params = dict(PRESETS[scenario][options.preset])
    overrides = {
        "duration": options.duration,
        "connections": options.connections,
        "pipeline": options.pipeline,
        "seats": options.seats,
        "events": options.events,
        "writers": options.writers,
        "idle_timeout": options.idle_timeout,
    }
    for key, value in overrides.items():
        if value is not None and key in params:
            params[key] = value
    if scenario in ("throughput", "events", "fanout"):
        params["rate"] = options.rate if options.rate is not None else params.get("rate")
    if scenario in HOLDS_ONLY_SCENARIOS:
        params["holds_only"] = options.holds_only
    params["workers"] = options.workers
    params["seed"] = options.seed
    params["instances"] = instances
    return params


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seat_count(text: str) -> int:
    """Seats of one event: what ``create_event`` accepts, checked before anything starts."""
    value = _positive_int(text)
    if value > MAX_SEATS_PER_EVENT:
        raise argparse.ArgumentTypeError(
            f"an event has at most {MAX_SEATS_PER_EVENT} seats, not {value}"
        )
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, not {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _plot_file(text: str) -> str:
    """A .png in a folder that exists and can be written: checked before the load runs, not
    after it (when a bad path would cost the run's figures)."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expects a file name ending in .png, not {text!r}")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{str(folder)!r} is not a folder")
    existed = path.exists()
    try:  # the only sure test (permissions, read-only or special file systems)
        with path.open("ab"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {error.strerror}") from None
    if not existed:
        path.unlink()
    return text


def _instance_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects N or N,M,..., not {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 16:
        raise argparse.ArgumentTypeError(f"instance counts are 1 to 16, not {text!r}")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seatd bench",
        description=(
            "Load-test seatd: starts a throwaway PostgreSQL (durable) + Redis + seatd (or drives "
            "--url), runs a scenario, prints throughput, latency, resource use, and verifies in "
            "PostgreSQL that nothing acknowledged was lost and nothing was sold twice "
            "(exit 1 if it was)."
        ),
        epilog=(
            "scenarios: throughput (hold then reserve distinct seats of one big event), rush "
            "(thousands of buyers racing for a few hot seats), events (the throughput load over "
            "many events), fanout (subscribers timing availability pushes), idle (memory per "
            "idle connection and per passivated event), all (each in turn)."
        ),
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    size = parser.add_argument_group("size (defaults: the scenario's preset)")
    preset = size.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="short version (make bench)")
    preset.add_argument(
        "--smoke", action="store_true", help="tiny correctness run lasting seconds (tests)"
    )
    size.add_argument("--duration", type=_positive_float, help="seconds of load")
    size.add_argument(
        "--connections",
        type=_positive_int,
        help="connections (rush: buyers, fanout: subscribers, idle: idle connections)",
    )
    size.add_argument(
        "--rate",
        type=_positive_float,
        help="open loop target: holds/s (throughput, events) or seat changes/s (fanout); "
        "without it throughput and events run closed loop at the maximum rate",
    )
    size.add_argument(
        "--workers", type=_positive_int, default=1, help="load generator processes (default 1)"
    )
    size.add_argument(
        "--pipeline", type=_positive_int, help="requests in flight per connection (closed loop)"
    )
    size.add_argument(
        "--seats",
        type=_seat_count,
        help=f"seats (per event for events; at most {MAX_SEATS_PER_EVENT})",
    )
    size.add_argument("--events", type=_positive_int, help="events (events, idle)")
    size.add_argument("--writers", type=_positive_int, help="writer connections (fanout)")
    size.add_argument(
        "--idle-timeout", type=_positive_float, help="SEATD_ACTOR_IDLE_TIMEOUT for idle (s)"
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--no-group-commit",
        action="store_true",
        help="start seatd with SEATD_MAX_BATCH=1 (one transaction per command)",
    )
    server.add_argument(
        "--no-retry-keys",
        dest="retry_keys",
        action="store_false",
        help="send holds, reserves and releases without an idempotency_key (the SDK sends "
        "one with every call, and so does the load by default)",
    )
    server.add_argument(
        "--holds-only",
        action="store_true",
        help="throughput, events: hold seats and never reserve them, so every request is a "
        "durable hold (holds/s instead of purchases/s; the holds stay until they expire)",
    )
    server.add_argument(
        "--baseline",
        action="store_true",
        help="throughput only: run with group commit, then without, and print the ratio",
    )
    server.add_argument(
        "--instances",
        type=_instance_counts,
        metavar="N[,M...]",
        help="seatd instances to start on the same PostgreSQL and Redis (default 1; 2 with "
        "--via-non-owner); the load's connections are spread round-robin over them and its "
        "events' owners too, so most commands reach a non-owner and are forwarded. "
        "N,M,...: the same run on each count in turn, compared side by side "
        f"({', '.join(MULTI_INSTANCE_SCENARIOS)}; idle always runs one)",
    )
    server.add_argument(
        "--via-non-owner",
        action="store_true",
        help="throughput only: the cost of forwarding. Two runs on --instances (at least 2) "
        "instances: every client on the event's owner, then every client on another instance "
        "(each command forwarded), side by side",
    )
    server.add_argument(
        "--server-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="an extra setting for the seatd started here (repeatable), "
        "e.g. --server-env SEATD_PG_POOL_SIZE=40",
    )
    server.add_argument(
        "--url", help="drive this running server (ws://host:port/) instead of starting one"
    )
    server.add_argument(
        "--secret", help="with --url: the server's SEATD_JWT_SECRET (default: from the env)"
    )
    server.add_argument(
        "--server-pid", type=int, help="with --url: pid to measure (default: the local listener)"
    )
    server.add_argument(
        "--use-services",
        action="store_true",
        help="use the PostgreSQL and Redis named by POSTGRES_*/REDIS_* instead of throwaway ones",
    )
    server.add_argument(
        "--fresh-wal",
        action="store_true",
        help=f"start the throwaway PostgreSQL as a brand-new cluster: without it, "
        f"{WAL_READY_MB} MB of WAL segments ({WAL_READY_MB_QUICK} for --quick) are ready for "
        "reuse, as on a server that has run a while (min_wal_size), and no commit waits for a "
        "new WAL file to be made",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="one JSON object on stdout (human text on stderr)"
    )
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        type=_plot_file,
        help="latency over time and latency distribution",
    )
    bar = out.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    out.add_argument(
        "--client",
        choices=["auto", "picows", "websockets"],
        default="auto",
        help="WebSocket client of the load generator (auto: picows if installed)",
    )
    out.add_argument("--seed", type=int, default=1, help="random seed of the load")
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.baseline and args.scenario != "throughput":
        parser.error("--baseline applies to the throughput scenario only")
    if args.url and (args.baseline or args.no_group_commit or args.use_services):
        parser.error("--baseline, --no-group-commit and --use-services need a server started here")
    if args.via_non_owner and args.scenario != "throughput":
        parser.error("--via-non-owner applies to the throughput scenario only")
    if args.holds_only and args.scenario not in (*HOLDS_ONLY_SCENARIOS, "all"):
        parser.error(f"--holds-only applies to {' and '.join(HOLDS_ONLY_SCENARIOS)} only")
    if args.holds_only and args.via_non_owner:
        parser.error("--via-non-owner compares purchases: leave out --holds-only")
    if args.via_non_owner and args.baseline:
        parser.error("--via-non-owner and --baseline are two different comparisons: pick one")
    instances: tuple[int, ...] = args.instances or ((2,) if args.via_non_owner else (1,))
    if args.via_non_owner and (len(instances) != 1 or instances[0] < 2):
        parser.error("--via-non-owner needs one instance count of 2 or more (--instances N)")
    if args.baseline and len(instances) != 1:
        parser.error("--baseline runs on one instance count (--instances N)")
    if max(instances) > 1 and args.url:
        parser.error("--instances needs servers started here, not --url")
    if max(instances) > 1 and args.scenario == "idle":
        parser.error("--instances does not apply to idle (memory of one server)")
    if args.url and not args.url.startswith(("ws://", "wss://")):
        parser.error("--url must be a ws:// or wss:// URL")
    server_env = []
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--server-env expects NAME=VALUE, not {item!r}")
        server_env.append((name, value))
    if args.url and server_env:
        parser.error("--server-env needs a server started here")
    if args.fresh_wal and (args.url or args.use_services):
        parser.error("--fresh-wal applies to the throwaway PostgreSQL started here")
    if not args.url and (args.secret or args.server_pid):
        parser.error("--secret and --server-pid go with --url (a server started here has its own)")
    if args.server_pid is not None and not _is_process(args.server_pid):
        parser.error(f"--server-pid {args.server_pid}: no such process")
    return Options(
        scenario=args.scenario,
        preset="quick" if args.quick else "smoke" if args.smoke else "full",
        duration=args.duration,
        connections=args.connections,
        rate=args.rate,
        workers=args.workers,
        pipeline=args.pipeline,
        seats=args.seats,
        events=args.events,
        writers=args.writers,
        idle_timeout=args.idle_timeout,
        server_env=tuple(server_env),
        no_group_commit=args.no_group_commit,
        retry_keys=args.retry_keys,
        holds_only=args.holds_only,
        baseline=args.baseline,
        instances=instances,
        via_non_owner=args.via_non_owner,
        url=args.url,
        secret=args.secret,
        server_pid=args.server_pid,
        use_services=args.use_services,
        fresh_wal=args.fresh_wal,
        json=args.json,
        plot=args.plot,
        progress=args.progress,
        client=args.client,
        seed=args.seed,
    )


def _is_process(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
