"""Reports: a human summary, one JSON document, and a latency plot (matplotlib, Agg).

Why all three: people read the summary, scripts and CI diff the JSON, and the plot shows what
a percentile table hides (a stall at second 12, a bimodal distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seatd.bench.scenarios import RunResult

__all__ = [
    "baseline_json",
    "format_baseline",
    "format_forwarding",
    "format_instances",
    "format_run",
    "forwarding_json",
    "instances_json",
    "plot_path",
    "write_plot",
]

_LABELS = {
    "throughput": "hold then reserve distinct seats of one event",
    "events": "hold then reserve, spread over many events",
    "rush": "on-sale burst: buyers racing for hot seats",
    "fanout": "subscribers timing availability pushes",
    "idle": "memory of idle connections and passivated events",
}


_HOLDS_ONLY_LABELS = {
    "throughput": "hold distinct seats of one event, never reserve",
    "events": "hold distinct seats of many events, never reserve",
}


def _label(result: RunResult) -> str:
    if result.params.get("holds_only"):
        return _HOLDS_ONLY_LABELS[result.scenario]
    return _LABELS.get(result.scenario, "")


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _params(result: RunResult) -> str:
    p = result.params
    keys = [
        k
        for k in (
            "duration",
            "connections",
            "pipeline",
            "rate",
            "seats",
            "events",
            "writers",
            "idle_timeout",
            "workers",
            "instances",
        )
        if p.get(k) is not None and not (k == "instances" and p[k] == 1)
    ]
    return ", ".join(f"{k} {p[k]:g}" if isinstance(p[k], float) else f"{k} {p[k]}" for k in keys)


def format_run(result: RunResult) -> str:
    """The human summary of one run."""
    lines = [
        f"== {result.scenario} ({result.label}): {_label(result)}",
        f"   {_params(result)}; window {result.window_s:.2f}s, wall {result.wall_s:.1f}s",
        f"   {'op':<17}{'ok':>9}{'errors':>8}{'ops/s':>10}{'ok/s':>10}"
        f"{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  (ms)",
    ]
    errors: dict[str, int] = {}
    for op in result.ops:
        lat = op.latency_ms
        failed = op.count - op.ok
        lines.append(
            f"   {op.name:<17}{op.ok:>9}{failed:>8}{op.replies_per_s:>10.1f}{op.ops_per_s:>10.1f}"
            f"{_ms(lat['p50']):>9}{_ms(lat['p95']):>9}{_ms(lat['p99']):>9}{_ms(lat['max']):>9}"
        )
        for code, n in op.errors.items():
            errors[f"{op.name}:{code}"] = errors.get(f"{op.name}:{code}", 0) + n
    lines.append(
        "   errors: "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "none")
    )
    metrics = {k: v for k, v in result.metrics.items() if v not in (None, {}, [])}
    if metrics:
        lines.append("   " + _wrap(", ".join(f"{k} {_value(v)}" for k, v in metrics.items())))
    lines.append("   " + _resources(result))
    actors = result.resources.get("actors")
    if actors and actors["batches"]:
        lines.append("   " + _actors(actors))
    for note in result.notes:
        lines.append(f"   note: {note}")
    verdict = result.verdict
    lines.append(f"   verification: {verdict.label}")
    for check in verdict.checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"     {mark} {check.name}" + (f" ({check.detail})" if check.detail else ""))
    if verdict.skipped:
        lines.append(f"     skipped: {verdict.skipped}")
    if verdict.error:
        lines.append(f"     error: {verdict.error}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _wrap(text: str, width: int = 96) -> str:
    out, line = [], ""
    for part in text.split(", "):
        if line and len(line) + len(part) + 2 > width:
            out.append(line + ",")
            line = part
        else:
            line = f"{line}, {part}" if line else part
    out.append(line)
    return "\n   ".join(out)


def _resources(result: RunResult) -> str:
    parts = []
    server = result.resources.get("server")
    instances = result.resources.get("instances")
    if server and instances:
        each = " / ".join(
            f"{name} {entry['cpu_percent']:.0f}%" for name, entry in instances.items()
        )
        parts.append(
            f"servers cpu {server['cpu_percent']:.0f}% in all{_waited(server)} ({each}) rss "
            f"{server['rss_mb']:.0f}"
            f" MB in all (peak {server['rss_peak_mb']:.0f} MB)"
        )
    elif server:
        parts.append(
            f"server cpu {server['cpu_percent']:.0f}%{_waited(server)} rss "
            f"{server['rss_mb']:.0f} MB (peak {server['rss_peak_mb']:.0f} MB)"
        )
    else:
        parts.append("server cpu/rss unknown (give --server-pid)")
    for name in ("postgres", "redis"):
        entry = result.resources.get(name)
        if entry:
            parts.append(f"{name} cpu {entry['cpu_percent']:.0f}%{_waited(entry)}")
    if wal := result.resources.get("wal"):
        parts.append(f"postgres wal {wal['mb']:g} MB")
    lg = result.loadgen
    parts.append(
        f"load generator cpu {lg['cpu_percent']:.0f}% ({lg['cpu_s']:.1f}s, "
        f"{lg['workers']} worker{'s' if lg['workers'] != 1 else ''}, {lg['client']})"
    )
    return _wrap("; ".join(parts).replace("; ", ", ")) + "  [cpu: % of one core]"


def _waited(entry: dict[str, Any]) -> str:
    """`` (+N% waiting for a core)``: how long the process was ready to run and could not."""
    wait = entry.get("wait_percent")
    return "" if wait is None else f" (+{wait:.0f}% waiting for a core)"


def _actors(actors: dict[str, Any]) -> str:
    """The servers' own account: how batches grew and what their commits cost."""
    mean = actors["mean_batch"]
    text = (
        f"actors: {actors['batches']:,} batches of {mean:g} "
        f"command{'' if mean == 1 else 's'} on average"
    )
    commit = actors["commit_ms"]
    if actors["commits"]:
        text += (
            f", {actors['commits']:,} commits (p50 {_ms(commit['p50'])}, p99 {_ms(commit['p99'])}"
            f", mean {_ms(commit['mean'])} ms)"
        )
        if actors["commit_share"] is not None:
            text += f", commits {100 * actors['commit_share']:.0f}% of the actors' busy time"
    if actors["commit_failures"]:
        text += f", {actors['commit_failures']} failed commits"
    return _wrap(text)


