"""The kuberay backend: keeps one RayService, owned by the ModelTier, equal to what was rendered.

Only the fields tierserve renders are compared, so defaults the API server or KubeRay fill in
never look like drift (no write on a no-op reconcile), while a hand edit of a rendered field is
reverted on the next reconcile.
"""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tierserve.controller.drift import covers
from tierserve.controller.status import Observation

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"


def _obj(value: object) -> dict[str, Any]:
    """The kubernetes client types custom objects as `object`; they are JSON dicts."""
    return cast(dict[str, Any], value)


class KubeRay:
    def __init__(self, api: client.CustomObjectsApi):
        self.api = api

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _obj(
                self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, desired: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Creates or corrects the RayService; returns (created | updated | unchanged, live)."""
        meta = desired["metadata"]
        live = self.get(meta["namespace"], meta["name"])
        if live is None:
            created = self.api.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, desired
            )
            return "created", _obj(created)
        wanted = {"spec": desired["spec"], "metadata": {"labels": meta["labels"]}}
        if "ownerReferences" in meta:
            wanted["metadata"]["ownerReferences"] = meta["ownerReferences"]
        if covers(wanted, live):
            return "unchanged", live
        # A merge patch replaces lists wholesale, which is what we want for rendered lists.
        patched = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], wanted
        )
        return "updated", _obj(patched)


def observe(live: dict[str, Any] | None, app: str) -> Observation:
    """Reads Serve's application status as KubeRay mirrors it into the RayService."""
    status = (live or {}).get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    seen = apps.get(app)
    if seen is None:
        return Observation(app=None)
    deployments = {
        name: {"status": d.get("status", ""), "message": d.get("message", "")}
        for name, d in (seen.get("serveDeploymentStatuses") or {}).items()
    }
    return Observation(
        app={
            "status": seen.get("status", ""),
            "message": seen.get("message", ""),
            "deployments": deployments,
        }
    )
