"""A ModelTier's status from what the backend reports: pure, typed with the API's status models.

Conditions follow Kubernetes conventions: Ready, Progressing and Degraded are always present
with a reason and a message, and a condition keeps its lastTransitionTime while its status holds.
The reconcile builds the whole status each time and writes only the difference (`merge_patch`),
so a reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
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
    QualityStatus,
    RouterQuality,
    RoutingMode,
    TierQuality,
    TierStatus,
)
from tierserve.controller.backend import AppState, BackendError
from tierserve.controller.serve_client import ApplicationStatus
from tierserve.names import INGRESS_DEPLOYMENT, tier_deployment_name

HEALTHY = "HEALTHY"
FAILED_APP_STATES = {ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY}
# Serve's deployment message while it retries a replica whose constructor raised (vLLM could
# not load the model, the engine ran out of memory): the deployment stays UPDATING for minutes
# (several engine starts) before the application turns DEPLOY_FAILED.
SERVE_RETRYING = "failed to start"


def failing_replicas(app: AppState) -> list[str]:
    """`<deployment>: <Serve's message>` for each deployment whose replicas fail to start."""
    return [
        f"{name}: {dep.message}"
        for name, dep in sorted(app.deployments.items())
        if dep.status != HEALTHY and SERVE_RETRYING in dep.message.lower()
    ]


Reason = ConditionReason


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at small n and near 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def quality_status(
    verdicts: dict[str, tuple[float, float]], escalation_rate: float | None
) -> QualityStatus | None:
    """Per lower tier, the win+tie rate of kept answers; and the router against always-top:
    escalated answers are the top tier's own (ties), kept ones win or tie at the pooled rate."""
    if not verdicts:
        return None
    tiers = []
    for tier, (agreed, judged) in sorted(verdicts.items()):
        n = round(judged)
        if n <= 0:
            tiers.append(TierQuality(tier=tier))
            continue
        low, high = wilson(agreed, judged)
        tiers.append(
            TierQuality(
                tier=tier,
                samples=n,
                win_or_tie_rate=round(agreed / judged, 4),
                low=round(low, 4),
                high=round(high, 4),
            )
        )
    agreed = sum(a for a, _ in verdicts.values())
    judged = sum(j for _, j in verdicts.values())
    router = None
    if judged > 0 and escalation_rate is not None:
        e = min(max(escalation_rate, 0.0), 1.0)
        low, high = wilson(agreed, judged)
        router = RouterQuality(
            not_worse_rate=round(e + (1 - e) * agreed / judged, 4),
            low=round(e + (1 - e) * low, 4),
            high=round(e + (1 - e) * high, 4),
            samples=round(judged),
        )
    return QualityStatus(tiers=tiers, router_vs_top_tier=router)


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
    pod_problems: Sequence[str] = (),
) -> list[tuple[ConditionType, bool, ConditionReason, str]]:
    """Ready, Progressing and Degraded from Serve's report, the backend's error, or pods that
    cannot run (an image that does not exist, a missing Secret, a crash loop): those keep
    Serve at DEPLOYING for ever, so they are named instead of a silent "deploying"."""
    state = app.status if app else ""
    router = app.deployments.get(INGRESS_DEPLOYMENT) if app else None
    ready_count = sum(t.ready for t in tiers)
    counted = f"{ready_count}/{len(tiers)} tiers ready"
    if error is not None:
        degraded = (True, error.reason, str(error))
    elif app is not None and state in FAILED_APP_STATES:
        message = _one_line(app.message) or f"Serve application is {state}"
        degraded = (True, Reason.APPLICATION_FAILED, message)
    elif app is not None and (failing := failing_replicas(app)):
        degraded = (True, Reason.REPLICAS_FAILING, _one_line("; ".join(failing)))
    elif pod_problems:
        shown = "; ".join(pod_problems[:3])
        more = f" (and {len(pod_problems) - 3} more)" if len(pod_problems) > 3 else ""
        degraded = (True, Reason.PODS_FAILING, _one_line(shown) + more)
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
    costs = cost.request_costs(mt.spec)
    shares = cost.kept_small_shares(len(costs), 1.0 - min(max(escalation_rate, 0.0), 1.0))
    cascading = mt.spec.routing.mode in (RoutingMode.CASCADE, RoutingMode.HYBRID)
    return round(cost.reduction(costs, shares, "cascade" if cascading else "upfront"), 3)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
