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

Every call a request causes goes on its ledger (`tierserve.serving.ledger`), settled into its
bill when the kept answer has been delivered. Before a request moves to another tier its caps
(`limits`) are checked; a full tier passes it on by `spillover`, a failed one by `fallback`.

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

from pydantic import BaseModel, TypeAdapter

from tierserve.api.v1alpha1 import CascadeScore, ConfidenceMetric
from tierserve.serving import ledger, routing
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import (
    OVERLOAD_RETRY_AFTER_S,
    DeadlineExceeded,
    IngressError,
    InvalidRequest,
    TierOverloaded,
    TierUnavailable,
)
from tierserve.serving.ledger import Bill, Line, Tab
from tierserve.serving.metrics import IngressMetrics
from tierserve.serving.rank import RankWindow, escalation_score, load_reference, tie_break
from tierserve.serving.routing import CircuitBreaker, Plan
from tierserve.serving.shadowing import ShadowEvaluator
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
    """The kept answer and how it was reached; what else the request spent on the way (answers
    it climbed away from, selfCheck calls), and once delivered, its bill."""

    attempt: Attempt
    escalated: bool
    confidence: float | None
    reason: str
    spent: list[Line] = field(default_factory=list)
    bill: Bill | None = None

    @property
    def tier(self) -> str:
        return self.attempt.tier.name


@dataclass
class Refusals:
    """Why the tiers of one rung did not answer, and so what the client is told."""

    busy: dict[int, float] = field(default_factory=dict)  # tier -> its Retry-After
    broken: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)  # passed over: beyond the request's maxCost

    def error(self, cfg: IngressConfig, deadline: Deadline) -> IngressError:
        """504 when the time ran out; 429 when only full queues refused (tiers the cost cap
        passed over aside: the full one may take the request later); else 503."""
        if deadline.left() <= 0:
            limit = deadline.seconds
            detail = "".join(f"; {reason}" for reason in self.broken)
            return DeadlineExceeded(f"no tier answered within the request's {limit:g}s{detail}")
        if self.busy and not self.broken:
            within = " within the request's maxCost" if self.capped else ""
            return TierOverloaded(
                f"every tier{within} is at capacity", retry_after=min(self.busy.values())
            )
        reasons = self.broken + self.capped
        reasons += [f"{len(self.busy)} tier(s) at capacity"] * bool(self.busy)
        return TierUnavailable("no tier could answer; " + "; ".join(reasons))


def next_tier(n_tiers: int, at: int, policy: str, skip: set[int]) -> int | None:
    """The first tier after `at` in `policy`'s direction (nextTier up, previousTier down, none:
    no other) that is not in `skip`."""
    order = routing.fallback_order(n_tiers, at, policy)[1:]
    return next((i for i in order if i not in skip), None)


def exempt(plan: Plan) -> bool:
    """Caps do not apply to a pinned request (the client chose its tier) nor to a forceTopTier
    rule's (a safety rule wins over a cost cap)."""
    return plan.reason == "pinned" or plan.reason.startswith("forced:")


def _max_tokens(call: Call) -> int | None:
    request = call.request
    return getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)


def _choices(call: Call) -> int:
    return int(getattr(call.request, "n", None) or 1)


_STREAM_OPTIONS: dict[type[BaseModel], TypeAdapter[Any]] = {}


def _stream_options(request_type: type[BaseModel]) -> TypeAdapter[Any]:
    """The request model's own StreamOptions type, whatever module vLLM keeps it in."""
    adapter = _STREAM_OPTIONS.get(request_type)
    if adapter is None:
        annotation: Any = request_type.model_fields["stream_options"].annotation
        adapter = _STREAM_OPTIONS[request_type] = TypeAdapter(annotation)
    return adapter


def usage_on_every_chunk(request: Any) -> Any:
    """Stream options that make a tier report usage on every chunk (vLLM's include_usage with
    continuous_usage_stats): the ledger's token counts, those of a stream abandoned after its
    early-decision tokens included. The client sees usage only as it asked (`_present`)."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    return _stream_options(type(request)).validate_python(options)


def _wants_usage(call: Call, chunk: Chunk) -> bool:
    """Whether the client asked for this chunk's usage: every chunk's (continuous_usage_stats)
    or the last one's, the chunk without choices (include_usage)."""
    options = getattr(call.request, "stream_options", None)
    if options is None or not options.include_usage:
        return False
    return bool(options.continuous_usage_stats) or not chunk.get("choices")


