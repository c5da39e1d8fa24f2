"""The router ingress: OpenAI-compatible HTTP in front of the tiers' vLLM deployments.

A thin shell: decisions are `tierserve.serving.routing`'s pure functions; the replicas and
request routing among them are `ray.serve.llm`'s LLMServer deployments behind Serve handles.
The thresholds arrive in `user_config`, so `reconfigure` changes them without restarting
anything and without touching requests in flight (each request reads the config once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from tierserve.serving import routing
from tierserve.serving.metrics import RouterMetrics
from tierserve.serving.routing import CircuitBreaker, Plan, RouterConfig, RoutingError
from tierserve.serving.scorers import Scorer, load_scorer

logger = logging.getLogger("tierserve.router")
api = FastAPI(title="tierserve router")
DONE = "[DONE]"


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    type_: str = "",
    retry_after: float = 5.0,
) -> JSONResponse:
    kind = type_ or ("invalid_request_error" if status < 500 else "service_unavailable")
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if status in (429, 503) else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class TierUnavailable(Exception):
    pass


class TierOverloaded(TierUnavailable):
    """Every tier the request may use refused it for backpressure: the client should retry."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def _backpressure(exc: BaseException) -> BackPressureError | None:
    """Serve raises BackPressureError when a tier's `maxQueuedRequests` is full."""
    for err in (exc, getattr(exc, "cause", None), exc.__cause__):
        if isinstance(err, BackPressureError):
            return err
    return None


OVERLOAD_RETRY_AFTER_S = 1.0  # when Serve gives no hint: queues on vLLM drain in about that


@dataclass
class Answer:
    body: dict[str, Any]
    tier: str
    escalated: bool
    confidence: float | None
    reason: str
    upfront_score: float | None = None


def _dump(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump(mode="json", exclude_none=True))
    return dict(obj)


def _sse(item: Any) -> list[str]:
    """LLMServer streams lists of `data: {...}` strings; split them into JSON payloads."""
    pieces = item if isinstance(item, list) else [item]
    out = []
    for piece in pieces:
        if not isinstance(piece, str):
            out.append(json.dumps(_dump(piece)))
            continue
        for line in piece.splitlines():
            if line.startswith("data: "):
                out.append(line[len("data: ") :])
    return out


def _event(payload: str, keep_logprobs: bool, model: str) -> str:
    """One server-sent event for the client: its model name, logprobs only if it asked."""
    if payload.strip() == DONE:
        return f"data: {payload}\n\n"
    data = json.loads(payload)
    data["model"] = model
    if not keep_logprobs:
        for choice in data.get("choices") or []:
            choice.pop("logprobs", None)
    return f"data: {json.dumps(data)}\n\n"


async def _close(gen: Any) -> None:
    """Stops an abandoned stream so the lower tier stops generating for nobody."""
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # the stream may already be finished or broken
            logger.debug("closing abandoned stream: %s", exc)
    cancel = getattr(gen, "cancel", None)
    if cancel is not None:
        cancel()


