"""Shadow evaluation's I/O: the top tier's answer and the judge's verdict, off the request path.

The pure parts (verdict parsing, the judge's prompt, the admission gate) are in `shadow.py`;
this runs them: a kept lower-tier answer is sampled, admitted by the gate (concurrency, hourly
budget, and the users' own load on the replica and on the top tier: shadows are dropped first
under load), and judged in a task
the user's request never waits for. The calls go through the cascade engine's `open` (the same
Serve handles as users' calls) but never queue behind a full tier, never trip its breaker, and
are billed apart (ledger kinds `shadow` and `judge`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tierserve.api.v1alpha1 import ShadowJudge
from tierserve.serving import ledger, routing
from tierserve.serving.config import IngressConfig
from tierserve.serving.metrics import IngressMetrics
from tierserve.serving.routing import CircuitBreaker
from tierserve.serving.shadow import (
    TOP_TIER_BUSY,
    ShadowGate,
    Verdict,
    exact_verdict,
    judge_prompt,
    pairwise_verdict,
    top_tier_busy,
)
from tierserve.serving.tiers import Attempt, Call, backpressure, judge_request, tier_request

logger = logging.getLogger("tierserve.ingress")

Open = Callable[[IngressConfig, Call, int, Any], Attempt]


class ShadowEvaluator:
    """Samples kept lower-tier answers and judges them against the top tier's, in tasks."""

    def __init__(
        self,
        open_call: Open,
        user_calls: Mapping[str, int],
        breaker: Callable[[str], CircuitBreaker],
        metrics: IngressMetrics,
        clock: Callable[[], float],
        sample: Callable[[], float],
    ):
        self.open_call = open_call
        self.user_calls = user_calls  # tier -> users' calls open on it, kept by the engine
        self.breaker = breaker
        self.metrics = metrics
        self.clock = clock
        self.sample = sample
        self.gate = ShadowGate()
        self.tasks: set[asyncio.Task[None]] = set()

    def maybe_start(
        self, cfg: IngressConfig, call: Call, index: int, text: str, users: int
    ) -> None:
        """Starts a judged comparison of tier `index`'s kept `text` if sampled and admitted;
        `users`: user requests this replica is working on (the load the gate weighs)."""
        rate = cfg.shadow.sample_rate
        if rate <= 0 or index == cfg.top or self.sample() >= rate:
            return
        tier = cfg.tiers[index].name
        top_users = self.user_calls.get(cfg.tiers[cfg.top].name, 0)
        dropped = self.gate.admit(cfg.shadow, self.clock(), users, top_users)
        if dropped is not None:
            self.metrics.shadow_dropped(tier, dropped)
            return
        self.metrics.shadow_in_flight(tier, +1)
        task = asyncio.create_task(self._evaluate(cfg, call, index, text))
        self.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            self.gate.release()
            self.metrics.shadow_in_flight(tier, -1)

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Waits for the evaluations in progress (tests; shutdown)."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _evaluate(self, cfg: IngressConfig, call: Call, index: int, text: str) -> None:
        tier, judge = cfg.tiers[index].name, cfg.shadow.judge
        verdict = Verdict.ERROR
        try:
            reference = await self._ask(cfg, call, cfg.top, None)
            if reference is None:
                self.metrics.shadow_dropped(tier, "overloaded")
                return
            if judge == ShadowJudge.EXACT_MATCH:
                verdict = exact_verdict(text, reference)
            else:
                lower_first = self.sample() < 0.5
                prompt = judge_prompt(
                    cfg.shadow.judge_prompt, call.text, text, reference, lower_first
                )
                judge_tier = cfg.shadow.judge_tier or cfg.tiers[cfg.top].name
                if top_tier_busy(cfg.shadow, self.user_calls.get(judge_tier, 0)):
                    self.metrics.shadow_dropped(tier, TOP_TIER_BUSY)  # users came meanwhile
                    return
                judge_index = cfg.index(judge_tier)
                reply = await self._ask(
                    cfg, call, cfg.top if judge_index is None else judge_index, prompt
                )
                if reply is None:
                    self.metrics.shadow_dropped(tier, "overloaded")
                    return
                verdict = pairwise_verdict(reply, lower_first)
        except Exception as exc:  # shadow traffic never affects users
            logger.info("shadow evaluation failed: %r", exc)
        self.metrics.shadow_verdict(tier, str(judge), verdict)
        if verdict.judged:
            self.metrics.shadow(tier, verdict.agreed)

    async def _ask(
        self, cfg: IngressConfig, call: Call, index: int, prompt: str | None
    ) -> str | None:
        """Tier `index`'s whole answer to the client's request, or (`prompt`) to the judge's
        question; None when the tier is cooling down or full: shadows never queue or touch
        the breakers."""
        if not self.breaker(cfg.tiers[index].name).available(self.clock()):
            return None
        if prompt is None:
            request = tier_request(cfg, call, index, logprobs=False, stream=False)
        else:
            request = judge_request(cfg, call, index, prompt)
        attempt = self.open_call(cfg, call, index, request)
        try:
            await asyncio.wait_for(attempt.hold(call.chat, 0), cfg.request_timeout_seconds)
        except Exception as exc:
            if backpressure(exc) is not None:
                return None
            raise
        finally:
            await attempt.close()
        body = attempt.held[0]
        tokens = ledger.reported(body.get("usage"))
        if tokens is not None:  # counted apart from users' spend: kind shadow or judge
            kind = ledger.SHADOW if prompt is None else ledger.JUDGE
            spent = ledger.charge(cfg.tiers[index].token_price, *tokens)
            self.metrics.cost(cfg.tiers[index].name, str(cfg.mode), kind, spent)
        return routing.answer_text(body, call.chat)
