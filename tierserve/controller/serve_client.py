"""The one client of Ray's Serve REST API (`/api/serve/applications/` on the Ray dashboard).

Typed with the subset of Ray's own schema (`ray.serve.schema.ServeDeploySchema` for PUT,
`ServeInstanceDetails` for GET) that tierserve reads and writes. The operator image carries no
Ray, so the models are ours; tests/unit/test_serve_client.py round-trips them through Ray's.
Fields we do not model are kept (`extra="allow"`), so another application's config goes back
exactly as the cluster reported it.

The API's PUT replaces the whole set of declarative applications, so `deploy` and `remove`
re-send the others unchanged, and the cluster's `http_options` and `proxy_location`: ModelTiers
(and anything else) can share one cluster. Used by the external backend, the dev harness and
the tests alike.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

PATH = "/api/serve/applications/"


class _Schema(BaseModel):
    """Serve's snake_case JSON; unknown fields kept, so a read-modify-write loses nothing."""

    model_config = ConfigDict(extra="allow")


class DeploymentConfig(_Schema):
    """One deployment's overrides in an application config (ray: DeploymentSchema)."""

    name: str
    user_config: dict[str, Any] | None = None


class ApplicationConfig(_Schema):
    """One declarative application (ray: ServeApplicationSchema), as PUT and as deployed."""

    name: str
    import_path: str
    route_prefix: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    deployments: list[DeploymentConfig] = Field(default_factory=list)

    def user_config(self, deployment: str) -> dict[str, Any] | None:
        return next((d.user_config for d in self.deployments if d.name == deployment), None)


class DeployConfig(_Schema):
    """The body of a PUT: every declarative application of the cluster (ServeDeploySchema)."""

    applications: list[ApplicationConfig]
    http_options: dict[str, Any] | None = None
    proxy_location: str | None = None


class ApplicationStatus(StrEnum):
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class Replica(_Schema):
    state: str = ""


class DeploymentDetails(_Schema):
    status: str = ""
    message: str = ""
    replicas: list[Replica] = Field(default_factory=list)

    def running_replicas(self) -> int:
        return sum(r.state == "RUNNING" for r in self.replicas)


class ApplicationDetails(_Schema):
    """An application as Serve reports it (ray: ApplicationDetails)."""

    status: str = ""
    message: str = ""
    route_prefix: str | None = None
    deployed_app_config: ApplicationConfig | None = None  # None: deployed imperatively
    deployments: dict[str, DeploymentDetails] = Field(default_factory=dict)


class ServeDetails(_Schema):
    """GET: the cluster's Serve instance (ray: ServeInstanceDetails; `{}`-ish when not running)."""

    applications: dict[str, ApplicationDetails] = Field(default_factory=dict)
    http_options: dict[str, Any] | None = None
    proxy_location: str | None = None

    def configs(self) -> dict[str, ApplicationConfig]:
        """The declarative applications, which a PUT must repeat to keep them."""
        return {
            name: app.deployed_app_config
            for name, app in self.applications.items()
            if app.deployed_app_config is not None
        }

    def deploy_config(
        self,
        applications: list[ApplicationConfig],
        http_options: dict[str, Any] | None = None,
        proxy_location: str | None = None,
    ) -> DeployConfig:
        """A PUT body with `applications`, keeping the cluster's HTTP settings when it has any
        (they belong to the cluster, and Serve ignores changes to them once running)."""
        config: dict[str, Any] = {"applications": applications}
        # Left out rather than null: Serve's schema has defaults for both, and refuses null.
        if self.http_options or http_options:
            config["http_options"] = self.http_options or http_options
        if self.proxy_location or proxy_location:
            config["proxy_location"] = self.proxy_location or proxy_location
        return DeployConfig.model_validate(config)


class ServeAPIError(Exception):
    """The dashboard could not be reached (`status` None) or answered with an error status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _dump(model: BaseModel) -> dict[str, Any]:
    # exclude_unset: what came back from Serve goes back as it came (Serve itself reports
    # configs with exclude_unset), and what we build carries only what we set.
    return model.model_dump(mode="json", exclude_unset=True)


class ServeClient:
    """Synchronous, bounded (every call has a timeout); the operator runs it in a thread."""

    def __init__(
        self,
        dashboard_url: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = dashboard_url.rstrip("/") + PATH
        self.timeout = timeout
        self.transport = transport

    def _call(self, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            with httpx.Client(transport=self.transport, timeout=self.timeout) as http:
                r = http.request(method, self.url, json=body)
        except httpx.HTTPError as exc:
            raise ServeAPIError(f"Ray dashboard at {self.url} is unreachable: {exc}") from exc
        if not r.is_success:
            text = " ".join(r.text.split())[:300]
            raise ServeAPIError(
                f"Ray dashboard refused {method} {self.url}: {r.status_code} {text}",
                r.status_code,
            )
        return r

    def details(self) -> ServeDetails:
        r = self._call("GET")
        try:
            return ServeDetails.model_validate_json(r.content or b"{}")
        except ValueError as exc:
            raise ServeAPIError(f"unexpected answer from {self.url}: {exc}", r.status_code) from exc

    def put(self, config: DeployConfig) -> None:
        self._call("PUT", _dump(config))

    def deploy(
        self,
        app: ApplicationConfig,
        current: ServeDetails | None = None,
        *,
        http_options: dict[str, Any] | None = None,
        proxy_location: str | None = None,
    ) -> str:
        """Runs `app` next to the cluster's other applications: `created`, `updated`, or
        `unchanged` (nothing sent) when the cluster already runs exactly this config.

        `current` saves a GET when the caller has just read the details; `http_options` and
        `proxy_location` apply only when the cluster has none yet (Serve not started)."""
        current = current or self.details()
        configs = current.configs()
        deployed = configs.get(app.name)
        if deployed is not None and _dump(deployed) == _dump(app):
            return "unchanged"
        configs[app.name] = app
        self.put(current.deploy_config(list(configs.values()), http_options, proxy_location))
        return "created" if deployed is None else "updated"

    def remove(self, name: str, current: ServeDetails | None = None) -> bool:
        """Removes application `name`, keeping the others; False if it was not there."""
        current = current or self.details()
        configs = current.configs()
        if configs.pop(name, None) is None:
            return False
        self.put(current.deploy_config(list(configs.values())))
        return True

    def shutdown(self) -> None:
        """DELETE: every application goes and Serve stops (for dev clusters we own)."""
        self._call("DELETE")
