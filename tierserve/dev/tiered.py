"""A ModelTier of the two generated tiny models, deployed on a real Ray head without Kubernetes.

It goes through the same code the operator's external backend uses (render, then the Serve REST
API), so tests and benchmarks of the data path exercise exactly what production deploys.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx

from tierserve.api.v1alpha1 import ModelTier
from tierserve.build import render
from tierserve.controller.serve_client import (
    ApplicationConfig,
    DeployConfig,
    ServeAPIError,
    ServeClient,
)
from tierserve.dev.proc import ComponentError, wait_until
from tierserve.serving.config import config_hash

CPU_ENGINE_ARGS = {
    "enforce_eager": True,
    "dtype": "float32",
    "max_model_len": 256,
    "gpu_memory_utilization": 0.2,
}
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def tiny_modeltier(
    name: str,
    models: dict[str, str],
    *,
    dashboard_url: str,
    route_prefix: str | None = None,
    routing: dict[str, Any] | None = None,
    namespace: str = "local",
) -> dict[str, Any]:
    """A ModelTier manifest: `models` maps tier name (cheapest first) to a model directory."""
    costs = {"small": 0.1, "large": 1.23}
    tiers = [
        {
            "name": tier,
            "model": {"source": path},
            "gpusPerReplica": 0,
            "engineArgs": dict(CPU_ENGINE_ARGS),
            "env": dict(CPU_ENV),
            "costPerHour": costs.get(tier, 1.0),
        }
        for tier, path in models.items()
    ]
    return {
        "apiVersion": "tierserve.io/v1alpha1",
        "kind": "ModelTier",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tiers": tiers,
            "routing": routing or {"mode": "cascade", "escalation": {"threshold": 0.5}},
            "ray": {
                "backend": "external",
                "dashboardURL": dashboard_url,
                "routePrefix": route_prefix or f"/{name}",
            },
        },
    }


class TieredApp:
    """A deployed ModelTier application; `route(...)` changes the router's config in place."""

    def __init__(self, doc: dict[str, Any], serve_url: str):
        self.doc = copy.deepcopy(doc)
        self.mt = ModelTier.model_validate(self.doc)
        self.serve = ServeClient(str(self.mt.spec.ray.dashboard_url), timeout=60)
        self.name = render.app_name(self.mt.metadata["namespace"], self.mt.metadata["name"])
        self.base_url = f"{serve_url.rstrip('/')}{self.mt.spec.ray.route_prefix.rstrip('/')}/v1"
        self.model = self.mt.metadata["name"]

    def deploy(self, timeout: float = 900.0, progress: Any = None) -> None:
        self.serve.deploy(ApplicationConfig.model_validate(render.serve_application(self.mt)))
        seen = {"state": ""}

        def running() -> bool:
            app = self.serve.details().applications.get(self.name)
            state = str(app.status) if app else ""
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                message = " ".join(str(app.message if app else "").split())[:500]
                raise ComponentError("serve application", f"{self.name} is {state}: {message}")
            if progress and state != seen["state"]:
                progress(f"==> {self.name}: {state or 'submitted'}")
            seen["state"] = state
            return state == "RUNNING"

        wait_until(
            running,
            timeout=timeout,
            component="serve application",
            what=f"{self.name} RUNNING",
            interval=2,
            retry=(),
        )

    def route(self, timeout: float = 60.0, **routing: Any) -> None:
        """Merges `routing` into spec.routing and re-applies; only the router config moves."""
        spec_routing = self.doc["spec"].setdefault("routing", {})
        for key, value in routing.items():
            if isinstance(value, dict) and isinstance(spec_routing.get(key), dict):
                spec_routing[key] = {**spec_routing[key], **value}
            else:
                spec_routing[key] = value
        self.mt = ModelTier.model_validate(self.doc)
        app = ApplicationConfig.model_validate(render.serve_application(self.mt))
        self.serve.deploy(app)
        want = config_hash(app.deployments[0].user_config or {})
        url = f"{self.base_url[:-3]}/tierserve/config"
        wait_until(
            lambda: httpx.get(url, timeout=5).json()["configHash"] == want,
            timeout=timeout,
            component="router",
            what=f"serving config {want}",
            interval=0.3,
            retry=(httpx.HTTPError, KeyError, ValueError),
        )

    def remove(self) -> None:
        self.serve.remove(self.name)


def complete(app: TieredApp, prompt: str, model: str | None = None, **extra: Any) -> httpx.Response:
    """One greedy /v1/completions call through the app's router (4 tokens unless overridden)."""
    body = {"model": model or app.model, "prompt": prompt, "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{app.base_url}/completions", json={**body, **extra}, timeout=120)


def serve_on_loopback(dashboard_url: str, port: int) -> None:
    """Starts Serve's HTTP proxy on 127.0.0.1:`port` unless Serve already runs.

    The proxy belongs to the cluster, not to an app, and its address is fixed once Serve has
    started, so this only acts on a fresh cluster (and never touches running applications).
    """
    serve = ServeClient(dashboard_url, timeout=120)
    current = serve.details()
    if current.applications or (current.http_options or {}).get("port") == port:
        return
    http_options = {"host": "127.0.0.1", "port": port}
    try:
        serve.put(DeployConfig(applications=[], http_options=http_options))
    except ServeAPIError as exc:
        raise ComponentError("serve", f"could not start the HTTP proxy: {exc}") from exc
