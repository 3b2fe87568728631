"""Reports: a human summary, one JSON document, and a latency plot (matplotlib, Agg).

Why all three: people read the summary, scripts and CI diff the JSON, and the plot shows what
a percentile table hides (a stall at second 12, a bimodal distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seatd.bench.scenarios import RunResult

__all__ = ["baseline_json", "format_baseline", "format_run", "plot_path", "write_plot"]

_LABELS = {
    "throughput": "hold then reserve distinct seats of one event",
    "events": "hold then reserve, spread over many events",
    "rush": "on-sale burst: buyers racing for hot seats",
    "fanout": "subscribers timing availability pushes",
    "idle": "memory of idle connections and passivated events",
}


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
        )
        if p.get(k) is not None
    ]
    return ", ".join(f"{k} {p[k]:g}" if isinstance(p[k], float) else f"{k} {p[k]}" for k in keys)


def format_run(result: RunResult) -> str:
    """The human summary of one run."""
    lines = [
        f"== {result.scenario} ({result.label}): {_LABELS.get(result.scenario, '')}",
        f"   {_params(result)}; window {result.window_s:.2f}s, wall {result.wall_s:.1f}s",
        f"   {'op':<17}{'ok':>9}{'errors':>8}{'ops/s':>10}"
        f"{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  (ms)",
    ]
    errors: dict[str, int] = {}
    for op in result.ops:
        lat = op.latency_ms
        failed = op.count - op.ok
        lines.append(
            f"   {op.name:<17}{op.ok:>9}{failed:>8}{op.ops_per_s:>10.1f}"
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
    for note in result.notes:
        lines.append(f"   note: {note}")
    verdict = result.verdict
    lines.append(f"   verification: {verdict.label}")
    for check in verdict.checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"     {mark} {check.name}" + (f" ({check.detail})" if check.detail else ""))
    if verdict.skipped:
        lines.append(f"     skipped: {verdict.skipped}")
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
    if server:
        parts.append(
            f"server cpu {server['cpu_percent']:.0f}% rss {server['rss_mb']:.0f} MB "
            f"(peak {server['rss_peak_mb']:.0f} MB)"
        )
    else:
        parts.append("server cpu/rss unknown (give --server-pid)")
    for name in ("postgres", "redis"):
        entry = result.resources.get(name)
        if entry:
            parts.append(f"{name} cpu {entry['cpu_percent']:.0f}%")
    lg = result.loadgen
    parts.append(
        f"load generator cpu {lg['cpu_percent']:.0f}% ({lg['cpu_s']:.1f}s, "
        f"{lg['workers']} worker{'s' if lg['workers'] != 1 else ''}, {lg['client']})"
    )
    return _wrap("; ".join(parts).replace("; ", ", ")) + "  [cpu: % of one core]"


def _headline(result: RunResult) -> float:
    ops = {op.name: op for op in result.ops}
    op = ops.get("reserve") or result.ops[0]
    return op.ops_per_s


def format_baseline(on: RunResult, off: RunResult) -> str:
    a, b = _headline(on), _headline(off)
    ratio = a / b if b else float("inf")
    on_p99 = {op.name: op.latency_ms["p99"] for op in on.ops}
    off_p99 = {op.name: op.latency_ms["p99"] for op in off.ops}
    lines = [
        "== baseline: group commit on vs off (SEATD_MAX_BATCH=1)",
        f"   purchases/s: {a:.1f} with group commit, {b:.1f} without: ratio {ratio:.2f}x",
    ]
    for name in on_p99:
        if name in off_p99:
            lines.append(
                f"   {name} p99: {_ms(on_p99[name])} ms with, {_ms(off_p99[name])} ms without"
            )
    return "\n".join(lines)


def baseline_json(on: RunResult, off: RunResult) -> dict[str, Any]:
    a, b = _headline(on), _headline(off)
    return {
        "group_commit_purchases_per_s": round(a, 1),
        "no_group_commit_purchases_per_s": round(b, 1),
        "ratio": round(a / b, 3) if b else None,
    }


def plot_path(base: str, result: RunResult, several: bool) -> Path:
    """FILE.png for a single run; FILE-<scenario>[-<label>].png when there are several."""
    path = Path(base)
    if not several:
        return path
    label = result.label.replace(" ", "-")
    return path.with_name(f"{path.stem}-{result.scenario}-{label}{path.suffix or '.png'}")


def write_plot(result: RunResult, path: Path) -> None:
    """Latency (p50, p99) and throughput over time, and the latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

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
    spread.yaxis.set_minor_formatter(plain)
    spread.grid(True, which="both", alpha=0.3)
    spread.legend(fontsize=8)
    spread.set_title("latency distribution")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _percentile_label(x: float) -> str:
    p = 100.0 * (1.0 - 1.0 / x)
    return f"{p:g}%"


def runs_json(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    return [r.as_json() for r in results]
