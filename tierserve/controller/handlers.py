"""Kopf wiring: what runs the reconcile (reconcile.py) and carrying out what it returns.

One reconcile per ModelTier at a time (a lock in Kopf's per-object memo: Kopf runs timers
beside change handlers), from create, update and resume, and from one timer, so a missed
event, an operator restart or a hand-edited RayService all converge the same way. Its status is
written once per pass through Kopf's `patch`, and only what changed. The operator writes the
ModelTier's status only (Kopf's own bookkeeping included) plus Kopf's finalizer, never its
spec, labels or annotations, so GitOps tools see no drift. Kopf needs the finalizer to stop the
timer cleanly (and, for the external backend, to remove the Serve application): delete
ModelTiers before uninstalling the operator.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf
from kubernetes import config
from pydantic import ValidationError

from tierserve.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelTier
from tierserve.api.v1alpha1 import Backend as BackendKind
from tierserve.autoscale.signals import read_modeltier
from tierserve.controller import metrics
from tierserve.controller.backend import Backend, BackendError
from tierserve.controller.external import External
from tierserve.controller.kuberay import KubeRay
from tierserve.controller.reconcile import Deps, ObjectState, reconcile

RESYNC_SECONDS = float(os.environ.get("TIERSERVE_RESYNC_SECONDS", "30"))
# Kopf gives a timer one interval for all objects; each ModelTier's own (the resync interval,
# or its autoscale interval when shorter) is awaited inside the timer, re-reading the time
# due every RECHECK_SECONDS as a reconcile (or a new interval in the spec) may move it.
TIMER_FLOOR_SECONDS = 0.5
RECHECK_SECONDS = 1.0
STOP_WAIT_SECONDS = 0.2
STOP_POLL_SECONDS = 2.0
logger = logging.getLogger("tierserve.controller")


def backend_for(mt: ModelTier) -> Backend:
    return External(mt) if mt.spec.ray.backend == BackendKind.EXTERNAL else KubeRay(mt)


DEPS = Deps(backend_for=backend_for, read_signals=read_modeltier, resync_seconds=RESYNC_SECONDS)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Bookkeeping in status, not annotations: metadata stays exactly what the user applied.
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.last-handled-configuration"
    )
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    # Kopf's own "Handler ... succeeded" lines stay in the log: as Events they would add one
    # object per pass per ModelTier. Ours (created/updated, Degraded, threshold moves) are
    # posted explicitly with kopf.event, which this level does not filter.
    settings.posting.level = logging.WARNING
    # We watch only ModelTiers in the namespaces we were given: no cluster-wide CRD or namespace
    # scans, which least-privilege RBAC (rightly) forbids.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # A ModelTier's deletion waits for its resync timer to stop. The timer returns within a
    # second of being told (it waits on `stopped`), but when that takes more than Kopf's few
    # zero-time loop cycles, Kopf re-checks only after `cancellation_polling`, 60 s by default:
    # `kubectl delete` then hung for a minute. Wait a little for the exit, re-check often.
    settings.background.instant_exit_timeout = STOP_WAIT_SECONDS
    settings.background.cancellation_polling = STOP_POLL_SECONDS
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    metrics.start_server()


def object_state(memo: kopf.Memo) -> ObjectState:
    """This ModelTier's state; Kopf's memo is per object, and forgotten with it."""
    state = memo.get("tierserve")
    if not isinstance(state, ObjectState):
        state = memo["tierserve"] = ObjectState(next_pass=time.monotonic() + RESYNC_SECONDS)
    return state


async def run(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    """One reconcile, then its one status write (by Kopf, after we return), Events, metrics."""
    started = time.monotonic()
    result = await reconcile(body, object_state(memo), DEPS)
    if result is None:
        return
    for key, value in result.status_patch.items():
        patch.status[key] = value
    namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        logger.log(level, "%s/%s: %s", namespace, name, event.message)
    step = result.step
    if step is not None:
        metrics.observe_policy(
            namespace,
            name,
            threshold=step.live,
            desired=step.decision.desired,
            proposed=step.decision.threshold,
            observing=not step.applied,
            signals=step.signals,
            available=step.available,
            cost_factor=result.cost_factor,
        )
    elif not result.autoscaled:
        metrics.forget(namespace, name)
    metrics.observe_reconcile(result.outcome, time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await run(body, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_FLOOR_SECONDS)
async def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kwargs: Any) -> None:
    """Level-based refresh and the threshold policy's clock: status from the backend, hand
    edits reverted, the threshold moved when its interval is due."""
    stopped: kopf.DaemonStopped = kwargs["stopped"]  # set when the ModelTier or operator goes
    state = object_state(memo)
    while not stopped and (wait := state.next_pass - time.monotonic()) > 0:
        await stopped.wait(min(wait, RECHECK_SECONDS))
    if not stopped:
        await run(body, patch, memo)


@kopf.on.delete(GROUP, VERSION, PLURAL, retries=10)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """KubeRay objects go with their owner (ownerReference); an external app needs removing."""
    namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
    metrics.forget(namespace, name)
    async with object_state(memo).lock:  # after a pass in flight; none starts after this
        try:
            mt = ModelTier.model_validate({"metadata": dict(body.meta), "spec": dict(body.spec)})
        except ValidationError:
            return  # nothing was deployed from a spec that does not parse
        if mt.spec.ray.backend != BackendKind.EXTERNAL:
            return
        backend = backend_for(mt)
        try:
            removed = await backend.remove()
        except BackendError as exc:
            raise kopf.TemporaryError(str(exc), delay=30) from exc
    logger.info(
        "%s/%s: removed Serve application %s: %s", namespace, name, backend.application, removed
    )
