"""The ingress's `user_config`, as a model derived from the ModelTier API.

`IngressConfig` *is* the API's `Routing` (mode, cascade, upfront, forceTopTier, fallback,
spillover, limits, shadow, requestTimeoutSeconds) plus what the renderer adds (the ModelTier's
name, its tiers and their prices), so every default and bound exists once, in
`tierserve.api.v1alpha1`. It is parsed once per `reconfigure` (force rules compiled there too),
never per request, and a config the API would refuse fails the reconfigure instead of requests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

from tierserve.api.v1alpha1 import (
    DEFAULT_TOKENS_PER_SECOND,
    Fallback,
    ForceRule,
    Routing,
    TokenPrice,
)
from tierserve.cost import derived_price


@dataclass(frozen=True)
class CompiledRule:
    """One `forceTopTier` category, its keywords and patterns as one case-insensitive regex."""

    name: str
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, rule: ForceRule) -> CompiledRule:
        parts = [rf"\b{re.escape(k)}\b" for k in rule.keywords] + list(rule.patterns)
        joined = "|".join(f"(?:{p})" for p in parts)
        return cls(rule.name, re.compile(joined, re.IGNORECASE) if parts else None)

    def matches(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None


class TierRef(BaseModel):
    """A tier as the ingress needs it: its name, the model id its engine serves, its GPUs, and
    the per-token price its cost ledger charges (the renderer's `tierserve.cost.tier_prices`)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    name: str = Field(min_length=1)
    model_id: str = ""
    gpus: int = Field(default=0, ge=0)
    price: TokenPrice | None = None

    @property
    def token_price(self) -> TokenPrice:
        """Its price; without one (a user_config the renderer did not write), what the
        renderer derives for a spec without costPerHour: GPUs per replica (at least one) per
        hour at the default throughput."""
        if self.price is not None:
            return self.price
        return derived_price(float(max(self.gpus, 1)), DEFAULT_TOKENS_PER_SECOND)

    @model_validator(mode="after")
    def _model_id_defaults_to_name(self) -> TierRef:
        if not self.model_id:
            object.__setattr__(self, "model_id", self.name)
        return self


class IngressConfig(Routing):
    """`spec.routing` as the renderer writes it into the ingress's `user_config`.

    The renderer flattens `escalation` to `threshold` and `bounds` next to the routing fields
    (the autoscaler rewrites only `threshold`); they are folded back into `escalation` here.
    """

    model_config = ConfigDict(frozen=True)

    model_tier: str = Field(min_length=1)
    tiers: list[TierRef] = Field(min_length=1)

    _rules: tuple[CompiledRule, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _fold_escalation(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not {"threshold", "bounds"} & data.keys():
            return data
        data = dict(data)
        escalation = dict(data.pop("escalation", None) or {})
        for key in ("threshold", "bounds"):
            if key in data:
                escalation[key] = data.pop(key)
        return {**data, "escalation": escalation}

    @model_validator(mode="after")
    def _unique_tiers(self) -> IngressConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique: {names}")
        judge = self.shadow.judge_tier
        if judge is not None and judge not in names:
            raise ValueError(f"shadow.judgeTier {judge!r} is not a tier: {names}")
        return self

    def model_post_init(self, context: Any) -> None:
        # re.error for a bad pattern surfaces here, in reconfigure, not on a request.
        self._rules = tuple(CompiledRule.of(rule) for rule in self.force_top_tier)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        return self._rules

    @property
    def threshold(self) -> float:
        return self.escalation.threshold

    @property
    def spill(self) -> str:
        """Where a saturated tier's request goes: `spillover`, unset meaning `fallback`."""
        return str(self.spillover if self.spillover is not None else self.fallback)

    @property
    def parks(self) -> bool:
        """Lower answers are kept while a higher tier is tried, for a move back down to them."""
        return Fallback.PREVIOUS_TIER in (self.fallback, self.spill)

    @property
    def top(self) -> int:
        return len(self.tiers) - 1

    def index(self, tier: str) -> int | None:
        for i, ref in enumerate(self.tiers):
            if ref.name == tier:
                return i
        return None


def config_hash(user_config: dict[str, Any]) -> str:
    """Short fingerprint of a user_config, so anyone can check which one an ingress runs."""
    text = json.dumps(user_config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
