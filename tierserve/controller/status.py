"""Status of a ModelTier from what the backend reports: pure, so every rule has a unit test.

Both backends report the Serve application the way Serve does (KubeRay copies Serve's
application and deployment statuses into the RayService), so one function reads both.
Conditions follow Kubernetes conventions: each of Ready, Progressing and Degraded is always
present with a reason and a message, and keeps its lastTransitionTime while its status holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierserve.api.v1alpha1 import ModelTier
from tierserve.names import INGRESS_DEPLOYMENT, tier_deployment_name

RUNNING = "RUNNING"
FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}
HEALTHY = "HEALTHY"


@dataclass(frozen=True)
class Observation:
    """What the reconcile saw: the app's Serve status, or the error that prevented seeing it."""

    app: dict[str, Any] | None = None  # {"status": ..., "message": ..., "deployments": {...}}
    error_reason: str = ""
    error_message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def find_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition of `type_` in a ModelTier status ({} when there is none)."""
    conditions = (status or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def condition(
    type_: str, status: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: list[dict[str, Any]], new: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Puts `new` conditions in place of those of the same type, in a stable order.

    A condition keeps its lastTransitionTime while its status holds, and conditions of other
    types (MetricsAvailable, written by the threshold autoscaler) are kept, so two writers
    never make each other's next write look like a change.
    """
    pending = {c["type"]: c for c in new}

    def stamped(cond: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        keep = old is not None and old.get("status") == cond["status"]
        since = old.get("lastTransitionTime") if keep and old else now
        return {**cond, "lastTransitionTime": since}

    merged = []
    for old in previous:
        cond = pending.pop(old.get("type", ""), None)
        merged.append(stamped(cond, old) if cond else old)
    merged.extend(stamped(c, None) for c in new if c["type"] in pending)
    return merged


def tier_statuses(mt: ModelTier, app: dict[str, Any] | None) -> list[dict[str, Any]]:
    deployments = (app or {}).get("deployments") or {}
    out = []
    for tier in mt.spec.tiers:
        dep = deployments.get(tier_deployment_name(tier.name)) or {}
        state = dep.get("status", "")
        out.append(
            {
                "name": tier.name,
                "ready": state == HEALTHY,
                "replicas": int(dep.get("replicas", 0) or 0),
                "message": dep.get("message", "") or (state.lower() if state else "not deployed"),
            }
        )
    return out


def compute_status(
    mt: ModelTier,
    generation: int,
    seen: Observation,
    *,
    previous: dict[str, Any] | None,
    now: str,
    threshold: float,
    application: str,
) -> dict[str, Any]:
    """The full status the ModelTier should have after this reconcile."""
    tiers = tier_statuses(mt, seen.app)
    app_state = (seen.app or {}).get("status", "")
    router = ((seen.app or {}).get("deployments") or {}).get(INGRESS_DEPLOYMENT, {})
    all_ready = bool(tiers) and all(t["ready"] for t in tiers) and router.get("status") == HEALTHY
    ready_count = sum(t["ready"] for t in tiers)

    if seen.error_reason:
        degraded = (True, seen.error_reason, seen.error_message)
    elif app_state in FAILED_APP_STATES:
        message = (seen.app or {}).get("message") or f"Serve application is {app_state}"
        degraded = (True, "ApplicationFailed", _one_line(message))
    else:
        degraded = (False, "AsExpected", "no errors")

    ready = app_state == RUNNING and all_ready and not seen.error_reason
    if ready:
        progressing = (False, "Deployed", "all tiers and the router are serving")
        ready_cond = (True, "Serving", f"{ready_count}/{len(tiers)} tiers ready")
    elif degraded[0]:
        progressing = (False, "Blocked", "waiting for the error to be fixed")
        ready_cond = (False, degraded[1], degraded[2])
    else:
        waiting = app_state or "not yet reported"
        progressing = (True, "Deploying", f"Serve application {application} is {waiting}")
        ready_cond = (False, "Deploying", f"{ready_count}/{len(tiers)} tiers ready")

    conditions = [
        condition("Ready", *ready_cond, generation),
        condition("Progressing", *progressing, generation),
        condition("Degraded", *degraded, generation),
    ]
    previous = previous or {}
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions") or [], conditions, now),
        "tiers": tiers,
        "ready": f"{ready_count}/{len(tiers)}",
        "tierNames": ",".join(t.name for t in mt.spec.tiers),
        "application": application,
        "escalation": {
            **(previous.get("escalation") or {}),
            "threshold": threshold,
        },
    }


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def status_changed(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """True when writing `desired` would change something: a no-op reconcile writes nothing."""
    current = current or {}
    return any(current.get(k) != v for k, v in desired.items())
