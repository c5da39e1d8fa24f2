"""Fakes of the two things the reconcile talks to, for fast unit tests (KubeRay keeps its fake
dashboard client next to the real one for the same reason): a `Backend` that remembers what was
applied, and a Ray dashboard's Serve REST API as an httpx transport for `ServeClient`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tierserve.api.v1alpha1 import ModelTier
from tierserve.build import render
from tierserve.controller.backend import (
    Action,
    AppState,
    BackendError,
    DeploymentState,
    Observed,
    router_threshold,
)
from tierserve.names import INGRESS_DEPLOYMENT, tier_deployment_name


class FakeBackend:
    """One application; state survives across reconciles (`bind` it to each one's ModelTier).

    `app` is what Serve reports, `error` makes every call fail, `applies` counts the applies
    that changed something."""

    kind = "RayService"

    def __init__(self) -> None:
        self.mt: ModelTier | None = None
        self.application = ""
        self.deployed: dict[str, Any] | None = None  # the rendered application, as applied
        self.app: AppState | None = None
        self.error: BackendError | None = None
        self.applies = 0

    def bind(self, mt: ModelTier) -> FakeBackend:
        self.mt, self.application = mt, mt.metadata["name"]
        return self

    def serving(self, status: str = "RUNNING", health: str = "HEALTHY") -> None:
        """Serve reports the application `status`, every tier and the router `health`."""
        assert self.mt is not None
        names = [tier_deployment_name(t.name) for t in self.mt.spec.tiers] + [INGRESS_DEPLOYMENT]
        deployments = {n: DeploymentState(status=health, replicas=1) for n in names}
        self.app = AppState(status=status, deployments=deployments)

    @property
    def threshold(self) -> float | None:
        """The router's threshold as deployed (what the reconcile reads back)."""
        if self.deployed is None:
            return None
        return router_threshold(self.deployed["deployments"][0]["user_config"])

    async def observe(self) -> Observed:
        if self.error:
            raise self.error
        return Observed(app=self.app, threshold=self.threshold)

    async def apply(self, threshold: float) -> tuple[Action, Observed]:
        if self.error:
            raise self.error
        assert self.mt is not None
        desired = render.serve_application(self.mt, threshold=threshold)
        action = Action.UNCHANGED
        if desired != self.deployed:
            action = Action.CREATED if self.deployed is None else Action.UPDATED
            self.deployed = desired
            self.applies += 1
        return action, Observed(app=self.app, threshold=self.threshold)

    async def remove(self) -> bool:
        removed, self.deployed = self.deployed is not None, None
        return removed


class FakeDashboard:
    """The Serve REST API of a Ray dashboard, in memory: `ServeClient(url, transport=fake)`.

    Behaves like Ray's: GET reports each declarative application with the config it was given
    (exactly the fields set), PUT replaces the whole set, DELETE stops Serve. `status` sets what
    an application reports (default RUNNING, every deployment HEALTHY); `down` makes the
    dashboard unreachable; `refuse` answers every PUT with that HTTP status."""

    def __init__(self, http_options: dict[str, Any] | None = None) -> None:
        self.configs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.http_options = http_options
        self.proxy_location: str | None = None
        self.down = False
        self.refuse = 0
        self.puts: list[dict[str, Any]] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET":
            return httpx.Response(200, json=self.details())
        if request.method == "DELETE":
            self.configs.clear()
            self.http_options = self.proxy_location = None
            return httpx.Response(200)
        if self.refuse:
            return httpx.Response(self.refuse, text="ValidationError: refused by the fake")
        body = json.loads(request.content)
        self.puts.append(body)
        self.configs = {app["name"]: app for app in body["applications"]}
        self.http_options = self.http_options or body.get("http_options")
        self.proxy_location = self.proxy_location or body.get("proxy_location")
        return httpx.Response(200)

    def details(self) -> dict[str, Any]:
        apps = {}
        for name, config in self.configs.items():
            # The deployments the app builds: those its config names, plus, for ours, the
            # tiers (tierserve.serving.app builds `tier-<name>` per args.tiers).
            names = [d["name"] for d in config.get("deployments") or []]
            tiers = (config.get("args") or {}).get("tiers") or []
            names += [tier_deployment_name(t["name"]) for t in tiers if isinstance(t, dict)]
            names = list(dict.fromkeys(names))  # a tier's overrides name it too
            apps[name] = {
                "name": name,
                "status": self.status.get(name, "RUNNING"),
                "message": "",
                "route_prefix": config.get("route_prefix"),
                "deployed_app_config": config,
                "deployments": {
                    n: {"status": "HEALTHY", "message": "", "replicas": [{"state": "RUNNING"}]}
                    for n in names
                },
            }
        out: dict[str, Any] = {"controller_info": {}, "proxies": {}, "applications": apps}
        if self.http_options:
            out["http_options"] = self.http_options
        if self.proxy_location:
            out["proxy_location"] = self.proxy_location
        return out
