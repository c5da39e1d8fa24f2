"""The external backend: one Serve application on an existing Ray cluster, through the Serve
REST API of its dashboard (serve_client.py), next to whatever else runs there.

Drift is a typed comparison: the rendered application against the config Serve reports as
deployed, both as `ApplicationConfig`. Serve reports back exactly the fields it was given, so
equal means nothing to do, and a config changed by hand on the cluster is put back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

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
from tierserve.controller.serve_client import (
    ApplicationConfig,
    ServeAPIError,
    ServeClient,
    ServeDetails,
)
from tierserve.names import INGRESS_DEPLOYMENT

T = TypeVar("T")


def observe(details: ServeDetails, app: str) -> Observed:
    seen = details.applications.get(app)
    if seen is None:
        return Observed()
    deployments = {
        name: DeploymentState(status=d.status, message=d.message, replicas=d.running_replicas())
        for name, d in seen.deployments.items()
    }
    config = seen.deployed_app_config
    return Observed(
        app=AppState(status=seen.status, message=seen.message, deployments=deployments),
        threshold=router_threshold(config.user_config(INGRESS_DEPLOYMENT)) if config else None,
    )


def _error(exc: ServeAPIError) -> BackendError:
    if exc.status is None:
        return BackendError(ConditionReason.DASHBOARD_UNREACHABLE, str(exc))
    return BackendError(ConditionReason.SERVE_CONFIG_REJECTED, str(exc))


class External:
    kind = "Serve application"

    def __init__(self, mt: ModelTier, serve: ServeClient | None = None):
        assert mt.spec.ray.dashboard_url  # admission (CEL) guarantees it for this backend
        self.mt = mt
        self.serve = serve or ServeClient(mt.spec.ray.dashboard_url)
        self.application = render.app_name(
            mt.metadata.get("namespace", "default"), mt.metadata["name"]
        )
        self._details: ServeDetails | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking client call, off the event loop, its failures as BackendError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ServeAPIError as exc:
            raise _error(exc) from exc

    async def observe(self) -> Observed:
        self._details = await self._call(self.serve.details)
        return observe(self._details, self.application)

    async def apply(self, threshold: float) -> tuple[Action, Observed]:
        app = ApplicationConfig.model_validate(
            render.serve_application(self.mt, threshold=threshold)
        )
        action = Action(await self._call(self.serve.deploy, app, self._details))
        if action != Action.UNCHANGED or self._details is None:
            await self.observe()  # what Serve makes of the new config
        assert self._details is not None
        return action, observe(self._details, self.application)

    async def remove(self) -> bool:
        return await self._call(self.serve.remove, self.application)