def _counted(attempt: Attempt, texts: list[str]) -> int:
    """Completion tokens counted from what was read, when the tier reported none: one per token
    logprob, else one per streamed chunk with text (vLLM streams about a token a chunk), else
    about four characters a token."""
    if attempt.tokens:
        return len(attempt.tokens)
    if attempt.stream:
        return sum(1 for text in texts if text)
    return ledger.text_tokens("".join(texts))


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
        self.breakers: dict[str, CircuitBreaker] = {}
        self.users = 0  # user requests climbing or being delivered: the load shadows yield to
        self.user_calls: dict[str, int] = {}  # tier -> users' calls open on it (not shadows')
        self.shadows = ShadowEvaluator(
            self._open_shadow, self.user_calls, self.breaker, metrics, clock, sample
        )
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
        await self.shadows.drain()

    # -- choosing the answer -----------------------------------------------------------------

    async def run(self, cfg: IngressConfig, plan: Plan, call: Call, deadline: Deadline) -> Outcome:
        """Climbs from `plan.start` until an answer is kept; raises the IngressError to answer.

        A request that fails after climbing has still spent its lower answers: they are
        metered here; a kept answer's are metered with it, when delivered."""
        tab = Tab()
        self.users += 1
        try:
            outcome = await self._climb(cfg, plan, call, deadline, tab)
        except (TierOverloaded, TierUnavailable, DeadlineExceeded) as exc:
            label = "overloaded" if isinstance(exc, TierOverloaded) else "error"
            self.metrics.answered(cfg.tiers[plan.start].name, str(cfg.mode), {}, label)
            self._meter(cfg, tab.lines(kept=-1))
            raise
        except BaseException:
            self._meter(cfg, tab.lines(kept=-1))
            raise
        finally:
            self.users -= 1
        outcome.spent = tab.lines(kept=outcome.attempt.index)
        return outcome

    def cap_start(self, cfg: IngressConfig, plan: Plan, call: Call) -> Plan:
        """An upfront (or hybrid) jump lowered to the highest tier whose estimated cost is
        within `limits.maxCost`, the first tier at least: the cap keeps requests off tiers
        it cannot pay for, whichever way they would get there."""
        limit = cfg.limits.max_cost
        if limit is None or plan.start == 0 or plan.reason != "upfront-score":
            return plan
        start, tab = plan.start, Tab()
        while start > 0 and self.estimate(cfg, call, start, tab) > limit:
            start -= 1
        if start == plan.start:
            return plan
        self.metrics.capped(cfg.tiers[start].name, ledger.CAP_COST.removeprefix("cap:"))
        return Plan(start, ledger.CAP_COST, plan.cascade)

    def estimate(self, cfg: IngressConfig, call: Call, index: int, tab: Tab) -> float:
        """What a call to tier `index` is estimated to cost this request (see `Tab.next_call`)."""
        prompt, completion = tab.next_call(call.text, _max_tokens(call))
        return ledger.estimate(cfg.tiers[index].token_price, prompt, completion, _choices(call))

    async def _climb(
        self, cfg: IngressConfig, plan: Plan, call: Call, deadline: Deadline, tab: Tab
    ) -> Outcome:
        refused: set[int] = set()  # tiers that failed or were full during this request
        # Lower answers kept while a higher tier is tried: for previousTier to come back to,
        # and (whole ones) for when nothing above answers.
        parked: dict[int, Attempt] = {}
        index, climbed, score, reason = plan.start, False, None, plan.reason
        capped = not exempt(plan)
        try:
            while True:
                climb = plan.cascade and index < cfg.top
                attempt = await self._rung(
                    cfg, call, index, climb, deadline, refused, parked, tab, capped
                )
                if attempt.index != index:
                    escalated = climbed and attempt.index > plan.start
                    return Outcome(attempt, escalated, score, f"fallback:{cfg.tiers[index].name}")
                if not climb:
                    return Outcome(attempt, climbed, score, reason)
                tier, above = cfg.tiers[index].name, cfg.tiers[index + 1].name
                score = await self._confidence(cfg, call, attempt, deadline, tab)
                self.metrics.confidence(tier, score)
                escalation = self.escalation_score(cfg, index, score, call)
                if not routing.should_escalate(escalation, cfg.threshold):
                    return Outcome(attempt, climbed, score, reason)
                line = self._line(call, attempt, ledger.WASTED, attempt.held)
                tab.learn(line, whole=not attempt.stream)
                cap = self._cap(cfg, call, plan, index, tab, line) if capped else None
                if cap is not None:  # the best answer so far, saying why it stayed
                    self.metrics.capped(tier, cap.removeprefix("cap:"))
                    return Outcome(attempt, climbed, score, cap)
                tab.climbed[index] = line
                self.metrics.escalation(tier, above, "low-confidence")
                if cfg.parks or not attempt.stream:  # a whole answer costs nothing to keep
                    parked[index] = attempt
                else:
                    await attempt.close()
                index, climbed, reason = index + 1, True, "low-confidence"
        finally:
            for attempt in parked.values():
                await attempt.close()

    def _cap(
        self, cfg: IngressConfig, call: Call, plan: Plan, index: int, tab: Tab, line: Line
    ) -> str | None:
        """The cap that stops a climb from tier `index`, if one does: maxRungs counts the climbs
        since the plan's start; maxCost the spend so far (this answer's included) plus the next
        tier's estimate."""
        limits = cfg.limits
        if limits.max_rungs is not None and index - plan.start >= limits.max_rungs:
            return ledger.CAP_RUNGS
        if limits.max_cost is not None:
            spend = tab.spent + line.cost + self.estimate(cfg, call, index + 1, tab)
            if spend > limits.max_cost:
                return ledger.CAP_COST
        return None

    def _affordable(self, cfg: IngressConfig, call: Call, index: int, tab: Tab) -> bool:
        limit = cfg.limits.max_cost
        return limit is None or tab.spent + self.estimate(cfg, call, index, tab) <= limit

    async def _confidence(
        self, cfg: IngressConfig, call: Call, attempt: Attempt, deadline: Deadline, tab: Tab
    ) -> float:
        """The answer's confidence: from its token logprobs, or by asking the tier (selfCheck).

        A self-check that fails or runs out of time gives confidence 0: when in doubt, the
        request goes up, as it would if the tier had been unsure. A check's tokens go on the
        request's tab (a failed one's are unknown, and not charged)."""
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
        usage = chunk.get("usage") or {}
        self.metrics.self_check(tier, "ok", usage)
        tokens = ledger.reported(usage)
        if tokens is not None:
            price = attempt.tier.token_price
            tab.checks.append(Line.of(tier, price, ledger.SELF_CHECK, tokens))
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
        tab: Tab,
        capped: bool,
    ) -> Attempt:
        """Tier `index`'s answer, or that of the tier its refusal sends the request to: in the
        `spillover` direction when it was full (Serve's backpressure), in the `fallback`
        direction when it failed or is cooling down. A tier beyond the request's maxCost is
        passed over in the same direction."""
        n_tiers = len(cfg.tiers)
        refusals = Refusals()
        policy = str(cfg.fallback)
        at = index if index not in refused else next_tier(n_tiers, index, policy, refused)
        while at is not None:
            i = at
            attempt = parked.pop(i, None)
            if attempt is None:
                if capped and i != index and not self._affordable(cfg, call, i, tab):
                    name = cfg.tiers[i].name
                    refusals.capped.append(f"tier {name} would take it past its maxCost")
                    refused.add(i)
                    at = next_tier(n_tiers, i, policy, refused)
                    continue
                if deadline.left() <= 0:
                    break
                budget = routing.attempt_budget(deadline.left(), cfg.request_timeout_seconds)
                attempt = await self._try(cfg, call, i, climb and i == index, budget, refusals)
            if attempt is not None:
                if i != index:
                    self._moved(cfg, index, attempt, refusals)
                return attempt
            refused.add(i)
            policy = cfg.spill if i in refusals.busy else str(cfg.fallback)
            at = next_tier(n_tiers, i, policy, refused)
        held = self._held(parked, policy, deadline)
        if held is None:
            raise refusals.error(cfg, deadline)
        self._moved(cfg, index, held, refusals)
        return held

    def _moved(self, cfg: IngressConfig, index: int, to: Attempt, refusals: Refusals) -> None:
        """Meters a request that tier `index` sent elsewhere, and why (full or failed)."""
        why = "overloaded" if index in refusals.busy else "error"
        self.metrics.fallback(cfg.tiers[index].name, to.tier.name, why)

    @staticmethod
    def _held(parked: dict[int, Attempt], policy: str, deadline: Deadline) -> Attempt | None:
        """The best answer an escalated request already holds, when nothing above it could
        answer: better than an error (a top tier that died would otherwise turn every escalated
        request into a 503). Not when the refusing policy is `none` (the spec asked for the
        error), nor a held stream past the deadline (its tail could not be read in time)."""
        if not parked or policy == "none":
            return None
        best = max(parked)
        if parked[best].stream and deadline.left() <= 0:
            return None
        return parked.pop(best)

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
        request = tier_request(cfg, call, index, logprobs=logprobs, stream=call.stream)
        if call.stream:
            request = request.model_copy(update={"stream_options": usage_on_every_chunk(request)})
        attempt = self._open(cfg, call, index, request)
        tokens = cfg.cascade.early_decision_tokens if logprobs else 0
        try:
            await asyncio.wait_for(attempt.hold(call.chat, tokens), timeout=budget)
        except BaseException:
            await attempt.close()
            raise
        return attempt

    def _open(
        self, cfg: IngressConfig, call: Call, index: int, request: Any, user: bool = True
    ) -> Attempt:
        """A call to tier `index`; a user's (not a shadow's) is counted in `user_calls` while
        open, the load the shadow gate's `maxTopTierInFlight` weighs."""
        tier = cfg.tiers[index]
        handle = self.handles[tier.name]
        method = handle.chat if call.chat else handle.completions
        gen = method.remote(request, None)
        on_close = None
        if user:
            self.user_calls[tier.name] = self.user_calls.get(tier.name, 0) + 1

            def on_close() -> None:
                self.user_calls[tier.name] -= 1

        return Attempt(index, tier, gen, request.stream, self.metrics, self.clock, on_close)

    def _open_shadow(self, cfg: IngressConfig, call: Call, index: int, request: Any) -> Attempt:
        return self._open(cfg, call, index, request, user=False)

    # -- handing it over ---------------------------------------------------------------------

    async def deliver(
        self, cfg: IngressConfig, call: Call, outcome: Outcome, deadline: Deadline
    ) -> AsyncIterator[Chunk]:
        """The kept answer's chunks as the client gets them, then the rest of its stream.

        The HTTP status is sent by then, so a tier failing or the deadline passing mid-stream
        ends it with one error chunk. Once done the request is counted and its bill settled
        (`outcome.bill`, metered; a stream cut short is charged for what was read), and a
        sample of lower-tier answers (streamed ones too) is compared with the top tier's, off
        the path.
        """
        attempt = outcome.attempt
        texts: list[str] = []
        usage: dict[str, Any] = {}
        result: str | None = None
        self.users += 1
        try:
            chunks = list(attempt.held)
            while True:
                for chunk in chunks:
                    texts.append(routing.answer_text(chunk, call.chat))
                    usage = chunk.get("usage") or usage
                    shown = self._present(chunk, call)
                    if shown is not None:
                        yield shown
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
            self.users -= 1
            await attempt.close()
            answer = self._line(call, attempt, ledger.ANSWER, [{"usage": usage}], texts)
            outcome.bill = ledger.settle([*outcome.spent, answer], cfg.tiers[cfg.top].token_price)
            self._meter(cfg, outcome.bill.lines)
            self.metrics.top_tier_alone(outcome.tier, str(cfg.mode), outcome.bill.top_tier_alone)
            if result is not None:  # None: the client went away
                self.metrics.answered(outcome.tier, str(cfg.mode), usage, result)
            if result == "ok":
                self.shadows.maybe_start(cfg, call, attempt.index, "".join(texts), self.users)

    @staticmethod
    def _present(chunk: Chunk, call: Call) -> Chunk | None:
        """The client's model name; logprobs only if it asked for them; in a stream, usage only
        as it asked (every tier is asked for it on every chunk): None for a chunk that carried
        nothing else."""
        chunk["model"] = call.model
        if not call.wants_logprobs:
            for choice in chunk.get("choices") or []:
                choice.pop("logprobs", None)
        if call.stream and "usage" in chunk and not _wants_usage(call, chunk):
            del chunk["usage"]
            if not chunk.get("choices"):
                return None
        return chunk

    # -- the ledger ----------------------------------------------------------------------------

    @staticmethod
    def _line(
        call: Call,
        attempt: Attempt,
        kind: str,
        chunks: list[Chunk],
        texts: list[str] | None = None,
    ) -> Line:
        """One call's ledger line: the tokens of the last usage among `chunks` (what was read of
        it), else counted from what was read, `estimated`."""
        usage = next((c["usage"] for c in reversed(chunks) if c.get("usage")), None)
        tokens = ledger.reported(usage)
        tier, price = attempt.tier.name, attempt.tier.token_price
        if tokens is not None:
            return Line.of(tier, price, kind, tokens)
        if texts is None:
            texts = [routing.answer_text(c, call.chat) for c in chunks]
        counted = (ledger.text_tokens(call.text), _counted(attempt, texts))
        return Line.of(tier, price, kind, counted, estimated=True)

    def _meter(self, cfg: IngressConfig, lines: list[Line] | tuple[Line, ...]) -> None:
        for line in lines:
            self.metrics.cost(line.tier, str(cfg.mode), line.kind, line.cost)
