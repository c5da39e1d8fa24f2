"""The per-request cost ledger: what an answer cost, what it wasted, what it saved. Pure.

The model (docs/operations.md, "Cost ledger, caps and spill-over"):

- one call to tier t that used p prompt and c completion tokens costs
  `(p * t.promptPerMillion + c * t.completionPerMillion) / 1e6`, with t's price from
  `tierserve.cost.tier_prices` (its explicit `price`, else costPerHour / 3600 / tokensPerSecond);
- a request's `total` is the sum over its calls: the kept `answer`, the lower-tier answers it
  climbed away from (`wasted`) and its selfCheck calls (`self_check`);
- `topTierAlone` is what the top tier would have charged for the kept answer's tokens: exact
  when the top tier answered, otherwise the kept answer's token counts stand in for the top
  tier's (the same prompt; an answer of about that length, in another tokenizer);
- `savings = topTierAlone - total`, negative for a request that climbed to the top.

Token counts are the tiers' own (`usage`); where a tier reported none (a stream that did not
carry usage) they are counted from what was read, and the line says `estimated`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tierserve.api.v1alpha1 import TokenPrice

ANSWER = "answer"
WASTED = "wasted"
SELF_CHECK = "self_check"
# Off the request path, metered apart and never on a request's bill (shadow evaluation).
SHADOW = "shadow"
JUDGE = "judge"

CAP_RUNGS = "cap:rungs"
CAP_COST = "cap:cost"

# Estimates for the cost cap, before a tier has said how many tokens a request takes.
CHARS_PER_TOKEN = 4
ESTIMATED_COMPLETION_TOKENS = 256


def charge(price: TokenPrice, prompt_tokens: int, completion_tokens: int) -> float:
    """What tier `price` charges for one call's tokens."""
    prompt = price.prompt_per_million * prompt_tokens
    return (prompt + price.completion_per_million * completion_tokens) / 1e6


def reported(usage: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(prompt, completion) tokens from an OpenAI `usage` object, None when there is none."""
    if not usage or usage.get("prompt_tokens") is None:
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def text_tokens(text: str) -> int:
    """Tokens guessed from a text's length (about four characters a token)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass(frozen=True)
class Line:
    """One call of one request: its tier, what it was for, its tokens and their cost."""

    tier: str
    kind: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: bool = False

    @classmethod
    def of(
        cls,
        tier: str,
        price: TokenPrice,
        kind: str,
        tokens: tuple[int, int],
        estimated: bool = False,
    ) -> Line:
        prompt, completion = tokens
        return cls(tier, kind, prompt, completion, charge(price, prompt, completion), estimated)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tier": self.tier,
            "kind": self.kind,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cost": self.cost,
        }
        if self.estimated:
            out["estimated"] = True
        return out


@dataclass(frozen=True)
class Bill:
    """A request's settled cost: its lines, and what the top tier alone would have charged."""

    lines: tuple[Line, ...]
    top_tier_alone: float

    @property
    def total(self) -> float:
        return sum(line.cost for line in self.lines)

    @property
    def wasted(self) -> float:
        return sum(line.cost for line in self.lines if line.kind == WASTED)

    @property
    def savings(self) -> float:
        return self.top_tier_alone - self.total

    def headers(self) -> dict[str, str]:
        return {
            "x-tierserve-cost": f"{self.total:.6g}",
            "x-tierserve-savings": f"{self.savings:.6g}",
        }

    def body(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "wasted": self.wasted,
            "topTierAlone": self.top_tier_alone,
            "savings": self.savings,
            "tiers": [line.body() for line in self.lines],
        }


def settle(lines: Sequence[Line], top: TokenPrice) -> Bill:
    """The bill of a request whose calls were `lines` (one of them the kept `answer`); `top` is
    the top tier's price, charged for the answer's tokens as if it had answered alone."""
    answers = [line for line in lines if line.kind == ANSWER]
    if len(answers) != 1:
        raise ValueError(f"a bill needs exactly one answer line, got {len(answers)}")
    answer = answers[0]
    return Bill(tuple(lines), charge(top, answer.prompt_tokens, answer.completion_tokens))


def estimate(price: TokenPrice, prompt_tokens: int, completion_tokens: int, n: int = 1) -> float:
    """What a call to tier `price` would cost: `n` answers of `completion_tokens` each."""
    return charge(price, prompt_tokens, completion_tokens * max(n, 1))


@dataclass
class Tab:
    """What one request has spent so far, while the router still decides where it goes: the
    answers it climbed away from (by tier index: a previousTier fallback may come back to one)
    and its selfCheck calls; and the token counts tiers reported, for estimating the next."""

    climbed: dict[int, Line] = field(default_factory=dict)
    checks: list[Line] = field(default_factory=list)
    prompt_tokens: int | None = None  # the most a tier reported for this request's prompt
    answer_tokens: int | None = None  # the longest whole answer a tier gave it

    @property
    def spent(self) -> float:
        return sum(line.cost for line in [*self.climbed.values(), *self.checks])

    def learn(self, line: Line, whole: bool) -> None:
        """Keeps what a tier reported: its prompt tokens, and a whole answer's length."""
        if line.estimated:
            return
        self.prompt_tokens = max(self.prompt_tokens or 0, line.prompt_tokens)
        if whole:
            self.answer_tokens = max(self.answer_tokens or 0, line.completion_tokens)

    def next_call(self, text: str, max_tokens: int | None) -> tuple[int, int]:
        """(prompt, completion) tokens the next call is estimated to take: the prompt as a
        tier reported it (else from its text); the request's max_tokens, else the longest
        whole answer so far, else ESTIMATED_COMPLETION_TOKENS."""
        prompt = self.prompt_tokens or text_tokens(text)
        completion = max_tokens or self.answer_tokens or ESTIMATED_COMPLETION_TOKENS
        return prompt, completion

    def lines(self, kept: int) -> list[Line]:
        """The spent lines, except the answer of tier `kept` (a parked answer that came back)."""
        wasted = [line for index, line in self.climbed.items() if index != kept]
        return [*wasted, *self.checks]
