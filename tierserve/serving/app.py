"""The Serve application builder the operator's config names (`tierserve.serving.app:build_app`).

One `ray.serve.llm` LLMServer deployment per tier, named `tier-<name>`, and the Router ingress
bound to their handles. Replica routing within a tier is Serve's (LLMServer's default router).
"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from tierserve.names import INGRESS_DEPLOYMENT, tier_deployment_name
from tierserve.serving.router import Router


def build_app(args: dict[str, Any]) -> Application:
    """`args` is what `tierserve.build.render.serve_application` puts in the Serve config."""
    tiers = []
    for tier in args["tiers"]:
        config = LLMConfig.model_validate(tier["llmConfig"])
        deployment = build_llm_deployment(
            config, override_serve_options={"name": tier_deployment_name(tier["name"])}
        )
        tiers.append((tier["name"], deployment))
    router: Any = Router  # @serve.deployment turns the class into a Deployment
    return router.options(name=INGRESS_DEPLOYMENT).bind(args["modelTier"], tiers)
