"""The cost model reproduces the published table for a 12.3x cheaper small tier."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tierserve import cost
from tierserve.api.v1alpha1 import ModelTierSpec

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


RAY = {"backend": "external", "dashboardURL": "http://ray:8265"}


def _spec(**prices: dict[str, float]) -> ModelTierSpec:
    tiers = [
        {
            "name": n,
            "model": {"source": f"/models/{n}"},
            "costPerHour": h,
            **({"price": prices[n]} if n in prices else {}),
        }
        for n, h in (("small", 1.0), ("large", 4.0))
    ]
    return ModelTierSpec.model_validate({"tiers": tiers, "ray": RAY})


def test_the_plan_follows_explicit_prices_when_a_tier_names_them() -> None:
    assert cost.request_costs(_spec()) == [1.0, 4.0]  # hourly costs: the default model
    # A provider's list prices (per million prompt/completion): 16.7x apart, not the 4x hourly.
    listed = _spec(
        small={"promptPerMillion": 0.15, "completionPerMillion": 0.6},
        large={"promptPerMillion": 2.5, "completionPerMillion": 10.0},
    )
    costs = cost.request_costs(listed, prompt_tokens=1000, completion_tokens=0)
    assert costs == pytest.approx([0.15e-3, 2.5e-3])
    assert cost.reduction(costs, [1.0, 0.0], "upfront") == pytest.approx(2.5 / 0.15)
    # Only one tier priced: the other's price is derived from its hourly cost, as billed.
    mixed = cost.request_costs(_spec(large={"promptPerMillion": 2.5, "completionPerMillion": 10}))
    assert mixed[0] == pytest.approx(cost.tier_prices(_spec())[0].prompt_per_million * 700 / 1e6)


def test_plan_prints_the_priced_request(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {
        "spec": {
            "tiers": [
                {
                    "name": "small",
                    "model": {"source": "/m/s"},
                    "price": {"promptPerMillion": 1, "completionPerMillion": 1},
                },
                {
                    "name": "large",
                    "model": {"source": "/m/l"},
                    "price": {"promptPerMillion": 10, "completionPerMillion": 10},
                },
            ],
            "ray": RAY,
        }
    }
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(doc))
    cost.main(["-f", str(path), "--kept", "1"])
    out = capsys.readouterr().out
    assert "per request of 500 prompt + 200 completion tokens" in out
    assert "10.0x the cost of the first" in out
    assert "10.00x" in out  # everything kept on small: 10x cheaper than all-large
