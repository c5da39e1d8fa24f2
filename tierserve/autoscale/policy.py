"""The escalation-threshold policy: a pure function from measured signals to the next threshold.

The operator calls `decide` once per `autoscale.interval` and `tierserve simulate` calls the same
code against a queueing model, so what the simulator shows is what the operator does.

How it decides. Each constraint proposes a threshold step (positive = raise = fewer escalations):

- top-tier queue and latency: back off when over target (with a remembered capacity, to what
  the top tier completes less enough to drain the excess in DRAIN_INTERVALS), hold inside a band
  just under the target, no objection below it;
- top-tier capacity: the throughput the top tier managed while its queue overflowed, per
  replica, becomes a rate ceiling at the current load and replica count, so the next load step
  backs off before the queue grows, and the end of a peak brings escalation straight back;
- budget: a Newton step of the realized rate towards `maxEscalationRate`, using a learned slope
  of rate against threshold; inside a deadband (the tolerance, widened to the sampling noise of
  the requests measured, which shrinks as evidence pools while the threshold holds) it holds;
- quality (only with an agreement target): above the target the small tier is good enough, so
  escalations buy little: escalate less; below it (quality dropping), no objection.

The largest proposal wins: the tightest constraint sets the threshold, so the policy escalates
as much as budget and capacity allow and backs off the moment either is exceeded. The step is
capped at `maxStep` and the result clamped to `bounds`. The decision is monotone in every signal
(more queue, latency, escalation or agreement never lowers the threshold). Everything learned
(pooled rate evidence, slope, capacity) lives in `PolicyMemory`, which the caller passes back
each interval: no clocks, no randomness, the same inputs always give the same decision.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tierserve.api.v1alpha1 import Autoscale, Escalation

GAIN = 0.7  # under-relaxed Newton step: tolerates a slope estimate 30% too low without overshoot
NOISE_Z = 2.0  # deadbands widen to this many standard errors of the measured rate
RESET_Z = 3.5  # an interval this many standard errors off the pooled rate restarts the pool
SLOPE_PRIOR = 1.0  # |d rate / d threshold| before anything is learned (scores spread over [0, 1])
SLOPE_MIN, SLOPE_MAX = 0.1, 20.0
MIN_SECANT_MOVE = 0.02  # smaller moves are dominated by sampling noise: don't learn a slope
SLOPE_UP, SLOPE_DOWN = 2.0, 1.25  # one secant raises / lowers the slope by at most this factor
POOL_INTERVALS = 20  # rate evidence pooled at one threshold is capped at this many intervals
CARRY = 0.5  # share of the pooled evidence carried across a move (less for bigger moves)
MIN_MOVE = 0.001  # steps smaller than this are not worth a reconfigure
CAPACITY_MARGIN = 0.05  # run the top tier this far under the throughput where its queue overflowed
DRAIN_INTERVALS = 2  # an overflowing queue is drained back to target over this many intervals
PROBE_AFTER = 20  # calm intervals at the capacity ceiling before trying a little more
PROBE_STEP = 0.01
LATENCY_HOLD_FRACTION = 0.8
AGREEMENT_BAND = 0.01
QUALITY_STEP_FRACTION = 0.25  # escalating less for quality's sake is never urgent
LOWER_OVERLOAD = 1.1  # lower tiers' load (1 = their autoscaling target) that counts as overloaded

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in an API duration such as `30s`, `1m30s` or `500ms`."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class Signals:
    """What the operator measured over the last interval; any of them may be missing (None)."""

    top_tier_queue: float | None = None  # waiting requests per top-tier replica (interval mean)
    top_tier_latency: float | None = None  # top tier's p95 time to first token, seconds
    escalation_rate: float | None = None  # share of requests sent to the top tier
    request_rate: float | None = None  # requests/s the escalation rate was measured over
    top_tier_throughput: float | None = None  # requests/s the top tier completed (not shadow)
    top_tier_replicas: float | None = None  # top-tier replicas (keeps learned capacity per replica)
    lower_load: float | None = None  # lower tiers' load, 1.0 = at their autoscaling target
    shadow_agreement: float | None = None  # share of sampled lower-tier answers the top agrees with

    def available(self) -> bool:
        """Enough to steer by: the rate, or something that says the top tier is struggling."""
        return any(
            v is not None
            for v in (self.escalation_rate, self.top_tier_queue, self.top_tier_latency)
        )

    def as_status(self) -> dict[str, float]:
        """The inputs used, for `status.escalation.signals` (camelCase, missing ones left out)."""
        out: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                head, *rest = f.name.split("_")
                out[head + "".join(w.capitalize() for w in rest)] = round(float(value), 6)
        return out


# The API's defaults, read off the models so each default is written once: an Escalation that
# sets nothing, and an Autoscale that sets nothing (built without validation, as its Prometheus
# URL is required and irrelevant here).
_ESCALATION = Escalation()
_AUTOSCALE = Autoscale.model_construct()


@dataclass(frozen=True)
class PolicyParams:
    """The spec's escalation settings (`spec.routing.escalation` and its `autoscale`).

    The defaults are the API's, so a bare `PolicyParams()` behaves like a spec that sets
    nothing but the Prometheus URL."""

    spec_threshold: float = _ESCALATION.threshold
    min_threshold: float = _ESCALATION.bounds.min
    max_threshold: float = _ESCALATION.bounds.max
    budget: float = _AUTOSCALE.max_escalation_rate
    queue_target: float = _AUTOSCALE.top_tier_queue_target
    max_step: float = _AUTOSCALE.max_step
    interval_seconds: float = parse_duration(_AUTOSCALE.interval)
    latency_target: float | None = _AUTOSCALE.top_tier_latency_target  # p95 TTFT, s; None: off
    agreement_target: float | None = _AUTOSCALE.agreement_target  # None: spend the budget
    rate_tolerance: float = _AUTOSCALE.rate_tolerance  # deadband around the budget (a share)
    grace_seconds: float = parse_duration(_AUTOSCALE.signal_grace_period)  # then back to spec
    queue_hold_fraction: float = 0.5  # queue in (fraction x target, target] holds (not in API)
    offloads_lower: bool = False  # upfront/hybrid: escalated requests skip the lower tiers

    @classmethod
    def from_spec(cls, escalation: Escalation, mode: str = "cascade") -> PolicyParams:
        """Parameters from `spec.routing.escalation` (autoscale must be set)."""
        auto = escalation.autoscale
        if auto is None:
            raise ValueError("escalation.autoscale is not set: the threshold is static")
        return cls(
            spec_threshold=escalation.threshold,
            min_threshold=escalation.bounds.min,
            max_threshold=escalation.bounds.max,
            budget=auto.max_escalation_rate,
            queue_target=auto.top_tier_queue_target,
            max_step=auto.max_step,
            interval_seconds=parse_duration(auto.interval),
            latency_target=auto.top_tier_latency_target,
            agreement_target=auto.agreement_target,
            rate_tolerance=auto.rate_tolerance,
            grace_seconds=parse_duration(auto.signal_grace_period),
            offloads_lower=mode in ("upfront", "hybrid"),
        )


@dataclass(frozen=True)
class PolicyMemory:
    """What the policy learned so far. Losing it (operator restart) only costs some settling."""

    pool_threshold: float | None = None  # threshold the pooled rate evidence was gathered at
    pool_requests: float = 0.0
    pool_escalated: float = 0.0
    slope: float = SLOPE_PRIOR  # |d rate / d threshold| near the operating point
    prev_threshold: float | None = None  # (threshold, rate) just left, for the slope secant
    prev_rate: float | None = None
    prev_requests: float | None = None  # requests behind prev_rate
    capacity: float | None = None  # requests/s a top-tier replica completes when saturated
    calm_intervals: int = 0  # intervals since the queue last overflowed
    prev_queue: float | None = None  # last interval's queue (is it growing?)
    unavailable_seconds: float = 0.0  # how long signals have been missing

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyMemory:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class Decision:
    threshold: float  # apply this now
    desired: float  # where the policy is heading (before maxStep)
    reason: str  # one line for status and Events
    constraint: str  # what set it, CamelCase (an Event reason)
    memory: PolicyMemory  # pass back next interval


@dataclass(frozen=True)
class _Proposal:
    step: float  # -inf: no objection to any descent
    constraint: str
    reason: str


_FREE = -math.inf


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}".rstrip("0").rstrip(".") + "%"


def _num(x: float) -> str:
    return f"{x:.3g}"


def _variance(rate: float) -> float:
    p = _clamp(rate, 0.01, 0.99)
    return p * (1 - p)


def _pooled_rate(
    current: float, s: Signals, p: PolicyParams, m: PolicyMemory
) -> tuple[float | None, float | None, PolicyMemory]:
    """The escalation rate at `current`, pooled over the intervals spent there.

    Evidence accumulates while the threshold holds, so the deadband narrows as the estimate firms
    up; an interval that disagrees with the pool beyond noise restarts it (a real shift). After a
    move, part of the old evidence carries over, shifted along the learned slope: one noisy
    interval after a small correction must not trigger the next.
    """
    r = s.escalation_rate
    if r is None:
        return None, None, replace(m, pool_threshold=None, pool_requests=0.0, pool_escalated=0.0)
    n = s.request_rate * p.interval_seconds if s.request_rate else None
    if not n or n <= 0:
        return r, None, replace(m, pool_threshold=None, pool_requests=0.0, pool_escalated=0.0)
    if m.pool_threshold is not None and m.pool_threshold != current and m.pool_requests > 0:
        moved = current - m.pool_threshold
        carry = CARRY * max(0.0, 1 - abs(moved) / (2 * p.max_step)) if p.max_step > 0 else 0.0
        expected = _clamp(m.pool_escalated / m.pool_requests - m.slope * moved, 0.0, 1.0)
        carried = m.pool_requests * carry
        m = replace(
            m, pool_threshold=current, pool_requests=carried, pool_escalated=expected * carried
        )
    if m.pool_threshold == current and m.pool_requests > 0:
        pooled = m.pool_escalated / m.pool_requests
        noise = RESET_Z * math.sqrt(_variance(p.budget) * (1 / n + 1 / m.pool_requests))
        if abs(r - pooled) <= noise:
            keep = min(1.0, (POOL_INTERVALS - 1) * n / m.pool_requests)
            total, escalated = m.pool_requests * keep + n, m.pool_escalated * keep + r * n
            pool = replace(m, pool_requests=total, pool_escalated=escalated)
            return escalated / total, total, pool
    return r, n, replace(m, pool_threshold=current, pool_requests=n, pool_escalated=r * n)


def _learn_slope(
    current: float, rate: float | None, n: float | None, p: PolicyParams, m: PolicyMemory
) -> PolicyMemory:
    """Secant of rate against threshold between the threshold just left and this one.

    Learned only when the move should change the rate by well over the sampling noise of the two
    measurements, and by a bounded factor at a time, down more slowly than up: a slope taken too
    low makes the next step overshoot, one taken too high only makes it slower."""
    if m.prev_threshold is None or m.prev_rate is None or rate is None:
        return m
    moved = current - m.prev_threshold
    out = replace(m, prev_threshold=None, prev_rate=None, prev_requests=None)
    if abs(moved) < MIN_SECANT_MOVE:
        return out
    if n and m.prev_requests:
        noise = math.sqrt(_variance(p.budget) * (1 / n + 1 / m.prev_requests))
        if m.slope * abs(moved) < NOISE_Z * noise:
            return out
    observed = (m.prev_rate - rate) / moved
    if observed <= 0:  # the mix shifted under us: no information about the slope
        return out
    observed = _clamp(
        observed, max(SLOPE_MIN, m.slope / SLOPE_DOWN), min(SLOPE_MAX, m.slope * SLOPE_UP)
    )
    return replace(out, slope=math.sqrt(m.slope * observed))


def _hold_band(value: float, target: float, hold_fraction: float) -> str:
    if value > target:
        return "over"
    return "near" if value > target * hold_fraction else "under"


def _queue(
    s: Signals, p: PolicyParams, slope: float, capacity: float | None, replicas: float
) -> _Proposal:
    """Over target: cut escalations to what the top tier completed when saturated before (the
    remembered capacity), less enough to drain the excess over DRAIN_INTERVALS; with no capacity
    remembered yet, cut in proportion to the excess."""
    q, target = s.top_tier_queue, p.queue_target
    if q is None:
        return _Proposal(_FREE, "TopTierQueue", "")
    band = _hold_band(q, target, p.queue_hold_fraction)
    if band == "under":
        return _Proposal(_FREE, "TopTierQueue", "")
    if band == "near":
        return _Proposal(
            0.0, "TopTierQueue", f"top-tier queue {q:.1f} near target {_num(target)}: holding"
        )
    reason = f"top-tier queue {q:.1f} > target {_num(target)}: backing off"
    r, load = s.escalation_rate, s.request_rate
    cut = min(0.5, (q - target) / (q + target))
    if r is None:
        return _Proposal(p.max_step * min(1.0, 2 * cut), "TopTierQueue", reason)
    if capacity is None or not load:
        return _Proposal(GAIN * r * cut / slope, "TopTierQueue", reason)
    drain = (q - target) * replicas / (DRAIN_INTERVALS * p.interval_seconds)
    wanted = max(0.0, capacity * replicas * (1 - CAPACITY_MARGIN) - drain) / load
    if r <= wanted:
        reason = f"top-tier queue {q:.1f} > target {_num(target)}, draining: holding"
        return _Proposal(0.0, "TopTierQueue", reason)
    return _Proposal(GAIN * (r - wanted) / slope, "TopTierQueue", reason)


def _latency(s: Signals, p: PolicyParams, slope: float) -> _Proposal:
    lat, target = s.top_tier_latency, p.latency_target
    if lat is None or target is None:
        return _Proposal(_FREE, "TopTierLatency", "")
    band = _hold_band(lat, target, LATENCY_HOLD_FRACTION)
    if band == "under":
        return _Proposal(_FREE, "TopTierLatency", "")
    if band == "near":
        reason = f"top-tier p95 latency {lat:.2f}s near target {_num(target)}s: holding"
        return _Proposal(0.0, "TopTierLatency", reason)
    cut = min(0.5, (lat - target) / (lat + target))
    step = (
        GAIN * s.escalation_rate * cut / slope
        if s.escalation_rate is not None
        else p.max_step * min(1.0, 2 * cut)
    )
    reason = f"top-tier p95 latency {lat:.2f}s > target {_num(target)}s: backing off"
    return _Proposal(step, "TopTierLatency", reason)


def _replicas(s: Signals) -> float:
    return s.top_tier_replicas if s.top_tier_replicas and s.top_tier_replicas > 0 else 1.0


def _capacity_sample(s: Signals, m: PolicyMemory) -> float | None:
    """Per replica, what the top tier completed while its queue overflowed: its capacity.

    Without a throughput signal: the arrival rate while the queue was still growing (above the
    capacity, by an amount we can't see)."""
    if s.top_tier_throughput is not None:
        return s.top_tier_throughput / _replicas(s)
    growing = m.prev_queue is None or (s.top_tier_queue or 0.0) > m.prev_queue
    if s.escalation_rate is None or not s.request_rate or not growing:
        return None
    return s.escalation_rate * s.request_rate / _replicas(s)


def _capacity(
    s: Signals, p: PolicyParams, m: PolicyMemory, slope: float
) -> tuple[_Proposal, float | None]:
    """A rate ceiling from the throughput the top tier managed when its queue overflowed.

    Uses the lower of the remembered capacity and this interval's (so the decision stays
    monotone in the queue); returns the proposal and the capacity to remember: a running mean
    of the throughput over this overflow episode (one interval's completions are noisy, and the
    first interval, only partly saturated, errs low: the safe side). The ceiling is one-sided:
    the policy holds just under it, never just over it."""
    overflow = s.top_tier_queue is not None and s.top_tier_queue > p.queue_target
    sample = _capacity_sample(s, m) if overflow else None
    used, learned = m.capacity, m.capacity
    if sample is not None:
        used = sample if used is None else min(used, sample)
        episode = m.prev_queue is not None and m.prev_queue > p.queue_target
        learned = (sample + m.capacity) / 2 if episode and m.capacity is not None else sample
    r, load = s.escalation_rate, s.request_rate
    if used is None or r is None or not load or load <= 0:
        return _Proposal(_FREE, "TopTierCapacity", ""), learned
    replicas = _replicas(s)
    ceiling = used * replicas * (1 - CAPACITY_MARGIN) / load
    n = load * p.interval_seconds
    band = p.rate_tolerance + NOISE_Z * math.sqrt(_variance(ceiling) / n)
    err = r - ceiling
    sustained = f"~{used * replicas:.3g} req/s"
    if -band <= err <= 0:
        reason = f"top tier near capacity ({sustained}): holding at {_pct(r)} escalation"
        return _Proposal(0.0, "TopTierCapacity", reason), learned
    if err > 0:
        reason = (
            f"top tier completes {sustained}, less than {_pct(r)} of {load:.3g} req/s: backing off"
        )
    else:
        reason = f"top tier has room up to {_pct(ceiling)} escalation: escalating more"
    return _Proposal(GAIN * err / slope, "TopTierCapacity", reason), learned


def _budget(rate: float | None, n: float | None, p: PolicyParams, slope: float) -> _Proposal:
    if rate is None:
        return _Proposal(_FREE, "Budget", "")
    band = p.rate_tolerance
    if n:
        band = max(band, NOISE_Z * math.sqrt(_variance(p.budget) / n))
    err = rate - p.budget
    if abs(err) <= band + 1e-12:  # float noise at the edge counts as inside
        reason = f"escalation {_pct(rate)} within {_pct(band)} of budget {_pct(p.budget)}: holding"
        return _Proposal(0.0, "Budget", reason)
    if err > 0:
        reason = f"escalation {_pct(rate)} > budget {_pct(p.budget)}: backing off"
    else:
        reason = f"escalation {_pct(rate)} < budget {_pct(p.budget)}: escalating more"
    return _Proposal(GAIN * err / slope, "Budget", reason)


def _quality(s: Signals, p: PolicyParams) -> _Proposal:
    """With an agreement target: stop buying escalations once the small tier is good enough."""
    a, target = s.shadow_agreement, p.agreement_target
    if a is None or target is None:
        return _Proposal(_FREE, "Quality", "")
    if p.offloads_lower and s.lower_load is not None and s.lower_load > LOWER_OVERLOAD:
        return _Proposal(_FREE, "Quality", "")  # lower tiers need the relief more
    if a > target + AGREEMENT_BAND:
        reason = f"shadow agreement {_pct(a)} > target {_pct(target)}: small tier good enough"
        return _Proposal(QUALITY_STEP_FRACTION * p.max_step, "Quality", reason)
    if a >= target - AGREEMENT_BAND:
        reason = f"shadow agreement {_pct(a)} at target {_pct(target)}: holding"
        return _Proposal(0.0, "Quality", reason)
    return _Proposal(_FREE, "Quality", "")


def _remember_capacity(
    s: Signals, p: PolicyParams, m: PolicyMemory, learned: float | None
) -> PolicyMemory:
    """Keep the capacity measured in overflow; raise it when the top tier visibly did more
    without queueing, or a little after calm intervals at the ceiling (Serve may have scaled)."""
    q = s.top_tier_queue
    m = replace(m, prev_queue=q)
    if q is not None and q > p.queue_target:
        return replace(m, capacity=learned, calm_intervals=0)
    calm = m.calm_intervals + 1
    r, load = s.escalation_rate, s.request_rate
    if learned is not None and r is not None and load and q is not None:
        done = s.top_tier_throughput if s.top_tier_throughput is not None else r * load
        per_replica = done / _replicas(s)
        if q <= p.queue_target * p.queue_hold_fraction:
            if per_replica > learned * (1 + CAPACITY_MARGIN):  # it did more, without queueing
                learned = per_replica
            elif calm >= PROBE_AFTER and per_replica >= 0.9 * learned * (1 - CAPACITY_MARGIN):
                learned, calm = learned * (1 + PROBE_STEP), 0
    return replace(m, capacity=learned, calm_intervals=calm)


def decide(
    current: float, signals: Signals, params: PolicyParams, memory: PolicyMemory | None = None
) -> Decision:
    """The threshold for the next interval, why, and what to remember."""
    m = memory or PolicyMemory()
    lo, hi = params.min_threshold, params.max_threshold
    if not signals.available():
        return hold_or_revert(current, params, m.unavailable_seconds + params.interval_seconds, m)

    slope = m.slope  # last interval's estimate: this decision stays monotone in every signal
    rate, n, m = _pooled_rate(current, signals, params, m)
    capacity_proposal, learned = _capacity(signals, params, m, slope)
    proposals = [  # priority order: the first of equal steps names the reason
        _queue(signals, params, slope, m.capacity, _replicas(signals)),
        _latency(signals, params, slope),
        capacity_proposal,
        _budget(rate, n, params, slope),
        _quality(signals, params),
    ]
    best = max(proposals, key=lambda x: x.step)
    if best.step == _FREE:
        step, desired = 0.0, _clamp(current, lo, hi)
        best = _Proposal(0.0, "NoRateSignal", "no escalation-rate signal: holding")
    else:
        desired = _clamp(current + best.step, lo, hi)
        step = _clamp(best.step, -params.max_step, params.max_step)
        if abs(step) < MIN_MOVE:
            step = 0.0
    new = current
    if step:
        new = _clamp(current + step, current - params.max_step, current + params.max_step)
        tidy = round(new, 4)  # 4 digits (0.8, not 0.7999999999999999) unless that breaks maxStep
        if abs(tidy - current) <= params.max_step + 1e-12:
            new = tidy
    new = _clamp(new, lo, hi)
    reason = best.reason
    if step < 0 and new <= lo and current <= lo:
        reason += f" (held at bounds.min {_num(lo)})"
    elif step > 0 and new >= hi and current >= hi:
        reason += f" (held at bounds.max {_num(hi)})"

    count = signals.request_rate * params.interval_seconds if signals.request_rate else None
    m = _learn_slope(current, signals.escalation_rate, count, params, m)
    m = _remember_capacity(signals, params, m, learned)
    if new != current and rate is not None:
        m = replace(m, prev_threshold=current, prev_rate=rate, prev_requests=n)
    m = replace(m, unavailable_seconds=0.0)
    return Decision(new, desired, reason, best.constraint, m)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g}s"
    return f"{seconds / 60:.3g}m" if seconds < 7200 else f"{seconds / 3600:.3g}h"


