"""Routing quality metrics: APGR, gap recovery and thresholds for a target escalation share."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tierserve.serving import routing
from tierserve.tools import quality

pytestmark = pytest.mark.unit


def tiers(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weak right ~68%, strong ~77%; strong misses 5% of what weak gets right (like MMLU)."""
    rng = np.random.default_rng(seed)
    weak = rng.random(n) < 0.68
    strong = np.where(weak, rng.random(n) < 0.95, rng.random(n) < 0.4)
    return weak, strong


def test_random_routing_recovers_half_the_gap_on_average() -> None:
    weak, strong = tiers(50_000)
    scores = np.random.default_rng(1).random(len(weak))
    assert quality.apgr(scores, weak, strong) == pytest.approx(0.5, abs=0.02)
    curve = quality.quality_curve(scores, weak, strong)
    for fraction, share in quality.shares_for_gaps(curve).items():
        assert share == pytest.approx(fraction, abs=0.03)  # gap recovered ~ share escalated


def test_a_constant_score_is_exactly_random_routing() -> None:
    weak, strong = tiers(1_000)
    assert quality.apgr(np.full(len(weak), 0.3), weak, strong) == pytest.approx(0.5, abs=1e-12)


def test_oracle_beats_random_and_anti_oracle_loses_to_it() -> None:
    weak, strong = tiers(5_000)
    oracle = quality.oracle_scores(weak, strong)
    assert quality.apgr(oracle, weak, strong) > 1.0  # it also avoids the strong tier's misses
    assert quality.apgr(1 - oracle, weak, strong) < 0.2
    curve = quality.quality_curve(oracle, weak, strong)
    strong_only = float(np.mean(strong & ~weak))
    # The oracle recovers the whole gap by escalating at most the prompts only strong gets right.
    assert quality.share_for_gap(curve, 0.95) <= strong_only


def test_curve_runs_from_all_weak_to_all_strong_with_matching_thresholds() -> None:
    weak, strong = tiers(2_000)
    scores = np.round(np.random.default_rng(2).random(len(weak)), 2)  # many ties
    curve = quality.quality_curve(scores, weak, strong)
    assert curve.share[0] == 0 and curve.share[-1] == 1
    assert curve.accuracy[0] == pytest.approx(weak.mean())
    assert curve.accuracy[-1] == pytest.approx(strong.mean())
    assert np.all(np.diff(curve.share) > 0)
    for threshold, share, accuracy in zip(
        curve.thresholds, curve.share, curve.accuracy, strict=True
    ):
        # Each point is what the router's own rule does at that threshold.
        up = np.array([routing.should_escalate(s, threshold) for s in scores])
        assert up.mean() == pytest.approx(share)
        assert np.where(up, strong, weak).mean() == pytest.approx(accuracy)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=1, max_size=300),
    target=st.floats(0, 1),
)
@example(scores=[0.0, 1.0, 0.9999999999999999], target=0.25)  # adjacent floats: no midpoint
def test_threshold_for_share_is_the_closest_achievable_share(
    scores: list[float], target: float
) -> None:
    threshold = quality.threshold_for_share(scores, target)
    share = float(np.mean([routing.should_escalate(s, threshold) for s in scores]))
    achievable = {float(np.mean(np.array(scores) > v)) for v in scores} | {0.0, 1.0}
    assert abs(share - target) <= min(abs(a - target) for a in achievable) + 1e-9


def test_threshold_for_share_hits_the_target_on_continuous_scores() -> None:
    scores = np.random.default_rng(3).beta(2, 5, 10_000)
    for target in (0.05, 0.2, 0.5, 0.9):
        threshold = quality.threshold_for_share(scores, target)
        assert float(np.mean(scores > threshold)) == pytest.approx(target, abs=1e-4)
    # New prompts on either side of the data's boundary split evenly: the threshold is a midpoint.
    threshold = quality.threshold_for_share([0.1, 0.2, 0.6, 0.8], 0.5)
    assert threshold == pytest.approx(0.4)


def test_routed_accuracy_at_threshold() -> None:
    weak = np.array([True, True, False, False])
    strong = np.array([True, False, True, True])
    scores = np.array([0.1, 0.2, 0.9, 0.8])
    assert quality.routed_accuracy(scores, weak, strong, 0.5) == (1.0, 0.5)
    assert quality.routed_accuracy(scores, weak, strong, 1.0) == (0.5, 0.0)


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        quality.apgr([0.1, 0.2], [True], [True, False])
    with pytest.raises(ValueError, match="no gap to recover"):
        quality.apgr([0.1, 0.2], [True, True], [True, False])
    with pytest.raises(ValueError, match="NaN"):
        quality.apgr([0.1, float("nan")], [False, False], [True, True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quality.threshold_for_share([0.1], 1.5)
