"""The router ingress: OpenAI-compatible HTTP in front of the tiers' vLLM deployments.

A thin shell: the decisions are `tierserve.serving.routing`'s pure functions, the replicas and
their request routing are `ray.serve.llm`'s LLMServer deployments behind Serve handles. The
thresholds arrive in `user_config`, so `reconfigure` changes them without restarting anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from tierserve.serving import routing
from tierserve.serving.routing import RouterConfig, RoutingError

logger = logging.getLogger("tierserve.router")
api = FastAPI(title="tierserve router")


def openai_error(
    status: int, message: str, param: str | None = None, type_: str = ""
) -> JSONResponse:
    kind = type_ or ("invalid_request_error" if status < 500 else "service_unavailable")
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class TierUnavailable(Exception):
    pass


@dataclass
class Answer:
    body: dict[str, Any]
    tier: str
    escalated: bool
    confidence: float | None
    reason: str


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json", exclude_none=True) if hasattr(obj, "model_dump") else obj


def token_logprobs(body: dict[str, Any], chat: bool) -> list[float | None]:
    choice = (body.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") or {}
    if chat:
        return [t.get("logprob") for t in logprobs.get("content") or []]
    return list(logprobs.get("token_logprobs") or [])


@serve.deployment(name="Router", max_ongoing_requests=256)
@serve.ingress(api)
class Router:
    def __init__(self, model_tier: str, tiers: list[tuple[str, DeploymentHandle]]):
        self.model_tier = model_tier
        self.handles = {name: handle.options(stream=True) for name, handle in tiers}
        self.config = RouterConfig.from_user_config(
            {"modelTier": model_tier, "tiers": [{"name": n} for n, _ in tiers], "mode": "none"}
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = RouterConfig.from_user_config(user_config)
        logger.info("router config: mode=%s threshold=%s", self.config.mode, self.config.threshold)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

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
        cfg = self.config
        try:
            pinned = routing.resolve_model(cfg, body.get("model"))
        except RoutingError as exc:
            return openai_error(exc.status, str(exc), exc.param, "model_not_found")
        forced = routing.forced_rule(cfg, routing.prompt_text(body)) if pinned is None else None
        if pinned is not None:
            start, reason, cascade = pinned, "pinned", False
        elif forced:
            start, reason, cascade = len(cfg.tiers) - 1, f"forced:{forced}", False
        elif cfg.mode == "none":
            start, reason, cascade = 0, "first-tier", False
        else:
            start, reason, cascade = 0, "cascade", True
        if body.get("stream"):
            return await self._stream(body, chat, start, reason)
        try:
            answer = await self._answer(body, chat, start, reason, cascade)
        except TierUnavailable as exc:
            return openai_error(503, str(exc))
        except RoutingError as exc:
            return openai_error(exc.status, str(exc), exc.param)
        out = dict(answer.body)
        out["model"] = body.get("model") or self.model_tier
        out["tierserve"] = {
            "tier": answer.tier,
            "escalated": answer.escalated,
            "confidence": answer.confidence,
            "reason": answer.reason,
        }
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
        return headers

    async def _answer(
        self, body: dict[str, Any], chat: bool, start: int, reason: str, cascade: bool
    ) -> Answer:
        cfg = self.config
        wants_logprobs = bool(body.get("logprobs"))
        index, escalated, score = start, False, None
        while True:
            top = index == len(cfg.tiers) - 1
            ask_logprobs = cascade and not top
            result = await self._call_with_fallback(body, chat, index, ask_logprobs)
            tier_index, response = result
            if not ask_logprobs or tier_index != index:
                break
            score = routing.confidence(token_logprobs(response, chat), cfg.confidence)
            if not routing.should_escalate(1.0 - score, cfg.threshold):
                break
            index, escalated, reason = index + 1, True, "low-confidence"
        if not wants_logprobs:
            for choice in response.get("choices") or []:
                choice.pop("logprobs", None)
        return Answer(response, cfg.tiers[tier_index].name, escalated, score, reason)

    async def _call_with_fallback(
        self, body: dict[str, Any], chat: bool, index: int, logprobs: bool
    ) -> tuple[int, dict[str, Any]]:
        """Calls tier `index`; a tier that errors or is gone is skipped up (or down) the ladder."""
        order = self._fallback_order(index)
        last = ""
        for i in order:
            try:
                return i, await self._call(body, chat, i, logprobs)
            except RoutingError:
                raise
            except Exception as exc:  # a replica died, timed out or is unavailable
                last = f"tier {self.config.tiers[i].name} failed: {type(exc).__name__}: {exc}"
                logger.warning(last)
        raise TierUnavailable(f"no tier could answer; {last}")

    def _fallback_order(self, index: int) -> list[int]:
        n, fallback = len(self.config.tiers), self.config.fallback
        if fallback == "nextTier":
            return [index, *range(index + 1, n)]
        if fallback == "previousTier":
            return [index, *range(index - 1, -1, -1)]
        return [index]

    async def _call(
        self, body: dict[str, Any], chat: bool, index: int, logprobs: bool
    ) -> dict[str, Any]:
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
        )

        tier = self.config.tiers[index]
        payload = {**body, "model": tier.model_id, "stream": False}
        if logprobs:
            if chat:
                payload["logprobs"] = True
            else:
                payload["logprobs"] = max(int(body.get("logprobs") or 0), 1)
        try:
            req = ChatCompletionRequest(**payload) if chat else CompletionRequest(**payload)
        except Exception as exc:  # pydantic validation of the OpenAI request
            raise RoutingError(f"invalid request: {exc}".splitlines()[0], "body") from exc
        handle = self.handles[tier.name]
        method = handle.chat if chat else handle.completions
        stream: DeploymentResponseGenerator[Any] = method.remote(req, None)  # type: ignore[assignment]
        async for item in stream:
            data = _dump(item)
            if "error" in data:
                err = data["error"]
                code = int(err.get("code") or 500)
                if code < 500:
                    raise RoutingError(str(err.get("message")), str(err.get("param") or ""), code)
                raise RuntimeError(err.get("message"))
            return data
        raise RuntimeError("tier returned no response")

    async def _stream(self, body: dict[str, Any], chat: bool, index: int, reason: str) -> Response:
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
        )

        tier = self.config.tiers[index]
        payload = {**body, "model": tier.model_id}
        try:
            req = ChatCompletionRequest(**payload) if chat else CompletionRequest(**payload)
        except Exception as exc:
            return openai_error(400, f"invalid request: {exc}".splitlines()[0], "body")
        handle = self.handles[tier.name]
        method = handle.chat if chat else handle.completions

        async def chunks() -> AsyncIterator[str]:
            stream: DeploymentResponseGenerator[Any] = method.remote(req, None)  # type: ignore[assignment]
            async for item in stream:
                for piece in item if isinstance(item, list) else [item]:
                    yield (
                        piece if isinstance(piece, str) else f"data: {json.dumps(_dump(piece))}\n\n"
                    )

        headers = {
            "x-tierserve-tier": tier.name,
            "x-tierserve-escalated": "false",
            "x-tierserve-reason": reason,
        }
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)
