"""The cascade engine: the one place a request meets the tiers.

`CascadeEngine.run` climbs from the plan's first tier until an answer is kept; each rung is one
tier and, when it cannot answer, the tiers after it in the fallback order. A rung reads only
what its decision needs and holds it back: the whole answer when the client does not stream,
the first `earlyDecisionTokens` tokens when it does (the first chunk when there is no decision
to make), so the client never sees tokens of an answer that is then abandoned.
`CascadeEngine.deliver` hands the kept answer's chunks to the client and reads the rest of its
stream. Streaming and non-streaming share everything else: the fallback order, the per-tier
circuit breakers, the backpressure rules, shadow sampling, the metrics, and the deadline
(`requestTimeoutSeconds` from the request's arrival bounds every await, the rest of a stream
included).

Decisions are `tierserve.serving.routing`'s pure functions; the calls to the tiers
(`ray.serve.llm` LLMServer deployments behind Serve handles opened with `stream=True`) are
`tierserve.serving.tiers`'.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tierserve.api.v1alpha1 import CascadeScore, ConfidenceMetric, Fallback
from tierserve.serving import routing
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import (
    OVERLOAD_RETRY_AFTER_S,
    DeadlineExceeded,
    IngressError,
    InvalidRequest,
    TierOverloaded,
    TierUnavailable,
)
from tierserve.serving.metrics import IngressMetrics
from tierserve.serving.rank import RankWindow, escalation_score, load_reference, tie_break
from tierserve.serving.routing import CircuitBreaker, Plan
from tierserve.serving.tiers import (
    Attempt,
    Call,
    Chunk,
    backpressure,
    self_check_request,
    tier_request,
)

logger = logging.getLogger("tierserve.ingress")


class Deadline:
    """`seconds` from now on `clock`; every await of the request gets at most what is left."""

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self.clock = clock
        self.seconds = seconds
        self.at = clock() + seconds

    def left(self) -> float:
        return self.at - self.clock()


@dataclass
class Outcome:
    """The kept answer and how it was reached."""

    attempt: Attempt
    escalated: bool
    confidence: float | None
    reason: str

    @property
    def tier(self) -> str:
        return self.attempt.tier.name


@dataclass
class Refusals:
    """Why the tiers of one rung did not answer, and so what the client is told."""

    busy: dict[int, float] = field(default_factory=dict)  # tier -> its Retry-After
    broken: list[str] = field(default_factory=list)

    def error(self, cfg: IngressConfig, deadline: Deadline) -> IngressError:
        """504 when the time ran out; 429 when only full queues refused; else 503."""
        if deadline.left() <= 0:
            limit = deadline.seconds
            detail = "".join(f"; {reason}" for reason in self.broken)
            return DeadlineExceeded(f"no tier answered within the request's {limit:g}s{detail}")
        if self.busy and not self.broken:
            return TierOverloaded("every tier is at capacity", retry_after=min(self.busy.values()))
        reasons = self.broken + [f"{len(self.busy)} tier(s) at capacity"] * bool(self.busy)
        return TierUnavailable("no tier could answer; " + "; ".join(reasons))


class CascadeEngine:
    """Runs requests over the tiers' Serve handles (opened with `stream=True`).

    `clock` (monotonic seconds) and `sample` (uniform in [0, 1)) are injected so tests drive the
    breakers, the deadline and shadow sampling without waiting or chance.
    """

    def __init__(
        self,
        handles: Mapping[str, Any],
        metrics: IngressMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], float] = random.random,
    ):
        self.handles = dict(handles)
        self.metrics = metrics
        self.clock = clock
        self.sample = sample
        self.breakers: dict[str, CircuitBreaker] = {}
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.windows: dict[str, RankWindow] = {}  # lower tier -> its rank reference
        self.seeded: set[str] = set()  # tiers whose window started from a reference file
        self.rank_key: tuple[Any, ...] = ()

    def configure(self, cfg: IngressConfig) -> None:
        """Prepares the rank score's windows; a bad reference file raises (in reconfigure).

        The windows survive reconfigures that leave the rank settings alone (the autoscaler
        moving the threshold): the reference must not restart with every move."""
        if cfg.cascade.score != CascadeScore.RANK:
            self.windows, self.seeded, self.rank_key = {}, set(), ()
            return
        rank, metric = cfg.cascade.rank, str(cfg.cascade.confidence)
        key = (rank.window, rank.reference_path, metric, tuple(t.name for t in cfg.tiers))
        if key == self.rank_key:
            return
        seed: list[float] = []
        ref_tier = ""
        if rank.reference_path:
            ref_metric, ref_tier, seed = load_reference(rank.reference_path)
            if ref_metric and ref_metric != metric:
                raise ValueError(
                    f"cascade rank reference {rank.reference_path} holds {ref_metric} "
                    f"confidences, but routing.cascade.confidence is {metric}"
                )
        lower = [t.name for t in cfg.tiers[: cfg.top]]
        if ref_tier and ref_tier not in lower:
            raise ValueError(
                f"cascade rank reference {rank.reference_path} is for tier {ref_tier!r}, "
                f"not one of the lower tiers {lower}"
            )
        self.seeded = {t for t in lower if seed and ref_tier in ("", t)}
        self.windows = {t: RankWindow(rank.window, seed if t in self.seeded else ()) for t in lower}
        self.rank_key = key

    def escalation_score(
        self, cfg: IngressConfig, index: int, confidence: float, call: Call
    ) -> float:
        """What the threshold is compared with: 1 - confidence, or 1 - its rank (see rank.py)."""
        if cfg.cascade.score != CascadeScore.RANK:
            return 1.0 - confidence
        tier = cfg.tiers[index].name
        window = self.windows.get(tier)
        if window is None:  # configure() not run for this config (tests that skip it)
            window = self.windows[tier] = RankWindow(cfg.cascade.rank.window)
        tie = tie_break(call.text, index)
        return escalation_score(window, confidence, tie, tier in self.seeded)

    def breaker(self, tier: str) -> CircuitBreaker:
        return self.breakers.setdefault(tier, CircuitBreaker())

    def open_circuits(self) -> list[str]:
        now = self.clock()
        return [name for name, b in self.breakers.items() if not b.available(now)]

    async def drain(self) -> None:
        """Waits for the shadow evaluations in progress (tests; shutdown)."""
        while self.shadow_tasks:
            await asyncio.gather(*self.shadow_tasks, return_exceptions=True)

    # -- choosing the answer -----------------------------------------------------------------

    async def run(self, cfg: IngressConfig, plan: Plan, call: Call, deadline: Deadline) -> Outcome:
        """Climbs from `plan.start` until an answer is kept; raises the IngressError to answer."""
        try:
            return await self._climb(cfg, plan, call, deadline)
        except (TierOverloaded, TierUnavailable, DeadlineExceeded) as exc:
            outcome = "overloaded" if isinstance(exc, TierOverloaded) else "error"
            self.metrics.answered(cfg.tiers[plan.start].name, str(cfg.mode), {}, outcome)
            raise

    async def _climb(
        self, cfg: IngressConfig, plan: Plan, call: Call, deadline: Deadline
    ) -> Outcome:
        refused: set[int] = set()  # tiers that failed or were full during this request
        # Lower answers kept while a higher tier is tried, for previousTier to come back to.
        parked: dict[int, Attempt] = {}
        index, climbed, score, reason = plan.start, False, None, plan.reason
        try:
            while True:
                climb = plan.cascade and index < cfg.top
                attempt = await self._rung(cfg, call, index, climb, deadline, refused, parked)
                if attempt.index != index:
                    escalated = climbed and attempt.index > plan.start
                    return Outcome(attempt, escalated, score, f"fallback:{cfg.tiers[index].name}")
                if not climb:
                    return Outcome(attempt, climbed, score, reason)
                tier, above = cfg.tiers[index].name, cfg.tiers[index + 1].name
                score = await self._confidence(cfg, call, attempt, deadline)
                self.metrics.confidence(tier, score)
                escalation = self.escalation_score(cfg, index, score, call)
                if not routing.should_escalate(escalation, cfg.threshold):
                    return Outcome(attempt, climbed, score, reason)
                self.metrics.escalation(tier, above, "low-confidence")
                if cfg.fallback == Fallback.PREVIOUS_TIER:
                    parked[index] = attempt
                else:
                    await attempt.close()
                index, climbed, reason = index + 1, True, "low-confidence"
        finally:
            for attempt in parked.values():
                await attempt.close()

    async def _confidence(
        self, cfg: IngressConfig, call: Call, attempt: Attempt, deadline: Deadline
    ) -> float:
        """The answer's confidence: from its token logprobs, or by asking the tier (selfCheck).

        A self-check that fails or runs out of time gives confidence 0: when in doubt, the
        request goes up, as it would if the tier had been unsure."""
        metric = cfg.cascade.confidence
        if metric != ConfidenceMetric.SELF_CHECK:
            return routing.confidence(attempt.tokens, metric)
        tier = attempt.tier.name
        answer = "".join(routing.answer_text(c, call.chat) for c in attempt.held)
        request = self_check_request(cfg, call, attempt.index, answer)
        check = self._open(cfg, call, attempt.index, request)
        budget = routing.attempt_budget(deadline.left(), cfg.request_timeout_seconds)
        try:
            await asyncio.wait_for(check.hold(call.chat, 0), timeout=budget)
        except Exception as exc:
            logger.warning("self-check on tier %s failed: %r", tier, exc)
            self.metrics.self_check(tier, "error", {})
            return 0.0
        finally:
            await check.close()
        chunk = check.held[0]
        self.metrics.self_check(tier, "ok", chunk.get("usage") or {})
        return routing.p_yes(chunk, call.chat, cfg.cascade.self_check.yes_tokens)

    async def _rung(
        self,
        cfg: IngressConfig,
        call: Call,
        index: int,
        climb: bool,
        deadline: Deadline,
        refused: set[int],
        parked: dict[int, Attempt],
    ) -> Attempt:
        """Tier `index`'s answer, or that of the first tier after it in the fallback order."""
        order = routing.fallback_order(len(cfg.tiers), index, cfg.fallback)
        order = [i for i in order if i not in refused]
        refusals = Refusals()
        for i in order:
            attempt = parked.pop(i, None)
            if attempt is None:
                if deadline.left() <= 0:
                    break
                budget = routing.attempt_budget(deadline.left(), cfg.request_timeout_seconds)
                attempt = await self._try(cfg, call, i, climb and i == index, budget, refusals)
            if attempt is None:
                refused.add(i)
                continue
            if i != index:
                moved = "overloaded" if index in refusals.busy else "error"
                self.metrics.fallback(cfg.tiers[index].name, cfg.tiers[i].name, moved)
            return attempt
        raise refusals.error(cfg, deadline)

    async def _try(
        self,
        cfg: IngressConfig,
        call: Call,
        index: int,
        logprobs: bool,
        budget: float,
        refusals: Refusals,
    ) -> Attempt | None:
        """Tier `index`'s attempt, or None with the reason noted: its breaker is the judge.

        A full tier (Serve's backpressure) is busy, not broken: it does not count against its
        circuit breaker. A tier's 4xx is the request's fault: it goes to the client as is.
        """
        name = cfg.tiers[index].name
        breaker = self.breaker(name)
        if not breaker.available(self.clock()):
            refusals.broken.append(f"tier {name} is cooling down after repeated failures")
            return None
        try:
            attempt = await self._attempt(cfg, call, index, logprobs, budget)
        except InvalidRequest:
            raise
        except Exception as exc:  # replica died, timed out, full, or unavailable
            full = backpressure(exc)
            if full is not None:
                refusals.busy[index] = full.retry_after_s or OVERLOAD_RETRY_AFTER_S
                return None
            breaker.record(False, self.clock())
            why = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
            refusals.broken.append(f"tier {name} failed: {why}"[:300])
            logger.warning(refusals.broken[-1])
            return None
        breaker.record(True, self.clock())
        return attempt

    async def _attempt(
        self, cfg: IngressConfig, call: Call, index: int, logprobs: bool, budget: float
    ) -> Attempt:
        """Calls tier `index` and reads what its decision needs, within `budget` seconds."""
        attempt = self._open(
            cfg, call, index, tier_request(cfg, call, index, logprobs=logprobs, stream=call.stream)
        )
        tokens = cfg.cascade.early_decision_tokens if logprobs else 0
        try:
            await asyncio.wait_for(attempt.hold(call.chat, tokens), timeout=budget)
        except BaseException:
            await attempt.close()
            raise
        return attempt

    def _open(self, cfg: IngressConfig, call: Call, index: int, request: Any) -> Attempt:
        tier = cfg.tiers[index]
        handle = self.handles[tier.name]
        method = handle.chat if call.chat else handle.completions
        gen = method.remote(request, None)
        return Attempt(index, tier, gen, request.stream, self.metrics, self.clock)

    # -- handing it over ---------------------------------------------------------------------

    async def deliver(
        self, cfg: IngressConfig, call: Call, outcome: Outcome, deadline: Deadline
    ) -> AsyncIterator[Chunk]:
        """The kept answer's chunks as the client gets them, then the rest of its stream.

        The HTTP status is sent by then, so a tier failing or the deadline passing mid-stream
        ends it with one error chunk. Once done the request is counted, and a sample of
        lower-tier answers (streamed ones too) is compared with the top tier's, off the path.
        """
        attempt = outcome.attempt
        texts: list[str] = []
        usage: dict[str, Any] = {}
        result: str | None = None
        try:
            chunks = list(attempt.held)
            while True:
                for chunk in chunks:
                    texts.append(routing.answer_text(chunk, call.chat))
                    usage = chunk.get("usage") or usage
                    yield self._present(chunk, call)
                if attempt.finished:
                    break
                if deadline.left() <= 0:
                    raise TimeoutError
                chunks = await asyncio.wait_for(attempt.read(call.chat), timeout=deadline.left())
            result = "ok"
        except TimeoutError:
            result = "error"  # the dashboards' failure series; the client reads 504
            limit = deadline.seconds
            yield DeadlineExceeded(f"the request's {limit:g}s passed mid-stream").body()
        except IngressError as exc:
            result = "error"
            yield exc.body()
        except Exception as exc:
            self.breaker(outcome.tier).record(False, self.clock())
            result = "error"
            logger.warning("tier %s failed mid-stream: %r", outcome.tier, exc)
            yield TierUnavailable(f"tier {outcome.tier} failed mid-stream: {exc!r}"[:300]).body()
        finally:
            await attempt.close()
            if result is not None:  # None: the client went away
                self.metrics.answered(outcome.tier, str(cfg.mode), usage, result)
            if result == "ok":
                self._maybe_shadow(cfg, call, attempt.index, "".join(texts))

    @staticmethod
    def _present(chunk: Chunk, call: Call) -> Chunk:
        """The client's model name; logprobs only if it asked for them."""
        chunk["model"] = call.model
        if not call.wants_logprobs:
            for choice in chunk.get("choices") or []:
                choice.pop("logprobs", None)
        return chunk

    # -- shadow evaluation -------------------------------------------------------------------

    def _maybe_shadow(self, cfg: IngressConfig, call: Call, index: int, text: str) -> None:
        """A sample of lower-tier answers is re-asked of the top tier, off the request path."""
        rate = cfg.shadow.sample_rate
        if rate <= 0 or index == cfg.top or self.sample() >= rate:
            return
        task = asyncio.create_task(self._shadow(cfg, call, index, text))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, cfg: IngressConfig, call: Call, index: int, text: str) -> None:
        top = cfg.top
        if not self.breaker(cfg.tiers[top].name).available(self.clock()):
            return  # a broken top tier gets no extra traffic; shadows never touch the breakers
        try:
            request = tier_request(cfg, call, top, logprobs=False, stream=False)
            attempt = self._open(cfg, call, top, request)
            try:
                await asyncio.wait_for(attempt.hold(call.chat, 0), cfg.request_timeout_seconds)
            finally:
                await attempt.close()
        except Exception as exc:  # shadow traffic never affects users
            logger.info("shadow request failed: %r", exc)
            return
        reference = routing.answer_text(attempt.held[0], call.chat)
        agreed = routing.normalise_answer(reference) == routing.normalise_answer(text)
        self.metrics.shadow(cfg.tiers[index].name, agreed)
