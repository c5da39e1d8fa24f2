"""The threshold autoscaler: one Kopf daemon per ModelTier with `escalation.autoscale`.

Every interval it reads signals from Prometheus, asks the pure policy
(`tierserve.autoscale.policy`) for the next threshold, records it in status (with the signals
and the reason), and pushes it to the
router's user_config through the same backend code the reconcile uses, so no replica restarts.
The spec is never written. When signals are missing the policy holds, then walks back to the
spec's value after a grace period, and `MetricsAvailable=False` says why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import httpx
import kopf
from kubernetes import client
from pydantic import ValidationError

from tierserve import cost
from tierserve.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelTier
from tierserve.autoscale.policy import Decision, PolicyMemory, PolicyParams, decide
from tierserve.autoscale.signals import queries, read_signals
from tierserve.controller import metrics
from tierserve.controller.status import condition, merge_conditions

logger = logging.getLogger("tierserve.autoscale")


def _has_autoscale(spec: kopf.Spec, **_: Any) -> bool:
    return bool(((spec.get("routing") or {}).get("escalation") or {}).get("autoscale"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def modelled_cost_factor(mt: ModelTier, escalation_rate: float | None) -> float | None:
    """All-top-tier cost / modelled cost at the realized escalation rate (two-rung view)."""
    if escalation_rate is None or len(mt.spec.tiers) < 2:
        return None
    costs = cost.tier_costs(mt.spec)
    shares = cost.kept_small_shares(len(costs), 1.0 - min(max(escalation_rate, 0.0), 1.0))
    mode = "cascade" if mt.spec.routing.mode in ("cascade", "hybrid") else "upfront"
    return round(cost.reduction(costs, shares, mode), 3)


def status_patch(
    mt: ModelTier,
    previous: dict[str, Any],
    decision: Decision,
    signals: dict[str, float],
    available: bool,
    error: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    """The status fields the autoscaler owns (pure, so tests can check every branch)."""
    old = previous.get("escalation") or {}
    changed = old.get("threshold") != decision.threshold
    if available:
        cond = condition(
            "MetricsAvailable", True, "SignalsRead", "signals read from Prometheus", generation
        )
    else:
        why = error or "no usable samples for the escalation rate, queue or latency"
        cond = condition("MetricsAvailable", False, "SignalsUnavailable", why, generation)
    escalation = {
        "threshold": decision.threshold,
        "desiredThreshold": decision.desired,
        "reason": decision.reason,
        "lastChangeTime": now if changed else old.get("lastChangeTime"),
        "signals": signals,
    }
    out: dict[str, Any] = {
        "escalation": {k: v for k, v in escalation.items() if v is not None},
        "conditions": merge_conditions(previous.get("conditions") or [], [cond], now),
    }
    reduction = modelled_cost_factor(mt, signals.get("escalationRate"))
    if reduction is not None:
        out["modelledCostFactor"] = reduction
    return out


@kopf.daemon(GROUP, VERSION, PLURAL, when=_has_autoscale, cancellation_timeout=10)
async def threshold_autoscaler(
    body: kopf.Body, name: str, namespace: str | None, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    namespace = namespace or "default"
    from tierserve.controller.handlers import apply_backend

    api = client.CustomObjectsApi()
    memory = PolicyMemory()
    async with httpx.AsyncClient() as http:
        while not stopped:
            try:
                mt = ModelTier.model_validate(
                    {"metadata": dict(body["metadata"]), "spec": dict(body["spec"])}
                )
            except ValidationError:
                return  # the reconcile reports invalid specs
            auto = mt.spec.routing.escalation.autoscale
            if auto is None:
                return
            params = PolicyParams.from_spec(mt.spec.routing.escalation, mt.spec.routing.mode)
            status = dict(body.get("status") or {})
            current = float(
                (status.get("escalation") or {}).get("threshold")
                or mt.spec.routing.escalation.threshold
            )
            top = mt.spec.tiers[-1]
            promql = queries(name, top.name, top.model.id or top.name, auto.interval)
            reading = await read_signals(http, auto.prometheus_url, promql)
            decision = decide(current, reading.signals, params, memory)
            memory = decision.memory
            available = reading.signals.available()
            signals = reading.signals.as_status()
            generation = int(body["metadata"].get("generation") or 0)
            patch = status_patch(
                mt, status, decision, signals, available, reading.error, generation, _now()
            )
            metrics.observe_threshold(
                namespace, name, decision, signals, available, patch.get("modelledCostFactor")
            )
            if decision.threshold != current:
                # Router first, status second: status never claims a threshold not in effect.
                await asyncio.to_thread(apply_backend, mt, decision.threshold)
                kopf.info(
                    body,
                    reason=decision.constraint,
                    message=f"threshold {current:g} -> {decision.threshold:g}: {decision.reason}",
                )
            if _differs(status, patch):
                await asyncio.to_thread(
                    api.patch_namespaced_custom_object_status,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"status": patch},
                )
            await stopped.wait(params.interval_seconds)


def _differs(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    for key, value in patch.items():
        if key == "escalation":
            old = status.get("escalation") or {}
            if any(old.get(k) != v for k, v in value.items()):
                return True
        elif status.get(key) != value:
            return True
    return False
