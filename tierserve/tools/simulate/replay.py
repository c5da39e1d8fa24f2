"""The replay loop: interval by interval, requests the small tier finished are escalated or kept
at the threshold in force, the top tier's queue is played out, and the policy (the operator's
own `decide`) sees what Prometheus would and sets the next interval's threshold."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tierserve.autoscale.policy import Decision, PolicyMemory, PolicyParams, Signals, decide
from tierserve.tools.simulate.queueing import Setup, SmallTier, small_tier
from tierserve.tools.simulate.traces import Bools, Floats, Ints, Trace

AGREEMENT_WINDOW = 5  # intervals of shadow results behind each agreement figure
MIN_SHADOW_SAMPLES = 20
# The policy's signature: (current threshold, signals, params, memory) -> decision.
Policy = Callable[[float, Signals, PolicyParams, PolicyMemory | None], Decision]


@dataclass
class Run:
    """Per interval (index k covers [k x interval, (k+1) x interval)) and per request outcomes."""

    interval: float
    threshold: Floats  # in force during the interval
    requests: Ints
    escalated: Ints
    queue: Floats  # waiting top-tier requests per replica, time-averaged
    latency_p95: Floats  # top tier's p95 time to first token (NaN: none)
    throughput: Floats  # user requests/s the top tier completed
    agreement: Floats  # shadow agreement, last AGREEMENT_WINDOW intervals (NaN: too few)
    lower_load: Floats  # small tier's utilization
    accuracy: Floats
    slo_violations: Ints
    timeouts: Ints
    shadows: Ints
    reasons: list[str]
    constraints: list[str]
    correct: Bools  # per request, in trace order
    escalated_mask: Bools

    @property
    def rate(self) -> Floats:
        with np.errstate(invalid="ignore", divide="ignore"):
            out: Floats = self.escalated / self.requests
        return out


def _empty_run(interval: float, n_intervals: int, n_requests: int, lower_load: Floats) -> Run:
    k = n_intervals
    return Run(
        interval=interval,
        threshold=np.zeros(k),
        requests=np.zeros(k, dtype=np.int64),
        escalated=np.zeros(k, dtype=np.int64),
        queue=np.zeros(k),
        latency_p95=np.full(k, np.nan),
        throughput=np.zeros(k),
        agreement=np.full(k, np.nan),
        lower_load=lower_load,
        accuracy=np.full(k, np.nan),
        slo_violations=np.zeros(k, dtype=np.int64),
        timeouts=np.zeros(k, dtype=np.int64),
        shadows=np.zeros(k, dtype=np.int64),
        reasons=[],
        constraints=[],
        correct=np.zeros(n_requests, dtype=bool),
        escalated_mask=np.zeros(n_requests, dtype=bool),
    )


def _top_tier(
    arrive: Floats, service: Floats, free: list[float], timeout: float
) -> tuple[Floats, Bools]:
    """Plays requests (in arrival order) through the top tier's slots, `free` being when each
    slot frees up (a heap, updated in place): when each starts and whether it finishes before
    the router's timeout. A request that times out frees its slot at the timeout."""
    begin = np.empty(len(arrive))
    ok = np.ones(len(arrive), dtype=bool)
    for j, (at, svc) in enumerate(zip(arrive.tolist(), service.tolist(), strict=True)):
        start = max(at, free[0])
        if start - at >= timeout:  # gave up while waiting: no slot used
            ok[j], begin[j] = False, at + timeout
            continue
        if start - at + svc > timeout:  # cancelled mid-generation
            ok[j] = False
            heapq.heapreplace(free, at + timeout)
        else:
            heapq.heapreplace(free, start + svc)
        begin[j] = start
    return begin, ok


def _signals(run: Run, k: int, up: Bools, replicas: int) -> Signals:
    """What Prometheus would have shown the operator for interval `k`."""
    n = len(up)
    return Signals(
        top_tier_queue=float(run.queue[k]),
        top_tier_latency=None if np.isnan(run.latency_p95[k]) else float(run.latency_p95[k]),
        escalation_rate=float(up.mean()) if n else None,
        request_rate=n / run.interval if n else None,
        top_tier_throughput=float(run.throughput[k]),
        top_tier_replicas=float(replicas),
        lower_load=float(run.lower_load[k]),
        shadow_agreement=None if np.isnan(run.agreement[k]) else float(run.agreement[k]),
    )


