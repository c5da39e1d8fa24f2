"""A ModelTier's status from what the backend reports: pure, typed with the API's status models.

Conditions follow Kubernetes conventions: Ready, Progressing and Degraded are always present
with a reason and a message, and a condition keeps its lastTransitionTime while its status holds.
The reconcile builds the whole status each time and writes only the difference (`merge_patch`),
so a reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from tierserve import cost
from tierserve.api.v1alpha1 import (
    Condition,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    ModelTier,
    ModelTierStatus,
    RoutingMode,
    TierStatus,
)
from tierserve.controller.backend import AppState, BackendError
from tierserve.controller.serve_client import ApplicationStatus
from tierserve.names import INGRESS_DEPLOYMENT, tier_deployment_name

HEALTHY = "HEALTHY"
FAILED_APP_STATES = {ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY}
Reason = ConditionReason


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition of `type_` in a ModelTier status as JSON ({} when there is none); for
    readers of the API server's answers (the demo, the tests)."""
    conditions = (status or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def parse(raw: dict[str, Any] | None) -> ModelTierStatus:
    """The status as the API server has it; one written by an incompatible operator version
    counts as none (it is rebuilt, not refused)."""
    try:
        return ModelTierStatus.model_validate(raw or {})
    except ValidationError:
        return ModelTierStatus()


def dump(status: ModelTierStatus) -> dict[str, Any]:
    """The JSON the operator writes: everything but Kopf's own bookkeeping."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"kopf"})


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) taking `old` to `new`: {} when they are equal.

    A merge patch merges objects key by key, so a key that went away must be sent as null."""
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                out[key] = nested
        elif value != before or key not in old:
            out[key] = value
    return out


def condition(
    type_: ConditionType,
    ok: bool,
    reason: ConditionReason,
    message: str,
    *,
    generation: int,
    previous: ModelTierStatus,
    now: str,
) -> Condition:
    """A condition that keeps its lastTransitionTime while its status holds."""
    status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    old = previous.condition(type_)
    since = old.last_transition_time if old is not None and old.status == status else None
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )


def tier_statuses(mt: ModelTier, app: AppState | None) -> list[TierStatus]:
    deployments = app.deployments if app else {}
    out = []
    for tier in mt.spec.tiers:
        dep = deployments.get(tier_deployment_name(tier.name))
        state = dep.status if dep else ""
        message = (dep.message if dep else "") or (state.lower() if state else "not deployed")
        out.append(
            TierStatus(
                name=tier.name,
                ready=state == HEALTHY,
                replicas=dep.replicas if dep else 0,
                message=message,
            )
        )
    return out


def serving_conditions(
    app: AppState | None,
    error: BackendError | None,
    tiers: list[TierStatus],
    application: str,
) -> list[tuple[ConditionType, bool, ConditionReason, str]]:
    """Ready, Progressing and Degraded from Serve's report or the backend's error."""
    state = app.status if app else ""
    router = app.deployments.get(INGRESS_DEPLOYMENT) if app else None
    ready_count = sum(t.ready for t in tiers)
    counted = f"{ready_count}/{len(tiers)} tiers ready"
    if error is not None:
        degraded = (True, error.reason, str(error))
    elif app is not None and state in FAILED_APP_STATES:
        message = _one_line(app.message) or f"Serve application is {state}"
        degraded = (True, Reason.APPLICATION_FAILED, message)
    else:
        degraded = (False, Reason.AS_EXPECTED, "no errors")

    all_ready = ready_count == len(tiers) > 0 and router is not None and router.status == HEALTHY
    if error is None and state == ApplicationStatus.RUNNING and all_ready:
        ready = (True, Reason.SERVING, counted)
        progressing = (False, Reason.DEPLOYED, "all tiers and the router are serving")
    elif degraded[0]:
        ready = (False, degraded[1], degraded[2])
        progressing = (False, Reason.BLOCKED, "waiting for the error to be fixed")
    else:
        waiting = state or "not yet reported"
        ready = (False, Reason.DEPLOYING, counted)
        progressing = (True, Reason.DEPLOYING, f"Serve application {application} is {waiting}")
    return [
        (ConditionType.READY, *ready),
        (ConditionType.PROGRESSING, *progressing),
        (ConditionType.DEGRADED, *degraded),
    ]


def invalid_conditions(message: str) -> list[tuple[ConditionType, bool, ConditionReason, str]]:
    """The spec does not parse: nothing can be deployed until it is fixed."""
    return [
        (ConditionType.READY, False, Reason.INVALID_SPEC, message),
        (ConditionType.PROGRESSING, False, Reason.INVALID_SPEC, message),
        (ConditionType.DEGRADED, True, Reason.INVALID_SPEC, message),
    ]


def degraded_reason(status: ModelTierStatus) -> str:
    """The reason of a Degraded=True condition, "" when not degraded."""
    cond = status.condition(ConditionType.DEGRADED)
    return cond.reason if cond is not None and cond.status == ConditionStatus.TRUE else ""


def modelled_cost_factor(mt: ModelTier, escalation_rate: float | None) -> float | None:
    """All-top-tier cost / modelled cost at the realized escalation rate (two-rung view)."""
    if escalation_rate is None or len(mt.spec.tiers) < 2:
        return None
    costs = cost.tier_costs(mt.spec)
    shares = cost.kept_small_shares(len(costs), 1.0 - min(max(escalation_rate, 0.0), 1.0))
    cascading = mt.spec.routing.mode in (RoutingMode.CASCADE, RoutingMode.HYBRID)
    return round(cost.reduction(costs, shares, "cascade" if cascading else "upfront"), 3)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
