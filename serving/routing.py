"""Routing decisions: pure, fast functions of the router's config and what a tier returned.

One meaning of the threshold everywhere: a request goes up a rung when its escalation score is
above the threshold, so a higher threshold always means fewer escalations. In cascade mode the
score is the lower tier's uncertainty, 1 - confidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TIER_SEPARATOR = ":"


@dataclass(frozen=True)
class TierRef:
    name: str
    model_id: str


@dataclass(frozen=True)
class ForceRule:
    name: str
    pattern: re.Pattern[str] | None


@dataclass(frozen=True)
class RouterConfig:
    """The router's `user_config`, parsed once per reconfigure (never per request)."""

    model_tier: str
    tiers: tuple[TierRef, ...]
    mode: str = "cascade"
    threshold: float = 0.5
    confidence: str = "minTokenProb"
    early_decision_tokens: int = 8
    fallback: str = "nextTier"
    request_timeout_seconds: float = 60.0
    force_rules: tuple[ForceRule, ...] = field(default_factory=tuple)

    @classmethod
    def from_user_config(cls, cfg: dict[str, Any]) -> RouterConfig:
        cascade = cfg.get("cascade") or {}
        return cls(
            model_tier=str(cfg["modelTier"]),
            tiers=tuple(TierRef(t["name"], t.get("modelId") or t["name"]) for t in cfg["tiers"]),
            mode=str(cfg.get("mode", "cascade")),
            threshold=float(cfg.get("threshold", 0.5)),
            confidence=str(cascade.get("confidence", "minTokenProb")),
            early_decision_tokens=int(cascade.get("earlyDecisionTokens", 8)),
            fallback=str(cfg.get("fallback", "nextTier")),
            request_timeout_seconds=float(cfg.get("requestTimeoutSeconds", 60.0)),
            force_rules=tuple(compile_rule(r) for r in cfg.get("forceTopTier") or []),
        )

    def index(self, tier: str) -> int | None:
        for i, ref in enumerate(self.tiers):
            if ref.name == tier:
                return i
        return None


def compile_rule(rule: dict[str, Any]) -> ForceRule:
    """Keywords and regexes of one high-risk category as one case-insensitive pattern."""
    parts = [re.escape(k) for k in rule.get("keywords") or []]
    parts = [rf"\b{p}\b" for p in parts] + list(rule.get("patterns") or [])
    pattern = re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE) if parts else None
    return ForceRule(name=str(rule["name"]), pattern=pattern)


class RoutingError(ValueError):
    """A request the router cannot route; `param` names the offending field (OpenAI-style)."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def resolve_model(cfg: RouterConfig, model: str | None) -> int | None:
    """`<modeltier>` lets the router choose (None); `<modeltier>:<tier>` pins that tier."""
    if not model or model == cfg.model_tier:
        return None
    base, _, tier = model.partition(TIER_SEPARATOR)
    if base == cfg.model_tier and tier:
        index = cfg.index(tier)
        if index is not None:
            return index
        names = ", ".join(t.name for t in cfg.tiers)
        raise RoutingError(f"unknown tier {tier!r}; this ModelTier has: {names}", "model", 404)
    raise RoutingError(
        f"model {model!r} is not served here; use {cfg.model_tier!r} or '{cfg.model_tier}:<tier>'",
        "model",
        404,
    )


def forced_rule(cfg: RouterConfig, text: str) -> str | None:
    """The first high-risk category the prompt matches, if any."""
    for rule in cfg.force_rules:
        if rule.pattern is not None and rule.pattern.search(text):
            return rule.name
    return None


def confidence(token_logprobs: Sequence[float | None], metric: str = "minTokenProb") -> float:
    """Confidence in [0, 1] of a generated answer from its tokens' logprobs.

    Default `minTokenProb`: the probability of the least likely token chosen. One wrong token
    (a digit, a name, a negation) is what makes a short answer wrong, and a mean hides it.
    """
    values = [lp for lp in token_logprobs if lp is not None and not math.isnan(lp)]
    if not values:
        return 0.0
    if metric == "meanLogprob":
        return math.exp(sum(values) / len(values))
    if metric == "quantile":  # 10th percentile of token probabilities
        probs = sorted(math.exp(v) for v in values)
        return probs[int(0.1 * (len(probs) - 1))]
    return math.exp(min(values))


def should_escalate(score: float, threshold: float) -> bool:
    """The one rule: escalate when the score clears the bar."""
    return score > threshold


def prompt_text(body: dict[str, Any]) -> str:
    """The text rules and scorers look at: the prompt, or the chat messages' contents."""
    if "messages" in body:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