def simulate(
    trace: Trace,
    setup: Setup,
    static: float | None = None,
    small: SmallTier | None = None,
    policy: Policy = decide,
) -> Run:
    """Replay `trace`; the threshold follows `policy` (the operator's), or stays at `static`."""
    p = setup.params
    interval = p.interval_seconds
    rng = np.random.default_rng(setup.seed + 1)
    shadow_draw = rng.random(len(trace)) < setup.shadow_rate
    st = small or small_tier(trace, setup)
    decided, order, bounds, edges = st.decided, st.order, st.bounds, st.edges
    large_service = setup.large.service(trace.prompt_tokens, trace.large_tokens)
    large_prefill = trace.prompt_tokens / setup.large.prefill_tps

    run = _empty_run(interval, len(edges) - 1, len(trace), st.lower_load)
    free = [0.0] * setup.large.servers
    waiting_from: Floats = np.empty(0)  # top-tier waits still open at the interval's start
    waiting_to: Floats = np.empty(0)
    first_token: Floats = np.empty(0)  # user escalations whose first token is yet to be counted
    completion: Floats = np.empty(0)  # user escalations still to complete
    ttft: Floats = np.empty(0)
    shadow_done: Floats = np.empty(0)
    shadow_agree: Bools = np.empty(0, dtype=bool)
    window: deque[tuple[int, int]] = deque(maxlen=AGREEMENT_WINDOW)
    threshold = p.spec_threshold if static is None else static
    memory = PolicyMemory()

    for k in range(len(edges) - 1):
        lo_t, hi_t = edges[k], edges[k + 1]
        idx = order[bounds[k] : bounds[k + 1]]
        run.threshold[k] = threshold
        up = trace.score[idx] > threshold
        shadow = ~up & shadow_draw[idx]
        sent = idx[up | shadow]
        arrive = decided[sent]
        begin, ok = _top_tier(arrive, large_service[sent], free, setup.timeout_seconds)
        is_user = up[up | shadow]

        # the queue: waits overlapping this interval, time-averaged, per replica
        waiting_from = np.concatenate([waiting_from, arrive])
        waiting_to = np.concatenate([waiting_to, begin])
        overlap = np.clip(np.minimum(waiting_to, hi_t) - np.maximum(waiting_from, lo_t), 0, None)
        run.queue[k] = overlap.sum() / interval / setup.large.replicas
        still = waiting_to > hi_t
        waiting_from, waiting_to = waiting_from[still], waiting_to[still]

        # p95 time to first token of user escalations whose first token came in this interval
        served = ok & is_user
        first_token = np.concatenate([first_token, begin[served] + large_prefill[sent[served]]])
        ttft = np.concatenate([ttft, begin[served] + large_prefill[sent[served]] - arrive[served]])
        now = first_token < hi_t
        if now.any():
            run.latency_p95[k] = float(np.percentile(ttft[now], 95))
        first_token, ttft = first_token[~now], ttft[~now]
        completion = np.concatenate([completion, begin[served] + large_service[sent[served]]])
        now = completion < hi_t
        run.throughput[k] = now.sum() / interval
        completion = completion[~now]

        # shadow agreement from comparisons that completed in the last few intervals
        done_shadow = ok & ~is_user
        shadow_done = np.concatenate(
            [shadow_done, begin[done_shadow] + large_service[sent[done_shadow]]]
        )
        shadow_agree = np.concatenate([shadow_agree, trace.agree[sent[done_shadow]]])
        now = shadow_done < hi_t
        window.append((int(now.sum()), int(shadow_agree[now].sum())))
        shadow_done, shadow_agree = shadow_done[~now], shadow_agree[~now]
        samples = sum(c for c, _ in window)
        if samples >= MIN_SHADOW_SAMPLES:
            run.agreement[k] = sum(a for _, a in window) / samples

        # what the users got
        user_sent, user_ok = sent[is_user], ok[is_user]
        user_begin = begin[is_user]
        run.escalated_mask[user_sent] = True
        correct = trace.small_correct[idx].copy()
        latency = decided[idx] - trace.arrival[idx]
        pos = np.flatnonzero(up)
        correct[pos] = trace.large_correct[user_sent] & user_ok
        latency[pos] = np.where(
            user_ok, user_begin + large_prefill[user_sent] - trace.arrival[user_sent], np.inf
        )
        run.correct[idx] = correct
        run.requests[k], run.escalated[k] = len(idx), int(up.sum())
        run.shadows[k] = int(shadow.sum())
        run.timeouts[k] = int((~user_ok).sum())
        run.slo_violations[k] = int((latency > setup.slo_seconds).sum())
        if len(idx):
            run.accuracy[k] = float(correct.mean())

        if static is not None:
            run.reasons.append("static")
            run.constraints.append("Static")
            continue
        decision = policy(threshold, _signals(run, k, up, setup.large.replicas), p, memory)
        run.reasons.append(decision.reason)
        run.constraints.append(decision.constraint)
        threshold, memory = decision.threshold, decision.memory
    return run