# Everything the Router's methods use must be defined above it: @serve.deployment pickles the
# class by value at definition time, capturing only the module globals that exist by then.
@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Router:
    def __init__(self, model_tier: str, tiers: list[tuple[str, DeploymentHandle]]):
        self.model_tier = model_tier
        self.handles = {name: handle.options(stream=True) for name, handle in tiers}
        self.breakers = {name: CircuitBreaker() for name, _ in tiers}
        self.metrics = RouterMetrics(model_tier)
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.scorer: Scorer | None = None
        self.config_hash = ""
        self.scorer_key = ""
        self.config = RouterConfig.from_user_config(
            {"modelTier": model_tier, "tiers": [{"name": n} for n, _ in tiers], "mode": "none"}
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = RouterConfig.from_user_config(user_config)
        if config.mode in ("upfront", "hybrid"):
            key = json.dumps(config.scorer, sort_keys=True)
            if key != self.scorer_key:  # a bad scorer fails the reconfigure, not requests
                self.scorer, self.scorer_key = load_scorer(config.scorer), key
        self.config = config
        self.config_hash = routing.config_hash(user_config)
        self.metrics.threshold(self.config.threshold)
        logger.info("router config: mode=%s threshold=%s", self.config.mode, self.config.threshold)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/tierserve/config")
    async def current_config(self) -> dict[str, Any]:
        """What the router decides with right now, for audits and tests."""
        cfg = self.config
        return {
            "modelTier": cfg.model_tier,
            "configHash": self.config_hash,
            "mode": cfg.mode,
            "threshold": cfg.threshold,
            "tiers": [t.name for t in cfg.tiers],
            "openCircuits": [
                n for n, b in self.breakers.items() if not b.available(time.monotonic())
            ],
        }

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        ids = [self.model_tier] + [f"{self.model_tier}:{t.name}" for t in self.config.tiers]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "owned_by": "tierserve"} for i in ids],
        }

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: Request, chat: bool) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return openai_error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object")
        field = "messages" if chat else "prompt"
        if field not in body:
            return openai_error(400, f"missing required field {field!r}", field)
        cfg = self.config  # one config per request, even if reconfigure() runs meanwhile
        started = time.perf_counter()
        try:
            pinned = routing.resolve_model(cfg, body.get("model"))
        except RoutingError as exc:
            return openai_error(exc.status, str(exc), exc.param, "model_not_found")
        text = routing.prompt_text(body)
        forced = routing.forced_rule(cfg, text) if pinned is None else None
        score = None
        if pinned is None and not forced and cfg.mode in ("upfront", "hybrid") and self.scorer:
            score = self.scorer.score(text)
        plan = routing.plan_request(cfg, pinned, forced, score)
        self.metrics.decision(time.perf_counter() - started)
        if plan.start > 0 and plan.reason != "pinned":
            self.metrics.escalation(cfg.tiers[0].name, cfg.tiers[plan.start].name, plan.reason)
        upfront = score if plan.reason == "upfront-score" else None
        try:
            if body.get("stream"):
                return await self._stream(cfg, body, chat, plan, upfront)
            answer = await self._answer(cfg, body, chat, plan)
        except TierOverloaded as exc:
            self.metrics.answered(cfg.tiers[plan.start].name, cfg.mode, {}, outcome="overloaded")
            return openai_error(429, str(exc), None, "rate_limit_exceeded", exc.retry_after)
        except TierUnavailable as exc:
            self.metrics.answered(cfg.tiers[plan.start].name, cfg.mode, {}, outcome="error")
            return openai_error(503, str(exc))
        except RoutingError as exc:
            return openai_error(exc.status, str(exc), exc.param)
        out = dict(answer.body)
        out["model"] = body.get("model") or self.model_tier
        if upfront is not None:
            answer.escalated, answer.upfront_score = plan.start > 0, upfront
        out["tierserve"] = {
            "tier": answer.tier,
            "escalated": answer.escalated,
            "confidence": answer.confidence,
            "reason": answer.reason,
        }
        if answer.upfront_score is not None:
            out["tierserve"]["upfrontScore"] = round(answer.upfront_score, 4)
        self._maybe_shadow(cfg, body, chat, answer)
        return JSONResponse(out, headers=self._headers(answer))

    @staticmethod
    def _headers(answer: Answer) -> dict[str, str]:
        headers = {
            "x-tierserve-tier": answer.tier,
            "x-tierserve-escalated": str(answer.escalated).lower(),
            "x-tierserve-reason": answer.reason,
        }
        if answer.confidence is not None:
            headers["x-tierserve-confidence"] = f"{answer.confidence:.4f}"
        if answer.upfront_score is not None:
            headers["x-tierserve-upfront-score"] = f"{answer.upfront_score:.4f}"
        return headers

    async def _answer(
        self, cfg: RouterConfig, body: dict[str, Any], chat: bool, plan: Plan
    ) -> Answer:
        """Non-streaming: each rung answers in full; its confidence decides the next step."""
        wants_logprobs = bool(body.get("logprobs"))
        index, escalated, score, reason = plan.start, False, None, plan.reason
        while True:
            climb = plan.cascade and index < len(cfg.tiers) - 1
            tier_index, response = await self._call_with_fallback(cfg, body, chat, index, climb)
            if not climb or tier_index != index:
                break
            score = routing.confidence(
                routing.stream_chunk_logprobs(response, chat), cfg.confidence
            )
            self.metrics.confidence(cfg.tiers[index].name, score)
            if not routing.should_escalate(1.0 - score, cfg.threshold):
                break
            self.metrics.escalation(
                cfg.tiers[index].name, cfg.tiers[index + 1].name, "low-confidence"
            )
            index, escalated, reason = index + 1, True, "low-confidence"
        if tier_index != index:
            reason = f"fallback:{cfg.tiers[index].name}"
        if not wants_logprobs:
            for choice in response.get("choices") or []:
                choice.pop("logprobs", None)
        usage = response.get("usage") or {}
        self.metrics.answered(cfg.tiers[tier_index].name, cfg.mode, usage)
        return Answer(response, cfg.tiers[tier_index].name, escalated, score, reason)

    async def _call_with_fallback(
        self, cfg: RouterConfig, body: dict[str, Any], chat: bool, index: int, logprobs: bool
    ) -> tuple[int, dict[str, Any]]:
        """Calls tier `index`; a tier that errors, times out, is broken or is full is skipped.

        A full tier (Serve's backpressure) is busy, not broken: it does not count against its
        circuit breaker, and when no tier answers because one was full the answer is 429.
        """
        last = ""
        busy: list[float] = []
        for i in routing.fallback_order(len(cfg.tiers), index, cfg.fallback):
            tier = cfg.tiers[i]
            breaker = self.breakers.setdefault(tier.name, CircuitBreaker())
            if not breaker.available(time.monotonic()):
                last = f"tier {tier.name} is cooling down after repeated failures"
                continue
            try:
                result = await asyncio.wait_for(
                    self._call(cfg, body, chat, i, logprobs and i == index),
                    timeout=cfg.request_timeout_seconds,
                )
            except RoutingError:
                raise
            except Exception as exc:  # replica died, timed out, full, or tier unavailable
                full = _backpressure(exc)
                if full is not None:
                    busy.append(full.retry_after_s or OVERLOAD_RETRY_AFTER_S)
                    last = f"tier {tier.name} is overloaded: {full}"
                    continue
                breaker.record(False, time.monotonic())
                last = f"tier {tier.name} failed: {type(exc).__name__}: {exc}"[:300]
                logger.warning(last)
                continue
            breaker.record(True, time.monotonic())
            if i != index:
                self.metrics.fallback(
                    cfg.tiers[index].name, tier.name, "overloaded" if busy else "error"
                )
            return i, result
        if busy:  # some tier was only full: retrying soon will help
            raise TierOverloaded(f"every tier is at capacity; {last}", min(busy))
        raise TierUnavailable(f"no tier could answer; {last}")

    def _request(
        self,
        cfg: RouterConfig,
        body: dict[str, Any],
        chat: bool,
        index: int,
        logprobs: bool,
        stream: bool,
    ) -> Any:
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
        )

        payload = {**body, "model": cfg.tiers[index].model_id, "stream": stream}
        if logprobs:
            payload["logprobs"] = True if chat else max(int(body.get("logprobs") or 0), 1)
        try:
            return ChatCompletionRequest(**payload) if chat else CompletionRequest(**payload)
        except Exception as exc:  # pydantic validation of the OpenAI request
            first = str(exc).splitlines()
            detail = " ".join(first[:2]) if first else type(exc).__name__
            raise RoutingError(f"invalid request: {detail}", "body") from exc

    def _generator(self, cfg: RouterConfig, index: int, chat: bool, req: Any) -> Any:
        handle = self.handles[cfg.tiers[index].name]
        method = handle.chat if chat else handle.completions
        stream: DeploymentResponseGenerator[Any] = method.remote(req, None)  # type: ignore[assignment]
        return stream

    async def _call(
        self, cfg: RouterConfig, body: dict[str, Any], chat: bool, index: int, logprobs: bool
    ) -> dict[str, Any]:
        req = self._request(cfg, body, chat, index, logprobs, stream=False)
        tier = cfg.tiers[index]
        started = time.perf_counter()
        with self.metrics.in_flight(tier.name):
            try:
                async for item in self._generator(cfg, index, chat, req):
                    data = _dump(item)
                    if "error" in data:
                        err = data["error"]
                        code = int(err.get("code") or 500)
                        if code < 500:
                            param = str(err.get("param") or "")
                            raise RoutingError(str(err.get("message")), param, code)
                        raise RuntimeError(err.get("message"))
                    return data
            finally:
                self.metrics.gpu_seconds(tier.name, tier.gpus, time.perf_counter() - started)
        raise RuntimeError("tier returned no response")

    # -- streaming ---------------------------------------------------------------------------

    async def _stream(
        self,
        cfg: RouterConfig,
        body: dict[str, Any],
        chat: bool,
        plan: Plan,
        upfront: float | None = None,
    ) -> Response:
        """Streams from the first rung that is confident after its first k tokens.

        A lower rung's first `earlyDecisionTokens` tokens are held back; if they are not
        confident enough the stream is dropped and the next rung starts, so an escalated
        stream starts quickly and the client never sees the abandoned tokens.
        """
        wants_logprobs = bool(body.get("logprobs"))
        index, escalated, reason, score = plan.start, False, plan.reason, None
        while True:
            climb = plan.cascade and index < len(cfg.tiers) - 1
            req = self._request(cfg, body, chat, index, logprobs=climb, stream=True)
            gen = self._generator(cfg, index, chat, req).__aiter__()
            held: list[str] = []
            tokens: list[float | None] = []
            finished = False
            try:
                while not climb or len(tokens) < cfg.early_decision_tokens:
                    try:
                        item = await asyncio.wait_for(
                            gen.__anext__(), timeout=cfg.request_timeout_seconds
                        )
                    except StopAsyncIteration:
                        finished = True
                        break
                    for payload in _sse(item):
                        held.append(payload)
                        if payload.strip() != DONE:
                            tokens.extend(routing.stream_chunk_logprobs(json.loads(payload), chat))
                    if not climb:
                        break
            except Exception as exc:
                full = _backpressure(exc)
                why = "overloaded" if full is not None else "error"
                if index + 1 < len(cfg.tiers) and cfg.fallback == "nextTier":
                    self.metrics.fallback(cfg.tiers[index].name, cfg.tiers[index + 1].name, why)
                    logger.warning("stream from %s failed: %s", cfg.tiers[index].name, exc)
                    index += 1
                    continue
                if full is not None:
                    raise TierOverloaded(
                        f"tier {cfg.tiers[index].name} is at capacity: {full}",
                        full.retry_after_s or OVERLOAD_RETRY_AFTER_S,
                    ) from exc
                raise TierUnavailable(f"tier {cfg.tiers[index].name} failed: {exc}") from exc
            if climb:
                score = routing.confidence(tokens, cfg.confidence)
                self.metrics.confidence(cfg.tiers[index].name, score)
                if routing.should_escalate(1.0 - score, cfg.threshold):
                    self.metrics.escalation(
                        cfg.tiers[index].name, cfg.tiers[index + 1].name, "low-confidence"
                    )
                    await _close(gen)
                    index, escalated, reason = index + 1, True, "low-confidence"
                    continue
            break

        tier = cfg.tiers[index]
        escalated = escalated or (upfront is not None and plan.start > 0)
        answer = Answer({}, tier.name, escalated, score, reason, upfront)
        metrics = self.metrics
        model = str(body.get("model") or self.model_tier)

        async def events() -> AsyncIterator[str]:
            with metrics.in_flight(tier.name):
                for payload in held:
                    yield _event(payload, wants_logprobs, model)
                if not finished:
                    async for item in gen:
                        for payload in _sse(item):
                            yield _event(payload, wants_logprobs, model)
                metrics.answered(tier.name, cfg.mode, {})

        return StreamingResponse(
            events(), media_type="text/event-stream", headers=self._headers(answer)
        )

    # -- shadow evaluation -------------------------------------------------------------------

    def _maybe_shadow(
        self, cfg: RouterConfig, body: dict[str, Any], chat: bool, answer: Answer
    ) -> None:
        """A sample of lower-tier answers is re-asked of the top tier, off the request path."""
        top = len(cfg.tiers) - 1
        if cfg.shadow_sample_rate <= 0 or answer.tier == cfg.tiers[top].name:
            return
        if random.random() >= cfg.shadow_sample_rate:
            return
        task = asyncio.create_task(self._shadow(cfg, body, chat, answer))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(
        self, cfg: RouterConfig, body: dict[str, Any], chat: bool, answer: Answer
    ) -> None:
        top = len(cfg.tiers) - 1
        try:
            reference = await asyncio.wait_for(
                self._call(cfg, body, chat, top, logprobs=False),
                timeout=cfg.request_timeout_seconds,
            )
        except Exception as exc:  # shadow traffic never affects users
            logger.info("shadow request failed: %s", exc)
            return
        agreed = routing.normalise_answer(routing.answer_text(reference, chat)) == (
            routing.normalise_answer(routing.answer_text(answer.body, chat))
        )
        self.metrics.shadow(answer.tier, agreed)
