"""The kuberay backend: one RayService per ModelTier, owned by it (garbage collection removes it).

The RayService is written by server-side apply with the field manager `tierserve` and `force`:
the API server merges what we render with what others own, so defaults the API server or
KubeRay fill in never look like drift, a hand edit of a field we render is taken back, and a
reconcile that renders the same object changes nothing (no new resourceVersion).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any, cast

import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from tierserve.api.v1alpha1 import ConditionReason, ModelTier
from tierserve.build import render
from tierserve.controller.backend import (
    Action,
    AppState,
    BackendError,
    DeploymentState,
    Observed,
    router_threshold,
)
from tierserve.controller.serve_client import DeployConfig
from tierserve.names import INGRESS_DEPLOYMENT

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
CLUSTERS = "rayclusters"
JSON_PATCH = "application/json-patch+json"
BOUNDS = ("minReplicas", "maxReplicas")

logger = logging.getLogger("tierserve.controller")
FIELD_MANAGER = "tierserve"
APPLY = "application/apply-patch+yaml"  # the client sends the dict as JSON, which is YAML


class _Status(BaseModel):
    """The part of RayService.status KubeRay mirrors from Serve (camelCase, the rest ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class _Deployment(_Status):
    status: str = ""
    message: str = ""


class _Application(_Status):
    status: str = ""
    message: str = ""
    serve_deployment_statuses: dict[str, _Deployment] = Field(default_factory=dict)


class _ServiceStatus(_Status):
    application_statuses: dict[str, _Application] = Field(default_factory=dict)


class _RayServiceStatus(_Status):
    active_service_status: _ServiceStatus = Field(default_factory=_ServiceStatus)
    pending_service_status: _ServiceStatus = Field(default_factory=_ServiceStatus)


# A container waiting for one of these will not start without a change (to the spec, a Secret,
# the image, the node): the kubelet's own reason and message say which.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


def cluster_names(live: dict[str, Any] | None) -> list[str]:
    """The RayClusters a RayService runs on (active, and pending during a change)."""
    status = (live or {}).get("status") or {}
    names = [
        (status.get(key) or {}).get("rayClusterName")
        for key in ("activeServiceStatus", "pendingServiceStatus")
    ]
    return [n for n in names if isinstance(n, str) and n]


def pod_problems(pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """One line per pod that cannot run, in the kubelet's and scheduler's own words: a
    container stuck waiting (STUCK_REASONS) or a pod the scheduler cannot place."""
    out: list[tuple[bool, str]] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        found = ""
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                message = waiting.get("message") or ""
                found = f"{waiting['reason']}{': ' + message if message else ''}"
                break
        if not found:
            for cond in status.get("conditions") or []:
                if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                    "PodScheduled",
                    "False",
                    "Unschedulable",
                ):
                    found = f"Unschedulable: {cond.get('message') or ''}".rstrip(": ")
        if found:
            # A stuck container is definite; Unschedulable may pass (pods terminating, a node
            # being added), so it comes after them in the (truncated) condition message.
            out.append((found.startswith("Unschedulable"), f"pod {name}: {found}"))
    return tuple(line for _, line in sorted(out))


def bound_patch(desired: dict[str, Any], cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations that give a RayCluster's worker groups the bounds the RayService
    asks for ([] when they have them).

    KubeRay leaves replicas and their bounds out of the spec hash it compares (the Ray
    autoscaler owns `replicas`), so it never copies new bounds from a RayService to a running
    RayCluster: without this a tier raised past its first `replicas.max` gets no new worker.
    Each group's operations start with a `test` of its name, so a list that changed order
    under us fails the patch instead of bounding the wrong group; `replicas` is clamped into
    the new bounds, as KubeRay itself would read it."""
    config = (desired.get("spec") or {}).get("rayClusterConfig") or {}
    want = {g["groupName"]: g for g in config.get("workerGroupSpecs") or []}
    ops: list[dict[str, Any]] = []
    for i, group in enumerate((cluster.get("spec") or {}).get("workerGroupSpecs") or []):
        goal = want.get(group.get("groupName"))
        if goal is None:
            continue
        path = f"/spec/workerGroupSpecs/{i}"
        changes = [
            {
                "op": "replace" if key in group else "add",
                "path": f"{path}/{key}",
                "value": goal[key],
            }
            for key in BOUNDS
            if group.get(key) != goal[key]
        ]
        if not changes:
            continue
        ops += [{"op": "test", "path": f"{path}/groupName", "value": group["groupName"]}, *changes]
        replicas = group.get("replicas")
        if isinstance(replicas, int):
            clamped = min(max(replicas, goal["minReplicas"]), goal["maxReplicas"])
            if clamped != replicas:
                ops.append({"op": "replace", "path": f"{path}/replicas", "value": clamped})
    return ops


def observe(live: dict[str, Any] | None, app: str) -> Observed:
    """Serve's status as KubeRay mirrors it, and the threshold in the live serveConfigV2.

    The active cluster's application, or, while there is none (the first deployment, found
    on the real node: KubeRay reports the cluster it is preparing as pending until the
    application is RUNNING), the pending one's: per-tier progress shows from the start."""
    if live is None:
        return Observed()
    try:
        status = _RayServiceStatus.model_validate(live.get("status") or {})
        seen = status.active_service_status.application_statuses.get(
            app
        ) or status.pending_service_status.application_statuses.get(app)
    except ValidationError:
        seen = None
    state = None
    if seen is not None:
        deployments = {
            name: DeploymentState(status=d.status, message=d.message)
            for name, d in seen.serve_deployment_statuses.items()
        }
        state = AppState(status=seen.status, message=seen.message, deployments=deployments)
    return Observed(app=state, threshold=_deployed_threshold(live, app))


def _deployed_threshold(live: dict[str, Any], app: str) -> float | None:
    try:
        config = DeployConfig.model_validate(
            yaml.safe_load((live.get("spec") or {}).get("serveConfigV2") or "")
        )
    except (yaml.YAMLError, ValidationError):
        return None
    deployed = next((a for a in config.applications if a.name == app), None)
    return router_threshold(deployed.user_config(INGRESS_DEPLOYMENT)) if deployed else None


def _error(exc: ApiException) -> BackendError:
    if exc.status == 404:  # on apply: the resource type itself is unknown
        return BackendError(
            ConditionReason.RAY_SERVICE_CRD_MISSING,
            "the RayService CRD (ray.io/v1) is not installed: install KubeRay",
        )
    try:
        message = str(json.loads(exc.body or "").get("message") or exc.reason)
    except (ValueError, TypeError, AttributeError):
        message = f"{exc.status} {exc.reason}"
    return BackendError(ConditionReason.RAY_SERVICE_REJECTED, message)


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Did the apply change what we own? Status writes by KubeRay move resourceVersion, so
    compare what an apply can change: the spec (generation), labels and owners."""
    old, new = before.get("metadata") or {}, after.get("metadata") or {}
    return any(old.get(k) != new.get(k) for k in ("generation", "labels", "ownerReferences"))


class KubeRay:
    kind = "RayService"

    def __init__(
        self,
        mt: ModelTier,
        api: client.CustomObjectsApi | None = None,
        core: client.CoreV1Api | None = None,
    ):
        self.mt = mt
        self.api = api or client.CustomObjectsApi()
        self.core = core or client.CoreV1Api()
        self._pods: tuple[str, ...] = ()
        self.name = mt.metadata["name"]
        self.namespace = mt.metadata.get("namespace", "default")
        self.application = self.name  # one application per RayService: no namespacing needed
        self._live: dict[str, Any] | None = None
        self._observed = False

    def _get(self) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.api.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name
                ),
            )
        except ApiException as exc:
            if exc.status == 404:  # not created yet, or no CRD: the apply tells which
                return None
            raise _error(exc) from exc

    def _apply(self, desired: dict[str, Any]) -> dict[str, Any]:
        try:
            return cast(
                dict[str, Any],
                self.api.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    desired,
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type=APPLY,
                ),
            )
        except ApiException as exc:
            raise _error(exc) from exc

    def _pod_problems(self, live: dict[str, Any] | None) -> tuple[str, ...]:
        """Pods of the RayService's clusters that cannot run; () when they cannot be listed
        (an older chart without the `pods: list` rule): the rest of the status still holds."""
        pods: list[dict[str, Any]] = []
        for cluster in cluster_names(live):
            try:
                found = self.core.list_namespaced_pod(
                    self.namespace, label_selector=f"ray.io/cluster={cluster}", _request_timeout=10
                )
            except (ApiException, urllib3.exceptions.HTTPError):
                return ()
            pods += [client.ApiClient().sanitize_for_serialization(p) for p in found.items]
        return pod_problems(pods)

    def _bound_clusters(self, desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
        """Gives the RayService's clusters the worker-group bounds it asks for (see
        `bound_patch`); True when one was patched. A cluster that cannot be read or patched
        (not made yet, an older chart without the `rayclusters` rule, a list that moved) is
        left for the next reconcile: the RayService itself is already right."""
        patched = False
        for name in cluster_names(live):
            try:
                cluster = self.api.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, CLUSTERS, name, _request_timeout=10
                )
                ops = bound_patch(desired, cast(dict[str, Any], cluster))
                if ops:
                    self.api.patch_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, CLUSTERS, name, ops,
                        _content_type=JSON_PATCH, _request_timeout=10,
                    )  # fmt: skip
                    patched = True
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                logger.warning("worker-group bounds of RayCluster %s not set: %s", name, exc)
        return patched

    async def observe(self) -> Observed:
        self._live = await asyncio.to_thread(self._get)
        self._observed = True
        self._pods = await asyncio.to_thread(self._pod_problems, self._live)
        return replace(observe(self._live, self.application), pod_problems=self._pods)

    async def apply(self, threshold: float) -> tuple[Action, Observed]:
        desired = render.ray_service(self.mt, threshold=threshold)
        if not self._observed:  # the action is relative to what was there
            await self.observe()
        before = self._live
        after = await asyncio.to_thread(self._apply, desired)
        self._live = after
        bounded = await asyncio.to_thread(self._bound_clusters, desired, after)
        if before is None:
            action = Action.CREATED
        else:
            changed = _changed(before, after) or bounded
            action = Action.UPDATED if changed else Action.UNCHANGED
        return action, replace(observe(after, self.application), pod_problems=self._pods)

    async def remove(self) -> bool:
        return False  # the ownerReference lets garbage collection remove the RayService
