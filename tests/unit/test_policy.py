"""The threshold policy: its invariants (property tests) and the behaviour each signal drives."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tierserve.api.v1alpha1 import Autoscale, Escalation
from tierserve.autoscale.policy import (
    PolicyMemory,
    PolicyParams,
    Signals,
    decide,
    hold_or_revert,
    parse_duration,
)

pytestmark = pytest.mark.unit

EPS = 1e-9
PARAMS = PolicyParams(budget=0.25, queue_target=5.0, max_step=0.05, interval_seconds=30.0)

share = st.floats(0.0, 1.0)


@st.composite
def params(draw: st.DrawFn) -> PolicyParams:
    lo = draw(st.floats(0.0, 1.0))
    hi = draw(st.floats(lo, 1.0))
    return PolicyParams(
        spec_threshold=draw(st.floats(lo, hi)),
        min_threshold=lo,
        max_threshold=hi,
        budget=draw(st.floats(0.0, 1.0)),
        queue_target=draw(st.floats(0.0, 50.0)),
        max_step=draw(st.floats(0.0, 0.5)),
        interval_seconds=draw(st.sampled_from([10.0, 30.0, 60.0])),
        latency_target=draw(st.none() | st.floats(0.1, 30.0)),
        agreement_target=draw(st.none() | st.floats(0.5, 1.0)),
        rate_tolerance=draw(st.floats(0.0, 0.05)),
        offloads_lower=draw(st.booleans()),
    )


@st.composite
def memories(draw: st.DrawFn) -> PolicyMemory:
    pool_requests = draw(st.floats(0.0, 1e5))
    return PolicyMemory(
        pool_threshold=draw(st.none() | share),
        pool_requests=pool_requests,
        pool_escalated=pool_requests * draw(share),
        slope=draw(st.floats(0.1, 20.0)),
        prev_threshold=draw(st.none() | share),
        prev_rate=draw(st.none() | share),
        capacity=draw(st.none() | st.floats(0.01, 100.0)),
        calm_intervals=draw(st.integers(0, 50)),
        prev_queue=draw(st.none() | st.floats(0.0, 100.0)),
        unavailable_seconds=draw(st.floats(0.0, 1000.0)),
    )


@st.composite
def signals(draw: st.DrawFn) -> Signals:
    return Signals(
        top_tier_queue=draw(st.none() | st.floats(0.0, 200.0)),
        top_tier_latency=draw(st.none() | st.floats(0.0, 60.0)),
        escalation_rate=draw(st.none() | share),
        request_rate=draw(st.none() | st.floats(0.1, 1000.0)),
        top_tier_throughput=draw(st.none() | st.floats(0.0, 500.0)),
        top_tier_replicas=draw(st.none() | st.floats(1.0, 64.0)),
        lower_load=draw(st.none() | st.floats(0.0, 3.0)),
        shadow_agreement=draw(st.none() | share),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[float, Signals, PolicyParams, PolicyMemory]:
    p = draw(params())
    current = draw(st.floats(p.min_threshold, p.max_threshold))
    return current, draw(signals()), p, draw(memories())


@settings(max_examples=300, deadline=None)
@given(situations())
def test_never_outside_bounds_and_never_more_than_max_step(
    case: tuple[float, Signals, PolicyParams, PolicyMemory],
) -> None:
    current, s, p, m = case
    d = decide(current, s, p, m)
    assert p.min_threshold - EPS <= d.threshold <= p.max_threshold + EPS
    assert abs(d.threshold - current) <= p.max_step + EPS
    assert p.min_threshold - EPS <= d.desired <= p.max_threshold + EPS
    assert d.reason and d.constraint
    json.dumps(d.memory.to_dict())  # storable in status as it is


@settings(max_examples=200, deadline=None)
@given(situations())
def test_deterministic(case: tuple[float, Signals, PolicyParams, PolicyMemory]) -> None:
    assert decide(*case) == decide(*case)


def _monotone(field: str, values: st.SearchStrategy[float], direction: int = 1) -> None:
    @settings(max_examples=150, deadline=None)
    @given(situations(), values, values)
    def check(case: tuple[float, Signals, PolicyParams, PolicyMemory], a: float, b: float) -> None:
        current, s, p, m = case
        low, high = min(a, b), max(a, b)
        t_low = decide(current, replace(s, **{field: low}), p, m).threshold
        t_high = decide(current, replace(s, **{field: high}), p, m).threshold
        if direction > 0:
            assert t_low <= t_high + EPS, (low, high, t_low, t_high)
        else:
            assert t_low + EPS >= t_high, (low, high, t_low, t_high)

    check()


def test_more_queue_never_lowers_the_threshold() -> None:
    _monotone("top_tier_queue", st.floats(0.0, 200.0))


def test_more_agreement_never_lowers_the_threshold() -> None:
    _monotone("shadow_agreement", share)


def test_higher_realized_rate_never_lowers_the_threshold() -> None:
    _monotone("escalation_rate", share)


def test_higher_latency_never_lowers_the_threshold() -> None:
    _monotone("top_tier_latency", st.floats(0.0, 60.0))


def test_more_lower_tier_load_never_raises_the_threshold() -> None:
    _monotone("lower_load", st.floats(0.0, 3.0), direction=-1)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.05, 0.95),
    st.lists(st.tuples(st.floats(-1.0, 1.0), st.floats(0.0, 5.0)), min_size=1, max_size=30),
    st.floats(1.0, 500.0),
    st.none() | st.floats(0.0, 1.0),
)
def test_a_steady_in_band_state_holds_the_threshold(
    current: float, intervals: list[tuple[float, float]], load: float, latency: float | None
) -> None:
    """Escalation within the tolerance of the budget and the top tier under its targets: the
    threshold never moves, however the in-band readings wander."""
    p = replace(PARAMS, latency_target=2.0)
    memory = PolicyMemory()
    for offset, queue in intervals:
        s = Signals(
            top_tier_queue=queue,
            top_tier_latency=latency,
            escalation_rate=p.budget + offset * p.rate_tolerance,
            request_rate=load,
            top_tier_replicas=4.0,
        )
        d = decide(current, s, p, memory)
        assert d.threshold == current, d.reason
        memory = d.memory


def test_reason_names_the_binding_signal() -> None:
    d = decide(0.5, Signals(top_tier_queue=7.2, escalation_rate=0.2), PARAMS)
    assert d.reason == "top-tier queue 7.2 > target 5: backing off"
    assert d.constraint == "TopTierQueue" and d.threshold > 0.5

    d = decide(0.5, Signals(top_tier_queue=0.0, escalation_rate=0.31, request_rate=100), PARAMS)
    assert d.reason == "escalation 31% > budget 25%: backing off"
    assert d.constraint == "Budget" and d.threshold > 0.5

    d = decide(0.5, Signals(top_tier_queue=0.0, escalation_rate=0.15, request_rate=100), PARAMS)
    assert d.reason == "escalation 15% < budget 25%: escalating more"
    assert d.threshold == pytest.approx(0.45)  # a big gap: the full maxStep, no more

    d = decide(0.5, Signals(top_tier_queue=3.0, escalation_rate=0.15, request_rate=100), PARAMS)
    assert d.reason == "top-tier queue 3.0 near target 5: holding"  # hysteresis band
    assert d.threshold == 0.5


def test_latency_over_target_backs_off_and_near_it_holds() -> None:
    p = replace(PARAMS, latency_target=2.0)
    over = decide(0.5, Signals(top_tier_latency=3.0, escalation_rate=0.2), p)
    assert over.threshold > 0.5 and over.constraint == "TopTierLatency"
    near = decide(0.5, Signals(top_tier_latency=1.9, escalation_rate=0.2, request_rate=50), p)
    assert near.threshold == 0.5


def test_agreement_target_spends_less_when_the_small_tier_is_good_and_more_when_it_drops() -> None:
    p = replace(PARAMS, agreement_target=0.9)
    base = Signals(top_tier_queue=0.0, escalation_rate=0.15, request_rate=100)
    good = decide(0.5, replace(base, shadow_agreement=0.97), p)
    assert good.threshold > 0.5 and good.constraint == "Quality"
    enough = decide(0.5, replace(base, shadow_agreement=0.905), p)
    assert enough.threshold == 0.5
    dropping = decide(0.5, replace(base, shadow_agreement=0.8), p)
    assert dropping.threshold < 0.5 and dropping.constraint == "Budget"
    # upfront/hybrid: overloaded lower tiers need the relief more than the top tier needs the rest
    offload = replace(p, offloads_lower=True)
    relief = decide(0.5, replace(base, shadow_agreement=0.97, lower_load=1.5), offload)
    assert relief.threshold < 0.5


def test_capacity_learned_in_overflow_backs_off_a_load_step_before_the_queue_grows() -> None:
    p = PARAMS
    overflow = Signals(
        top_tier_queue=12.0,
        escalation_rate=0.25,
        request_rate=40.0,
        top_tier_throughput=8.0,
        top_tier_replicas=4.0,
    )
    d = decide(0.4, overflow, p)
    assert d.memory.capacity == pytest.approx(2.0)  # completions per replica while saturated
    calm = Signals(
        top_tier_queue=0.0,
        escalation_rate=0.25,
        request_rate=20.0,
        top_tier_throughput=5.0,
        top_tier_replicas=4.0,
    )
    d = decide(0.45, calm, p, d.memory)
    assert d.threshold == 0.45  # 5 req/s escalated, the top tier does ~8: the budget binds
    step = replace(calm, request_rate=200.0)  # 10x: 50 req/s would be escalated
    d = decide(0.45, step, p, d.memory)
    assert d.constraint == "TopTierCapacity" and d.threshold == pytest.approx(0.5)
    doubled = replace(step, top_tier_replicas=8.0)  # Serve added replicas: capacity per replica
    assert decide(0.45, doubled, p, d.memory).threshold == pytest.approx(0.5)
    assert decide(0.45, replace(calm, top_tier_replicas=40.0), p, d.memory).threshold == 0.45


def test_pooled_evidence_narrows_the_deadband_while_holding() -> None:
    s = Signals(top_tier_queue=0.0, escalation_rate=0.272, request_rate=20.0)  # 600 requests
    d = decide(0.4, s, PARAMS)
    assert d.threshold == 0.4  # 2.2 pp over on 600 requests is within sampling noise
    memory = d.memory
    for _ in range(5):
        d = decide(0.4, s, PARAMS, memory)
        memory = d.memory
    assert d.threshold > 0.4  # the same reading, six times over, is not noise


def test_slope_is_learned_from_moves() -> None:
    s = Signals(top_tier_queue=0.0, escalation_rate=0.10, request_rate=100.0)
    d = decide(0.5, s, PARAMS)
    assert d.threshold == pytest.approx(0.45)
    d = decide(0.45, replace(s, escalation_rate=0.25), PARAMS, d.memory)
    # 15 pp over 0.05 is a slope of 3: learned at most 2x at a time, averaged geometrically
    assert d.memory.slope == pytest.approx(math.sqrt(1.0 * 2.0))
    noisy = decide(0.5, s, PARAMS)
    noisy = decide(0.45, replace(s, escalation_rate=0.105, request_rate=1.0), PARAMS, noisy.memory)
    assert noisy.memory.slope == 1.0  # 30 requests: that difference is noise, nothing learned


def _settle(rate_of: float, slope: float, start: float) -> list[float]:
    """Thresholds on a noiseless plant where the rate falls linearly with the threshold."""
    path, memory, t = [start], PolicyMemory(), start
    for _ in range(15):
        rate = min(1.0, max(0.0, 0.25 - slope * (t - rate_of)))
        s = Signals(top_tier_queue=0.0, escalation_rate=rate, request_rate=1e4)
        d = decide(t, s, PARAMS, memory)
        t, memory = d.threshold, d.memory
        path.append(t)
    return path


@pytest.mark.parametrize("slope", [0.5, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("start", [0.2, 0.5, 0.7])
def test_a_step_settles_without_oscillating(slope: float, start: float) -> None:
    """Whatever the score density at the operating point: no more than one reversal, and
    settled within 5 intervals of the fewest maxStep allows."""
    target = 0.45
    path = _settle(target, slope, start)
    steps = [b - a for a, b in itertools.pairwise(path) if abs(b - a) > 0.002]
    reversals = sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))
    assert reversals <= 1, path
    fewest = math.ceil(abs(start - target) / PARAMS.max_step)
    tolerance = 0.01 / slope + 1e-6  # rate tolerance, in threshold units
    settled = next(
        i for i in range(len(path)) if all(abs(x - target) <= tolerance + 0.005 for x in path[i:])
    )
    assert settled <= fewest + 5, path


def test_hold_or_revert_holds_then_walks_back_to_the_spec() -> None:
    p = replace(PARAMS, spec_threshold=0.5, grace_seconds=120.0)
    held = hold_or_revert(0.3, p, 60.0)
    assert held.threshold == 0.3 and held.constraint == "SignalsUnavailable"
    assert held.reason == "no signals: holding 0.3, back to the spec's 0.5 after 2m"
    path, t, missing = [], 0.3, 0.0
    memory = PolicyMemory(slope=2.5, capacity=3.0)
    for _ in range(12):
        d = decide(t, Signals(), p, memory)
        missing, t, memory = d.memory.unavailable_seconds, d.threshold, d.memory
        path.append(t)
    assert path[:3] == [0.3, 0.3, 0.3]  # 30, 60, 90 s: within the grace period
    assert path[3] == pytest.approx(0.35) and path[-1] == 0.5  # then maxStep per interval
    assert missing == 360.0 and memory.slope == 2.5 and memory.capacity == 3.0
    back = decide(t, Signals(escalation_rate=0.25, request_rate=10), p, memory)
    assert back.memory.unavailable_seconds == 0.0


def test_a_steady_outage_gives_the_same_reason_every_interval() -> None:
    """The reason goes into status: text that ticked with the outage's length would make the
    operator rewrite the object every interval. It changes only when the state does."""
    p = replace(PARAMS, spec_threshold=0.5, grace_seconds=120.0)
    reasons, t, memory = [], 0.4, PolicyMemory()
    for _ in range(10):
        d = decide(t, Signals(), p, memory)
        t, memory = d.threshold, d.memory
        reasons.append((d.threshold, d.reason))
    holding = ["no signals: holding 0.4, back to the spec's 0.5 after 2m"] * 3
    assert [r for _, r in reasons[:3]] == holding
    assert reasons[3:5] == [
        (0.45, "no signals for over 2m: returning to the spec's threshold 0.5"),
        (0.5, "no signals for over 2m: returning to the spec's threshold 0.5"),
    ]
    assert set(reasons[5:]) == {(0.5, "no signals for over 2m: at the spec's threshold")}


@settings(max_examples=200, deadline=None)
@given(params(), st.floats(0.0, 1.0), st.floats(0.0, 3600.0))
def test_hold_or_revert_stays_in_bounds_and_steps(
    p: PolicyParams, where: float, missing: float
) -> None:
    # A current threshold inside the bounds by construction (filtering would starve hypothesis).
    current = min(p.max_threshold, p.min_threshold + where * (p.max_threshold - p.min_threshold))
    d = hold_or_revert(current, p, missing)
    assert p.min_threshold <= d.threshold <= p.max_threshold
    assert abs(d.threshold - current) <= p.max_step + EPS
    if missing < p.grace_seconds:
        assert d.threshold == current
    else:
        assert abs(d.threshold - p.spec_threshold) <= abs(current - p.spec_threshold) + EPS


def test_params_from_the_api() -> None:
    esc = Escalation.model_validate(
        {
            "threshold": 0.6,
            "bounds": {"min": 0.2, "max": 0.9},
            "autoscale": {
                "prometheusURL": "http://prom:9090",
                "interval": "1m30s",
                "maxEscalationRate": 0.1,
                "topTierQueueTarget": 3,
                "maxStep": 0.02,
                "signalGracePeriod": "2m30s",
                "topTierLatencyTarget": 2.5,
                "rateTolerance": 0.02,
                "agreementTarget": 0.92,
            },
        }
    )
    p = PolicyParams.from_spec(esc, mode="hybrid")
    assert (p.spec_threshold, p.min_threshold, p.max_threshold) == (0.6, 0.2, 0.9)
    assert (p.budget, p.queue_target, p.max_step, p.interval_seconds) == (0.1, 3.0, 0.02, 90.0)
    assert (p.grace_seconds, p.latency_target, p.rate_tolerance) == (150.0, 2.5, 0.02)
    assert p.offloads_lower and p.agreement_target == 0.92
    with pytest.raises(ValueError, match="autoscale"):
        PolicyParams.from_spec(Escalation())
    assert parse_duration("500ms") == 0.5 and parse_duration("2h") == 7200.0
    with pytest.raises(ValueError):
        parse_duration("30 s")


def test_a_spec_that_sets_only_the_prometheus_url_gets_the_default_params() -> None:
    """`from_spec` carries every knob across (the defaults come from the same API models), and
    the grace period holds a 4-minute outage."""
    esc = Escalation(autoscale=Autoscale.model_validate({"prometheusURL": "http://prom:9090"}))
    assert PolicyParams.from_spec(esc) == PolicyParams()
    d = decide(0.5, Signals(), PolicyParams.from_spec(esc), PolicyMemory(unavailable_seconds=240))
    assert d.threshold == 0.5 and d.constraint == "SignalsUnavailable"


def test_each_knob_reaches_the_decision() -> None:
    """The API's knobs change what `decide` does, through `from_spec` alone."""

    def params(**knobs: object) -> PolicyParams:
        auto = {"prometheusURL": "http://prom:9090", "interval": "30s", **knobs}
        esc = Escalation.model_validate({"threshold": 0.5, "autoscale": auto})
        return PolicyParams.from_spec(esc)

    held = PolicyMemory(unavailable_seconds=60.0)
    assert decide(0.3, Signals(), params(), held).threshold == 0.3
    assert decide(0.3, Signals(), params(signalGracePeriod="1m"), held).threshold == 0.35

    slow = Signals(top_tier_latency=3.0, escalation_rate=0.25, request_rate=100)
    assert decide(0.5, slow, params()).threshold == 0.5
    assert decide(0.5, slow, params(topTierLatencyTarget=2)).constraint == "TopTierLatency"

    over = Signals(top_tier_queue=0.0, escalation_rate=0.28, request_rate=1000)  # 30000 requests
    assert decide(0.5, over, params()).threshold > 0.5
    assert decide(0.5, over, params(rateTolerance=0.05)).threshold == 0.5

    agreeing = Signals(escalation_rate=0.25, request_rate=1000, shadow_agreement=0.97)
    assert decide(0.5, agreeing, params()).threshold == 0.5
    assert decide(0.5, agreeing, params(agreementTarget=0.9)).constraint == "Quality"


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("signalGracePeriod", "5 minutes"),
        ("signalGracePeriod", "-1m"),
        ("topTierLatencyTarget", 0),
        ("topTierLatencyTarget", -1.5),
        ("rateTolerance", 0.6),
        ("rateTolerance", -0.01),
        ("agreementTarget", 1.2),
    ],
)
def test_the_api_refuses_bad_knobs(knob: str, value: object) -> None:
    auto = {"prometheusURL": "http://prom:9090", knob: value}
    with pytest.raises(ValidationError, match=knob):
        Escalation.model_validate({"autoscale": auto})


def test_memory_and_signals_serialize_for_status() -> None:
    m = PolicyMemory(pool_threshold=0.4, pool_requests=600, pool_escalated=150, capacity=2.0)
    assert PolicyMemory.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert PolicyMemory.from_dict({"slope": 2.0, "unknownField": 1}).slope == 2.0
    s = Signals(top_tier_queue=7.2, escalation_rate=0.3)
    assert s.as_status() == {"topTierQueue": 7.2, "escalationRate": 0.3}
    assert not Signals(shadow_agreement=0.9).available()
