"""Routing decisions: pure, fast functions of the ingress's config and what a tier returned.

The cascade engine (`tierserve.serving.cascade`) does the I/O and calls these to decide; they
take no clock (`now` is passed in) and no randomness, so each rule has its own unit test.

One meaning of the threshold everywhere: a request goes up a rung when its escalation score is
above the threshold, so a higher threshold always means fewer escalations. In cascade mode the
score is the lower tier's uncertainty, 1 - confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tierserve.api.v1alpha1 import Fallback, RoutingMode
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import ModelNotFound

TIER_SEPARATOR = ":"


@dataclass(frozen=True)
class Plan:
    """Where a request starts and whether it may climb: decided before any generation."""

    start: int
    reason: str
    cascade: bool


def plan_request(
    cfg: IngressConfig, pinned: int | None, forced: str | None, score: float | None = None
) -> Plan:
    """Where a request starts. `score` is the upfront scorer's (needed in upfront/hybrid).

    upfront: a score above the threshold goes straight to the top tier, else the first tier
    answers alone. hybrid: clearly hard (score >= threshold + margin) goes to the top, clearly
    easy (score <= threshold - margin) stays on the first tier, and the band between cascades.
    """
    top = cfg.top
    if pinned is not None:
        return Plan(pinned, "pinned", False)
    if forced:
        return Plan(top, f"forced:{forced}", False)
    if cfg.mode == RoutingMode.NONE or top == 0:
        return Plan(0, "first-tier", False)
    if cfg.mode in (RoutingMode.UPFRONT, RoutingMode.HYBRID) and score is not None:
        if cfg.mode == RoutingMode.UPFRONT:
            if should_escalate(score, cfg.threshold):
                return Plan(top, "upfront-score", False)
            return Plan(0, "upfront-score", False)
        margin = cfg.upfront.hybrid_margin
        if score >= cfg.threshold + margin:
            return Plan(top, "upfront-score", False)
        if score <= cfg.threshold - margin:
            return Plan(0, "upfront-score", False)
    return Plan(0, "cascade", True)


def resolve_model(cfg: IngressConfig, model: str | None) -> int | None:
    """`<modeltier>` lets the ingress choose (None); `<modeltier>:<tier>` pins that tier."""
    if not model or model == cfg.model_tier:
        return None
    base, _, tier = model.partition(TIER_SEPARATOR)
    if base == cfg.model_tier and tier:
        index = cfg.index(tier)
        if index is not None:
            return index
        names = ", ".join(t.name for t in cfg.tiers)
        raise ModelNotFound(f"unknown tier {tier!r}; this ModelTier has: {names}", param="model")
    raise ModelNotFound(
        f"model {model!r} is not served here; use {cfg.model_tier!r} or '{cfg.model_tier}:<tier>'",
        param="model",
    )


def forced_rule(cfg: IngressConfig, text: str) -> str | None:
    """The first high-risk category the prompt matches, if any."""
    return next((rule.name for rule in cfg.rules if rule.matches(text)), None)


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


def p_yes(chunk: dict[str, Any], chat: bool, yes_tokens: Sequence[str]) -> float:
    """P(yes) of a self-check answer: the probability mass of the yes tokens among the first
    generated token's top logprobs (several spellings of yes can each hold some of it)."""
    yes = {t.strip().lower() for t in yes_tokens}
    choices = chunk.get("choices") or []
    logprobs = (choices[0].get("logprobs") or {}) if choices else {}
    if chat:
        content = logprobs.get("content") or []
        top = (
            {e.get("token", ""): e.get("logprob") for e in content[0].get("top_logprobs") or []}
            if content
            else {}
        )
        if content:
            top.setdefault(content[0].get("token", ""), content[0].get("logprob"))
    else:
        firsts = logprobs.get("top_logprobs") or []
        top = dict(firsts[0] or {}) if firsts else {}
        tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
        if tokens and values:
            top.setdefault(tokens[0], values[0])
    mass = sum(
        math.exp(lp)
        for token, lp in top.items()
        if lp is not None and not math.isnan(lp) and str(token).strip().lower() in yes
    )
    return min(mass, 1.0)


def should_escalate(score: float, threshold: float) -> bool:
    """The one rule: escalate when the score clears the bar."""
    return score > threshold


def prompt_text(messages: Sequence[Any] | None = None, prompt: Any = None) -> str:
    """The text rules and scorers look at: the chat messages' contents, or the prompt."""
    if messages is not None:
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return "\n".join(parts)
    if prompt is None:
        return ""
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
    if fallback == Fallback.NEXT_TIER:
        return [index, *range(index + 1, n_tiers)]
    if fallback == Fallback.PREVIOUS_TIER:
        return [index, *range(index - 1, -1, -1)]
    return [index]


def request_deadline(per_attempt: float, n_tiers: int) -> float:
    """Seconds a whole request may take: one attempt per tier, a streamed tail included.

    `requestTimeoutSeconds` bounds one tier's attempt (its answer, or in streaming its
    early-decision tokens), so that a hung tier, e.g. a dead replica's requests waiting for Serve
    to start another, becomes a fallback; the request as a whole gets that much per tier.
    """
    return per_attempt * max(n_tiers, 1)


def attempt_budget(time_left: float, per_attempt: float) -> float:
    """Seconds one tier may take: its own bound, within what is left of the request's."""
    return max(min(time_left, per_attempt), 0.0)


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
    """The first choice's text in a whole answer or in one streamed chunk (its delta)."""
    choices: list[dict[str, Any]] = body.get("choices") or []
    choice = next((c for c in choices if c.get("index", 0) == 0), {})
    if chat:
        message = choice.get("message") or choice.get("delta") or {}
        return str(message.get("content") or "")
    return str(choice.get("text") or "")
