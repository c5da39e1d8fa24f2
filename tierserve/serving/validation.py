"""Request validation: a request body in, a typed OpenAI request or an OpenAI-style error out.

Pure (no I/O, no tiers), so every malformed request is refused before any tier is called and
before a stream starts: a 200 cannot be taken back once streaming, and a tier's own refusal
costs a round trip and a queue slot. The schema is the request models' own (vLLM's protocol,
re-exported by `ray.serve.llm.openai_api_models`): pydantic's errors are translated into one
error whose `param` is the offending field's dotted path (`messages.0.content`), and vLLM's own
`VLLMValidationError`s keep the field they name. Checked here on top, because the models do not:
the body is an object of bounded size, chat messages exist and have a known role and content,
`stream` with `n > 1` (the cascade decides on one streamed answer), sampling ranges that every
tier's engine would refuse later (vLLM's `SamplingParams` rules), and the `model` name.

A prompt longer than a tier's context is left to that tier: the ingress knows neither the tiers'
`max_model_len` nor their tokenizers. The engine's 400 reaches the client as a 400 with its
message (`tiers.tier_error`), its `param` renamed to the client's field (`client_param`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from tierserve.serving import routing
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import InvalidRequest

# OpenAI's own limits are far larger (their 100 MB is for files); a chat or completion request
# bigger than this is a mistake or an attack, and it is read into memory before anything else.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# OpenAI's roles, and `ipython`, the tool-result role of Llama 3's chat templates. vLLM passes any
# string on to the chat template; a misspelt role would be silently dropped or mis-rendered there.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function", "ipython"})
# Roles whose message means nothing without content (an assistant may carry only tool calls).
CONTENT_REQUIRED = frozenset({"system", "developer", "user"})
_GREEDY_EPS = 1e-5  # vLLM's _SAMPLING_EPS: a temperature below it is greedy sampling

Request = ChatCompletionRequest | CompletionRequest
_MISSING = object()  # a field the body does not have (None is JSON's null)


class Endpoint(StrEnum):
    """Which OpenAI request a body must be: `/v1/chat/completions` or `/v1/completions`."""

    CHAT = "chat"
    COMPLETIONS = "completions"

    @property
    def model(self) -> type[ChatCompletionRequest] | type[CompletionRequest]:
        return ChatCompletionRequest if self is Endpoint.CHAT else CompletionRequest


class BodyTooLarge(InvalidRequest):
    """413: the body is over the ingress's limit; refused before it is parsed."""

    status = 413


# -- the body -----------------------------------------------------------------------------------


def check_size(size: int, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Raises BodyTooLarge when `size` bytes (read, or announced by Content-Length) is over."""
    if size > limit:
        raise BodyTooLarge(f"request body is {size} bytes; the limit is {limit} bytes")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")  # NaN and Infinity would reach the sampler


def parse_json(raw: bytes, limit: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The body as a JSON value (any value: `validate` judges its shape)."""
    check_size(len(raw), limit)
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is one
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequest(f"request body is not valid JSON: {detail}") from exc


def parse(
    raw: bytes,
    endpoint: Endpoint,
    config: IngressConfig | None = None,
    limit: int = DEFAULT_MAX_BODY_BYTES,
) -> Request:
    """`parse_json` then `validate`: raw bytes to a typed request or an IngressError."""
    return validate(parse_json(raw, limit), endpoint, config)


# -- the request --------------------------------------------------------------------------------


def validate(body: Any, endpoint: Endpoint, config: IngressConfig | None = None) -> Request:
    """The typed request for `endpoint`, or an InvalidRequest (400) / ModelNotFound (404).

    In vLLM's order: the schema (400), then the model name (404, when `config` is given), then
    what the engine would refuse when it builds its sampling parameters (400).
    """
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {_kind(body)}")
    request = _schema(body, endpoint)
    if config is not None:
        routing.resolve_model(config, request.model)  # ModelNotFound names `model`
    if isinstance(request, ChatCompletionRequest):
        _check_messages(request.messages)
    else:
        _check_prompt(request)
    _check_sampling(request, endpoint)
    return request


def _schema(body: dict[str, Any], endpoint: Endpoint) -> Request:
    """The request model's own validation, its errors named by field."""
    model = endpoint.model
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, body) from exc
    except Exception as exc:
        if hasattr(exc, "parameter"):  # vLLM's VLLMValidationError (not a ValueError)
            raise _vllm_error(exc, body) from exc
        # One of vLLM's "before" validators tripped over a value of the wrong type (a TypeError
        # or AttributeError): the fields' types alone name it.
        try:
            _fields_only(model).model_validate(body)
        except ValidationError as typed:
            raise from_validation_error(typed, body) from exc
        raise InvalidRequest(f"invalid request: {exc}", param=_named(str(exc), body)) from exc
    return _materialised(request, body)


