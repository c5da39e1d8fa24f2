"""`tierserve simulate`: replay a request trace through a queueing model of the tiers, with the
escalation threshold driven every interval by the same `tierserve.autoscale.policy.decide` the
operator runs, and compare it with a static threshold calibrated offline for the same average
escalation rate.

The model (cascade mode, non-streaming, as the router does it today):

- each tier is one FIFO queue in front of `replicas x slots` servers (a slot is one sequence of
  a continuously batched engine); a request's service time is prompt/prefill + output/decode;
- every request is answered by the small tier; when it finishes, its escalation score is compared
  with the threshold in force and, if above it, the request joins the top tier's queue;
- a top-tier call that takes longer than `timeout_seconds` (waiting included) fails: the router's
  default `fallback: nextTier` has nowhere to go from the top, so the user gets an error (counted
  as a wrong answer and an SLO violation); a timed-out request frees its slot at the timeout;
- a share `shadow_rate` of the answers kept on the small tier is also sent to the top tier
  (shadow evaluation): it loads the top tier's queue like any request and yields agreement;
- the policy sees what Prometheus would: the interval's escalation rate and request rate, the
  time-averaged top-tier queue per replica, the p95 top-tier time to first token of requests whose
  first token came in the interval, shadow agreement over the last 5 intervals, and the small
  tier's utilization.

Quality is the share of correct answers delivered; cost is `tierserve.cost.cascade_cost` per
request (plus the shadow calls at the top tier's price); an SLO violation is a delivered answer
whose first token came later than `slo_seconds` after arrival (or an error).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierserve import cost
from tierserve.autoscale.policy import PolicyMemory, PolicyParams, Signals, decide, parse_duration

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

ROUTELLM = Path(os.environ.get("TIERSERVE_ROUTELLM_DATA", "/work/shared/data/routellm"))
SETTLE_INTERVALS = 5  # the settling target: intervals after a change that are not steady state
SETTLE_TOLERANCE = 0.5  # settled = within this many maxSteps of where it ends up
AGREEMENT_WINDOW = 5  # intervals of shadow results behind each agreement figure
MIN_SHADOW_SAMPLES = 20
BUDGET_TOLERANCE = 0.02  # "within 2 percentage points of the budget"
WINDOW_SECONDS = 150.0  # the budget is also judged over windows this long (5 intervals of 30s)


def _sigmoid(x: Floats) -> Floats:
    out: Floats = 1.0 / (1.0 + np.exp(-x))
    return out


# -- traces ---------------------------------------------------------------------------------------


@dataclass
class Trace:
    """One row per request, sorted by arrival; `events` mark the step changes in it."""

    name: str
    description: str
    arrival: Floats  # seconds
    score: Floats  # escalation score: 1 - the small tier's confidence
    small_correct: Bools
    large_correct: Bools
    agree: Bools  # the top tier's answer matches the small tier's (what shadow evaluation sees)
    prompt_tokens: Floats
    small_tokens: Floats
    large_tokens: Floats
    events: list[tuple[float, str, bool]] = field(default_factory=list)  # (s, label, is a step)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def duration(self) -> float:
        return float(self.arrival[-1]) if len(self) else 0.0


def poisson_arrivals(
    rate: Callable[[Floats], Floats], seconds: int, rng: np.random.Generator
) -> Floats:
    """A non-homogeneous Poisson process, its rate constant within each second."""
    starts = np.arange(seconds, dtype=np.float64)
    counts = rng.poisson(rate(starts + 0.5))
    times = np.repeat(starts, counts) + rng.random(int(counts.sum()))
    times.sort()
    return times


def _step_profile(points: Sequence[tuple[float, float]]) -> Callable[[Floats], Floats]:
    """Piecewise-linear rate through (minute, req/s) points: a step is two points a second apart."""
    xs = np.array([p[0] * 60.0 for p in points])
    ys = np.array([p[1] for p in points])
    return lambda t: np.interp(t, xs, ys)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> Floats:
    out: Floats = np.clip(rng.lognormal(math.log(median), sigma, n), 8.0, 8192.0).round()
    return out


def synthetic(kind: str, seed: int = 0, minutes: int = 120, scale: float = 1.0) -> Trace:
    """Generated traces, seeded.

    A request has a latent difficulty d ~ N(shift, 1). The small tier is right with probability
    sigmoid(1.2 - 1.5d) (70% when shift = 0), the top tier with sigmoid(2.2 - 1.2d) (85%); both
    wrong agree one time in three. The escalation score is
    sigmoid(-1.5 + 0.6(d - overconfidence x shift) + 0.8[small wrong] + N(0, 1.1)): it knows a
    little about the difficulty and its own mistakes (AUROC ~0.80 for "small is wrong"), and on
    shifted traffic only half of the extra difficulty shows (models are overconfident off their
    training distribution).

    - load-swing: 20 req/s, a 10x step to 200 req/s at 1/3, a ramp back down from 2/3 to 5/6.
    - difficulty-shift: 100 req/s; harder traffic (shift 0.7) from 1/3 to 2/3 of the trace.

    `scale` multiplies the load (smaller traces for tests).
    """
    rng = np.random.default_rng(seed)
    m = float(minutes)
    a, b = m / 3, 2 * m / 3
    events: list[tuple[float, str, bool]]
    if kind in ("load-swing", "overload"):
        rate = _step_profile(
            [(0, 20), (a, 20), (a + 1 / 60, 200), (b, 200), (5 * m / 6, 20), (m, 20)]
        )
        events = [(a * 60, "load 20 -> 200 req/s", True), (b * 60, "ramp down to 20 req/s", False)]
        description = "10x load swing: 20 req/s, step to 200 req/s, ramp back down"
    elif kind == "difficulty-shift":
        rate = _step_profile([(0, 100), (m, 100)])
        events = [(a * 60, "harder traffic", True), (b * 60, "traffic back to normal", True)]
        description = (
            "difficulty shift: harder traffic (small tier 70% -> 53% right) in the middle third"
        )
    else:
        raise ValueError(f"unknown synthetic trace {kind!r}")
    arrival = poisson_arrivals(lambda t: scale * rate(t), int(m * 60), rng)
    n = len(arrival)
    shift = np.where((arrival >= a * 60) & (arrival < b * 60), 0.7, 0.0)
    if kind != "difficulty-shift":
        shift[:] = 0.0
    d = rng.normal(shift, 1.0)
    small = rng.random(n) < _sigmoid(1.2 - 1.5 * d)
    large = rng.random(n) < _sigmoid(2.2 - 1.2 * d)
    agree = (small & large) | (~small & ~large & (rng.random(n) < 1 / 3))
    perceived = d - 0.5 * shift
    score = _sigmoid(-1.5 + 0.6 * perceived + 0.8 * (~small) + rng.normal(0.0, 1.1, n))
    return Trace(
        name=kind,
        description=description,
        arrival=arrival,
        score=score,
        small_correct=small,
        large_correct=large,
        agree=agree,
        prompt_tokens=_lognormal(rng, 400, 0.7, n),
        small_tokens=_lognormal(rng, 150, 0.6, n),
        large_tokens=_lognormal(rng, 200, 0.6, n),
        events=events,
    )


def _read_mmlu(data: Path) -> tuple[list[str], list[str], Bools, Bools]:
    subjects, prompts, weak, strong = [], [], [], []
    for path in sorted((data / "mmlu" / "responses").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                subjects.append(subject)
                prompts.append(row[0])
                weak.append(row[1] == "True")
                strong.append(row[2] == "True")
    return subjects, prompts, np.array(weak), np.array(strong)


def mmlu(data: Path = ROUTELLM, seed: int = 0, minutes: int = 120, rate: float = 100.0) -> Trace:
    """RouteLLM's MMLU (Mixtral-8x7B weak, GPT-4 strong), replayed with a subject-mix shift.

    Arrivals are Poisson at `rate` req/s; each draws a prompt uniformly from all 14,042, except
    in the middle third, which draws only from the hardest third of subjects (by weak accuracy).

    The data has no confidences, so each prompt gets a fixed, seeded escalation score:
    sigmoid(-1.6 + 1.0[weak wrong] + 3(subject's weak error rate - mean) + N(0, 1.2)). The
    noise keeps it a modest signal of weak-model errors (AUROC 0.78 over the 14,042 prompts, in
    the range reported for token-probability confidence on MMLU-style questions), and the
    subject term (AUROC 0.72 alone) makes a harder mix raise scores, as real confidences do.
    Prompt tokens are characters / 4; output lengths are drawn (MMLU answers are one letter,
    chat answers are not). Both wrong agree one
    time in three (4 options). The contaminated-prompt list is irrelevant here (nothing is
    trained) and is not applied.
    """
    subjects, prompts, weak, strong = _read_mmlu(data)
    rng = np.random.default_rng(seed)
    n_prompts = len(prompts)
    names = sorted(set(subjects))
    subject_idx = np.array([names.index(s) for s in subjects])
    error = np.array([1.0 - weak[subject_idx == i].mean() for i in range(len(names))])
    hard = np.argsort(-error)[: len(names) // 3]
    hard_rows = np.flatnonzero(np.isin(subject_idx, hard))
    per_prompt_error = error[subject_idx]
    score = _sigmoid(
        -1.6
        + 1.0 * (~weak)
        + 3.0 * (per_prompt_error - per_prompt_error.mean())
        + rng.normal(0.0, 1.2, n_prompts)
    )
    agree = (weak & strong) | (~weak & ~strong & (rng.random(n_prompts) < 1 / 3))
    prompt_tokens = np.array([max(8.0, round(len(p) / 4)) for p in prompts])
    small_tokens = _lognormal(rng, 150, 0.6, n_prompts)
    large_tokens = _lognormal(rng, 200, 0.6, n_prompts)

    m = float(minutes)
    a, b = m * 20, m * 40  # seconds: the middle third
    arrival = poisson_arrivals(lambda t: np.full_like(t, rate), int(m * 60), rng)
    in_shift = (arrival >= a) & (arrival < b)
    rows = rng.integers(0, n_prompts, len(arrival))
    rows[in_shift] = hard_rows[rng.integers(0, len(hard_rows), int(in_shift.sum()))]
    hardest = ", ".join(names[i].replace("_", " ") for i in np.argsort(-error)[:3])
    return Trace(
        name="mmlu",
        description=(
            f"RouteLLM MMLU, {rate:g} req/s; middle third only the hardest {len(hard)} subjects "
            f"({hardest}, ...)"
        ),
        arrival=arrival,
        score=score[rows],
        small_correct=weak[rows],
        large_correct=strong[rows],
        agree=agree[rows],
        prompt_tokens=prompt_tokens[rows],
        small_tokens=small_tokens[rows],
        large_tokens=large_tokens[rows],
        events=[(a, "hardest subjects only", True), (b, "all subjects again", True)],
    )


def _bools(values: list[str]) -> Bools:
    return np.array([v.strip().lower() in ("1", "true", "yes") for v in values])


def read_trace(path: Path) -> Trace:
    """A CSV trace: arrival (s), score or confidence, small_correct, large_correct,
    prompt_tokens, small_tokens, large_tokens, and optionally agree (default: both correct)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    col = {k: [r[k] for r in rows] for k in rows[0]}
    if "score" in col:
        score = np.array(col["score"], dtype=float)
    elif "confidence" in col:
        score = 1.0 - np.array(col["confidence"], dtype=float)
    else:
        raise ValueError(f"{path}: needs a score or a confidence column")
    arrival = np.array(col["arrival"], dtype=float)
    order = np.argsort(arrival, kind="stable")
    small, large = _bools(col["small_correct"]), _bools(col["large_correct"])
    agree = _bools(col["agree"]) if "agree" in col else small & large
    return Trace(
        name=path.stem,
        description=f"replayed from {path}",
        arrival=arrival[order] - arrival[order][0],
        score=score[order],
        small_correct=small[order],
        large_correct=large[order],
        agree=agree[order],
        prompt_tokens=np.array(col["prompt_tokens"], dtype=float)[order],
        small_tokens=np.array(col["small_tokens"], dtype=float)[order],
        large_tokens=np.array(col["large_tokens"], dtype=float)[order],
    )


# -- the deployment -------------------------------------------------------------------------------


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


# -- the simulation -------------------------------------------------------------------------------


@dataclass
class Run:
    """Per interval (index k covers [k x interval, (k+1) x interval)) and per request outcomes."""

    label: str
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


def simulate(
    trace: Trace,
    setup: Setup,
    static: float | None = None,
    label: str = "",
    small: SmallTier | None = None,
) -> Run:
    """Replay `trace`; the threshold follows the policy, or stays at `static` when given."""
    p = setup.params
    interval = p.interval_seconds
    rng = np.random.default_rng(setup.seed + 1)
    shadow_draw = rng.random(len(trace)) < setup.shadow_rate
    st = small or small_tier(trace, setup)
    decided, order, bounds, edges, lower = st.decided, st.order, st.bounds, st.edges, st.lower_load
    n_intervals = len(edges) - 1
    large_service = setup.large.service(trace.prompt_tokens, trace.large_tokens)
    large_prefill = trace.prompt_tokens / setup.large.prefill_tps

    k_n = n_intervals
    run = Run(
        label=label or ("adaptive" if static is None else f"static {static:.3f}"),
        interval=interval,
        threshold=np.zeros(k_n),
        requests=np.zeros(k_n, dtype=np.int64),
        escalated=np.zeros(k_n, dtype=np.int64),
        queue=np.zeros(k_n),
        latency_p95=np.full(k_n, np.nan),
        throughput=np.zeros(k_n),
        agreement=np.full(k_n, np.nan),
        lower_load=lower,
        accuracy=np.full(k_n, np.nan),
        slo_violations=np.zeros(k_n, dtype=np.int64),
        timeouts=np.zeros(k_n, dtype=np.int64),
        shadows=np.zeros(k_n, dtype=np.int64),
        reasons=[],
        constraints=[],
        correct=np.zeros(len(trace), dtype=bool),
        escalated_mask=np.zeros(len(trace), dtype=bool),
    )
    free = [0.0] * setup.large.servers
    timeout = setup.timeout_seconds
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

    for k in range(k_n):
        lo_t, hi_t = edges[k], edges[k + 1]
        idx = order[bounds[k] : bounds[k + 1]]
        run.threshold[k] = threshold
        up = trace.score[idx] > threshold
        shadow = ~up & shadow_draw[idx]
        sent = idx[up | shadow]
        arrive = decided[sent]
        begin = np.empty(len(sent))
        ok = np.ones(len(sent), dtype=bool)
        for j, (at, svc) in enumerate(
            zip(arrive.tolist(), large_service[sent].tolist(), strict=True)
        ):
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
        signals = Signals(
            top_tier_queue=float(run.queue[k]),
            top_tier_latency=None if np.isnan(run.latency_p95[k]) else float(run.latency_p95[k]),
            escalation_rate=float(up.mean()) if len(idx) else None,
            request_rate=len(idx) / interval if len(idx) else None,
            top_tier_throughput=float(run.throughput[k]),
            top_tier_replicas=float(setup.large.replicas),
            lower_load=float(lower[k]),
            shadow_agreement=None if np.isnan(run.agreement[k]) else float(run.agreement[k]),
        )
        decision = decide(threshold, signals, p, memory)
        run.reasons.append(decision.reason)
        run.constraints.append(decision.constraint)
        threshold, memory = decision.threshold, decision.memory
    return run


def calibrate_static(trace: Trace, rate: float) -> float:
    """The fixed threshold that escalates a share `rate` of the whole trace (offline, in
    hindsight: the best a static threshold can be told)."""
    ranked = np.sort(trace.score)[::-1]
    k = min(max(round(rate * len(ranked)), 0), len(ranked) - 1)
    below = float(ranked[k])
    above = float(ranked[k - 1]) if k > 0 else 1.0
    return (below + above) / 2


def _event_intervals(
    trace: Trace, interval: float, n: int, steps_only: bool = False
) -> list[tuple[int, str]]:
    out = [(0, "start (from the spec's threshold)")]
    for t, label, step in trace.events:
        if t // interval < n and (step or not steps_only):
            out.append((int(t // interval), label))
    return out


def steady_mask(trace: Trace, interval: float, n: int) -> Bools:
    """Intervals not within SETTLE_INTERVALS after a step change (or the start)."""
    mask = np.ones(n, dtype=bool)
    for k, _ in _event_intervals(trace, interval, n, steps_only=True):
        mask[k : k + SETTLE_INTERVALS + 1] = False
    return mask


def _window(interval: float) -> int:
    return max(1, round(WINDOW_SECONDS / interval))


def _rolling(escalated: Floats | Ints, requests: Floats | Ints, width: int) -> Floats:
    kernel = np.ones(width)
    num = np.convolve(escalated, kernel)[: len(requests)]
    den = np.maximum(np.convolve(requests, kernel)[: len(requests)], 1)
    out: Floats = num / den
    return out


def safe_static(trace: Trace, setup: Setup, small: SmallTier) -> float:
    """The lowest fixed threshold (most escalation) that, in hindsight, keeps every steady
    window (WINDOW_SECONDS) within budget + 2 pp and meets the queue target in 99% of
    intervals."""
    p = setup.params
    n = len(small.edges) - 1
    counts = np.diff(small.bounds)
    interval_of = np.repeat(np.arange(n), counts)
    scores = trace.score[small.order]
    steady = steady_mask(trace, p.interval_seconds, n) & (counts > 0)

    def within_budget(t: float) -> bool:
        escalated = np.bincount(interval_of, weights=scores > t, minlength=n)
        windows = _rolling(escalated, counts, _window(p.interval_seconds))
        return bool(np.all(windows[steady] <= p.budget + BUDGET_TOLERANCE))

    def meets_queue(t: float) -> bool:
        run = simulate(trace, setup, static=t, small=small)
        return bool(np.mean(run.queue <= p.queue_target) >= 0.99)

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if within_budget(mid) else (mid, hi)
    if meets_queue(hi):
        return hi
    lo = hi
    hi = 1.0
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets_queue(mid) else (mid, hi)
    return hi


# -- figures --------------------------------------------------------------------------------------


def _normal_cdf(x: Floats) -> Floats:
    out: Floats = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return out


def summary(run: Run, setup: Setup) -> dict[str, float]:
    """Whole-trace figures of one run."""
    n = int(run.requests.sum())
    rate = float(run.escalated.sum() / n)
    shadow = float(run.shadows.sum() / n)
    per_request = cost.cascade_cost(setup.costs, [1 - rate, rate]) + shadow * setup.costs[-1]
    return {
        "threshold_mean": float(np.mean(run.threshold)),
        "accuracy": float(run.correct.mean()),
        "escalation_rate": rate,
        "cost_per_request": per_request,
        "x_cheaper_than_all_top": setup.costs[-1] / per_request,
        "slo_violation_rate": float(run.slo_violations.sum() / n),
        "timeouts": int(run.timeouts.sum()),
        "queue_target_met": float(np.mean(run.queue <= setup.params.queue_target)),
        "queue_p99": float(np.percentile(run.queue, 99)),
        "queue_max": float(run.queue.max()),
    }


def settling(run: Run, trace: Trace, setup: Setup) -> list[dict[str, Any]]:
    """After each step change: intervals until the threshold stays within half a maxStep of where
    it ends up, direction reversals on the way, and the fewest intervals maxStep allows."""
    p = setup.params
    n = len(run.threshold)
    events = _event_intervals(trace, run.interval, n, steps_only=True)
    out = []
    for i, (k, label) in enumerate(events):
        end = min(events[i + 1][0] if i + 1 < len(events) else n, k + 3 * SETTLE_INTERVALS, n)
        path = run.threshold[k : end + 1] if end < n else run.threshold[k:end]
        if len(path) < 4:
            continue
        final = float(np.median(path[-3:]))
        tol = SETTLE_TOLERANCE * p.max_step
        off = np.flatnonzero(np.abs(path - final) > tol)
        settle = int(off[-1]) + 1 if len(off) else 0
        steps = np.diff(path)
        signs = np.sign(steps[np.abs(steps) > 0.002])
        reversals = int(np.sum(signs[1:] != signs[:-1])) if len(signs) > 1 else 0
        needed = math.ceil(max(0.0, abs(final - float(path[0])) - tol) / p.max_step)
        out.append(
            {
                "event": label,
                "minute": k * run.interval / 60,
                "from": float(path[0]),
                "to": final,
                "settle_intervals": settle,
                "fewest_possible": needed,
                "reversals": reversals,
            }
        )
    return out


def budget_figures(run: Run, trace: Trace, setup: Setup, policy: bool = True) -> dict[str, float]:
    """Realized escalation vs the budget in steady state. For the policy, over the intervals
    where the budget (not the top tier's capacity) limited escalation: per interval and over
    trailing windows of WINDOW_SECONDS, each beside what perfect control would score there
    (the realized rate of a threshold exactly at the budget still has binomial noise)."""
    budget = setup.params.budget
    steady = steady_mask(trace, run.interval, len(run.threshold)) & (run.requests > 0)
    bound = steady.copy()
    if policy:
        bound &= np.array([c == "Budget" for c in run.constraints], dtype=bool)
    rate = run.rate
    width = _window(run.interval)
    rolling = _rolling(run.escalated, run.requests, width)
    sigma = np.sqrt(budget * (1 - budget) / np.maximum(run.requests, 1))
    ideal = 2 * _normal_cdf(BUDGET_TOLERANCE / sigma) - 1
    window_n = np.convolve(run.requests, np.ones(width))[: len(rate)]
    ideal_window = 2 * _normal_cdf(BUDGET_TOLERANCE / np.sqrt(budget * (1 - budget) / window_n)) - 1
    within = np.abs(rate - budget) <= BUDGET_TOLERANCE
    within_rolling = np.abs(rolling - budget) <= BUDGET_TOLERANCE
    # a window counts when every interval in it is steady and budget-bound
    whole = np.convolve(bound.astype(float), np.ones(width))[: len(rate)] >= width - 0.5

    def share(hits: Bools, where: Bools) -> float:
        return float(hits[where].mean()) if where.any() else math.nan

    over = (rate - budget)[steady] > BUDGET_TOLERANCE
    return {
        "steady_intervals": int(steady.sum()),
        "budget_bound_intervals": int(bound.sum()),
        "within_2pp": share(within, bound),
        "within_2pp_perfect_control": float(np.mean(ideal[bound])) if bound.any() else math.nan,
        "window_seconds": width * run.interval,
        "windows": int(whole.sum()),
        "within_2pp_window": share(within_rolling, whole),
        "within_2pp_window_perfect_control": (
            float(np.mean(ideal_window[whole])) if whole.any() else math.nan
        ),
        "mean_abs_error_pp": float(100 * np.abs(rate - budget)[bound].mean())
        if bound.any()
        else math.nan,
        "over_budget_2pp": float(over.mean()) if len(over) else 0.0,
    }


def _paired(a: Run, b: Run) -> tuple[float, float]:
    diff = a.correct.astype(float) - b.correct.astype(float)
    return float(100 * diff.mean()), float(100 * diff.std() / math.sqrt(len(diff)))


def compare(trace: Trace, setup: Setup, safe: bool = True) -> dict[str, Any]:
    """The adaptive policy against a static threshold calibrated offline for its average
    escalation rate, and (with `safe`) the best static threshold that respects budget and
    queue target throughout: both chosen in hindsight on the very trace, a generous baseline."""
    small = small_tier(trace, setup)
    adaptive = simulate(trace, setup, small=small)
    overall = float(adaptive.escalated.sum() / adaptive.requests.sum())
    fixed = calibrate_static(trace, overall)
    runs = {"adaptive": adaptive, "static": simulate(trace, setup, static=fixed, small=small)}
    thresholds = {"static": fixed}
    if safe:
        t_safe = safe_static(trace, setup, small)
        runs["safe"] = simulate(trace, setup, static=t_safe, small=small)
        thresholds["safe"] = t_safe
    figures: dict[str, Any] = {
        "scenario": trace.name,
        "description": trace.description,
        "requests": len(trace),
        "intervals": len(adaptive.threshold),
        "interval_seconds": setup.params.interval_seconds,
        "top_tier_replicas": setup.large.replicas,
        "small_replicas": setup.small.replicas,
        "settling": settling(adaptive, trace, setup),
    }
    for name, run in runs.items():
        figures[name] = {
            **summary(run, setup),
            "budget": budget_figures(run, trace, setup, policy=name == "adaptive"),
        }
        if name != "adaptive":
            gain, se = _paired(adaptive, run)
            figures[name] |= {
                "threshold": thresholds[name],
                "adaptive_accuracy_gain_pp": gain,
                "gain_se_pp": se,
            }
    return {
        "trace": trace,
        "setup": setup,
        "runs": runs,
        "thresholds": thresholds,
        "figures": figures,
    }


# -- scenarios ------------------------------------------------------------------------------------

SCENARIOS = ("load-swing", "difficulty-shift", "overload", "mmlu")


def scenario(
    name: str, params: PolicyParams, seed: int = 0, minutes: int = 120, data: Path = ROUTELLM
) -> tuple[Trace, Setup]:
    """A trace and the deployment it runs on.

    load-swing, difficulty-shift, mmlu: the top tier has room for the budget at peak (80% busy).
    overload: the load swing with a top tier sized for 60% of what the budget needs at peak, so
    capacity, not the budget, limits escalation at peak.
    """
    if name == "mmlu":
        trace = mmlu(data, seed=seed, minutes=minutes)
    elif name == "overload":
        trace = synthetic("load-swing", seed=seed, minutes=minutes)
        trace.name = "overload"
        trace.description = "10x load swing, top tier sized for 60% of the budget at peak"
    else:
        trace = synthetic(name, seed=seed, minutes=minutes)
    busy = 1.0 / 0.6 if name == "overload" else 0.8
    return trace, sized(trace, params, top_tier_busy=busy, seed=seed)


# -- output ---------------------------------------------------------------------------------------

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
) -> dict[str, Any]:
    """Simulate, print, and write a PNG and a per-interval CSV for each scenario."""
    out.mkdir(parents=True, exist_ok=True)
    collected = {}
    for name in names:
        if name == "mmlu" and not (data / "mmlu").is_dir():
            print(f"skipping mmlu: {data / 'mmlu'} not found", file=sys.stderr)
            continue
        trace, setup = scenario(name, params, seed=seed, minutes=minutes, data=data)
        collected[name + suffix] = _run_one(
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
        )
    (args.out / "figures.json").write_text(json.dumps(collected, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