def _headline(result: RunResult) -> float:
    ops = {op.name: op for op in result.ops}
    op = ops.get("reserve") or result.ops[0]
    return op.ops_per_s


def _headline_name(result: RunResult) -> str:
    for name in ("purchases", "holds"):
        if f"{name}_per_s" in result.metrics:
            return name
    return "reserve" if any(op.name == "reserve" for op in result.ops) else result.ops[0].name


def instances_json(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One scenario on several instance counts (``--instances 1,3``): a row per run."""
    rows = []
    base = _headline(runs[0]) if runs else 0.0
    for run in runs:
        first = run.ops[0]
        rate = _headline(run)
        row: dict[str, Any] = {
            "instances": run.params.get("instances", 1),
            "verified": run.verdict.ok,
            "headline": f"{_headline_name(run)}/s",
            "ops_per_s": round(rate, 1),
            "ratio": round(rate / base, 3) if base else None,
            "latency_op": first.name,
            "p50_ms": first.latency_ms["p50"],
            "p99_ms": first.latency_ms["p99"],
        }
        for name in ("server", "postgres", "redis"):
            entry = run.resources.get(name)
            row[f"{name}_cpu_percent"] = entry["cpu_percent"] if entry else None
        for key in ("forwarded_share", "time_to_sell_out_s"):
            if run.metrics.get(key) is not None:
                row[key] = run.metrics[key]
        rows.append(row)
    return rows


def format_instances(runs: Sequence[RunResult]) -> str:
    rows = instances_json(runs)
    first = rows[0]
    counts = " vs ".join(str(r["instances"]) for r in rows)
    width = max(14, len(first["headline"]) + 2)
    # A rush is judged by when it sold out: its reserves/s only says how fast holds turned
    # into reservations once they were won.
    sold_out = any("time_to_sell_out_s" in row for row in rows)
    lines = [
        f"== {runs[0].scenario} on {counts} instances (latency: {first['latency_op']}, ms; "
        "cpu: % of one core, servers summed)",
        f"   {'instances':>9}{first['headline']:>{width}}{'ratio':>8}{'p50':>8}{'p99':>8}"
        + (f"{'sold out':>10}" if sold_out else "")
        + f"{'servers':>9}{'postgres':>10}{'redis':>7}{'forwarded':>11}",
    ]
    for row in rows:
        cpu = [row[f"{n}_cpu_percent"] for n in ("server", "postgres", "redis")]
        share = row.get("forwarded_share")
        lines.append(
            f"   {row['instances']:>9}{row['ops_per_s']:>{width}.1f}"
            f"{(row['ratio'] or 0):>7.2f}x{_ms(row['p50_ms']):>8}{_ms(row['p99_ms']):>8}"
            + (_sold_out(row.get("time_to_sell_out_s")) if sold_out else "")
            + "".join(
                f"{(f'{c:.0f}%' if c is not None else '-'):>{w}}"
                for c, w in zip(cpu, (9, 10, 7), strict=True)
            )
            + f"{(f'{100 * share:.0f}%' if share is not None else '-'):>11}"
            + ("" if row["verified"] else "  VERIFICATION FAILED")
        )
    return "\n".join(lines)


def _sold_out(seconds: float | None) -> str:
    return f"{(f'{seconds:.3f}s' if seconds is not None else 'no'):>10}"


def format_baseline(on: RunResult, off: RunResult) -> str:
    a, b = _headline(on), _headline(off)
    ratio = a / b if b else float("inf")
    on_p99 = {op.name: op.latency_ms["p99"] for op in on.ops}
    off_p99 = {op.name: op.latency_ms["p99"] for op in off.ops}
    lines = [
        "== baseline: group commit on vs off (SEATD_MAX_BATCH=1)",
        f"   {_headline_name(on)}/s: {a:.1f} with group commit, {b:.1f} without: "
        f"ratio {ratio:.2f}x",
    ]
    for name in on_p99:
        if name in off_p99:
            lines.append(
                f"   {name} p99: {_ms(on_p99[name])} ms with, {_ms(off_p99[name])} ms without"
            )
    return "\n".join(lines)


def baseline_json(on: RunResult, off: RunResult) -> dict[str, Any]:
    a, b = _headline(on), _headline(off)
    name = _headline_name(on)  # purchases, or holds with --holds-only
    return {
        f"group_commit_{name}_per_s": round(a, 1),
        f"no_group_commit_{name}_per_s": round(b, 1),
        "ratio": round(a / b, 3) if b else None,
    }


def _latency(result: RunResult, name: str) -> dict[str, float] | None:
    for op in result.ops:
        if op.name == name:
            return op.latency_ms
    return None


def _cpu_s(result: RunResult, name: str) -> float:
    entry = result.resources.get(name)
    return float(entry["cpu_s"]) if entry else 0.0


def forwarding_json(on_owner: RunResult, forwarded: RunResult) -> dict[str, Any]:
    """The two runs of ``--via-non-owner`` in figures: throughput, latency, CPU per purchase."""
    document: dict[str, Any] = {"instances": on_owner.params.get("instances")}
    for key, run in (("on_owner", on_owner), ("forwarded", forwarded)):
        purchases = int(run.metrics.get("purchases") or 0)
        entry: dict[str, Any] = {"purchases_per_s": round(_headline(run), 1)}
        for op in ("hold", "reserve"):
            latency = _latency(run, op)
            if latency is not None:
                entry[f"{op}_p50_ms"] = latency["p50"]
                entry[f"{op}_p99_ms"] = latency["p99"]
        for name in ("server", "redis", "postgres"):
            entry[f"{name}_cpu_ms_per_purchase"] = (
                round(1000.0 * _cpu_s(run, name) / purchases, 3) if purchases else None
            )
        document[key] = entry
    a, b = _headline(on_owner), _headline(forwarded)
    document["throughput_ratio"] = round(b / a, 3) if a else None
    return document


def format_forwarding(on_owner: RunResult, forwarded: RunResult) -> str:
    doc = forwarding_json(on_owner, forwarded)
    a, b = doc["on_owner"], doc["forwarded"]
    ratio = doc["throughput_ratio"]
    lines = [
        f"== forwarding: every client on the event's owner vs on another instance "
        f"({doc['instances']} instances)",
        f"   purchases/s: {a['purchases_per_s']:.1f} on the owner, {b['purchases_per_s']:.1f} "
        f"forwarded" + (f": {ratio:.2f}x" if ratio is not None else ""),
    ]
    for op in ("hold", "reserve"):
        if f"{op}_p50_ms" in a and f"{op}_p50_ms" in b:
            lines.append(
                f"   {op} p50 / p99: {_ms(a[f'{op}_p50_ms'])} / {_ms(a[f'{op}_p99_ms'])} ms on "
                f"the owner, {_ms(b[f'{op}_p50_ms'])} / {_ms(b[f'{op}_p99_ms'])} ms forwarded "
                f"(p50 +{_ms(b[f'{op}_p50_ms'] - a[f'{op}_p50_ms'])} ms)"
            )
    cpu = []
    for name in ("server", "redis", "postgres"):
        x, y = a[f"{name}_cpu_ms_per_purchase"], b[f"{name}_cpu_ms_per_purchase"]
        if x is not None and y is not None and (x or y):
            cpu.append(f"{name} {x:.3f} -> {y:.3f}")
    if cpu:
        lines.append("   cpu ms per purchase, owner -> forwarded: " + ", ".join(cpu))
    return "\n".join(lines)


def plot_path(base: str, result: RunResult, several: bool) -> Path:
    """FILE.png for a single run; FILE-<scenario>[-<label>].png when there are several."""
    path = Path(base)
    if not several:
        return path
    label = result.label.replace(", ", "-").replace(" ", "-")
    return path.with_name(f"{path.stem}-{result.scenario}-{label}{path.suffix or '.png'}")


def write_plot(result: RunResult, path: Path) -> None:
    """Latency (p50, p99) and throughput over time, and the latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fig, (over_time, spread) = plt.subplots(1, 2, figsize=(14, 5.5))
    fig.suptitle(f"seatd bench {result.scenario} ({result.label}): {_params(result)}", fontsize=10)
    rate_axis = over_time.twinx()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for color, op in zip(colors, result.ops, strict=False):
        if not op.timeline:
            continue
        seconds = [t[0] for t in op.timeline]
        over_time.plot(seconds, [t[3] for t in op.timeline], color=color, label=f"{op.name} p50")
        over_time.plot(
            seconds,
            [t[4] for t in op.timeline],
            color=color,
            linestyle="--",
            label=f"{op.name} p99",
        )
        rate_axis.plot(seconds, [t[1] for t in op.timeline], color=color, alpha=0.25, linewidth=4)
    over_time.set_xlabel("seconds since start")
    over_time.set_ylabel("latency (ms), log scale")
    over_time.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    over_time.yaxis.set_major_formatter(plain)
    over_time.yaxis.set_minor_formatter(plain)
    over_time.grid(True, which="both", alpha=0.3)
    rate_axis.set_ylabel("ok replies per second (thick, faint)")
    rate_axis.set_ylim(bottom=0)
    over_time.legend(fontsize=8, loc="upper left")
    over_time.set_title("latency over time")

    ticks = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]

    def position(p: float) -> float:
        return 1.0 / max(1.0 - p / 100.0, 1e-6)

    for color, op in zip(colors, result.ops, strict=False):
        if op.distribution:
            spread.plot(
                [position(p) for p, _ in op.distribution],
                [v for _, v in op.distribution],
                color=color,
                label=op.name,
            )
    spread.set_xscale("log")
    spread.xaxis.set_major_locator(FixedLocator([position(t) for t in ticks]))
    spread.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _percentile_label(x)))
    spread.set_xlabel("percentile")
    spread.set_ylabel("latency (ms), log scale")
    spread.set_yscale("log")
    spread.yaxis.set_major_formatter(plain)
    values = [v for op in result.ops for _, v in op.distribution if v > 0]
    if values:
        # Latencies clipped at 0 (fanout's reply->push) sit at the histogram's floor, 1 us:
        # start the axis at 0.01 ms, and label minor ticks only over a narrow range.
        low = max(min(values), 0.01)
        spread.set_ylim(bottom=low)
        if max(values) / low <= 100:
            spread.yaxis.set_minor_formatter(plain)
        else:
            spread.yaxis.set_minor_formatter(NullFormatter())
    spread.grid(True, which="both", alpha=0.3)
    spread.legend(fontsize=8)
    spread.set_title("latency distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _percentile_label(x: float) -> str:
    p = 100.0 * (1.0 - 1.0 / x)
    return f"{p:g}%"


def runs_json(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    return [r.as_json() for r in results]
