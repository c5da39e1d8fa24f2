"""Talking to the tiers: `ray.serve.llm` LLMServer deployments behind Serve handles.

What LLMServer yields (`payloads`, `tier_error`), what it is sent (`tier_request`), Serve's
backpressure (`backpressure`), and one call to one tier with what was read of it (`Attempt`).
The cascade engine (`tierserve.serving.cascade`) decides what to do with them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ray.serve.exceptions import BackPressureError

from tierserve.serving import routing
from tierserve.serving.config import IngressConfig, TierRef
from tierserve.serving.errors import InvalidRequest
from tierserve.serving.metrics import IngressMetrics

logger = logging.getLogger("tierserve.ingress")

Chunk = dict[str, Any]
DONE = "[DONE]"


class TierFailed(Exception):
    """A tier sent a server error (5xx) or nothing instead of an answer."""


@dataclass(frozen=True)
class Call:
    """One client request: the typed OpenAI request and the model name the client sees."""

    request: Any  # ray.serve.llm.openai_api_models.ChatCompletionRequest | CompletionRequest
    chat: bool
    model: str

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @cached_property
    def text(self) -> str:
        """The prompt's text, as force rules, scorers, the rank score's tie-break, the
        self-check and the judge see it: built once per request."""
        r = self.request
        return routing.prompt_text(getattr(r, "messages", None), getattr(r, "prompt", None))

    @property
    def wants_logprobs(self) -> bool:
        """Chat asks with `logprobs: true`, completions with a count (0 included)."""
        logprobs = self.request.logprobs
        return logprobs is not None and logprobs is not False


def _dump(obj: Any) -> Chunk:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump(mode="json", exclude_none=True))
    return dict(obj)


def payloads(item: Any) -> tuple[list[Chunk], bool]:
    """The OpenAI objects in one item of an LLMServer stream, and whether `[DONE]` was among them.

    LLMServer yields one response object when not streaming, and lists of `data: {...}` SSE
    strings when streaming (batched); an ErrorResponse object or an error event in either.
    """
    chunks: list[Chunk] = []
    done = False
    for piece in item if isinstance(item, list) else [item]:
        if not isinstance(piece, str):
            chunks.append(_dump(piece))
            continue
        for line in piece.splitlines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :].strip()
            if data == DONE:
                done = True
            else:
                chunks.append(json.loads(data))
    return chunks, done


def tier_error(chunk: Chunk) -> Exception | None:
    """An error a tier sent instead of an answer: a 4xx is the request's fault, else the tier's."""
    err = chunk.get("error")
    if err is None and chunk.get("object") == "error":
        err = chunk  # vLLM's older flat shape
    if not isinstance(err, dict):
        return None
    code = int(err.get("code") or 500)
    message = str(err.get("message") or "the tier sent an error")
    if 400 <= code < 500:
        return InvalidRequest(message, param=err.get("param") or None, status=code)
    return TierFailed(f"{code}: {message}")


def backpressure(exc: BaseException) -> BackPressureError | None:
    """Serve raises BackPressureError (maybe wrapped) when a tier's `maxQueuedRequests` is full."""
    for err in (exc, getattr(exc, "cause", None), exc.__cause__):
        if isinstance(err, BackPressureError):
            return err
    return None


def tier_request(
    cfg: IngressConfig, call: Call, index: int, *, logprobs: bool, stream: bool
) -> Any:
    """The client's request as tier `index` gets it; `logprobs` when a decision needs them."""
    update: dict[str, Any] = {"model": cfg.tiers[index].model_id, "stream": stream}
    if not stream:
        update["stream_options"] = None  # vLLM refuses stream options on a whole answer
    if logprobs:
        update["logprobs"] = True if call.chat else max(int(call.request.logprobs or 0), 1)
    return call.request.model_copy(update=update)


SELF_CHECK_TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def self_check_request(cfg: IngressConfig, call: Call, index: int, answer: str) -> Any:
    """The lower tier asked about its own answer: one token, with its top logprobs."""
    check = cfg.cascade.self_check
    update: dict[str, Any] = {
        "model": cfg.tiers[index].model_id,
        "stream": False,
        "stream_options": None,
        "max_tokens": 1,
        "n": 1,
        "temperature": 0.0,
    }
    if call.chat:
        messages = list(call.request.messages)
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": check.prompt},
        ]
        update |= {"messages": messages, "logprobs": True, "top_logprobs": SELF_CHECK_TOP_LOGPROBS}
        update["max_completion_tokens"] = None
    else:
        update |= {
            "prompt": f"{call.text}{answer}\n{check.prompt}\n",
            "logprobs": SELF_CHECK_TOP_LOGPROBS,
            "echo": False,
        }
    return call.request.model_copy(update=update)


JUDGE_MAX_TOKENS = 4  # room for "TIE." and a stray token; anything longer is unparseable


def judge_request(cfg: IngressConfig, call: Call, index: int, prompt: str) -> Any:
    """The judge's question, as a fresh request of the client's kind (chat or completions):
    none of the client's own parameters (tools, formats, penalties) reach the judge."""
    body: dict[str, Any] = {
        "model": cfg.tiers[index].model_id,
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0.0,
        "stream": False,
    }
    if call.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return type(call.request).model_validate(body)


async def _close(gen: Any) -> None:
    """Stops an abandoned stream, so the tier stops generating for nobody."""
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # the stream may already be finished or broken
            logger.debug("closing an abandoned stream: %s", exc)
    cancel = getattr(gen, "cancel", None)
    if cancel is not None:
        cancel()


class Attempt:
    """One call to one tier: the chunks read so far and, while unfinished, the rest."""

    def __init__(
        self,
        index: int,
        tier: TierRef,
        gen: Any,
        stream: bool,
        metrics: IngressMetrics,
        clock: Callable[[], float],
        on_close: Callable[[], None] | None = None,
    ):
        self.index, self.tier, self.gen, self.stream = index, tier, gen, stream
        self.metrics, self.clock, self.on_close = metrics, clock, on_close
        self.it = gen.__aiter__()
        self.held: list[Chunk] = []
        self.tokens: list[float | None] = []
        self.finished = False
        self.started = clock()
        self.closed = False
        metrics.in_flight(tier.name, +1)

    async def read(self, chat: bool) -> list[Chunk]:
        """The next item's chunks ([] at the end); a tier's error raises."""
        try:
            item = await self.it.__anext__()
        except StopAsyncIteration:
            self.finished = True
            return []
        chunks, done = payloads(item)
        for chunk in chunks:
            error = tier_error(chunk)
            if error is not None:
                raise error
            self.tokens.extend(routing.stream_chunk_logprobs(chunk, chat))
        self.finished = done or not self.stream  # a whole answer comes as one item
        return chunks

    async def hold(self, chat: bool, tokens: int) -> None:
        """Reads until the decision can be made: `tokens` tokens, or the first chunk."""
        while not self.finished and (not self.held or len(self.tokens) < tokens):
            self.held.extend(await self.read(chat))
        if not self.held and not self.stream:
            raise TierFailed("the tier sent no answer")

    async def close(self) -> None:
        """Ends the call once: the accounting, and the tier's stream if it is still going."""
        if self.closed:
            return
        self.closed = True
        if self.on_close is not None:
            self.on_close()
        self.metrics.in_flight(self.tier.name, -1)
        self.metrics.gpu_seconds(self.tier.name, self.tier.gpus, self.clock() - self.started)
        if not self.finished:
            await _close(self.gen)
