"""The cost model: what a routing share costs per request relative to an all-top-tier fleet.

Per-request cost of a tier is taken as proportional to its replica cost per hour (its GPU count
when no cost is given): tiers are assumed to serve requests at similar rates per replica, so the
ratio of hourly costs is the ratio of per-request costs. Upfront routing pays only for the tier it
picks; a cascade pays for every rung a request climbs, so an escalated request pays twice.

The router measures the same thing per request (`tierserve.serving.ledger`) from per-token
prices: a tier's explicit `price`, else its hourly cost spread over the tokens a replica
processes in an hour (`tier_prices`). With every tier at the default `tokensPerSecond`, those
prices keep the ratio of hourly costs, so the measured and the modelled figures share one
assumption and differ only by the traffic. When a tier names its `price`, the model prices a
request of a given size with every tier's per-token price instead (`request_costs`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from tierserve.api.v1alpha1 import ModelTierSpec, TokenPrice


def tier_costs(spec: ModelTierSpec) -> list[float]:
    if all(t.cost_per_hour is not None for t in spec.tiers):
        return [float(t.cost_per_hour or 0.0) for t in spec.tiers]
    return [float(max(t.gpus_per_replica, 1)) for t in spec.tiers]


def derived_price(cost_per_hour: float, tokens_per_second: float) -> TokenPrice:
    """A replica's hourly cost spread over the tokens it processes in an hour, per million.

    Prompt and completion tokens are charged alike: `tokens_per_second` counts both, so the
    average token pays its share of the hour (set `price` to charge them differently)."""
    per_million = cost_per_hour / (3600.0 * tokens_per_second) * 1e6
    return TokenPrice(prompt_per_million=per_million, completion_per_million=per_million)


def tier_prices(spec: ModelTierSpec) -> list[TokenPrice]:
    """Each tier's per-token price: its `price`, else derived from `tier_costs` (costPerHour
    when every tier sets it, else GPUs per replica, as `tierserve plan` models it)."""
    return [
        tier.price or derived_price(hourly, tier.tokens_per_second)
        for tier, hourly in zip(spec.tiers, tier_costs(spec), strict=True)
    ]


# The request `tierserve plan` prices when a tier names its own per-token `price` (the ratio
# of prompt to completion tokens matters only when the tiers' prices weigh them differently).
PLAN_PROMPT_TOKENS = 500
PLAN_COMPLETION_TOKENS = 200


def request_costs(
    spec: ModelTierSpec,
    prompt_tokens: int = PLAN_PROMPT_TOKENS,
    completion_tokens: int = PLAN_COMPLETION_TOKENS,
) -> list[float]:
    """Each tier's cost of one request, in the ratio the router's ledger charges it.

    With no explicit `price` this is `tier_costs` (hourly cost; the derived per-token prices
    keep its ratio at the default tokensPerSecond). When any tier sets `price`, every tier's
    per-token price (`tier_prices`) is applied to a request of the given size, so the plan
    and the status's cost factor follow the prices the router bills with."""
    if all(t.price is None for t in spec.tiers):
        return tier_costs(spec)
    return [
        (p.prompt_per_million * prompt_tokens + p.completion_per_million * completion_tokens) / 1e6
        for p in tier_prices(spec)
    ]


def upfront_cost(costs: Sequence[float], shares: Sequence[float]) -> float:
    """Mean cost per request when a share `shares[i]` is sent straight to tier i."""
    return sum(s * c for s, c in zip(shares, costs, strict=True))


def cascade_cost(costs: Sequence[float], shares: Sequence[float]) -> float:
    """Mean cost per request when `shares[i]` is answered at rung i after climbing 0..i."""
    climbed = [sum(costs[: i + 1]) for i in range(len(costs))]
    return sum(s * c for s, c in zip(shares, climbed, strict=True))


def reduction(costs: Sequence[float], shares: Sequence[float], mode: str) -> float:
    """All-top-tier cost divided by this routing's cost (12.3 means 12.3x cheaper)."""
    cost = cascade_cost(costs, shares) if mode == "cascade" else upfront_cost(costs, shares)
    return costs[-1] / cost if cost > 0 else float("inf")


def kept_small_shares(n_tiers: int, kept: float) -> list[float]:
    """A share `kept` stays on the first tier; the rest reaches the top tier."""
    return [kept] + [0.0] * (n_tiers - 2) + [1.0 - kept]


def main(argv: Sequence[str] | None = None) -> None:
    """`tierserve plan -f modeltier.yaml [--kept 1 0.9 0.75 0.5]`: cost per request vs all-top."""
    parser = argparse.ArgumentParser(prog="tierserve plan", description=main.__doc__)
    parser.add_argument("-f", "--filename", required=True)
    parser.add_argument("--kept", type=float, nargs="+", default=[1.0, 0.9, 0.75, 0.5, 0.25])
    parser.add_argument("--prompt-tokens", type=int, default=PLAN_PROMPT_TOKENS)
    parser.add_argument("--completion-tokens", type=int, default=PLAN_COMPLETION_TOKENS)
    args = parser.parse_args(argv)
    doc = yaml.safe_load(Path(args.filename).read_text())
    spec = ModelTierSpec.model_validate(doc["spec"])
    if len(spec.tiers) < 2:
        sys.exit("plan needs at least two tiers")
    if args.prompt_tokens < 0 or args.completion_tokens < 0:
        parser.error("--prompt-tokens and --completion-tokens must be >= 0")
    names = [t.name for t in spec.tiers]
    costs = request_costs(spec, args.prompt_tokens, args.completion_tokens)
    if any(t.price is not None for t in spec.tiers):
        size = f"{args.prompt_tokens} prompt + {args.completion_tokens} completion tokens"
        listed = ", ".join(f"{n} {c:.4g}" for n, c in zip(names, costs, strict=True))
        print(f"per request of {size}: {listed}")
    else:
        hourly = ", ".join(f"{n} ({c:g}/h)" for n, c in zip(names, costs, strict=True))
        print(f"tiers: {hourly}")
    print(f"top tier is {costs[-1] / costs[0]:.1f}x the cost of the first")
    prices = ", ".join(
        f"{n} {p.prompt_per_million:.4g}/{p.completion_per_million:.4g}"
        for n, p in zip(names, tier_prices(spec), strict=True)
    )
    print(f"the router charges per million prompt/completion tokens: {prices}\n")
    head = f"{'kept on ' + names[0]:>16}  {'upfront':>9}  {'cascade':>9}"
    print(f"{head}   (x cheaper than all-{names[-1]})")
    for kept in args.kept:
        shares = kept_small_shares(len(costs), kept)
        up, cas = reduction(costs, shares, "upfront"), reduction(costs, shares, "cascade")
        print(f"{kept:>15.0%}  {up:>8.2f}x  {cas:>8.2f}x")