def _vllm_error(exc: Exception, body: Mapping[str, Any]) -> InvalidRequest:
    """vLLM's own refusal, its field named even where vLLM names none."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    parameter = getattr(exc, "parameter", None)
    param = parameter if isinstance(parameter, str) and parameter else _named(message, body)
    if param and param not in message:  # "Stream options can only be defined ..."
        message = f"invalid {param!r}: {message}"
    return InvalidRequest(message, param=param)


@functools.cache
def _fields_only(model: type[BaseModel]) -> type[BaseModel]:
    """`model`'s fields and their types without its model validators, to name a bad field."""
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in model.model_fields.items()}
    config = ConfigDict(arbitrary_types_allowed=True, extra="ignore")
    return create_model(f"{model.__name__}Fields", __config__=config, **fields)


def _materialised(request: Request, body: Mapping[str, Any]) -> Request:
    """Turns pydantic's lazy iterators in chat messages into lists.

    They cannot be pickled to a tier, reading one (for the prompt text) would empty it, and
    their items are only validated as they are read: their errors are raised here, named.
    """
    for i, message in enumerate(getattr(request, "messages", None) or []):
        if not isinstance(message, dict):
            continue
        for key in ("content", "tool_calls"):
            value = message.get(key)
            if isinstance(value, Iterable) and not isinstance(value, str | list | dict):
                try:
                    message[key] = list(value)
                except ValidationError as exc:
                    raise from_validation_error(exc, body, prefix=("messages", i, key)) from exc
    return request


# -- pydantic's errors, as one error naming the field ----------------------------------------


def from_validation_error(
    exc: ValidationError | Sequence[Mapping[str, Any]],
    body: Any,
    prefix: Sequence[str | int] = (),
) -> InvalidRequest:
    """One OpenAI-style 400 for a pydantic (or FastAPI) validation failure.

    pydantic reports every branch of a union that failed (each chat message role, each content
    part type): branches refused by their discriminator (a `role` or `type` literal) are set
    aside, and the error kept is the one of the closest branch, named by its path in the body.
    """
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc
    located = [_Located(err, body, prefix) for err in errors]
    if not located:
        return InvalidRequest("invalid request")
    mismatched = {e.branch for e in located if e.kind == "literal_error" and e.branch}
    kept = [e for e in located if not e.inside(mismatched)] or [
        e for e in located if e.kind == "literal_error"
    ]
    chosen = min(_branches(kept).values(), key=lambda group: len({e.path for e in group}))
    first = chosen[0]
    param = first.param
    if first.kind == "missing":
        return InvalidRequest(f"missing required parameter {param!r}", param=param)
    detail = "; ".join(list(dict.fromkeys(e.message for e in kept if e.path == first.path))[:3])
    if param is None:  # a model validator's ValueError: the request as a whole
        return InvalidRequest(f"invalid request: {detail}", param=_named(detail, body))
    return InvalidRequest(f"invalid {param!r} (got {_kind(first.value)}): {detail}", param=param)


class _Located:
    """One pydantic error, its location split into the body's path and the union branches."""

    def __init__(self, err: Mapping[str, Any], body: Any, prefix: Sequence[str | int]):
        self.kind = str(err.get("type", ""))
        self.message = str(err.get("msg", self.kind))
        loc = [*prefix, *(err.get("loc") or ())]
        path: list[str | int] = []
        tags: list[tuple[str | int, ...]] = []
        value: Any = body
        for n, part in enumerate(loc):
            child = _child(value, part)
            if child is _MISSING and not (n == len(loc) - 1 and self.kind == "missing"):
                tags.append(tuple(loc[: n + 1]))  # a union branch's tag, e.g. 'str'
                continue
            value = child
            path.append(part)
        self.path = tuple(path)
        self.value = value
        self.tags = tags
        self.branch = tags[-1] if tags else None  # the innermost branch this error belongs to

    @property
    def param(self) -> str | None:
        return ".".join(str(p) for p in self.path) or None

    def inside(self, branches: set[tuple[str | int, ...]]) -> bool:
        return any(tag in branches for tag in self.tags)


def _child(value: Any, part: str | int) -> Any:
    """`value[part]` if the body has it, else _MISSING."""
    if isinstance(value, dict) and part in value:
        return value[part]
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return _MISSING


def _branches(errors: Sequence[_Located]) -> dict[Any, list[_Located]]:
    """Errors grouped by the outermost union branch they belong to, in pydantic's order."""
    groups: dict[Any, list[_Located]] = {}
    for e in errors:
        groups.setdefault(e.tags[0] if e.tags else None, []).append(e)
    return groups


