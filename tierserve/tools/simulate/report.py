"""What `tierserve simulate` shows: a PNG of threshold, escalation, queue and accuracy over time,
a per-interval CSV, and the figures as printed tables."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tierserve.autoscale.policy import PolicyParams
from tierserve.tools.simulate.evaluation import BUDGET_TOLERANCE
from tierserve.tools.simulate.replay import Run
from tierserve.tools.simulate.traces import Floats, Ints, Trace

STYLE: dict[str, dict[str, Any]] = {
    "adaptive": {"color": "C0", "lw": 1.4, "label": "adaptive"},
    "static": {"color": "C1", "lw": 1.0, "label": "static, same average escalation"},
    "safe": {"color": "C4", "lw": 1.0, "label": "static, safe for budget and queue"},
}


def _smooth(values: Floats, weights: Ints, width: int = 5) -> Floats:
    """Weighted centred moving average that stays honest at the edges."""
    kernel = np.ones(width)
    ok = ~np.isnan(values)
    num = np.convolve(np.where(ok, values * weights, 0.0), kernel, "same")
    den = np.convolve(np.where(ok, weights, 0), kernel, "same")
    out: Floats = num / np.maximum(den, 1)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Threshold, escalation vs budget, top-tier queue vs target and accuracy over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    trace: Trace = result["trace"]
    p = result["setup"].params
    runs: dict[str, Run] = result["runs"]
    a = runs["adaptive"]
    minutes = (np.arange(len(a.threshold)) + 0.5) * a.interval / 60
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True, layout="constrained")
    order = [n for n in ("safe", "static", "adaptive") if n in runs]

    ax = axes[0]
    for name in order:
        ax.step(minutes, runs[name].threshold, where="mid", **STYLE[name])
    ax.set_ylabel("threshold")

    ax = axes[1]
    low, high = 100 * (p.budget - BUDGET_TOLERANCE), 100 * (p.budget + BUDGET_TOLERANCE)
    ax.axhspan(low, high, color="green", alpha=0.12)
    ax.axhline(100 * p.budget, color="green", lw=0.8)
    for name in order:
        ax.plot(minutes, 100 * runs[name].rate, **STYLE[name])
    ax.set_ylabel("escalated, % of requests")

    ax = axes[2]
    ax.axhline(p.queue_target, color="C3", lw=1.2, ls="--")
    for name in order:
        ax.plot(minutes, runs[name].queue, **STYLE[name])
    peak = max(float(r.queue.max()) for r in runs.values())
    top = min(max(3 * p.queue_target, peak), 10 * max(p.queue_target, 1.0))
    ax.set_ylim(0, top * 1.05)
    if peak > top:
        ax.text(0.99, 0.95, f"clipped: peaks at {peak:.0f}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="0.3")  # fmt: skip
    ax.set_ylabel("top-tier queue,\nwaiting per replica")
    load = ax.twinx()
    load.fill_between(minutes, a.requests / a.interval, step="mid", color="0.92", zorder=0)
    load.set_ylim(0, None)
    load.set_ylabel("load, req/s (grey)", color="0.45")
    ax.set_zorder(load.get_zorder() + 1)
    ax.patch.set_visible(False)

    ax = axes[3]
    for name in order:
        ax.plot(minutes, 100 * _smooth(runs[name].accuracy, runs[name].requests), **STYLE[name])
    ax.set_ylabel("accuracy, %\n(5-interval mean)")
    ax.set_xlabel("minutes")

    for ax in axes:
        for t, _, _ in trace.events:
            ax.axvline(t / 60, color="0.5", ls=":", lw=1)
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], **{**STYLE[n], "label": _legend(n, result)}) for n in reversed(order)
    ] + [
        Patch(color="green", alpha=0.25, label=f"budget {100 * p.budget:g}% ± 2 pp"),
        Line2D([], [], color="C3", ls="--", label=f"queue target {p.queue_target:g}"),
    ]
    f = result["figures"]
    fa, fs = f["adaptive"], f["static"]
    fig.suptitle(
        f"{trace.name}: {trace.description}\n"
        f"adaptive: accuracy {100 * fa['accuracy']:.2f}% at {100 * fa['escalation_rate']:.1f}% "
        f"escalation, queue target met in {100 * fa['queue_target_met']:.1f}% of intervals; "
        f"static at the same escalation: {100 * fs['accuracy']:.2f}%, "
        f"{100 * fs['queue_target_met']:.1f}%",
        fontsize=10,
    )
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _legend(name: str, result: dict[str, Any]) -> str:
    label = str(STYLE[name]["label"])
    return label if name == "adaptive" else f"{label} ({result['thresholds'][name]:.3f})"


def write_intervals(result: dict[str, Any], path: Path) -> None:
    a: Run = result["runs"]["adaptive"]
    s: Run = result["runs"]["static"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "minute", "requests", "threshold", "escalation_rate", "queue", "p95_ttft_s",
                "throughput", "agreement", "lower_load", "accuracy", "slo_violations",
                "timeouts", "static_escalation_rate", "static_queue", "static_accuracy",
                "static_slo_violations", "constraint", "reason",
            ]
        )  # fmt: skip
        for k in range(len(a.threshold)):
            w.writerow(
                [
                    f"{k * a.interval / 60:.2f}", a.requests[k], f"{a.threshold[k]:.4f}",
                    f"{a.rate[k]:.4f}", f"{a.queue[k]:.2f}", f"{a.latency_p95[k]:.2f}",
                    f"{a.throughput[k]:.2f}", f"{a.agreement[k]:.3f}", f"{a.lower_load[k]:.2f}",
                    f"{a.accuracy[k]:.4f}", a.slo_violations[k], a.timeouts[k],
                    f"{s.rate[k]:.4f}", f"{s.queue[k]:.2f}", f"{s.accuracy[k]:.4f}",
                    s.slo_violations[k], a.constraints[k], a.reasons[k],
                ]
            )  # fmt: skip


def print_intervals(result: dict[str, Any]) -> None:
    a: Run = result["runs"]["adaptive"]
    s: Run = result["runs"]["static"]
    print(
        f"{'min':>6} {'req/s':>6} {'thr':>6} {'esc%':>5} {'st.esc%':>7} {'queue':>6} "
        f"{'st.q':>6} {'acc%':>5} {'st.acc%':>7}  reason"
    )
    for k in range(len(a.threshold)):
        print(
            f"{k * a.interval / 60:6.1f} {a.requests[k] / a.interval:6.1f} {a.threshold[k]:6.3f} "
            f"{100 * a.rate[k]:5.1f} {100 * s.rate[k]:7.1f} {a.queue[k]:6.1f} {s.queue[k]:6.1f} "
            f"{100 * a.accuracy[k]:5.1f} {100 * s.accuracy[k]:7.1f}  {a.reasons[k]}"
        )


def print_figures(f: dict[str, Any], params: PolicyParams) -> None:
    names = [n for n in ("adaptive", "static", "safe") if n in f]
    heads = {"adaptive": "adaptive", "static": "static=avg", "safe": "static-safe"}
    print(f"\n== {f['scenario']}: {f['description']}")
    print(
        f"   {f['requests']:,} requests, {f['intervals']} intervals of "
        f"{f['interval_seconds']:g}s; top tier {f['top_tier_replicas']} replicas, "
        f"small tier {f['small_replicas']}; budget {100 * params.budget:g}%, queue target "
        f"{params.queue_target:g}, maxStep {params.max_step:g}"
    )
    print("   " + " " * 30 + "".join(f"{heads[n]:>13}" for n in names))
    rows: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        ("threshold (mean)", lambda x: x["threshold_mean"], ".3f"),
        ("accuracy %", lambda x: 100 * x["accuracy"], ".2f"),
        ("escalation %", lambda x: 100 * x["escalation_rate"], ".2f"),
        ("x cheaper than all-top", lambda x: x["x_cheaper_than_all_top"], ".2f"),
        ("SLO violations %", lambda x: 100 * x["slo_violation_rate"], ".2f"),
        ("top-tier timeouts (errors)", lambda x: x["timeouts"], ".0f"),
        ("queue target met, % intervals", lambda x: 100 * x["queue_target_met"], ".1f"),
        ("queue p99 (per replica)", lambda x: x["queue_p99"], ".1f"),
        ("steady >2pp over budget, %", lambda x: 100 * x["budget"]["over_budget_2pp"], ".1f"),
    ]
    for label, get, fmt in rows:
        print(f"   {label:30}" + "".join(f"{get(f[n]):>13{fmt}}" for n in names))
    for n in names[1:]:
        print(
            f"   adaptive - {heads[n]} accuracy: {f[n]['adaptive_accuracy_gain_pp']:+.2f} pp "
            f"(paired s.e. {f[n]['gain_se_pp']:.2f})"
        )
    b = f["adaptive"]["budget"]
    print(
        f"   budget tracking: {b['budget_bound_intervals']}/{b['steady_intervals']} steady "
        f"intervals budget-bound; within 2 pp in {100 * b['within_2pp']:.1f}% of them "
        f"(perfect control: {100 * b['within_2pp_perfect_control']:.1f}%), "
        f"{100 * b['within_2pp_window']:.1f}% over {b['window_seconds']:g}s windows (perfect "
        f"{100 * b['within_2pp_window_perfect_control']:.1f}%); "
        f"mean |error| {b['mean_abs_error_pp']:.2f} pp"
    )
    for e in f["settling"]:
        print(
            f"   after {e['event']!r} (min {e['minute']:.0f}): threshold {e['from']:.3f} -> "
            f"{e['to']:.3f} in {e['settle_intervals']} intervals (maxStep allows "
            f"{e['fewest_possible']}), {e['reversals']} reversals"
        )
