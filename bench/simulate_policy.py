"""Threshold-policy benchmark in the simulator (not a test: it prints figures against targets).

Runs every scenario of `tierserve simulate` (10x load swing, difficulty shift, load swing on a
short top tier, RouteLLM MMLU with a subject shift) with the API's defaults (30s interval,
maxStep 0.05, budget 25%, queue target 5), then the same at a 10s interval, and checks:

- budget: realized escalation within 2 pp of the budget in >= 95% of steady, budget-bound
  intervals, measured over trailing 150s windows (per interval, binomial noise alone at
  20 req/s keeps even a perfect controller near 86% at 30s intervals: both figures are printed,
  each beside what perfect control would score);
- queue: the top tier's queue target met in >= 99% of intervals;
- settling: after each step change, settled within 5 intervals with at most one reversal;
- quality: accuracy >= a static threshold calibrated offline for the same average escalation.

Seed 0 writes PNGs, per-interval CSVs and figures.json under --out; other seeds only print.
Run: `.venv/bin/python bench/simulate_policy.py [--seeds 0 1 2] [--out bench/results/simulate]`

`--limits` instead writes limits.json: why two targets are out of reach (see LIMITS.md there).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tierserve.autoscale.policy import (
    Decision,
    PolicyMemory,
    PolicyParams,
    Signals,
    decide,
    parse_duration,
)
from tierserve.tools import simulate as sim

ROOT = Path(__file__).resolve().parents[1]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def verdicts(f: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Per target: "met", "NOT met" (or, for quality, "tie": within 2 paired s.e.), and figures."""
    a, b = f["adaptive"], f["adaptive"]["budget"]
    steps = [e for e in f["settling"] if not e["event"].startswith("start")]
    settle = all(e["settle_intervals"] <= 5 and e["reversals"] <= 1 for e in steps)
    settle_text = (
        ", ".join(
            f"{e['settle_intervals']} (min {e['fewest_possible']}, {e['reversals']} rev)"
            for e in steps
        )
        or "no step moved it"
    )
    gain, se = f["static"]["adaptive_accuracy_gain_pp"], f["static"]["gain_se_pp"]
    quality = "met" if gain >= 0 else "tie" if gain >= -2 * se else "NOT met"
    return {
        "budget": (
            _met(b["within_2pp_window"] >= 0.95),
            f"{100 * b['within_2pp_window']:.1f}% of 150s windows "
            f"(perfect control {100 * b['within_2pp_window_perfect_control']:.1f}%), "
            f"{100 * b['within_2pp']:.1f}% intervals "
            f"(perfect control {100 * b['within_2pp_perfect_control']:.1f}%), "
            f"{b['budget_bound_intervals']}/{b['steady_intervals']} budget-bound",
        ),
        "queue": (
            _met(a["queue_target_met"] >= 0.99),
            f"{100 * a['queue_target_met']:.1f}% (static same-average "
            f"{100 * f['static']['queue_target_met']:.1f}%)",
        ),
        "settle": (_met(settle), settle_text),
        "quality": (quality, f"{gain:+.2f} pp ± {se:.2f} vs static same-average"),
    }


def _fastest(
    current: float, signals: Signals, params: PolicyParams, memory: PolicyMemory | None = None
) -> Decision:
    """The policy, except that a queue above the hold band raises the threshold by the full
    maxStep every interval: the fastest back-off `maxStep` allows."""
    d = decide(current, signals, params, memory)
    queue, hold = signals.top_tier_queue, params.queue_target * params.queue_hold_fraction
    if queue is not None and queue > hold:
        return replace(d, threshold=min(params.max_threshold, round(current + params.max_step, 4)))
    return d


def limits(seeds: list[int], intervals: list[str], minutes: int) -> dict[str, Any]:
    """What no causal policy within the targets' rules can beat, next to what the policy does.

    difficulty-shift: perfect budget control (exactly the budget in each third, no noise, no
    queueing) against one static threshold spending the same escalations in total, and where
    that static threshold spends them. overload: queue-target misses of the policy and of the
    fastest back-off maxStep allows, at the trace's one unannounced 10x load step."""
    out: dict[str, Any] = {}
    for seed in seeds:
        trace, _ = sim.scenario("difficulty-shift", PolicyParams(), seed=seed, minutes=minutes)
        third = minutes * 20.0
        hard = (trace.arrival >= third) & (trace.arrival < 2 * third)
        held = np.zeros(len(trace), dtype=bool)
        for part in (hard, ~hard):
            held[part] = trace.score[part] > np.quantile(trace.score[part], 0.75)
        static = trace.score > np.quantile(trace.score, 1 - held.mean())

        right = [
            np.where(e, trace.large_correct, trace.small_correct).mean() for e in (held, static)
        ]
        out[f"difficulty-shift seed {seed}"] = {
            "perfect_control_minus_static_pp": round(100 * float(right[0] - right[1]), 3),
            "static_rate_hard_third": round(float(static[hard].mean()), 4),
            "static_rate_other_thirds": round(float(static[~hard].mean()), 4),
        }
    for interval in intervals:
        params = PolicyParams(interval_seconds=parse_duration(interval))
        for seed in seeds:
            trace, setup = sim.scenario("overload", params, seed=seed, minutes=minutes)
            row: dict[str, Any] = {}
            for name, policy in (("policy", decide), ("fastest_backoff", _fastest)):
                run = sim.simulate(trace, setup, policy=policy)
                over = np.flatnonzero(run.queue > params.queue_target)
                row[name] = {
                    "queue_target_met": round(1 - len(over) / len(run.queue), 4),
                    "intervals_over_target": over.tolist(),
                }
            out[f"overload @{interval} seed {seed}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--intervals", nargs="+", default=["30s", "10s"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "simulate")
    parser.add_argument(
        "--limits", action="store_true", help="only the bounds on the targets (limits.json)"
    )
    args = parser.parse_args()
    if args.limits:
        found = limits(args.seeds, args.intervals, args.minutes)
        print(json.dumps(found, indent=2))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "limits.json").write_text(json.dumps(found, indent=2) + "\n")
        return

    results: dict[str, Any] = {}
    started = time.monotonic()
    for interval in args.intervals:
        params = PolicyParams(interval_seconds=parse_duration(interval))
        for seed in args.seeds:
            suffix = "" if interval == "30s" else f"-{interval}"
            if seed == 0:
                figures = sim.run_scenarios(
                    sim.SCENARIOS, params, args.out, seed=seed, minutes=args.minutes, suffix=suffix
                )
            else:  # numbers only
                figures = {}
                for name in sim.SCENARIOS:
                    if name == "mmlu" and not (sim.ROUTELLM / "mmlu").is_dir():
                        continue
                    trace, setup = sim.scenario(name, params, seed=seed, minutes=args.minutes)
                    figures[name + suffix] = json.loads(
                        json.dumps(sim.compare(trace, setup)["figures"], default=float)
                    )
            for name, f in figures.items():
                results[f"{name.removesuffix(suffix)} @{interval} seed {seed}"] = f

    print(f"\n== targets ({time.monotonic() - started:.0f}s)")
    summary = {}
    for key, f in results.items():
        checks = verdicts(f)
        summary[key] = {k: {"verdict": v, "figure": text} for k, (v, text) in checks.items()}
        print(f"{key}")
        for name, (verdict, text) in checks.items():
            print(f"   {name:8} {verdict:8} {text}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "all_figures.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
