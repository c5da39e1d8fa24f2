"""The autoscaler's parts around the policy: PromQL, reading answers safely, the cost factor,
and its metrics (which go when their ModelTier goes)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from tierserve.api.v1alpha1 import ModelTier
from tierserve.autoscale.signals import parse_value, queries
from tierserve.controller import metrics
from tierserve.controller.status import modelled_cost_factor

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-assistant.yaml"


def mt() -> ModelTier:
    return ModelTier.model_validate(yaml.safe_load(EXAMPLE.read_text()))


def test_queries_select_this_modeltier_and_its_top_tier() -> None:
    q = queries("support-assistant", "frontier", "frontier", "30s")
    assert 'modeltier="support-assistant"' in q["escalation_rate"]
    assert 'tier="frontier"' in q["escalation_rate"]
    assert "[30s]" in q["top_tier_queue"] and 'model_name="frontier"' in q["top_tier_queue"]
    assert q["top_tier_latency"].startswith("histogram_quantile(0.95")
    assert 'agreed="true"' in q["shadow_agreement"]


def test_rates_span_several_of_rays_metric_updates_even_at_short_intervals() -> None:
    """Ray's exporter updates counters about every 10 s: a 5 s rate would be mostly 0/0."""
    q = queries("m", "top", "top", "5s")
    assert "[30s]" in q["escalation_rate"] and "[30s]" in q["top_tier_latency"]
    assert "[5s]" in q["top_tier_queue"]  # a gauge: the interval's own window
    assert (
        "[2m]" not in q["escalation_rate"]
        and "[120s]" in queries("m", "t", "t", "2m")["request_rate"]
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "success", "data": {"result": [{"value": [1000.0, "0.25"]}]}}, 0.25),
        ({"status": "success", "data": {"result": []}}, None),  # no series
        ({"status": "success", "data": {"result": [{"value": [1000.0, "NaN"]}]}}, None),
        ({"status": "success", "data": {"result": [{"value": [1000.0, "+Inf"]}]}}, None),
        ({"status": "success", "data": {"result": [{"value": [700.0, "0.3"]}]}}, None),  # stale
        ({"status": "error", "error": "parse error"}, None),
        ({"status": "success", "data": {"result": [{"value": "garbage"}]}}, None),
        ("not json", None),
    ],
)
def test_parse_value_never_turns_garbage_into_a_number(
    body: object, expected: float | None
) -> None:
    assert parse_value(body, now=1010.0) == expected


def test_modelled_cost_factor_uses_the_cost_model() -> None:
    assert modelled_cost_factor(mt(), 0.0) == pytest.approx(13.5 / 1.1, rel=1e-3)
    assert modelled_cost_factor(mt(), None) is None
    assert not math.isnan(modelled_cost_factor(mt(), 1.0) or math.nan)


def series(name: str, namespace: str = "llm", modeltier: str = "a") -> list[float]:
    """The values of `name` for one ModelTier, as /metrics would show them."""
    return [
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
        and sample.labels.get("namespace") == namespace
        and sample.labels.get("modeltier") == modeltier
    ]


def test_a_modeltiers_metrics_are_removed_when_it_goes() -> None:
    def decided(name: str, signals: dict[str, float]) -> None:
        metrics.observe_policy(
            "llm",
            name,
            threshold=0.65,
            desired=0.7,
            proposed=0.65,
            observing=False,
            signals=signals,
            available=True,
            cost_factor=3.2,
        )

    decided("a", {"escalationRate": 0.3, "requestRate": 10.0})
    decided("b", {"escalationRate": 0.1})
    assert series("tierserve_operator_threshold") == [0.65]
    assert sorted(series("tierserve_operator_signal")) == [0.3, 10.0]
    decided("a", {"escalationRate": 0.3})  # a signal gone missing has no series
    assert series("tierserve_operator_signal") == [0.3]

    metrics.forget("llm", "a")
    for name in (
        "tierserve_operator_threshold",
        "tierserve_operator_desired_threshold",
        "tierserve_operator_signal",
        "tierserve_operator_metrics_available",
        "tierserve_operator_modelled_cost_factor",
    ):
        assert series(name) == [], name
        assert series(name, modeltier="b"), name  # another ModelTier's series stay
    metrics.forget("llm", "a")  # idempotent: deleting twice, or never autoscaled
    metrics.forget("llm", "b")


def test_quality_verdicts_are_read_per_lower_tier_with_an_interval() -> None:
    from tierserve.autoscale.signals import quality_queries, read_signals
    from tierserve.controller.status import quality_status, wilson

    promql = quality_queries("mt", ["small", "medium"], "1h")
    assert promql["small/agreed"] == (
        'sum(increase(ray_tierserve_shadow_evaluations_total{agreed="true",modeltier="mt",'
        'tier="small"}[1h]))'
    )
    answers = {
        promql["small/judged"]: 80.0,
        promql["small/agreed"]: 60.0,
        promql["medium/judged"]: 0.0,
        promql["medium/agreed"]: 0.0,
    }

    def handle(request: httpx.Request) -> httpx.Response:
        value = answers.get(request.url.params["query"])
        result = [] if value is None else [{"value": [time.time(), str(value)]}]
        return httpx.Response(200, json={"status": "success", "data": {"result": result}})

    async def read() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            return await read_signals(client, "http://prom", {}, quality=promql)

    reading = asyncio.run(read())
    assert reading.quality == {"small": (60.0, 80.0), "medium": (0.0, 0.0)}
    status = quality_status(reading.quality, escalation_rate=0.4)
    assert status is not None
    small = next(t for t in status.tiers if t.tier == "small")
    low, high = wilson(60, 80)
    assert (small.samples, small.win_or_tie_rate) == (80, 0.75)
    assert small.low == pytest.approx(low, abs=1e-4) and small.high == pytest.approx(high, abs=1e-4)
    assert 0.64 < low < 0.75 < high < 0.84
    medium = next(t for t in status.tiers if t.tier == "medium")
    assert (medium.samples, medium.win_or_tie_rate) == (0, None)
    router = status.router_vs_top_tier
    assert router is not None and router.not_worse_rate == pytest.approx(0.4 + 0.6 * 0.75)
    assert router.low == pytest.approx(0.4 + 0.6 * low, abs=1e-4)
