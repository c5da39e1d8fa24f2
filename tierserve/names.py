"""Names the operator and the serving layer must agree on, in one small dependency-free module.

The controller renders and reads back Serve deployments and applications by these names, and the
serving image builds them: both import this module, so neither imports the other's layer.
"""

from __future__ import annotations

# The Serve application builder the rendered config names (`import_path`).
APP_IMPORT_PATH = "tierserve.serving.app:build_app"
# The ingress deployment: OpenAI-compatible HTTP in front of the tiers ("the router" in the docs).
INGRESS_DEPLOYMENT = "Ingress"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tierserve"}
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
# The Ray the serving image is built on (docker/serving.Dockerfile's RAY_VERSION) and the
# RayCluster a ModelTier asks KubeRay for by default (spec.ray.rayVersion); it must equal the
# `ray[serve]` pin in pyproject.toml. tests/unit/test_images.py checks all of them.
RAY_VERSION = "2.60.0"


def tier_deployment_name(tier: str) -> str:
    """Serve deployment name of a tier's vLLM replicas (status reads it back by this name)."""
    return f"tier-{tier}"


def app_name(namespace: str, name: str) -> str:
    """Serve application name; namespaced so ModelTiers can share one external Ray cluster."""
    return f"{namespace}-{name}"


# Ray CPUs of one router replica (the ingress deployment's num_cpus). On KubeRay the head
# advertises just enough for it (and Serve's controller, which takes none): tier replicas, which
# need more, land on the worker groups.
ROUTER_CPUS = 0.5
# A Ray custom resource only the KubeRay head advertises, one per router replica: the router
# asks for it, so Serve can place it nowhere else (seen on the node without it: Serve put the
# router on a tier's worker, and losing that worker took the router with it).
ROUTER_RESOURCE = "TierserveRouter"
# Ray CPUs of one LLMServer replica actor (ray.serve.llm's default num_cpus). Ray Serve LLM
# merges them into the tier's first placement bundle, so a worker pod needs them on top of the
# engine's bundles.
LLM_REPLICA_CPUS = 1
