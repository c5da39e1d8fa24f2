"""The Serve application builder the operator's config names (`tierserve.serving.app:build_app`).

One `ray.serve.llm` LLMServer deployment per tier, named `tier-<name>`, and the ingress
(`tierserve.serving.ingress.deployment`, named `INGRESS_DEPLOYMENT`) bound to their handles.
Replica routing within a tier is Serve's (LLMServer's default request router). The args are
validated first, as `ray.serve.llm`'s builders validate `LLMServingArgs`, so a bad application
fails to build with the field named instead of failing on a replica.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from tierserve.names import tier_deployment_name
from tierserve.serving.ingress import deployment


class _Args(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class TierArgs(_Args):
    name: str = Field(min_length=1)
    llm_config: LLMConfig


class TieredServingArgs(_Args):
    """What `tierserve.build.render.serve_application` writes as the application's `args`."""

    model_tier: str = Field(min_length=1)
    tiers: list[TierArgs] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tiers(self) -> TieredServingArgs:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique: {names}")
        return self


def build_app(args: dict[str, Any]) -> Application:
    """The ModelTier's Serve application, from the args the operator rendered."""
    spec = TieredServingArgs.model_validate(args)
    tiers = [
        (
            tier.name,
            build_llm_deployment(
                tier.llm_config, override_serve_options={"name": tier_deployment_name(tier.name)}
            ),
        )
        for tier in spec.tiers
    ]
    return deployment.bind(spec.model_tier, tiers)
