"""The deployment as queues: each tier is one FIFO queue in front of `replicas x slots` servers,
a request's service time is prompt/prefill + output/decode. The small tier's pass does not depend
on the threshold (every request starts there), so it is computed once per trace and setup."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tierserve.autoscale.policy import PolicyParams
from tierserve.tools.simulate.traces import Floats, Ints, Trace


@dataclass(frozen=True)
class TierModel:
    replicas: int
    slots: int = 16  # sequences a replica runs at once
    prefill_tps: float = 3000.0  # prompt tokens/s per sequence
    decode_tps: float = 35.0  # output tokens/s per sequence

    @property
    def servers(self) -> int:
        return self.replicas * self.slots

    def service(self, prompt: Floats, out: Floats) -> Floats:
        seconds: Floats = prompt / self.prefill_tps + out / self.decode_tps
        return seconds

    def capacity(self, trace: Trace, large: bool) -> float:
        """Requests/s this tier sustains on the trace's token mix."""
        out = trace.large_tokens if large else trace.small_tokens
        return self.servers / float(self.service(trace.prompt_tokens, out).mean())


SMALL = TierModel(replicas=1, slots=32, prefill_tps=8000.0, decode_tps=100.0)
LARGE = TierModel(replicas=1, slots=16, prefill_tps=3000.0, decode_tps=35.0)


@dataclass(frozen=True)
class Setup:
    """The deployment a trace is replayed against and the policy's parameters."""

    small: TierModel
    large: TierModel
    params: PolicyParams
    costs: tuple[float, float] = (1.0, 12.3)  # per-request cost ratio, as in `tierserve plan`
    slo_seconds: float = 10.0  # time to first token of the delivered answer
    timeout_seconds: float = 60.0  # routing.requestTimeoutSeconds
    shadow_rate: float = 0.02  # routing.shadow.sampleRate
    seed: int = 0


def sized(trace: Trace, params: PolicyParams, top_tier_busy: float = 0.8, **kw: Any) -> Setup:
    """Replicas for the trace's peak load: the small tier 70% busy, the top tier `top_tier_busy`
    busy if it took the budget (plus shadow traffic) at peak; above 1 it cannot."""
    peak = float(np.percentile(np.bincount(trace.arrival.astype(np.int64)), 99))
    shadow = kw.get("shadow_rate", Setup.shadow_rate)
    small_per = SMALL.capacity(trace, large=False)
    large_per = LARGE.capacity(trace, large=True)
    need = peak * (params.budget + shadow * (1 - params.budget))
    small = replace(SMALL, replicas=max(1, math.ceil(peak / (0.7 * small_per))))
    large = replace(LARGE, replicas=max(1, math.ceil(need / (top_tier_busy * large_per))))
    return Setup(small=small, large=large, params=params, **kw)


def _small_tier(trace: Trace, tier: TierModel) -> tuple[Floats, Floats]:
    """Start and finish of every request on the small tier (FIFO over all its slots)."""
    service = tier.service(trace.prompt_tokens, trace.small_tokens)
    free = [0.0] * tier.servers
    start = np.empty(len(trace))
    for i, (arrive, svc) in enumerate(zip(trace.arrival.tolist(), service.tolist(), strict=True)):
        begin = max(arrive, free[0])
        heapq.heapreplace(free, begin + svc)
        start[i] = begin
    return start, start + service


def _busy_seconds(start: Floats, end: Floats, edges: Floats) -> Floats:
    """Server-seconds busy inside each [edges[k], edges[k+1]): integral of the busy count."""
    s, e = np.sort(start), np.sort(end)
    cs, ce = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(e)])
    ns, ne = np.searchsorted(s, edges), np.searchsorted(e, edges)
    cumulative = (ns * edges - cs[ns]) - (ne * edges - ce[ne])
    out: Floats = np.diff(cumulative)
    return out


@dataclass(frozen=True)
class SmallTier:
    """The small tier's pass: it does not depend on the threshold (everyone starts there)."""

    decided: Floats  # when each request's escalation is decided (small tier done)
    order: Ints  # requests by decision time
    bounds: Ints  # order[bounds[k]:bounds[k+1]] are decided in interval k
    edges: Floats
    lower_load: Floats  # utilization per interval


def small_tier(trace: Trace, setup: Setup) -> SmallTier:
    interval = setup.params.interval_seconds
    start, decided = _small_tier(trace, setup.small)
    order = np.argsort(decided, kind="stable")
    n_intervals = max(1, math.ceil(trace.duration / interval))
    edges = (np.arange(n_intervals + 1) * interval).astype(np.float64)
    bounds = np.searchsorted(decided[order], edges)
    bounds[-1] = len(trace)  # the few decided after the last arrival count in the last interval
    lower = _busy_seconds(start, decided, edges) / (setup.small.servers * interval)
    return SmallTier(decided, order, bounds, edges, lower)
