"""Fake tier deployments for ingress tests, shaped like `ray.serve.llm`'s LLMServer behind Serve.

`FakeTier` stands for a `DeploymentHandle`: `.options(stream=True).completions.remote(request,
None)` (or `.chat`) returns an async generator of what LLMServer yields: one response object
(`CompletionResponse`, `ChatCompletionResponse`) for a whole answer; for a stream, lists of
`data: {...}` SSE strings (LLMServer batches them), ending with `data: [DONE]`; an
`ErrorResponse` when vLLM refuses the request. Each `Reply` scripts one call: its text and token
logprobs (one token per character; logprobs only when the request asks, as vLLM does), an
error, an exception where Serve raises it (on the first await: `BackPressureError`, a dead
replica), a hang, a failure or a stall mid-stream, a delay per chunk.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray.serve.exceptions import BackPressureError
from ray.serve.llm.openai_api_models import (
    ChatCompletionResponse,
    CompletionResponse,
    ErrorResponse,
)

CONFIDENT = -0.01  # p = 0.99
UNSURE = -2.0  # p = 0.14


@dataclass
class Reply:
    text: str = "42"
    logprobs: Sequence[float] = (CONFIDENT,)  # per token; the last one repeats
    error: tuple[int, str, str | None] | None = None  # (code, message, param)
    raises: BaseException | None = None
    hang: bool = False
    break_after: int | None = None  # streaming: raise after this many tokens
    stall_after: int | None = None  # streaming: hang after this many tokens
    delay: float = 0.0  # seconds before each streamed item
    batch: int = 2  # streamed chunks per item
    top: dict[str, float] | None = None  # the first token's top logprobs (whole answers)


def full(retry_after: float | None = 2.0) -> BackPressureError:
    """What Serve raises when a tier's `maxQueuedRequests` is full."""
    return BackPressureError(
        num_queued_requests=1, max_queued_requests=1, retry_after_s=retry_after
    )


class FakeTier:
    """A tier's handle. `replies` are used in turn, the last one for every call after."""

    def __init__(self, name: str, *replies: Reply | Callable[[Any], Reply]):
        self.name = name
        self.replies: list[Reply | Callable[[Any], Reply]] = list(replies) or [Reply()]
        self.requests: list[Any] = []
        self.abandoned = 0  # streams closed before their end
        self.tokens_sent = 0

    def options(self, **_: Any) -> FakeTier:
        return self

    @property
    def completions(self) -> _Method:
        return _Method(self, chat=False)

    @property
    def chat(self) -> _Method:
        return _Method(self, chat=True)

    def reply(self, request: Any) -> Reply:
        script = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return script(request) if callable(script) else script

    @property
    def streamed(self) -> list[Any]:
        return [r for r in self.requests if r.stream]


class _Method:
    def __init__(self, tier: FakeTier, chat: bool):
        self.tier, self.chat = tier, chat

    def remote(self, request: Any, raw_request_info: Any) -> AsyncIterator[Any]:
        assert raw_request_info is None
        self.tier.requests.append(request)
        return _answer(self.tier, self.chat, request, self.tier.reply(request))


def _logprob(reply: Reply, i: int) -> float:
    return reply.logprobs[min(i, len(reply.logprobs) - 1)]


async def _answer(tier: FakeTier, chat: bool, request: Any, reply: Reply) -> AsyncIterator[Any]:
    if reply.raises is not None:
        raise reply.raises
    if reply.hang:
        await asyncio.Event().wait()
    if reply.error is not None:
        code, message, param = reply.error
        info = {"message": message, "type": "BadRequestError", "param": param, "code": code}
        error = ErrorResponse.model_validate({"error": info})
        yield [error] if request.stream else error
        return
    if not request.stream:
        tier.tokens_sent += len(reply.text)
        yield _whole(chat, request, reply)
        return
    try:
        chunks = _chunks(chat, request, reply)
        for start in range(0, len(chunks), reply.batch):
            if reply.delay:
                await asyncio.sleep(reply.delay)
            item = []
            for n, chunk in chunks[start : start + reply.batch]:
                if reply.break_after is not None and n > reply.break_after:
                    raise RuntimeError("replica died mid-stream")
                if reply.stall_after is not None and n > reply.stall_after:
                    await asyncio.Event().wait()
                tier.tokens_sent += 1 if n else 0
                item.append(f"data: {json.dumps(chunk)}\n\n")
            yield item
        yield ["data: [DONE]\n\n"]
    except (GeneratorExit, asyncio.CancelledError):
        tier.abandoned += 1
        raise


def _whole(chat: bool, request: Any, reply: Reply) -> Any:
    tokens = list(reply.text)
    usage = _usage(len(tokens))
    lps = [_logprob(reply, i) for i in range(len(tokens))]
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    logprobs: dict[str, Any]
    if chat:
        choice["message"] = {"role": "assistant", "content": reply.text}
        logprobs = {"content": [_chat_token(t, lp) for t, lp in zip(tokens, lps, strict=True)]}
    else:
        choice["text"] = reply.text
        logprobs = {
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": [None] * len(tokens),
            "text_offset": list(range(len(tokens))),
        }
    if reply.top is not None and tokens:
        if chat:
            tops = [_chat_token(t, lp) for t, lp in reply.top.items()]
            logprobs["content"][0]["top_logprobs"] = tops
        else:
            logprobs["top_logprobs"][0] = dict(reply.top)
    choice["logprobs"] = logprobs if request.logprobs else None
    body = {"model": request.model, "choices": [choice], "usage": usage}
    return (ChatCompletionResponse if chat else CompletionResponse).model_validate(body)


def _chat_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def _chunks(chat: bool, request: Any, reply: Reply) -> list[tuple[int, dict[str, Any]]]:
    """(token number, chunk) for each chunk of the stream; 0 for chunks without a token."""
    base = {"id": "cmpl-1", "created": 0, "model": request.model}
    out: list[tuple[int, dict[str, Any]]] = []
    if chat:
        base["object"] = "chat.completion.chunk"
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        out.append((0, {**base, "choices": [role]}))
    else:
        base["object"] = "text_completion"
    for i, token in enumerate(reply.text):
        lp = _logprob(reply, i)
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": token}}
            logprobs: Any = {"content": [_chat_token(token, lp)]}
        else:
            choice = {"index": 0, "text": token}
            logprobs = {"tokens": [token], "token_logprobs": [lp], "top_logprobs": [None]}
        choice["logprobs"] = logprobs if request.logprobs else None
        choice["finish_reason"] = None
        out.append((i + 1, {**base, "choices": [choice]}))
    last: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    out.append((0, {**base, "choices": [last]}))
    options = getattr(request, "stream_options", None)
    if options is not None and options.include_usage:
        if options.continuous_usage_stats:  # as vLLM: the usage so far on every chunk
            so_far = 0
            for n, chunk in out:
                so_far = max(so_far, n)
                chunk["usage"] = _usage(so_far)
        out.append((0, {**base, "choices": [], "usage": _usage(len(reply.text))}))
    return out


PROMPT_TOKENS = 3  # every fake prompt's tokens, as the fakes report them in `usage`


def _usage(completion: int) -> dict[str, int]:
    total = PROMPT_TOKENS + completion
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": total}
