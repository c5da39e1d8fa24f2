"""Routing decisions: pure, fast functions of the router's config and what a tier returned.

One meaning of the threshold everywhere: a request goes up a rung when its escalation score is
above the threshold, so a higher threshold always means fewer escalations. In cascade mode the
score is the lower tier's uncertainty, 1 - confidence.
"""

from __future__ import annotations

import hashlib
import json
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
    gpus: int = 0


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
    shadow_sample_rate: float = 0.0
    scorer: dict[str, Any] = field(default_factory=lambda: {"type": "heuristic"})
    hybrid_margin: float = 0.15

    @classmethod
    def from_user_config(cls, cfg: dict[str, Any]) -> RouterConfig:
        cascade = cfg.get("cascade") or {}
        return cls(
            model_tier=str(cfg["modelTier"]),
            tiers=tuple(
                TierRef(t["name"], t.get("modelId") or t["name"], int(t.get("gpus") or 0))
                for t in cfg["tiers"]
            ),
            mode=str(cfg.get("mode", "cascade")),
            threshold=float(cfg.get("threshold", 0.5)),
            confidence=str(cascade.get("confidence", "minTokenProb")),
            early_decision_tokens=int(cascade.get("earlyDecisionTokens", 8)),
            fallback=str(cfg.get("fallback", "nextTier")),
            request_timeout_seconds=float(cfg.get("requestTimeoutSeconds", 60.0)),
            force_rules=tuple(compile_rule(r) for r in cfg.get("forceTopTier") or []),
            shadow_sample_rate=float((cfg.get("shadow") or {}).get("sampleRate", 0.0)),
            scorer=dict((cfg.get("upfront") or {}).get("scorer") or {"type": "heuristic"}),
            hybrid_margin=float((cfg.get("upfront") or {}).get("hybridMargin", 0.15)),
        )

    def index(self, tier: str) -> int | None:
        for i, ref in enumerate(self.tiers):
            if ref.name == tier:
                return i
        return None


@dataclass(frozen=True)
class Plan:
    """Where a request starts and whether it may climb: decided before any generation."""

    start: int
    reason: str
    cascade: bool


def plan_request(
    cfg: RouterConfig, pinned: int | None, forced: str | None, score: float | None = None
) -> Plan:
    """Where a request starts. `score` is the upfront scorer's (needed in upfront/hybrid).

    upfront: a score above the threshold goes straight to the top tier, else the first tier
    answers alone. hybrid: clearly hard (score >= threshold + margin) goes to the top, clearly
    easy (score <= threshold - margin) stays on the first tier, and the band between cascades.
    """
    top = len(cfg.tiers) - 1
    if pinned is not None:
        return Plan(pinned, "pinned", False)
    if forced:
        return Plan(top, f"forced:{forced}", False)
    if cfg.mode == "none" or top == 0:
        return Plan(0, "first-tier", False)
    if cfg.mode in ("upfront", "hybrid") and score is not None:
        if cfg.mode == "upfront":
            if should_escalate(score, cfg.threshold):
                return Plan(top, "upfront-score", False)
            return Plan(0, "upfront-score", False)
        if score >= cfg.threshold + cfg.hybrid_margin:
            return Plan(top, "upfront-score", False)
        if score <= cfg.threshold - cfg.hybrid_margin:
            return Plan(0, "upfront-score", False)
    return Plan(0, "cascade", True)


def config_hash(user_config: dict[str, Any]) -> str:
    """Short fingerprint of a user_config, so anyone can check which one a router runs."""
    text = json.dumps(user_config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


@dataclass
class CircuitBreaker:
    """Per-tier breaker: after `failures` consecutive errors a tier is skipped for `cooldown`
    seconds, then one request is let through to probe it (half-open). `now` is injected, so the
    rule is a pure function of the calls made."""

    failures: int = 3
    cooldown: float = 30.0
    _consecutive: int = 0
    _open_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self._open_until

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self._consecutive, self._open_until = 0, 0.0
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open_until = now + self.cooldown
            self._consecutive = self.failures - 1  # one more failure after a probe re-opens it

    @property
    def open(self) -> bool:
        return self._open_until > 0.0


def fallback_order(n_tiers: int, index: int, fallback: str) -> list[int]:
    """Tiers to try, in order, when tier `index` cannot answer."""
    if fallback == "nextTier":
        return [index, *range(index + 1, n_tiers)]
    if fallback == "previousTier":
        return [index, *range(index - 1, -1, -1)]
    return [index]


def normalise_answer(text: str) -> str:
    """What shadow evaluation compares: the answer's words, case and spacing folded."""
    return " ".join(text.lower().split())


def stream_chunk_logprobs(chunk: dict[str, Any], chat: bool) -> list[float | None]:
    """Token logprobs carried by one streamed (or whole) OpenAI response."""
    out: list[float | None] = []
    for choice in chunk.get("choices") or []:
        logprobs = choice.get("logprobs") or {}
        if chat:
            out.extend(t.get("logprob") for t in logprobs.get("content") or [])
        else:
            out.extend(logprobs.get("token_logprobs") or [])
    return out


def answer_text(body: dict[str, Any], chat: bool) -> str:
    choice = (body.get("choices") or [{}])[0]
    if chat:
        message = choice.get("message") or choice.get("delta") or {}
        return str(message.get("content") or "")
    return str(choice.get("text") or "")
