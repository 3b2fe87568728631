"""Smoke runs of ``seatd bench``: every scenario, tiny, against the test PostgreSQL and Redis.

Correctness only: each run must pass its own verification in PostgreSQL, its counts must add
up, and its JSON must have the documented shape. Nothing here asserts a timing or a rate: the
machine running the tests is shared and its speed says nothing about seatd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from seatd.bench.acks import AckLog
from seatd.bench.layout import EventLayout
from seatd.bench.verify import Verdict, overall, verify_run
from seatd.devstack import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[2]
LATENCY_KEYS = {"p50", "p95", "p99", "p999", "max", "mean"}


def bench(
    args: list[str], service_env: dict[str, str], timeout: float = 120
) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m seatd bench ARGS --json`` on the test services; (exit, JSON, stderr)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SEATD_", "POSTGRES_", "REDIS_"))
    }
    env.update(service_env)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seatd",
            "bench",
            *args,
            "--json",
            "--use-services",
            "--no-progress",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    document = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, document, proc.stderr


def run_of(document: dict[str, Any], scenario: str) -> dict[str, Any]:
    (run,) = [r for r in document["runs"] if r["scenario"] == scenario]
    return run


def check_run_shape(run: dict[str, Any]) -> None:
    assert set(run) >= {
        "scenario",
        "label",
        "params",
        "window_s",
        "wall_s",
        "ops",
        "resources",
        "loadgen",
        "metrics",
        "verification",
        "notes",
    }
    for op in run["ops"].values():
        assert set(op) == {"count", "ok", "errors", "ops_per_s", "replies_per_s", "latency_ms"}
        assert op["replies_per_s"] >= op["ops_per_s"]
        assert set(op["latency_ms"]) == LATENCY_KEYS
        assert op["ok"] + sum(op["errors"].values()) == op["count"]
        lat = op["latency_ms"]
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert {"cpu_percent", "rss_mb", "rss_peak_mb"} <= set(run["resources"]["server"])
    if os.path.exists(f"/proc/{os.getpid()}/schedstat"):  # Linux: the wait for a core too
        assert 0 <= run["resources"]["server"]["wait_percent"] <= 100
    assert {"workers", "client", "cpu_s", "cpu_percent"} <= set(run["loadgen"])
    verification = run["verification"]
    failed = [c for c in verification["checks"] if not c["ok"]]
    assert verification["ok"] and not failed, failed
    assert verification["verdict"] == "PASS"
    assert len(verification["checks"]) >= 3


@pytest.fixture(scope="module")
def smoke_all(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    plot = tmp_path_factory.mktemp("bench") / "smoke.png"
    code, document, stderr = bench(["all", "--smoke", "--plot", str(plot)], service_env)
    assert code == 0, stderr[-4000:]
    return document, plot


def test_all_scenarios_pass_their_verification(smoke_all: tuple[dict[str, Any], Path]) -> None:
    document, plot = smoke_all
    assert document["ok"] is True
    assert document["preset"] == "smoke"
    assert [r["scenario"] for r in document["runs"]] == [
        "throughput",
        "rush",
        "events",
        "fanout",
        "idle",
    ]
    for run in document["runs"]:
        check_run_shape(run)
        png = plot.with_name(f"smoke-{run['scenario']}-group-commit.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_reserves_every_hold(smoke_all: tuple[dict[str, Any], Path]) -> None:
    run = run_of(smoke_all[0], "throughput")
    hold, reserve = run["ops"]["hold"], run["ops"]["reserve"]
    assert hold["ok"] > 0
    assert hold["errors"] == {} and reserve["errors"] == {}
    assert reserve["ok"] == hold["ok"] == run["metrics"]["purchases"]
    assert run["metrics"]["group_commit"] is True
    assert run["metrics"]["mode"] == "closed loop"
    # The server's own count of the window (GET /metrics): every hold and reserve ran in a batch.
    actors = run["resources"]["actors"]
    assert actors["commands"] >= 2 * hold["ok"]
    assert 1 <= actors["batches"] <= actors["commands"]
    assert 1 <= actors["commits"] <= actors["batches"]
    assert actors["commit_failures"] == 0
    assert 0 < actors["commit_share"] <= 1
    _check_per_request(run)
    # Only a window of seconds is sure to span a CPU clock tick; a smoke rush sells out in ms.
    assert run["metrics"]["server_cpu_us_per_request"] > 0


def _check_per_request(run: dict[str, Any]) -> None:
    """Each process's CPU per request: its CPU seconds over the window's requests; and the WAL
    PostgreSQL wrote per request, every one of which wrote a row."""
    ops, metrics = run["ops"], run["metrics"]
    requests = ops["hold"]["count"] + ops["reserve"]["count"]
    wal = run["resources"]["wal"]["bytes"]
    assert metrics["postgres_wal_bytes_per_request"] == round(wal / requests)
    assert wal >= 200 * requests
    for name, cpu_s in (
        ("server", run["resources"]["server"]["cpu_s"]),
        ("postgres", run["resources"]["postgres"]["cpu_s"]),
        ("loadgen", run["loadgen"]["cpu_s"]),
    ):
        assert metrics[f"{name}_cpu_us_per_request"] == pytest.approx(
            1e6 * cpu_s / requests, abs=0.1
        )


def test_rush_sells_every_seat_exactly_once(smoke_all: tuple[dict[str, Any], Path]) -> None:
    run = run_of(smoke_all[0], "rush")
    metrics = run["metrics"]
    hold, reserve = run["ops"]["hold"], run["ops"]["reserve"]
    assert metrics["sold_out"] is True
    assert metrics["seats_sold"] == metrics["seats"]
    assert metrics["buyers_served"] == reserve["ok"] == hold["ok"]
    assert metrics["buyers_served"] + metrics["buyers_without_seats"] == metrics["buyers"]
    assert metrics["conflicts"] == hold["errors"].get("seat_unavailable", 0)
    assert metrics["hold_attempts"] == hold["count"]
    _check_per_request(run)
    names = {c["name"] for c in run["verification"]["checks"]}
    assert "sold out: every seat in exactly one acknowledged hold" in names
    assert "no seat reserved twice" in names


def test_events_spreads_the_load(smoke_all: tuple[dict[str, Any], Path]) -> None:
    run = run_of(smoke_all[0], "events")
    assert run["metrics"]["events"] == run["params"]["events"] > 1
    assert run["metrics"]["purchases"] == run["ops"]["reserve"]["ok"] > 0


def test_fanout_delivers_every_version_to_every_subscriber(
    smoke_all: tuple[dict[str, Any], Path],
) -> None:
    run = run_of(smoke_all[0], "fanout")
    m = run["metrics"]
    assert m["versions"] > 0
    assert m["versions_received"] == m["versions_expected"] == m["subscribers"] * m["versions"]
    assert m["gaps"] == m["missing_versions"] == m["duplicates"] == 0
    assert m["changes"] == run["ops"]["hold"]["ok"] + run["ops"]["release"]["ok"]
    assert m["changes_never_pushed"] == 0
    assert run["ops"]["reply->push"]["ok"] == m["deliveries"]


def test_idle_reports_memory_per_connection_and_event(
    smoke_all: tuple[dict[str, Any], Path],
) -> None:
    run = run_of(smoke_all[0], "idle")
    m = run["metrics"]
    assert m["connections"] == run["params"]["connections"]
    assert run["ops"]["get_event"]["ok"] == m["events"]
    for key in ("rss_per_connection_kb", "rss_per_loaded_event_kb", "rss_per_passivated_event_kb"):
        assert isinstance(m[key], int | float)


def test_baseline_open_loop_two_workers_fallback_client(service_env: dict[str, str]) -> None:
    """Group commit on then off, open loop, two worker processes, the websockets client."""
    args = ["throughput", "--smoke", "--baseline", "--workers", "2", "--rate", "200"]
    args += ["--duration", "1", "--client", "websockets"]
    code, document, stderr = bench(args, service_env)
    assert code == 0, stderr[-4000:]
    on, off = document["runs"]
    assert (on["label"], off["label"]) == ("group commit", "no group commit")
    assert on["metrics"]["group_commit"] is True and off["metrics"]["group_commit"] is False
    for run in (on, off):
        check_run_shape(run)
        assert run["metrics"]["mode"] == "open loop"
        assert run["loadgen"] == run["loadgen"] | {"workers": 2, "client": "websockets"}
    assert document["baseline"]["ratio"] > 0
    assert "ratio" in stderr  # the human summary goes to stderr with --json


def test_holds_only_holds_and_never_reserves(service_env: dict[str, str]) -> None:
    """Every request a durable hold: the baseline compares holds/s, and the run ends when the
    seats run out, not at the deadline."""
    args = ["throughput", "--smoke", "--holds-only", "--baseline", "--duration", "60"]
    code, document, stderr = bench(args, service_env)
    assert code == 0, stderr[-4000:]
    for run in document["runs"]:
        check_run_shape(run)
        assert set(run["ops"]) == {"hold"} and run["ops"]["hold"]["errors"] == {}
        metrics = run["metrics"]
        assert metrics["holds"] == run["params"]["seats"] == run["ops"]["hold"]["ok"]
        assert metrics["holds_per_s"] > 0 and "purchases" not in metrics
        # A hold writes its seat's row and its retry key's, with their indexes.
        assert metrics["postgres_wal_bytes_per_request"] >= 400
        assert run["window_s"] < 30, "waited for the deadline with no seat left to hold"
    baseline = document["baseline"]
    assert baseline["group_commit_holds_per_s"] > 0 and baseline["ratio"] > 0
    assert "holds/s:" in stderr and "hold distinct seats of one event, never reserve" in stderr


async def test_verification_catches_lost_and_phantom_records(postgres: PostgresServer) -> None:
    """A run whose acknowledgements the database contradicts must fail its verification."""
    layout = EventLayout(f"verify-{uuid.uuid4().hex[:12]}", 4, 4)
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute("INSERT INTO events (id, name) VALUES ($1, 'verify')", layout.event_id)
        await conn.executemany(
            "INSERT INTO seats (event_id, seat_id, ordinal) VALUES ($1, $2, $3)",
            [(layout.event_id, layout.seat_id(i), i) for i in range(4)],
        )
        # Reserved, but no client was ever told so.
        await conn.execute(
            "INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at) "
            "VALUES ($1, $2, $3, 'ghost', now())",
            layout.event_id,
            layout.seat_id(3),
            uuid.uuid4(),
        )
    finally:
        await conn.close()
    log = AckLog()
    lost = log.add(0, (0,), str(uuid.uuid4()), "2099-01-01T00:00:00.000Z")
    log.reserved(lost, str(uuid.uuid4()))  # acknowledged, never stored
    log.add(0, (1,), str(uuid.uuid4()), "2099-01-01T00:00:00.000Z")  # live, yet not in the db
    log.add(0, (2,), str(uuid.uuid4()), "2000-01-01T00:00:00.000Z")  # expired long ago: fine

    verdict = await verify_run(postgres.env(), [layout], [log])

    failed = {c.name for c in verdict.checks if not c.ok}
    assert not verdict.ok and verdict.label == "FAIL"
    assert failed == {
        "every acknowledged reservation exists",
        "every acknowledged hold is live or ended legitimately",
        "no reservation nobody was told about",
    }
    skipped = await verify_run(None, [layout], [log])
    assert skipped.ok and skipped.skipped is not None


def test_a_pass_says_when_the_database_was_not_checked() -> None:
    """The last line of a run: a run whose database could not be reached is not a plain PASS."""
    checked = Verdict()
    checked.add("every acknowledged reservation exists", True)
    unchecked = Verdict(skipped="no POSTGRES_* environment to reach the database")
    failed = Verdict()
    failed.add("no seat reserved twice", False)
    assert overall([checked, checked]) == "PASS"
    assert overall([checked, unchecked]) == "PASS (database checks skipped in 1 of 2 runs)"
    assert overall([failed, unchecked]) == "FAIL"


def test_bench_needs_no_extra_until_it_runs() -> None:
    """The service must not depend on the bench extra: importing is fine, running says how."""
    code = (
        "import sys\n"
        "for name in ('hdrh', 'picows', 'psutil', 'tqdm', 'matplotlib'):\n"
        "    sys.modules[name] = None\n"
        "import seatd.bench, seatd.bench.cli, seatd.bench.scenarios, seatd.bench.loads\n"
        "import seatd.bench.report, seatd.bench.verify, seatd.cli\n"
        "raise SystemExit(seatd.bench.main(['throughput', '--smoke']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "bench extra" in proc.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["rush", "--baseline"], "--baseline applies to the throughput scenario only"),
        (["idle", "--instances", "2"], "--instances does not apply to idle"),
        (["rush", "--holds-only"], "--holds-only applies to throughput and events only"),
    ],
)
def test_usage_errors_exit_2(args: list[str], said: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seatd", "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert said in proc.stderr


def test_bench_is_listed() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "seatd", "--help"], capture_output=True, text=True, check=False
    )
    assert "bench" in listed.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--plot", "/tmp/figures.txt"], "expects a file name ending in .png"),
        (["--plot", "/no/such/folder/x.png"], "is not a folder"),
        (["--duration", "inf"], "must be a positive number"),
        (["--duration", "5s"], "expects a number"),
        (["--secret", "x" * 40], "--secret and --server-pid go with --url"),
        (["--url", "ws://127.0.0.1:9/", "--secret", "x" * 40, "--server-pid", "0"], "no such"),
        (["--url", "ws://127.0.0.1:9/", "--secret", "x" * 40], "cannot reach ws://127.0.0.1:9/"),
        (["--seats", "100001"], "an event has at most 100000 seats, not 100001"),
        (["--holds-only", "--via-non-owner"], "--via-non-owner compares purchases"),
        (["--fresh-wal", "--use-services"], "--fresh-wal applies to the throwaway PostgreSQL"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2_before_any_load(args: list[str], said: str) -> None:
    """Checked before the run: a bad plot path found after it would cost the run's figures."""
    proc = subprocess.run(
        [sys.executable, "-m", "seatd", "bench", "throughput", "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "starting" not in proc.stdout, "the load began"


def test_a_worker_refused_for_too_many_connections_says_which_limit() -> None:
    from seatd.bench.cli import _worker_failure

    message = (
        "worker 0 (rush) failed:\nTraceback (most recent call last):\n  File ...\n"
        "ConnectionError: could not connect b1001: WSInvalidStatusError('... received 429')\n"
    )
    line = _worker_failure(message)
    assert "\n" not in line and line.startswith("worker 0 (rush) failed:")
    assert "SEATD_MAX_CONNECTIONS_PER_ADDRESS" in line


async def test_an_unreachable_database_is_not_verified_rather_than_passed() -> None:
    from seatd.devstack import free_port

    verdict = await verify_run({"POSTGRES_PORT": str(free_port())}, [], [])
    assert verdict.error is not None and "could not reach the database" in verdict.error
    assert verdict.label == "NOT CHECKED" and verdict.ok  # nothing failed: nothing was checked
    assert overall([verdict]).startswith("NOT VERIFIED")


def test_events_on_two_instances_forward_and_verify(service_env: dict[str, str]) -> None:
    """Two seatd instances on the same services: connections round-robin, events owned by
    both, so about half the holds are forwarded; the database must still agree."""
    args = ["events", "--smoke", "--instances", "2", "--duration", "1"]
    code, document, stderr = bench(args, service_env)
    assert code == 0, stderr[-4000:]
    run = run_of(document, "events")
    check_run_shape(run)
    assert run["params"]["instances"] == 2
    assert run["label"] == "2 instances"
    servers = run["resources"]["instances"]
    assert len(servers) == 2
    assert run["resources"]["server"]["instances"] == 2
    metrics = run["metrics"]
    assert metrics["instances"] == 2
    assert sorted(metrics["owned_events"].values()) == [5, 5]  # 10 events, i mod 2
    assert metrics["owner_changes"] == 0
    ops = run["ops"]
    assert ops["hold"]["errors"] == {} and ops["reserve"]["errors"] == {}
    assert ops["reserve"]["ok"] == ops["hold"]["ok"] == metrics["purchases"] > 0
    # Counted by the owners, each command once wherever its client was.
    assert run["resources"]["actors"]["commands"] >= 2 * metrics["purchases"]
    # Every hold reply is counted once more, by where it was served.
    assert ops["hold on owner"]["count"] + ops["hold forwarded"]["count"] == ops["hold"]["count"]
    assert ops["hold forwarded"]["ok"] > 0 and ops["hold on owner"]["ok"] > 0


def test_via_non_owner_forwards_every_command(service_env: dict[str, str]) -> None:
    """--via-non-owner: the same load with every client on the owner, then on the other
    instance; both verified, and the second forwarded everything."""
    args = ["throughput", "--smoke", "--via-non-owner", "--duration", "1"]
    code, document, stderr = bench(args, service_env)
    assert code == 0, stderr[-4000:]
    on_owner, forwarded = document["runs"]
    assert (on_owner["label"], forwarded["label"]) == (
        "clients on the owner",
        "clients on a non-owner",
    )
    for run in (on_owner, forwarded):
        check_run_shape(run)
        assert run["params"]["instances"] == 2
        assert run["ops"]["hold"]["errors"] == {} and run["ops"]["reserve"]["errors"] == {}
    assert on_owner["metrics"]["forwarded_share"] == 0
    assert forwarded["metrics"]["forwarded_share"] == 1
    assert "hold forwarded" not in on_owner["ops"] and "hold on owner" not in forwarded["ops"]
    summary = document["forwarding"]
    assert summary["instances"] == 2
    assert (
        summary["on_owner"]["purchases_per_s"] > 0 and summary["forwarded"]["purchases_per_s"] > 0
    )
    assert "== forwarding" in stderr


def test_a_server_that_cannot_start_is_said_and_leaves_no_log(service_env: dict[str, str]) -> None:
    import tempfile

    logs = Path(tempfile.gettempdir())
    before = set(logs.glob("seatd-bench-server-*.log"))
    code, _, stderr = bench(
        ["throughput", "--smoke", "--server-env", "SEATD_MAX_BATCH=abc"], service_env
    )
    assert code == 2 and "seatd exited with 2" in stderr and "SEATD_MAX_BATCH" in stderr, stderr
    assert set(logs.glob("seatd-bench-server-*.log")) <= before
