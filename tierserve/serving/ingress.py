"""The ingress: OpenAI-compatible HTTP in front of the tiers' `ray.serve.llm` deployments.

`TierIngress` is a plain class; `make_app` is the app factory that builds its FastAPI app, and
Serve calls it through `__serve_build_asgi_app__` on each replica (`serve.ingress()` without an
app, as `ray.serve.llm`'s own LLMServer does), so the same app runs in tests with fake handles.
Requests are read (size-bounded) and validated by `validation` into the public typed OpenAI
models (`ray.serve.llm.openai_api_models`) before any tier is called or any stream starts; every
failure is an `IngressError` written by one exception handler, and anything else a JSON 500.

The request path: parse, plan (`routing`'s pure decisions), run the cascade
(`cascade.CascadeEngine`), then one of two thin emitters: a JSON body, or server-sent events.
The config arrives in `user_config`, so `reconfigure` changes it without restarting anything and
without touching requests in flight (each request reads the config once).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tierserve.api.v1alpha1 import RoutingMode
from tierserve.names import INGRESS_DEPLOYMENT, ROUTER_CPUS
from tierserve.serving import routing, validation
from tierserve.serving.cascade import CascadeEngine, Deadline, Outcome
from tierserve.serving.config import IngressConfig, TierRef, config_hash
from tierserve.serving.errors import IngressError, InvalidRequest
from tierserve.serving.ledger import Bill
from tierserve.serving.metrics import IngressMetrics, MetricSink
from tierserve.serving.scorers import Scorer, load_scorer
from tierserve.serving.tiers import Call, Chunk
from tierserve.serving.validation import Endpoint

logger = logging.getLogger("tierserve.ingress")

# The body size limit, for a replica whose requests legitimately carry more (long documents,
# images as data URLs): an env var, as Serve's runtime_env sets them.
MAX_BODY_BYTES_ENV = "TIERSERVE_MAX_BODY_BYTES"


@dataclass(frozen=True)
class Decision:
    """Who answered and why, as the client reads it in headers and in the body's `tierserve`;
    with `bill`, what it cost (a whole answer's headers and body; a stream's last chunk only,
    its headers being sent before the cost is known)."""

    tier: str
    escalated: bool
    confidence: float | None
    reason: str
    upfront_score: float | None
    bill: Bill | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "x-tierserve-tier": self.tier,
            "x-tierserve-escalated": str(self.escalated).lower(),
            "x-tierserve-reason": self.reason,
        }
        if self.confidence is not None:
            headers["x-tierserve-confidence"] = f"{self.confidence:.4f}"
        if self.upfront_score is not None:
            headers["x-tierserve-upfront-score"] = f"{self.upfront_score:.4f}"
        if self.bill is not None:
            headers |= self.bill.headers()
        return headers

    def body(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "tier": self.tier,
            "escalated": self.escalated,
            "confidence": self.confidence,
            "reason": self.reason,
        }
        if self.upfront_score is not None:
            info["upfrontScore"] = round(self.upfront_score, 4)
        if self.bill is not None:
            info["cost"] = self.bill.body()
        return info


class TierIngress:
    """One replica of the ingress. Serve builds it with the tiers' LLMServer handles.

    `metrics`, `clock` and `sample` are for tests: a `MetricSink` such as `MemorySink` instead
    of Ray's metrics, a fake monotonic clock for breakers and deadlines, a fixed shadow draw.
    `max_body_bytes` bounds a request's body (default: $TIERSERVE_MAX_BODY_BYTES, else 4 MiB).
    """

    def __init__(
        self,
        model_tier: str,
        tiers: Sequence[tuple[str, Any]],
        *,
        metrics: MetricSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], float] = random.random,
        max_body_bytes: int | None = None,
    ):
        self.model_tier = model_tier
        default = os.environ.get(MAX_BODY_BYTES_ENV) or validation.DEFAULT_MAX_BODY_BYTES
        self.max_body_bytes = max_body_bytes or int(default)
        self.metrics = IngressMetrics(model_tier, metrics)
        handles = {name: handle.options(stream=True) for name, handle in tiers}
        self.engine = CascadeEngine(handles, self.metrics, clock=clock, sample=sample)
        self.scorer: Scorer | None = None
        self.scorer_key = ""
        self.config_hash = ""
        self.config = IngressConfig(
            model_tier=model_tier,
            tiers=[TierRef(name=name) for name, _ in tiers],
            mode=RoutingMode.NONE,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new config for the next requests; a bad one (or a bad scorer) raises here."""
        config = IngressConfig.model_validate(user_config)
        unknown = [t.name for t in config.tiers if t.name not in self.engine.handles]
        if unknown:
            raise ValueError(f"tiers {unknown} have no deployment in this application")
        if config.mode in (RoutingMode.UPFRONT, RoutingMode.HYBRID):
            spec = config.upfront.scorer.model_dump(mode="json", exclude_none=True)
            key = json.dumps(spec, sort_keys=True)
            if key != self.scorer_key:
                self.scorer, self.scorer_key = load_scorer(spec), key
        self.engine.configure(config)
        self.config = config
        self.config_hash = config_hash(user_config)
        self.metrics.threshold(config.threshold)
        logger.info("ingress config: mode=%s threshold=%s", config.mode, config.threshold)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve asks each replica for its ASGI app once it is constructed."""
        return make_app(self)

    # -- the request path --------------------------------------------------------------------

    async def parse(self, request: Request, endpoint: Endpoint) -> Call:
        """The request, read and validated: what is wrong with it is refused here, named."""
        raw = await _read_body(request, self.max_body_bytes)
        body = validation.parse(raw, endpoint, self.config, self.max_body_bytes)
        return Call(body, endpoint is Endpoint.CHAT, body.model or self.model_tier)

    async def answer(self, call: Call) -> Response:
        """Parse is done: plan, run the cascade, emit the answer as JSON or as a stream."""
        cfg = self.config  # one config per request, even if reconfigure() runs meanwhile
        seconds = routing.request_deadline(cfg.request_timeout_seconds, len(cfg.tiers))
        deadline = Deadline(seconds, self.engine.clock)
        started = time.perf_counter()
        pinned = routing.resolve_model(cfg, call.request.model)
        text = call.text
        forced = routing.forced_rule(cfg, text) if pinned is None else None
        score = None
        upfront_mode = cfg.mode in (RoutingMode.UPFRONT, RoutingMode.HYBRID)
        if pinned is None and not forced and upfront_mode and self.scorer is not None:
            score = self.scorer.score(text)
        planned = routing.plan_request(cfg, pinned, forced, score)
        plan = self.engine.cap_start(cfg, planned, call)  # maxCost may lower an upfront jump
        self.metrics.decision(time.perf_counter() - started)
        if plan.start > 0 and plan.reason != "pinned":
            self.metrics.escalation(cfg.tiers[0].name, cfg.tiers[plan.start].name, planned.reason)
        try:
            outcome = await self.engine.run(cfg, plan, call, deadline)
        except InvalidRequest as exc:  # a tier's 4xx: name the field as the client wrote it
            exc.param = validation.client_param(exc.param, call.chat)
            raise
        upfront = score if planned.reason == "upfront-score" else None
        decision = _decision(outcome, upfront, plan.start)
        chunks = self.engine.deliver(cfg, call, outcome, deadline)
        if call.stream:
            return await _sse(chunks, decision, outcome)
        return await _json(chunks, decision, outcome)

    def current_config(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "modelTier": cfg.model_tier,
            "configHash": self.config_hash,
            "mode": str(cfg.mode),
            "threshold": cfg.threshold,
            "tiers": [t.name for t in cfg.tiers],
            "openCircuits": self.engine.open_circuits(),
        }

    def models(self) -> dict[str, Any]:
        ids = [self.model_tier] + [f"{self.model_tier}:{t.name}" for t in self.config.tiers]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "owned_by": "tierserve"} for i in ids],
        }


def _decision(outcome: Outcome, upfront: float | None, start: int) -> Decision:
    escalated = outcome.escalated
    if upfront is not None:  # the scorer sent it up front, if that tier answered
        escalated = start > 0 and outcome.attempt.index == start
    return Decision(outcome.tier, escalated, outcome.confidence, outcome.reason, upfront)


async def _json(chunks: AsyncIterator[Chunk], decision: Decision, outcome: Outcome) -> JSONResponse:
    """A whole answer: the one chunk, with who answered and what it cost in `tierserve`."""
    (body,) = [chunk async for chunk in chunks]  # drained: counted and billed at its end
    decision = replace(decision, bill=outcome.bill)
    body["tierserve"] = decision.body()
    return JSONResponse(body, headers=decision.headers())


async def _sse(
    chunks: AsyncIterator[Chunk], decision: Decision, outcome: Outcome
) -> StreamingResponse:
    """A stream: each chunk as a server-sent event, then `[DONE]`.

    The first chunk is read here, so `chunks` has started: if the client leaves before the
    body is sent, its cleanup (closing the tier's stream, the metrics) still runs when it is
    collected, which a never-started generator would skip. The answer's cost is known only
    when the stream has ended: a chunk that may be the last (a choice finished; no choices: the
    usage, an error) is held until the next arrives, so the last one carries the `tierserve`
    decision with the cost, and tokens are never held back.
    """
    first = await anext(aiter(chunks), None)

    async def events() -> AsyncIterator[str]:
        if first is None:
            yield "data: [DONE]\n\n"
            return
        held = first if _terminal(first) else None
        if held is None:
            yield f"data: {json.dumps(first)}\n\n"
        async for chunk in chunks:
            if held is not None:
                yield f"data: {json.dumps(held)}\n\n"
            held = chunk if _terminal(chunk) else None
            if held is None:
                yield f"data: {json.dumps(chunk)}\n\n"
        last = held if held is not None else {"model": first.get("model"), "choices": []}
        last["tierserve"] = replace(decision, bill=outcome.bill).body()
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=decision.headers())


def _terminal(chunk: Chunk) -> bool:
    """A chunk that may end a stream: one of its choices finished, or it has none."""
    choices = chunk.get("choices") or []
    return not choices or any(choice.get("finish_reason") for choice in choices)


# -- the HTTP app ------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to be over `limit` bytes: from its
    Content-Length before reading, or while reading one that has none (chunked)."""
    length = request.headers.get("content-length", "")
    if length.isdigit():
        validation.check_size(int(length), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        validation.check_size(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _JSONErrors:
    """Last resort: an exception no handler answered becomes an OpenAI-style JSON 500 instead of
    Starlette's plain-text one. Once a response has started it can only be logged and re-raised
    (a stream's own failures are error events, written by the cascade)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            error = IngressError(f"internal error: {exc!r}"[:300])
            await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


def make_app(ingress: TierIngress) -> FastAPI:
    """The ingress's FastAPI app: its routes call `ingress`; errors become OpenAI-style JSON.

    Errors: 400 invalid JSON or field (`param` names it), 413 body over the limit, 404 unknown
    model or tier, 429 with Retry-After when only full tiers refused (Serve backpressure), 503
    with Retry-After when no tier could answer, 504 when requestTimeoutSeconds passed before any
    tier answered, 500 for anything unexpected: all OpenAI-style JSON, never plain text.
    """
    app = FastAPI(title="tierserve ingress")

    async def ingress_error(_: Request, exc: Exception) -> JSONResponse:
        error = cast(IngressError, exc)  # registered for IngressError only
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers())

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        """FastAPI's own parameter errors (no route takes a typed body, but one might)."""
        error = cast(RequestValidationError, exc)
        errors = [{**e, "loc": tuple(e.get("loc") or ())[1:]} for e in error.errors()]
        return await ingress_error(request, validation.from_validation_error(errors, error.body))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        """Unknown paths and methods, as OpenAI-style errors too."""
        error = cast(HTTPException, exc)
        response = await ingress_error(
            request, InvalidRequest(str(error.detail), status=error.status_code)
        )
        response.headers.update(error.headers or {})
        return response

    app.add_exception_handler(IngressError, ingress_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(_JSONErrors)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/tierserve/config")
    async def current_config() -> dict[str, Any]:
        """What the ingress decides with right now, for audits and tests."""
        return ingress.current_config()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ingress.models()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await ingress.answer(await ingress.parse(request, Endpoint.COMPLETIONS))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await ingress.answer(await ingress.parse(request, Endpoint.CHAT))

    return app


# The Serve deployment: the late-bound ingress calls `__serve_build_asgi_app__` on each replica.
deployment: Any = serve.deployment(
    name=INGRESS_DEPLOYMENT, max_ongoing_requests=256, ray_actor_options={"num_cpus": ROUTER_CPUS}
)(serve.ingress()(TierIngress))
