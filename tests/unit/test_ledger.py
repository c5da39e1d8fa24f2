"""The cost ledger's model, worked by hand: per-token prices from the spec, what a request's
calls cost, what it wasted, what the top tier alone would have charged, and the estimates the
cost cap decides on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tierserve import cost
from tierserve.api.v1alpha1 import ModelTier, ModelTierSpec, TokenPrice
from tierserve.build import render
from tierserve.serving import ledger
from tierserve.serving.config import IngressConfig, TierRef
from tierserve.serving.ledger import Line, Tab

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

SMALL = TokenPrice(prompt_per_million=1.0, completion_per_million=2.0)
MID = TokenPrice(prompt_per_million=10.0, completion_per_million=20.0)
TOP = TokenPrice(prompt_per_million=100.0, completion_per_million=200.0)


def spec(*tiers: dict[str, Any]) -> ModelTierSpec:
    return ModelTierSpec.model_validate(
        {
            "tiers": [{"model": {"source": "hf://x/y"}, **t} for t in tiers],
            "ray": {"backend": "external", "dashboardURL": "http://ray:8265"},
        }
    )


# -- prices ------------------------------------------------------------------------------------


def test_a_derived_price_spreads_the_hourly_cost_over_the_tokens_of_an_hour() -> None:
    # 3.60 an hour at 1000 tokens/s: 3.6 M tokens an hour, so 1.00 per million, both kinds.
    price = cost.derived_price(3.6, 1000.0)
    assert price.prompt_per_million == pytest.approx(1.0)
    assert price.completion_per_million == pytest.approx(1.0)
    assert cost.derived_price(7.2, 500.0).prompt_per_million == pytest.approx(4.0)


def test_tier_prices_an_explicit_price_else_costs_per_hour_else_gpus() -> None:
    both = spec(
        {"name": "small", "costPerHour": 3.6},
        {"name": "large", "costPerHour": 36.0, "tokensPerSecond": 2000},
    )
    small, large = cost.tier_prices(both)
    assert small.prompt_per_million == pytest.approx(1.0)
    assert large.completion_per_million == pytest.approx(5.0)  # 36 / 3600 / 2000 * 1e6
    explicit = {"promptPerMillion": 3.0, "completionPerMillion": 15.0}
    priced = spec({"name": "small", "costPerHour": 3.6}, {"name": "api", "price": explicit})
    assert cost.tier_prices(priced)[1] == TokenPrice.model_validate(explicit)
    # Without costPerHour on every tier, hourly costs are GPUs per replica, as `plan` has them.
    gpus = spec({"name": "small", "gpusPerReplica": 1}, {"name": "large", "costPerHour": 9.0})
    per_gpu_hour = 1 / 3600 / 1000 * 1e6
    assert [p.prompt_per_million for p in cost.tier_prices(gpus)] == [
        pytest.approx(per_gpu_hour),
        pytest.approx(per_gpu_hour),
    ]


def test_default_prices_keep_the_ratio_of_hourly_costs_that_plan_assumes() -> None:
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            s = ModelTier.model_validate(doc).spec
            hourly, prices = cost.tier_costs(s), cost.tier_prices(s)
            for h, p in zip(hourly, prices, strict=True):
                ratio = p.completion_per_million / prices[-1].completion_per_million
                assert ratio == pytest.approx(h / hourly[-1]), path.name


def test_the_renderer_passes_each_tiers_price_to_the_router() -> None:
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            mt = ModelTier.model_validate(doc)
            user_config = render.serve_application(mt)["deployments"][0]["user_config"]
            config = IngressConfig.model_validate(user_config)
            assert [t.token_price for t in config.tiers] == cost.tier_prices(mt.spec)


def test_a_tier_without_a_price_is_charged_by_its_gpus_as_the_renderer_would() -> None:
    assert TierRef(name="cpu").token_price == cost.derived_price(1.0, 1000.0)
    assert TierRef(name="big", gpus=4).token_price == cost.derived_price(4.0, 1000.0)
    assert TierRef(name="api", price=TOP).token_price == TOP


# -- one request's bill ----------------------------------------------------------------------


def test_a_call_costs_its_tokens_at_its_tiers_price() -> None:
    # 1000 prompt tokens at 1.00/M and 500 completion tokens at 2.00/M: 0.001 + 0.001.
    assert ledger.charge(SMALL, 1000, 500) == pytest.approx(0.002)
    line = Line.of("small", SMALL, ledger.ANSWER, (3, 2))
    assert (line.prompt_tokens, line.completion_tokens) == (3, 2)
    assert line.cost == pytest.approx((3 * 1.0 + 2 * 2.0) / 1e6)


def test_an_answer_kept_low_saves_what_the_top_tier_would_have_charged_for_it() -> None:
    bill = ledger.settle([Line.of("small", SMALL, ledger.ANSWER, (300, 100))], TOP)
    assert bill.total == pytest.approx((300 * 1 + 100 * 2) / 1e6)  # 0.0005
    assert bill.wasted == 0
    assert bill.top_tier_alone == pytest.approx((300 * 100 + 100 * 200) / 1e6)  # 0.05
    assert bill.savings == pytest.approx(0.05 - 0.0005)


def test_an_escalated_request_pays_its_wasted_rungs_and_saves_less_than_nothing() -> None:
    lines = [
        Line.of("small", SMALL, ledger.WASTED, (300, 100)),  # 0.0005
        Line.of("mid", MID, ledger.WASTED, (300, 120)),  # 0.003 + 0.0024
        Line.of("small", SMALL, ledger.SELF_CHECK, (420, 1)),  # 0.000422
        Line.of("top", TOP, ledger.ANSWER, (300, 80)),  # 0.03 + 0.016
    ]
    bill = ledger.settle(lines, TOP)
    assert bill.wasted == pytest.approx(0.0005 + 0.0054)
    assert bill.total == pytest.approx(0.0005 + 0.0054 + 0.000422 + 0.046)
    assert bill.top_tier_alone == pytest.approx(0.046)  # the top tier answered: exact
    assert bill.savings == pytest.approx(-(0.0005 + 0.0054 + 0.000422))


def test_the_bill_as_the_client_reads_it() -> None:
    lines = [
        Line.of("small", SMALL, ledger.WASTED, (3, 2), estimated=True),
        Line.of("mid", MID, ledger.ANSWER, (3, 4)),
    ]
    bill = ledger.settle(lines, TOP)
    assert bill.body() == {
        "total": pytest.approx((3 + 4 + 30 + 80) / 1e6),
        "wasted": pytest.approx(7 / 1e6),
        "topTierAlone": pytest.approx((300 + 800) / 1e6),
        "savings": pytest.approx((1100 - 117) / 1e6),
        "tiers": [
            {
                "tier": "small",
                "kind": "wasted",
                "promptTokens": 3,
                "completionTokens": 2,
                "cost": pytest.approx(7e-6),
                "estimated": True,
            },
            {
                "tier": "mid",
                "kind": "answer",
                "promptTokens": 3,
                "completionTokens": 4,
                "cost": pytest.approx(1.1e-4),
            },
        ],
    }
    assert bill.headers() == {"x-tierserve-cost": "0.000117", "x-tierserve-savings": "0.000983"}


def test_a_bill_has_exactly_one_answer() -> None:
    with pytest.raises(ValueError, match="one answer"):
        ledger.settle([Line.of("small", SMALL, ledger.WASTED, (1, 1))], TOP)


def test_usage_is_read_when_a_tier_reported_it() -> None:
    assert ledger.reported({"prompt_tokens": 7, "completion_tokens": 2}) == (7, 2)
    assert ledger.reported({"prompt_tokens": 7}) == (7, 0)
    assert ledger.reported({}) is None and ledger.reported(None) is None
    assert ledger.text_tokens("12+34=") == 2 and ledger.text_tokens("") == 1


# -- the tab the cost cap reads --------------------------------------------------------------


def test_the_tab_estimates_the_next_call_from_what_tiers_reported() -> None:
    tab = Tab()
    assert tab.next_call("x" * 40, None) == (10, ledger.ESTIMATED_COMPLETION_TOKENS)
    assert tab.next_call("x" * 40, 64) == (10, 64)  # the request's max_tokens bounds it
    tab.learn(Line.of("small", SMALL, ledger.WASTED, (12, 5)), whole=False)  # a stream's start
    assert tab.next_call("x" * 40, None) == (12, ledger.ESTIMATED_COMPLETION_TOKENS)
    tab.learn(Line.of("small", SMALL, ledger.WASTED, (12, 30)), whole=True)
    assert tab.next_call("x" * 40, None) == (12, 30)
    tab.learn(Line.of("mid", MID, ledger.WASTED, (99, 99), estimated=True), whole=True)
    assert tab.next_call("x" * 40, 64) == (12, 64)  # counted, not reported: not learnt
    assert ledger.estimate(TOP, 12, 64, n=2) == pytest.approx((1200 + 2 * 64 * 200) / 1e6)


def test_the_tab_drops_a_parked_answer_that_came_back_as_the_kept_one() -> None:
    tab = Tab()
    small = Line.of("small", SMALL, ledger.WASTED, (3, 2))
    check = Line.of("small", SMALL, ledger.SELF_CHECK, (6, 1))
    tab.climbed[0] = small
    tab.checks.append(check)
    assert tab.spent == pytest.approx(small.cost + check.cost)
    assert tab.lines(kept=1) == [small, check]
    assert tab.lines(kept=0) == [check]  # previousTier came back to it: the answer, not waste
