"""The external backend: one Serve application on an existing Ray cluster, through the Serve
REST API of its dashboard (`/api/serve/applications/`).

That API takes the whole declarative config at once, so deploying or removing our application
re-sends the other applications' configs unchanged: ModelTiers can share one cluster.
"""

from __future__ import annotations

from typing import Any

import httpx

from tierserve.controller.drift import covers
from tierserve.controller.status import Observation

PATH = "/api/serve/applications/"


class DashboardError(Exception):
    """The dashboard could not be reached or refused the config; `reason` is for conditions."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ServeREST:
    def __init__(self, dashboard_url: str, timeout: float = 10.0):
        self.url = dashboard_url.rstrip("/") + PATH
        self.timeout = timeout

    def _call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = httpx.request(method, self.url, json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise DashboardError(
                "DashboardUnreachable", f"Ray dashboard at {self.url} is unreachable: {exc}"
            ) from exc
        if r.status_code >= 400:
            raise DashboardError(
                "ServeConfigRejected",
                f"Ray dashboard refused {method} {self.url}: {r.status_code} {r.text[:300]}",
            )
        return dict(r.json()) if r.content else {}

    def status(self) -> dict[str, Any]:
        return self._call("GET")

    @staticmethod
    def deployed_configs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            name: app["deployed_app_config"]
            for name, app in (status.get("applications") or {}).items()
            if app.get("deployed_app_config")
        }

    def apply(self, app: dict[str, Any]) -> str:
        """Deploys `app` unless the cluster already runs exactly that config."""
        status = self.status()
        configs = self.deployed_configs(status)
        if covers(app, configs.get(app["name"])):
            return "unchanged"
        action = "updated" if app["name"] in configs else "created"
        configs[app["name"]] = app
        self._put(status, configs)
        return action

    def remove(self, name: str) -> bool:
        status = self.status()
        configs = self.deployed_configs(status)
        if name not in configs:
            return False
        del configs[name]
        self._put(status, configs)
        return True

    def _put(self, status: dict[str, Any], configs: dict[str, dict[str, Any]]) -> None:
        """PUT the whole config, keeping the cluster's HTTP settings (they are not ours)."""
        body: dict[str, Any] = {"applications": list(configs.values())}
        for key in ("http_options", "proxy_location"):
            if status.get(key):
                body[key] = status[key]
        self._call("PUT", body)


def observe(status: dict[str, Any], app: str) -> Observation:
    seen = (status.get("applications") or {}).get(app)
    if seen is None:
        return Observation(app=None)
    deployments = {
        name: {
            "status": d.get("status", ""),
            "message": d.get("message", ""),
            "replicas": sum(1 for r in d.get("replicas") or [] if r.get("state") == "RUNNING"),
        }
        for name, d in (seen.get("deployments") or {}).items()
    }
    return Observation(
        app={
            "status": seen.get("status", ""),
            "message": seen.get("message", ""),
            "deployments": deployments,
        }
    )