_QUOTED = re.compile(r"[`'\"]([a-z_][a-z0-9_]*)[`'\"]")


def _named(message: str, body: Mapping[str, Any]) -> str | None:
    """The first field of the body a message quotes, for vLLM errors that name no parameter."""
    return next((name for name in _QUOTED.findall(message) if name in body), None)


def _kind(value: Any) -> str:
    """A JSON value's type, as the client wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def client_param(param: str | None, chat: bool) -> str | None:
    """A tier's `param` as the client's field: vLLM names a prompt over the context length
    `input_tokens` or `input_text`, which the client wrote as `messages` or `prompt`."""
    if param in ("input_tokens", "input_text"):
        return "messages" if chat else "prompt"
    return param


# -- what the models leave to the engine or the chat template ---------------------------------


def _check_messages(messages: Sequence[Any]) -> None:
    """Messages exist, have a known role and, where the role needs it, content."""
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue  # a parsed harmony Message: its own model validated it
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"invalid 'messages.{i}.role': {role!r} is not one of {sorted(ROLES)}",
                param=f"messages.{i}.role",
            )
        if role in CONTENT_REQUIRED and message.get("content") is None:
            raise InvalidRequest(
                f"missing required parameter 'messages.{i}.content' for a {role} message",
                param=f"messages.{i}.content",
            )


def _check_prompt(request: CompletionRequest) -> None:
    prompt = request.prompt
    if isinstance(prompt, list) and not prompt and not request.prompt_embeds:
        raise InvalidRequest("'prompt' must not be empty", param="prompt")


# vLLM's SamplingParams rules, checked on the request so that the field is named (several of
# vLLM's own messages name none) and no tier is asked; a value of None is the tier's default.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "n": (lambda v: v >= 1, "must be at least 1"),
    "temperature": (lambda v: 0.0 <= v <= 2.0, "must be in [0, 2]"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "top_k": (lambda v: v >= -1, "must be -1 or 0 (disabled), or at least 1"),
    "min_p": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    "presence_penalty": (lambda v: -2.0 <= v <= 2.0, "must be in [-2, 2]"),
    "frequency_penalty": (lambda v: -2.0 <= v <= 2.0, "must be in [-2, 2]"),
    "repetition_penalty": (lambda v: v > 0.0, "must be greater than 0"),
    "min_tokens": (lambda v: v >= 0, "must be at least 0"),
    "max_tokens": (lambda v: v >= 1, "must be at least 1"),
    "max_completion_tokens": (lambda v: v >= 1, "must be at least 1"),
}


def _check_sampling(request: Request, endpoint: Endpoint) -> None:
    """vLLM's sampling ranges, and `stream` with `n > 1`, which the cascade cannot decide on."""
    echo_only = endpoint is Endpoint.COMPLETIONS and bool(_value(request, "echo"))
    for name, (ok, rule) in RANGES.items():
        value = _value(request, name)
        if value is None or (name == "max_tokens" and echo_only and value == 0):
            continue  # echo with max_tokens 0: the prompt's logprobs, no generation
        if not ok(value):
            _out_of_range(name, value, rule)
    n = _value(request, "n") or 1
    if n > 1 and request.stream:
        raise InvalidRequest(
            f"'n' must be 1 when 'stream' is true (got {n}): the ingress chooses its tier on "
            "one streamed answer; ask without streaming for several choices",
            param="n",
        )
    temperature = _value(request, "temperature")
    if n > 1 and temperature is not None and temperature < _GREEDY_EPS:
        _out_of_range("n", n, "must be 1 with greedy sampling (temperature 0)")
    # vLLM's order: max_completion_tokens wins over the deprecated max_tokens.
    max_tokens = _value(request, "max_completion_tokens") or _value(request, "max_tokens")
    min_tokens = _value(request, "min_tokens") or 0
    if max_tokens and min_tokens > max_tokens:
        _out_of_range("min_tokens", min_tokens, f"must be at most max_tokens={max_tokens}")
    stop = _value(request, "stop")
    if stop == "" or (isinstance(stop, list) and "" in stop):
        raise InvalidRequest("'stop' must not contain an empty string", param="stop")


def _value(request: Request, name: str) -> Any:
    """A field's value, None if this endpoint has no such field. Read from `__dict__`: the
    attribute of a deprecated field (chat's `max_tokens`) warns on every read."""
    return request.__dict__.get(name)


def _out_of_range(name: str, value: Any, rule: str) -> NoReturn:
    raise InvalidRequest(f"'{name}' {rule}, got {value}", param=name)
