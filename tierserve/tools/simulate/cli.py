"""`tierserve simulate`: the scenarios (a trace and the deployment it runs on) and the command
that replays them, prints the figures and writes a PNG, a CSV and figures.json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tierserve.autoscale.policy import PolicyParams, parse_duration
from tierserve.tools.simulate.evaluation import compare
from tierserve.tools.simulate.queueing import Setup, sized
from tierserve.tools.simulate.report import plot, print_figures, print_intervals, write_intervals
from tierserve.tools.simulate.traces import (
    ROUTELLM,
    Trace,
    mmlu,
    ranked,
    read_trace,
    synthetic,
)

SCENARIOS = ("load-swing", "difficulty-shift", "overload", "mmlu", "ties")


def scenario(
    name: str,
    params: PolicyParams,
    seed: int = 0,
    minutes: int = 120,
    data: Path = ROUTELLM,
    rank: bool = False,
) -> tuple[Trace, Setup]:
    """A trace and the deployment it runs on.

    load-swing, difficulty-shift, mmlu: the top tier has room for the budget at peak (80% busy).
    overload: the load swing with a top tier sized for 60% of what the budget needs at peak, so
    capacity, not the budget, limits escalation at peak. `rank`: the router's rank score.
    """
    if name == "mmlu":
        trace = mmlu(data, seed=seed, minutes=minutes)
    elif name == "overload":
        trace = synthetic("load-swing", seed=seed, minutes=minutes)
        trace.name = "overload"
        trace.description = "10x load swing, top tier sized for 60% of the budget at peak"
    else:
        trace = synthetic(name, seed=seed, minutes=minutes)
    if rank:
        trace = ranked(trace)
    busy = 1.0 / 0.6 if name == "overload" else 0.8
    return trace, sized(trace, params, top_tier_busy=busy, seed=seed)


def _jsonable(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(f, default=float))
    return out


def run_scenarios(
    names: Sequence[str],
    params: PolicyParams,
    out: Path,
    seed: int = 0,
    minutes: int = 120,
    top_tier_replicas: int | None = None,
    per_interval: bool = False,
    suffix: str = "",
    data: Path = ROUTELLM,
    rank: bool = False,
) -> dict[str, Any]:
    """Simulate, print, and write a PNG and a per-interval CSV for each scenario."""
    out.mkdir(parents=True, exist_ok=True)
    collected = {}
    for name in names:
        if name == "mmlu" and not (data / "mmlu").is_dir():
            print(f"skipping mmlu: {data / 'mmlu'} not found", file=sys.stderr)
            continue
        trace, setup = scenario(name, params, seed=seed, minutes=minutes, data=data, rank=rank)
        collected[trace.name + suffix] = _run_one(
            trace, setup, out, top_tier_replicas, per_interval, suffix
        )
    return collected


def _run_one(
    trace: Trace,
    setup: Setup,
    out: Path,
    top_tier_replicas: int | None,
    per_interval: bool,
    suffix: str = "",
) -> dict[str, Any]:
    if top_tier_replicas:
        setup = replace(setup, large=replace(setup.large, replicas=top_tier_replicas))
    result = compare(trace, setup)
    print_figures(result["figures"], setup.params)
    if per_interval:
        print_intervals(result)
    png = out / f"{trace.name}{suffix}.png"
    plot(result, png)
    write_intervals(result, png.with_suffix(".csv"))
    print(f"   wrote {png} and {png.with_suffix('.csv')}")
    return _jsonable(result["figures"])


def main(argv: Sequence[str] | None = None) -> int:
    """Replay traces through the tiers with the adaptive threshold policy and static ones."""
    parser = argparse.ArgumentParser(prog="tierserve simulate", description=main.__doc__)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--trace", type=Path, help="replay a CSV trace instead (see read_trace)")
    parser.add_argument("--minutes", type=int, default=120, help="length of generated traces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/simulate"))
    parser.add_argument("--budget", type=float, default=0.25, help="maxEscalationRate")
    parser.add_argument("--queue-target", type=float, default=5.0, help="topTierQueueTarget")
    parser.add_argument("--max-step", type=float, default=0.05, help="maxStep")
    parser.add_argument("--interval", default="30s", help="autoscale interval")
    parser.add_argument("--threshold", type=float, default=0.5, help="the spec's threshold")
    parser.add_argument("--latency-target", type=float, help="proposed: p95 TTFT target, s")
    parser.add_argument("--agreement-target", type=float, help="proposed: shadow agreement target")
    parser.add_argument("--top-tier-replicas", type=int, help="default: sized for the trace")
    parser.add_argument(
        "--cascade-score",
        choices=["uncertainty", "rank"],
        default="uncertainty",
        help="routing.cascade.score: 1 - confidence, or its rank among recent confidences",
    )
    parser.add_argument("--per-interval", action="store_true", help="print every interval")
    parser.add_argument("--data", type=Path, default=ROUTELLM, help="RouteLLM evals folder")
    args = parser.parse_args(argv)

    params = PolicyParams(
        spec_threshold=args.threshold,
        budget=args.budget,
        queue_target=args.queue_target,
        max_step=args.max_step,
        interval_seconds=parse_duration(args.interval),
        latency_target=args.latency_target,
        agreement_target=args.agreement_target,
    )
    if args.trace:
        trace = read_trace(args.trace)
        if args.cascade_score == "rank":
            trace = ranked(trace)
        setup = sized(trace, params, seed=args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        collected = {
            trace.name: _run_one(trace, setup, args.out, args.top_tier_replicas, args.per_interval)
        }
    else:
        names = SCENARIOS if args.scenario == "all" else (args.scenario,)
        collected = run_scenarios(
            names,
            params,
            args.out,
            seed=args.seed,
            minutes=args.minutes,
            top_tier_replicas=args.top_tier_replicas,
            per_interval=args.per_interval,
            data=args.data,
            rank=args.cascade_score == "rank",
        )
    (args.out / "figures.json").write_text(json.dumps(collected, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
