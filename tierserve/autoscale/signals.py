"""The threshold autoscaler's signals, read from Prometheus's HTTP API.

The PromQL is built by pure functions (tested on their own); `read_signals` is the thin I/O.
Every query is bounded by a timeout, and a query that fails, returns nothing, returns garbage
(NaN, Inf) or only stale samples yields None for that signal: the policy treats a missing signal
as missing, never as zero.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx

from tierserve.api.v1alpha1 import QUALITY_WINDOW, ModelTier
from tierserve.autoscale.policy import Signals, parse_duration

ROUTER = "ray_tierserve_"
VLLM = "ray_vllm_"
STALE_SECONDS = 120.0
# Ray's exporter publishes a replica's counters about every 10 s. A rate over a shorter window
# than a few of those updates is mostly 0/0 (no change seen), so rates (and the histogram
# behind the latency) use at least this window; the queue gauge keeps the interval's.
MIN_RATE_WINDOW_S = 30.0


def _sel(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def rate_window(interval: str) -> str:
    return f"{max(parse_duration(interval), MIN_RATE_WINDOW_S):g}s"


def queries(model_tier: str, top_tier: str, top_model_id: str, interval: str) -> dict[str, str]:
    """signal name -> PromQL. `interval` is the autoscale interval (e.g. 30s)."""
    window = rate_window(interval)
    mt = _sel(modeltier=model_tier)
    top = _sel(modeltier=model_tier, tier=top_tier)
    engine = _sel(model_name=top_model_id)
    requests = f"sum(rate({ROUTER}requests_total{mt}[{window}]))"
    on_top = f"sum(rate({ROUTER}requests_total{top}[{window}]))"
    agreed = _sel(modeltier=model_tier, agreed="true")
    shadow = f"sum(rate({ROUTER}shadow_evaluations_total{mt}[{window}]))"
    return {
        "request_rate": requests,
        "escalation_rate": f"{on_top} / {requests}",
        "top_tier_throughput": on_top,
        "top_tier_queue": f"avg(avg_over_time({VLLM}num_requests_waiting{engine}[{interval}]))",
        "top_tier_replicas": f"count({VLLM}num_requests_waiting{engine})",
        "top_tier_latency": (
            "histogram_quantile(0.95, sum by (le) "
            f"(rate({VLLM}time_to_first_token_seconds_bucket{engine}[{window}])))"
        ),
        "shadow_agreement": (
            f"sum(rate({ROUTER}shadow_evaluations_total{agreed}[{window}])) / {shadow}"
        ),
    }


def quality_queries(model_tier: str, tiers: list[str], window: str) -> dict[str, str]:
    """`<tier>/agreed` and `<tier>/judged` -> PromQL: shadow verdicts over `window`."""
    out = {}
    for tier in tiers:
        judged = _sel(modeltier=model_tier, tier=tier)
        agreed = _sel(modeltier=model_tier, tier=tier, agreed="true")
        out[f"{tier}/judged"] = f"sum(increase({ROUTER}shadow_evaluations_total{judged}[{window}]))"
        out[f"{tier}/agreed"] = f"sum(increase({ROUTER}shadow_evaluations_total{agreed}[{window}]))"
    return out


@dataclass(frozen=True)
class Reading:
    signals: Signals
    error: str  # why nothing could be read (empty when Prometheus answered)
    quality: dict[str, tuple[float, float]] = field(
        default_factory=dict
    )  # tier -> (agreed, judged)


def parse_value(body: object, now: float) -> float | None:
    """The single value of an instant-query answer, or None if missing, garbage or stale."""
    if not isinstance(body, dict) or body.get("status") != "success":
        return None
    result = (body.get("data") or {}).get("result")
    if not isinstance(result, list) or len(result) != 1:
        return None
    try:
        stamp, raw = result[0]["value"]
        value = float(raw)
        if now - float(stamp) > STALE_SECONDS or not math.isfinite(value):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return value


async def read_signals(
    client: httpx.AsyncClient,
    prometheus_url: str,
    promql: dict[str, str],
    timeout: float = 5.0,
    quality: dict[str, str] | None = None,
) -> Reading:
    """Every query at once, so a slow or hung Prometheus costs one timeout per interval, not one
    per signal (the policy counts a missing interval as `interval` towards the grace period)."""
    url = prometheus_url.rstrip("/") + "/api/v1/query"

    async def one(query: str) -> tuple[float | None, str]:
        try:
            r = await client.get(url, params={"query": query}, timeout=timeout)
        except httpx.HTTPError as exc:
            why = f"Prometheus at {prometheus_url} is unreachable: {type(exc).__name__}: {exc}"
            return None, why
        try:
            body = r.json() if r.status_code == 200 else None
        except ValueError:
            body = None
        return parse_value(body, time.time()), ""

    quality = quality or {}
    asked = {**promql, **quality}
    answers = await asyncio.gather(*(one(q) for q in asked.values()))
    values = {name: value for name, (value, _) in zip(asked, answers, strict=True)}
    errors = [why for _, why in answers]
    error = "" if any(not why for why in errors) else errors[-1] if errors else ""
    verdicts: dict[str, tuple[float, float]] = {}
    for key in quality:
        tier, _, kind = key.rpartition("/")
        if kind == "judged" and values.get(key) is not None:
            verdicts[tier] = (values.get(f"{tier}/agreed") or 0.0, float(values[key] or 0.0))
    return Reading(Signals(**{k: v for k, v in values.items() if k in promql}), error, verdicts)


async def read_modeltier(mt: ModelTier, timeout: float = 5.0) -> Reading:
    """This ModelTier's signals from the Prometheus its `autoscale` names (which must be set)."""
    auto = mt.spec.routing.escalation.autoscale
    if auto is None:
        raise ValueError("escalation.autoscale is not set: there are no signals to read")
    top = mt.spec.tiers[-1]
    name = mt.metadata["name"]
    promql = queries(name, top.name, top.model.id or top.name, auto.interval)
    quality = None
    if mt.spec.routing.shadow.sample_rate > 0:
        lower = [t.name for t in mt.spec.tiers[:-1]]
        quality = quality_queries(name, lower, QUALITY_WINDOW)
    async with httpx.AsyncClient() as client:
        return await read_signals(client, auto.prometheus_url, promql, timeout, quality)
