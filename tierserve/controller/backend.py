"""What the reconcile needs from wherever the Serve application runs: a small Protocol, so the
reconcile is tested against a fake (tierserve/controller/fakes.py) and the two real backends
(kuberay.py, external.py) stay thin.

Both real backends report the application the way Serve does (KubeRay copies Serve's
application and deployment statuses into the RayService), so one `AppState` serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from tierserve.api.v1alpha1 import ConditionReason


class Action(StrEnum):
    """What `apply` did; also the reconcile's outcome label in metrics."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class DeploymentState:
    status: str = ""  # Serve's DeploymentStatus: HEALTHY, UPDATING, UNHEALTHY, ...
    message: str = ""
    replicas: int = 0  # running replicas, where the backend reports them


@dataclass(frozen=True)
class AppState:
    """Serve's view of the application."""

    status: str = ""  # Serve's ApplicationStatus: RUNNING, DEPLOYING, DEPLOY_FAILED, ...
    message: str = ""
    deployments: dict[str, DeploymentState] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    """The application as deployed: Serve's status (None: not reported yet) and the router's
    threshold in the deployed config (None: not deployed), which is the live threshold."""

    app: AppState | None = None
    threshold: float | None = None
    # Pods of the application that cannot run, one line each ("pod x: ErrImagePull: ..."):
    # what Serve never reports because its actors never start (kuberay only).
    pod_problems: tuple[str, ...] = ()


class BackendError(Exception):
    """The backend could not be read or refused the config; `reason` goes into Degraded."""

    def __init__(self, reason: ConditionReason, message: str):
        super().__init__(message)
        self.reason = reason


class Backend(Protocol):
    """One ModelTier's Serve application. Calls are bounded; failures raise BackendError."""

    kind: str  # what it manages, for Events: "RayService" or "Serve application"
    application: str  # the Serve application's name

    async def observe(self) -> Observed: ...

    async def apply(self, threshold: float) -> tuple[Action, Observed]:
        """Makes it run the ModelTier with `threshold`; returns what it did and then saw."""
        ...

    async def remove(self) -> bool:
        """Removes what `apply` made, where garbage collection does not (external only)."""
        ...


def router_threshold(user_config: dict[str, Any] | None) -> float | None:
    """The threshold in the router's (Ingress deployment's) user_config, if any."""
    value = (user_config or {}).get("threshold")
    return float(value) if isinstance(value, int | float) else None
