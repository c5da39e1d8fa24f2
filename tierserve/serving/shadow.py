"""Shadow evaluation's pure parts: who may be sampled, how the judge is asked, what it said.

A sample of the lower-tier answers the router keeps is also answered by the top tier, off the
request path, and the two answers are judged: by exact match of their normalised text (short
answers), or pairwise by a judge tier asked blind, in random order, which is better. The
lower tier's verdict is `win`, `tie` or `loss`; a judge's reply that is not exactly A, B or
TIE is `unparseable` and a failed call `error`: neither ever counts as agreement. The kept
answers' win+tie rate is the quality signal (`tierserve_shadow_evaluations_total{agreed}`) the
autoscaler and the drift alert read.

`ShadowGate` bounds the cost: at most `maxConcurrent` evaluations in flight and `maxPerHour`
started per router replica, none while the replica has more than `maxUserInFlight` user requests
or more than `maxTopTierInFlight` user calls on the top tier (under load shadows go first: they
use the top tier's idle capacity); samples beyond these are dropped and counted, never queued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from tierserve.api.v1alpha1 import Shadow
from tierserve.serving.routing import normalise_answer


class Verdict(StrEnum):
    WIN = "win"  # the lower tier's answer is better
    TIE = "tie"
    LOSS = "loss"
    UNPARSEABLE = "unparseable"
    ERROR = "error"  # the top tier or the judge could not answer

    @property
    def judged(self) -> bool:
        return self in (Verdict.WIN, Verdict.TIE, Verdict.LOSS)

    @property
    def agreed(self) -> bool:
        """Counts towards the win+tie rate: the kept answer was at least as good."""
        return self in (Verdict.WIN, Verdict.TIE)


_VERDICT = re.compile(r"^\s*(A|B|TIE)\s*\.?\s*$", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'TIE' when the reply is exactly that (case and a trailing period aside)."""
    match = _VERDICT.match(text)
    return match.group(1).upper() if match else None


def pairwise_verdict(reply: str, lower_first: bool) -> Verdict:
    """The lower tier's verdict from the judge's reply; `lower_first`: it was answer A."""
    choice = parse_verdict(reply)
    if choice is None:
        return Verdict.UNPARSEABLE
    if choice == "TIE":
        return Verdict.TIE
    lower_won = (choice == "A") == lower_first
    return Verdict.WIN if lower_won else Verdict.LOSS


def exact_verdict(lower: str, top: str) -> Verdict:
    """Equal normalised text ties; different text is a loss (the top tier presumed right, which
    is what exact match means for short answers)."""
    return Verdict.TIE if normalise_answer(lower) == normalise_answer(top) else Verdict.LOSS


def judge_prompt(template: str, request: str, lower: str, top: str, lower_first: bool) -> str:
    """The judge's prompt, the two answers in the drawn order (blind: no tier names)."""
    a, b = (lower, top) if lower_first else (top, lower)
    return template.replace("{request}", request).replace("{a}", a).replace("{b}", b)


TOP_TIER_BUSY = "top-tier-busy"


def top_tier_busy(limits: Shadow, top_users: int) -> bool:
    """Users need the top (or judge) tier: more user calls on it than `maxTopTierInFlight`."""
    return limits.max_top_tier_in_flight is not None and top_users > limits.max_top_tier_in_flight


@dataclass
class ShadowGate:
    """Admission of shadow evaluations on one router replica: a concurrency bound and an
    hourly budget (a token bucket refilled continuously). `now` is passed in: pure."""

    in_flight: int = 0
    _tokens: float | None = None
    _at: float = 0.0
    _rate_per_hour: int | None = field(default=None, repr=False)

    def admit(self, limits: Shadow, now: float, users: int = 0, top_users: int = 0) -> str | None:
        """None when admitted (call `release` when it ends), else why it was dropped;
        `users`: user requests the replica is working on; `top_users`: its user calls on the
        top tier."""
        if limits.max_user_in_flight is not None and users > limits.max_user_in_flight:
            return "load"
        if top_tier_busy(limits, top_users):
            return TOP_TIER_BUSY
        if self.in_flight >= limits.max_concurrent:
            return "concurrency"
        if limits.max_per_hour is not None:
            if self._tokens is None or self._rate_per_hour != limits.max_per_hour:
                self._tokens, self._rate_per_hour = float(limits.max_per_hour), limits.max_per_hour
            else:
                refill = (now - self._at) * limits.max_per_hour / 3600.0
                self._tokens = min(float(limits.max_per_hour), self._tokens + refill)
            self._at = now
            if self._tokens < 1.0:
                return "budget"
            self._tokens -= 1.0
        self.in_flight += 1
        return None

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
