"""The autoscaler's pure parts: PromQL, reading answers safely, and the status it writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tierserve.api.v1alpha1 import ModelTier
from tierserve.autoscale.policy import Decision, PolicyMemory
from tierserve.autoscale.signals import parse_value, queries
from tierserve.controller.autoscale import modelled_cost_factor, status_patch

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


def decision(threshold: float) -> Decision:
    return Decision(threshold, threshold, "because", "Budget", PolicyMemory())


def test_status_patch_records_threshold_signals_reason_and_availability() -> None:
    signals = {"escalationRate": 0.2}
    patch = status_patch(mt(), {}, decision(0.55), signals, True, "", 4, "t1")
    assert patch["escalation"] == {
        "threshold": 0.55,
        "desiredThreshold": 0.55,
        "reason": "because",
        "lastChangeTime": "t1",
        "signals": signals,
    }
    (cond,) = patch["conditions"]
    assert (cond["type"], cond["status"]) == ("MetricsAvailable", "True")
    assert patch["modelledCostFactor"] == pytest.approx(13.5 / (1.1 + 0.2 * 13.5), rel=1e-3)

    held = status_patch(mt(), patch, decision(0.55), {}, False, "Prometheus unreachable", 4, "t2")
    assert held["escalation"]["lastChangeTime"] == "t1"  # unchanged threshold keeps its time
    cond = held["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "SignalsUnavailable")
    assert cond["message"] == "Prometheus unreachable"
    assert "modelledCostFactor" not in held


def test_modelled_cost_factor_uses_the_cost_model() -> None:
    assert modelled_cost_factor(mt(), 0.0) == pytest.approx(13.5 / 1.1, rel=1e-3)
    assert modelled_cost_factor(mt(), None) is None
    assert not math.isnan(modelled_cost_factor(mt(), 1.0) or math.nan)