def hold_or_revert(
    current: float,
    params: PolicyParams,
    unavailable_seconds: float,
    memory: PolicyMemory | None = None,
) -> Decision:
    """No signals: hold (the last decision was made on evidence); after the grace period walk
    back to the spec's threshold at most `maxStep` per interval (never a jolt to the top tier).

    The reason names the state, not how long it has lasted: it goes into status, and a text
    that ticked with the clock would rewrite the object every interval of a steady outage. When
    the outage began is the `MetricsAvailable` condition's lastTransitionTime. Rate evidence is
    dropped (it is stale); the learned slope and capacity are kept.
    """
    m = memory or PolicyMemory()
    lo, hi = params.min_threshold, params.max_threshold
    spec = _clamp(params.spec_threshold, lo, hi)
    cur = _clamp(current, lo, hi)
    kept = PolicyMemory(slope=m.slope, capacity=m.capacity, unavailable_seconds=unavailable_seconds)
    grace = _duration(params.grace_seconds)
    if unavailable_seconds < params.grace_seconds:
        reason = f"no signals: holding {_num(cur)}, back to the spec's {_num(spec)} after {grace}"
        return Decision(cur, cur, reason, "SignalsUnavailable", kept)
    missing = f"no signals for over {grace}"
    if cur == spec:
        return Decision(
            cur, spec, f"{missing}: at the spec's threshold", "SignalsUnavailable", kept
        )
    step = params.max_step
    new = round(_clamp(spec, cur - step, cur + step), 4)  # 4 digits, as `decide` sets them
    new = _clamp(_clamp(new, cur - step, cur + step), min(cur, spec), max(cur, spec))
    reason = f"{missing}: returning to the spec's threshold {_num(spec)}"
    return Decision(new, spec, reason, "RevertingToSpec", kept)
