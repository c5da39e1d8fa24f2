"""The operator's pure core: status conditions and drift detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tierserve.api.v1alpha1 import ModelTier
from tierserve.controller.drift import covers
from tierserve.controller.status import Observation, compute_status, status_changed

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-assistant.yaml"


def mt() -> ModelTier:
    return ModelTier.model_validate(yaml.safe_load(EXAMPLE.read_text()))


def status(
    seen: Observation, previous: dict[str, Any] | None = None, now: str = "t1"
) -> dict[str, Any]:
    return compute_status(
        mt(), 3, seen, previous=previous, now=now, threshold=0.6, application="support-assistant"
    )


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def healthy_app(state: str = "RUNNING") -> dict[str, Any]:
    deps = {name: {"status": "HEALTHY"} for name in ("tier-small", "tier-frontier", "Ingress")}
    return {"status": state, "deployments": deps}


def test_not_yet_deployed_is_progressing() -> None:
    st = status(Observation(app=None))
    assert conds(st) == {
        "Ready": ("False", "Deploying"),
        "Progressing": ("True", "Deploying"),
        "Degraded": ("False", "AsExpected"),
    }
    assert st["ready"] == "0/2" and st["observedGeneration"] == 3
    assert st["tierNames"] == "small,frontier"


def test_running_with_every_tier_healthy_is_ready() -> None:
    st = status(Observation(app=healthy_app()))
    assert conds(st)["Ready"] == ("True", "Serving")
    assert conds(st)["Progressing"][0] == "False"
    assert st["ready"] == "2/2"
    assert st["escalation"]["threshold"] == 0.6


def test_one_unhealthy_tier_is_not_ready() -> None:
    app = healthy_app()
    app["deployments"]["tier-frontier"] = {"status": "UPDATING", "message": "loading weights"}
    st = status(Observation(app=app))
    assert conds(st)["Ready"][0] == "False"
    assert st["tiers"][1] == {
        "name": "frontier",
        "ready": False,
        "replicas": 0,
        "message": "loading weights",
    }


def test_backend_errors_are_degraded_with_reason_and_message() -> None:
    seen = Observation(error_reason="DashboardUnreachable", error_message="no route to 10.0.0.1")
    st = status(seen)
    assert conds(st)["Degraded"] == ("True", "DashboardUnreachable")
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == "no route to 10.0.0.1"
    assert conds(st)["Ready"] == ("False", "DashboardUnreachable")


def test_failed_application_is_degraded() -> None:
    app = {"status": "DEPLOY_FAILED", "message": "ImportError:\n  no module", "deployments": {}}
    st = status(Observation(app=app))
    assert conds(st)["Degraded"] == ("True", "ApplicationFailed")
    assert "\n" not in next(c for c in st["conditions"] if c["type"] == "Degraded")["message"]


def test_a_repeated_reconcile_changes_nothing() -> None:
    first = status(Observation(app=healthy_app()), now="t1")
    again = status(Observation(app=healthy_app()), previous=first, now="t2")
    assert not status_changed(first, again)
    assert all(c["lastTransitionTime"] == "t1" for c in again["conditions"])
    broken = status(Observation(error_reason="X", error_message="y"), previous=first, now="t3")
    assert status_changed(first, broken)
    assert (
        next(c for c in broken["conditions"] if c["type"] == "Degraded")["lastTransitionTime"]
        == "t3"
    )


def test_covers_ignores_defaults_but_sees_edits() -> None:
    desired = {"spec": {"a": 1, "list": [{"x": 1.0}]}}
    live = {"spec": {"a": 1, "list": [{"x": 1, "default": True}], "filled": "by-server"}}
    assert covers(desired, live)
    live["spec"]["a"] = 2
    assert not covers(desired, live)
    assert not covers({"l": [1, 2]}, {"l": [1]})


def test_two_writers_of_conditions_do_not_churn() -> None:
    from tierserve.controller.status import condition, merge_conditions

    first = status(Observation(app=healthy_app()), now="t1")
    metrics = condition("MetricsAvailable", True, "SignalsRead", "ok", 3)
    with_metrics = merge_conditions(first["conditions"], [metrics], "t2")
    again = status(Observation(app=healthy_app()), previous={**first, "conditions": with_metrics})
    assert again["conditions"] == with_metrics  # the reconcile keeps the autoscaler's condition
    assert merge_conditions(with_metrics, [metrics], "t3") == with_metrics
