"""What a run is judged by: static thresholds chosen in hindsight as baselines, whole-trace figures
(accuracy, cost, SLO, queue), budget tracking in steady state, settling after step changes, and
`compare`, which runs the policy against the baselines on one trace."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tierserve import cost
from tierserve.tools.simulate.queueing import Setup, SmallTier, small_tier
from tierserve.tools.simulate.replay import Run, simulate
from tierserve.tools.simulate.traces import Bools, Floats, Ints, Trace

SETTLE_INTERVALS = 5  # the settling target: intervals after a change that are not steady state
SETTLE_TOLERANCE = 0.5  # settled = within this many maxSteps of where it ends up
BUDGET_TOLERANCE = 0.02  # "within 2 percentage points of the budget"
WINDOW_SECONDS = 150.0  # the budget is also judged over windows this long (5 intervals of 30s)


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


def calibration_end(trace: Trace) -> float:
    """Seconds: where a team calibrating offline on last month's logs would have stopped, the
    first step event (a shift), or a third of the trace when it has none."""
    steps = [t for t, _, step in trace.events if step]
    return min(steps) if steps else trace.duration / 3


def calibrate_before(trace: Trace, rate: float, until: float, since: float = 0.0) -> float:
    """`calibrate_static` on the requests arriving in [since, until) only: the fixed threshold
    that escalates a share `rate` of that part (by default the first part, until `until`)."""
    part = (trace.arrival >= since) & (trace.arrival < until)
    if not part.any():
        raise ValueError(f"no request arrives in [{since:g}s, {until:g}s)")
    head = Trace(
        name=trace.name,
        description=trace.description,
        arrival=trace.arrival[part],
        score=trace.score[part],
        small_correct=trace.small_correct[part],
        large_correct=trace.large_correct[part],
        agree=trace.agree[part],
        prompt_tokens=trace.prompt_tokens[part],
        small_tokens=trace.small_tokens[part],
        large_tokens=trace.large_tokens[part],
    )
    return calibrate_static(head, rate)


def segment_end(trace: Trace, start: float) -> float:
    """Seconds: the next step event after `start`, or the end of the trace."""
    later = [t for t, _, step in trace.events if step and t > start]
    return min(later) if later else trace.duration + 1.0


def after_shift(
    run: Run, trace: Trace, setup: Setup, start: float, policy: bool = True
) -> dict[str, float]:
    """Budget tracking from `start` (s) on, over the trailing windows of `budget_figures`
    (WINDOW_SECONDS) that lie wholly at or after it, transients included: the share within
    BUDGET_TOLERANCE of the budget over all of them, over the steady ones (no interval within
    SETTLE_INTERVALS after a step) and, for the policy, over the steady budget-bound ones; each
    beside perfect control's share there (binomial noise alone). Also the escalation share in
    the segment from `start` to the next step event (the shifted traffic) and from `start` on,
    and the largest window error."""
    budget = setup.params.budget
    n = len(run.threshold)
    width = _window(run.interval)
    first = int(start // run.interval)
    k = np.arange(n)
    whole = (k - width + 1 >= first) & (run.requests > 0)
    rolling = _rolling(run.escalated, run.requests, width)
    window_n = np.convolve(run.requests, np.ones(width))[:n]
    ideal = 2 * _normal_cdf(BUDGET_TOLERANCE / np.sqrt(budget * (1 - budget) / window_n)) - 1
    steady = steady_mask(trace, run.interval, n) & (run.requests > 0)
    all_steady = np.convolve(steady.astype(float), np.ones(width))[:n] >= width - 0.5
    bound = steady.copy()
    if policy:
        bound &= np.array([c == "Budget" for c in run.constraints], dtype=bool)
    all_bound = np.convolve(bound.astype(float), np.ones(width))[:n] >= width - 0.5
    within = np.abs(rolling - budget) <= BUDGET_TOLERANCE

    def share(where: Bools) -> float:
        return float(within[where].mean()) if where.any() else math.nan

    def perfect(where: Bools) -> float:
        return float(ideal[where].mean()) if where.any() else math.nan

    end = segment_end(trace, start)
    st = run.interval * k
    segment = (st >= first * run.interval) & (st < end) & (run.requests > 0)
    later = (k >= first) & (run.requests > 0)
    seg_rate = float(run.escalated[segment].sum() / max(run.requests[segment].sum(), 1))
    after_rate = float(run.escalated[later].sum() / max(run.requests[later].sum(), 1))
    errors = np.abs(rolling - budget)[whole]
    return {
        "start_seconds": start,
        "segment_end_seconds": min(end, trace.duration),
        "window_seconds": width * run.interval,
        "windows": int(whole.sum()),
        "within_2pp": share(whole),
        "within_2pp_perfect_control": perfect(whole),
        "steady_windows": int((whole & all_steady).sum()),
        "within_2pp_steady": share(whole & all_steady),
        "within_2pp_steady_perfect_control": perfect(whole & all_steady),
        "bound_windows": int((whole & all_bound).sum()),
        "within_2pp_bound": share(whole & all_bound),
        "budget_bound_share": float(bound[later].sum() / max(later.sum(), 1)),
        "segment_rate": seg_rate,
        "segment_miss_pp": 100 * (seg_rate - budget),
        "after_rate": after_rate,
        "after_miss_pp": 100 * (after_rate - budget),
        "max_window_error_pp": float(100 * errors.max()) if len(errors) else math.nan,
    }
