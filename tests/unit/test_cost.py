"""The cost model reproduces the published table for a 12.3x cheaper small tier."""

from __future__ import annotations

import pytest

from tierserve import cost

pytestmark = pytest.mark.unit

COSTS = [1.0, 12.3]


@pytest.mark.parametrize(
    ("kept", "low", "high"),
    [(1.0, 12.29, 12.31), (0.9, 5.5, 5.8), (0.75, 3.0, 3.25), (0.5, 1.7, 1.86)],
)
def test_published_table(kept: float, low: float, high: float) -> None:
    shares = cost.kept_small_shares(2, kept)
    up = cost.reduction(COSTS, shares, "upfront")
    cas = cost.reduction(COSTS, shares, "cascade")
    assert low <= cas <= up <= high
    if kept < 1:
        assert cas < up  # a cascade pays for the small tier on escalated requests too


def test_cascade_pays_every_rung_climbed() -> None:
    assert cost.cascade_cost([1, 2, 10], [0, 0, 1]) == 13
    assert cost.upfront_cost([1, 2, 10], [0, 0, 1]) == 10
    assert cost.reduction([1, 2, 10], [0, 0, 1], "upfront") == 1.0
