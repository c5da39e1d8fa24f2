"""Kopf handlers: a thin shell that parses, renders, applies through a backend, writes status.

One level-based `reconcile` serves create, update, resume and a periodic timer, so a missed
event, an operator restart or a hand-edited RayService all converge the same way. The operator
writes the ModelTier's status only (Kopf's own bookkeeping included) plus Kopf's finalizer, never
its spec, labels or annotations, so GitOps tools see no drift. Kopf needs the finalizer to stop the
resync timer and autoscaler daemon cleanly: delete ModelTiers before uninstalling the operator.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from typing import Any, cast

import kopf
from kubernetes import client, config
from pydantic import ValidationError

from tierserve.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelTier
from tierserve.build import render
from tierserve.controller import external, kuberay, metrics
from tierserve.controller.status import (
    Observation,
    compute_status,
    find_condition,
    status_changed,
)

RESYNC_SECONDS = float(os.environ.get("TIERSERVE_RESYNC_SECONDS", "30"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Bookkeeping in status, not annotations: metadata stays exactly what the user applied.
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.last-handled-configuration"
    )
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.level = logging.INFO
    # We watch only ModelTiers in the namespaces we were given: no cluster-wide CRD or namespace
    # scans, which least-privilege RBAC (rightly) forbids.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    metrics.start_server()


def _is_external(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("ray") or {}).get("backend") == "external")


def live_threshold(mt: ModelTier, status: dict[str, Any]) -> float:
    """The autoscaler's threshold when it has set one, else the spec's."""
    value = ((status or {}).get("escalation") or {}).get("threshold")
    autoscaled = mt.spec.routing.escalation.autoscale is not None
    return (
        float(value) if autoscaled and value is not None else mt.spec.routing.escalation.threshold
    )


def apply_backend(mt: ModelTier, threshold: float) -> tuple[str, Observation, str]:
    """Makes the backend run `mt` with `threshold`; returns (action, what it saw, app name).

    Backend failures become an Observation with a reason, never an exception: they are
    reported as a Degraded condition and retried on the next resync, not in a hot loop.
    """
    name, namespace = mt.metadata["name"], mt.metadata.get("namespace", "default")
    action, seen = "unchanged", Observation()
    kuberay_backend = mt.spec.ray.backend == "kuberay"
    application = name if kuberay_backend else render.app_name(namespace, name)
    try:
        if mt.spec.ray.backend == "kuberay":
            action, live = kuberay.KubeRay(client.CustomObjectsApi()).apply(
                render.ray_service(mt, threshold=threshold)
            )
            seen = kuberay.observe(live, application)
        else:
            assert mt.spec.ray.dashboard_url  # admission (CEL) guarantees it
            serve = external.ServeREST(mt.spec.ray.dashboard_url)
            action = serve.apply(render.serve_application(mt, threshold=threshold))
            seen = external.observe(serve.status(), application)
    except external.DashboardError as exc:
        seen = Observation(error_reason=exc.reason, error_message=str(exc))
    except client.ApiException as exc:
        reason = "RayServiceCRDMissing" if exc.status == 404 else "RayServiceRejected"
        detail = _api_message(exc)
        if exc.status == 404:
            detail = "the RayService CRD (ray.io/v1) is not installed: install KubeRay"
        seen = Observation(error_reason=reason, error_message=detail)
    return action, seen, application


def _fresh_escalation(meta: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    """`status.escalation` as the API server has it now, not as this handler's body had it.

    The threshold autoscaler writes it concurrently; a body read before its last write would
    push the previous threshold back to the router and undo the move.
    """
    try:
        obj = cast(
            dict[str, Any],
            client.CustomObjectsApi().get_namespaced_custom_object(
                GROUP, VERSION, meta.get("namespace", "default"), PLURAL, meta["name"]
            ),
        )
    except (client.ApiException, KeyError):
        return fallback
    return dict((obj.get("status") or {}).get("escalation") or fallback)


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger | logging.Logger) -> None:
    started = time.monotonic()
    meta, status = body.get("metadata", {}), dict(body.get("status") or {})
    generation = int(meta.get("generation") or 0)
    try:
        mt = ModelTier.model_validate(
            {"metadata": dict(meta), "spec": dict(body.get("spec") or {})}
        )
    except ValidationError as exc:  # admission normally refuses this first
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _write_invalid(body, patch, generation, f"spec.{where}: {first['msg']}")
        metrics.observe_reconcile("invalid", time.monotonic() - started)
        return

    autoscaled = mt.spec.routing.escalation.autoscale is not None
    if autoscaled:
        status["escalation"] = _fresh_escalation(meta, status.get("escalation") or {})
    threshold = live_threshold(mt, status)
    action, seen, application = apply_backend(mt, threshold)
    if action != "unchanged":
        kind = "RayService" if mt.spec.ray.backend == "kuberay" else "Serve application"
        kopf.info(body, reason=action.capitalize(), message=f"{action} {kind} {application}")
        logger.info("%s %s %s", action, kind, application)
    if seen.error_reason and _degraded_reason(status) != seen.error_reason:
        kopf.warn(body, reason=seen.error_reason, message=seen.error_message)  # once per cause

    desired = compute_status(
        mt,
        generation,
        seen,
        previous=status,
        now=_now(),
        threshold=threshold,
        application=application,
    )
    if autoscaled:  # the threshold autoscaler owns status.escalation; never write a stale copy
        desired.pop("escalation", None)
    if status_changed(status, desired):
        for key, value in desired.items():
            patch.status[key] = value
    outcome = "error" if seen.error_reason else action
    metrics.observe_reconcile(outcome, time.monotonic() - started)


def _degraded_reason(status: dict[str, Any]) -> str:
    cond = find_condition(status, "Degraded")
    return str(cond.get("reason", "")) if cond.get("status") == "True" else ""


def _write_invalid(body: kopf.Body, patch: kopf.Patch, generation: int, message: str) -> None:
    from tierserve.controller.status import condition, merge_conditions

    conditions = [
        condition("Ready", False, "InvalidSpec", message, generation),
        condition("Progressing", False, "InvalidSpec", message, generation),
        condition("Degraded", True, "InvalidSpec", message, generation),
    ]
    previous = dict(body.get("status") or {})
    merged = merge_conditions(previous.get("conditions") or [], conditions, _now())
    if previous.get("conditions") != merged or previous.get("observedGeneration") != generation:
        patch.status["conditions"] = merged
        patch.status["observedGeneration"] = generation


def _api_message(exc: client.ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "").get("message", exc.reason))
    except (ValueError, TypeError, AttributeError):
        return f"{exc.status} {exc.reason}"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    reconcile(body, patch, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Level-based refresh: status from the backend, hand edits of owned objects reverted."""
    reconcile(body, patch, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_is_external, retries=10)
def remove_external(spec: kopf.Spec, meta: kopf.Meta, logger: kopf.Logger, **_: Any) -> None:
    """kuberay objects go with their owner (ownerReferences); an external app needs removing."""
    url = str((spec.get("ray") or {}).get("dashboardURL") or "")
    name = render.app_name(meta.get("namespace", "default"), meta["name"])
    try:
        removed = external.ServeREST(url).remove(name)
    except external.DashboardError as exc:
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    logger.info("removed Serve application %s: %s", name, removed)
