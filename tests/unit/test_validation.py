"""Request validation as a pure function (tierserve.serving.validation): no app, no tiers.

Each malformed kind must be refused with its HTTP status, the OpenAI error `type`, the offending
field as `param` (a dotted path into the body) and a message that names it, so a client can fix
its request from the error alone. The same cases go through the app in test_ingress.py, where
they must never reach a tier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import IngressError
from tierserve.serving.validation import (
    DEFAULT_MAX_BODY_BYTES,
    BodyTooLarge,
    Endpoint,
    check_size,
    from_validation_error,
    parse,
    validate,
)

pytestmark = pytest.mark.unit

MODEL = "assist"
CONFIG = IngressConfig.model_validate(
    {
        "modelTier": MODEL,
        "tiers": [{"name": "small"}, {"name": "large"}],
        "threshold": 0.5,
        "bounds": {"min": 0.0, "max": 1.0},
        "mode": "cascade",
    }
)
USER = {"role": "user", "content": "12+34="}
CHAT, COMPLETIONS = Endpoint.CHAT, Endpoint.COMPLETIONS


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [USER], "max_tokens": 4, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "12+34=", "max_tokens": 4, **fields}


def said(**message: Any) -> dict[str, Any]:
    """A chat request whose one user message has `message`'s fields instead."""
    return chat(messages=[{**USER, **message}])


@dataclass(frozen=True)
class Case:
    """One malformed request: the body, and the error it must get."""

    name: str
    endpoint: Endpoint
    body: Any
    param: str | None
    status: int = 400
    mentions: str | None = None  # what else the message names, besides the param

    @property
    def kind(self) -> str:
        return "model_not_found" if self.status == 404 else "invalid_request_error"


MALFORMED: list[Case] = [
    # the body itself
    Case("body-array", CHAT, [chat()], None, mentions="body"),
    Case("body-string", COMPLETIONS, "12+34=", None, mentions="body"),
    Case("body-number", COMPLETIONS, 42, None, mentions="body"),
    Case("body-null", CHAT, None, None, mentions="body"),
    # messages
    Case("messages-missing", CHAT, {"model": MODEL}, "messages"),
    Case("messages-string", CHAT, chat(messages="12+34="), "messages"),
    Case("messages-number", CHAT, chat(messages=5), "messages"),
    Case("messages-null", CHAT, chat(messages=None), "messages"),
    Case("messages-object", CHAT, chat(messages=USER), "messages"),
    Case("messages-empty", CHAT, chat(messages=[]), "messages"),
    Case("message-string", CHAT, chat(messages=["12+34="]), "messages.0"),
    Case("message-role-unknown", CHAT, said(role="robot"), "messages.0.role"),
    Case("message-role-number", CHAT, said(role=5), "messages.0.role"),
    Case("message-role-missing", CHAT, chat(messages=[{"content": "hi"}]), "messages.0.role"),
    Case("message-content-number", CHAT, said(content=5), "messages.0.content"),
    Case("message-content-object", CHAT, said(content={"text": "hi"}), "messages.0.content"),
    Case("message-content-missing", CHAT, chat(messages=[{"role": "user"}]), "messages.0.content"),
    Case("message-second-bad", CHAT, chat(messages=[USER, {"role": "assistant", "content": 7}]),
         "messages.1.content"),
    Case("content-part-text-number", CHAT, said(content=[{"type": "text", "text": 5}]),
         "messages.0.content.0.text"),
    Case("content-part-type-unknown", CHAT, said(content=[{"type": "hologram"}]),
         "messages.0.content.0.type"),
    Case("tool-calls-number", CHAT, chat(messages=[USER, {"role": "assistant", "tool_calls": 5}]),
         "messages.1.tool_calls"),
    # model
    Case("model-number", CHAT, chat(model=5), "model"),
    Case("model-number-completions", COMPLETIONS, completion(model=5), "model"),
    Case("model-unknown", CHAT, chat(model="gpt-4"), "model", status=404),
    Case("model-unknown-tier", COMPLETIONS, completion(model=f"{MODEL}:huge"), "model", status=404,
         mentions="huge"),
    # prompt
    Case("prompt-missing", COMPLETIONS, {"model": MODEL}, "prompt"),
    Case("prompt-number", COMPLETIONS, completion(prompt=5), "prompt"),
    Case("prompt-empty-string", COMPLETIONS, completion(prompt=""), "prompt"),
    Case("prompt-empty-list", COMPLETIONS, completion(prompt=[]), "prompt"),
    Case("prompt-negative-token", COMPLETIONS, completion(prompt=[-1]), "prompt.0"),
    # streaming
    Case("stream-n-2", CHAT, chat(stream=True, n=2), "n", mentions="stream"),
    Case("stream-n-2-completions", COMPLETIONS, completion(stream=True, n=2), "n"),
    Case("stream-string", CHAT, chat(stream="maybe"), "stream"),
    Case("stream-options-without-stream", COMPLETIONS,
         completion(stream_options={"include_usage": True}), "stream_options"),
    # types of the sampling fields
    Case("max-tokens-string", COMPLETIONS, completion(max_tokens="many"), "max_tokens"),
    Case("max-tokens-fraction", CHAT, chat(max_tokens=4.5), "max_tokens"),
    Case("temperature-string", CHAT, chat(temperature="hot"), "temperature"),
    Case("top-p-list", COMPLETIONS, completion(top_p=[0.5]), "top_p"),
    Case("n-string", CHAT, chat(n="two"), "n"),
    Case("stop-number", CHAT, chat(stop=5), "stop"),
    Case("seed-string", COMPLETIONS, completion(seed="lucky"), "seed"),
    Case("seed-too-big", CHAT, chat(seed=2**64), "seed"),
    Case("logit-bias-string", CHAT, chat(logit_bias={"42": "lots"}), "logit_bias.42"),
    Case("logprobs-string-chat", CHAT, chat(logprobs="maybe"), "logprobs"),
    Case("logprobs-string-completions", COMPLETIONS, completion(logprobs="five"), "logprobs"),
    Case("echo-string", COMPLETIONS, completion(echo="maybe"), "echo"),
    Case("user-number", CHAT, chat(user=5), "user"),
    Case("response-format-string", CHAT, chat(response_format="json"), "response_format"),
    Case("response-format-type", CHAT, chat(response_format={"type": "yaml"}),
         "response_format.type"),
    Case("tools-number-item", CHAT, chat(tools=[5], tool_choice="auto"), "tools.0"),
    Case("tools-empty", CHAT, chat(tools=[]), "tools"),
    Case("structured-outputs-string", CHAT, chat(structured_outputs="json"), "structured_outputs"),
    # ranges
    Case("n-zero", CHAT, chat(n=0), "n"),
    Case("n-greedy", CHAT, chat(n=2, temperature=0), "n", mentions="greedy"),
    Case("max-tokens-zero", CHAT, chat(max_tokens=0), "max_tokens"),
    Case("max-tokens-negative", COMPLETIONS, completion(max_tokens=-1), "max_tokens"),
    Case("max-completion-tokens-zero", CHAT, chat(max_completion_tokens=0),
         "max_completion_tokens"),
    Case("min-tokens-over-max", COMPLETIONS, completion(min_tokens=10), "min_tokens"),
    Case("min-tokens-negative", CHAT, chat(min_tokens=-1), "min_tokens"),
    Case("temperature-negative", CHAT, chat(temperature=-0.5), "temperature"),
    Case("temperature-too-high", COMPLETIONS, completion(temperature=2.5), "temperature"),
    Case("top-p-zero", CHAT, chat(top_p=0), "top_p"),
    Case("top-p-over-one", COMPLETIONS, completion(top_p=1.5), "top_p"),
    Case("top-k-below-minus-one", CHAT, chat(top_k=-2), "top_k"),
    Case("min-p-over-one", CHAT, chat(min_p=2), "min_p"),
    Case("presence-penalty-high", CHAT, chat(presence_penalty=3), "presence_penalty"),
    Case("frequency-penalty-low", COMPLETIONS, completion(frequency_penalty=-3),
         "frequency_penalty"),
    Case("repetition-penalty-zero", CHAT, chat(repetition_penalty=0), "repetition_penalty"),
    Case("stop-empty-string", CHAT, chat(stop=[""]), "stop"),
    Case("top-logprobs-negative", CHAT, chat(logprobs=True, top_logprobs=-2), "top_logprobs"),
    Case("top-logprobs-without-logprobs", CHAT, chat(top_logprobs=3), "top_logprobs"),
    Case("logprobs-negative-completions", COMPLETIONS, completion(logprobs=-3), "logprobs"),
    Case("prompt-logprobs-streamed", COMPLETIONS, completion(stream=True, prompt_logprobs=1),
         "prompt_logprobs"),
    # vLLM refusals that name no parameter: the field the message quotes
    Case("continue-and-generation-prompt", CHAT,
         chat(continue_final_message=True, add_generation_prompt=True), "continue_final_message"),
]  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED, ids=lambda case: case.name)
def test_malformed_requests_are_refused_naming_the_parameter(case: Case) -> None:
    with pytest.raises(IngressError) as caught:
        validate(case.body, case.endpoint, CONFIG)
    error = caught.value
    assert (error.status, error.param) == (case.status, case.param), error.message
    body = error.body()["error"]
    assert body["type"] == case.kind and body["param"] == case.param
    assert body["code"] == case.status
    for named in (case.param, case.mentions):
        assert (named or "").lower() in error.message.lower(), error.message


def test_there_are_at_least_thirty_malformed_kinds_each_named() -> None:
    assert len({case.name for case in MALFORMED}) == len(MALFORMED) >= 30
    named = [case for case in MALFORMED if case.param is not None]
    assert len(named) >= 30


RAW: list[tuple[str, bytes, int, str]] = [
    ("not-json", b"{not json", 400, "not valid JSON"),
    ("truncated", b'{"prompt": "12+', 400, "not valid JSON"),
    ("empty", b"", 400, "not valid JSON"),
    ("nan", b'{"prompt": "x", "temperature": NaN}', 400, "NaN"),
    ("infinity", b'{"prompt": "x", "max_tokens": Infinity}', 400, "Infinity"),
    ("not-utf8", b'{"prompt": "\xff\xfe"}', 400, "not valid JSON"),
    ("nested-too-deeply", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("array", b"[1, 2]", 400, "JSON object"),
]


@pytest.mark.parametrize(
    ("raw", "status", "mentions"), [r[1:] for r in RAW], ids=[r[0] for r in RAW]
)
def test_raw_bodies_that_are_not_a_json_object_are_400_naming_the_body(
    raw: bytes, status: int, mentions: str
) -> None:
    with pytest.raises(IngressError) as caught:
        parse(raw, COMPLETIONS, CONFIG, limit=1_000_000)
    error = caught.value
    assert (error.status, error.param, error.kind) == (status, None, "invalid_request_error")
    assert "request body" in error.message and mentions in error.message


def test_oversize_bodies_are_413_before_they_are_parsed() -> None:
    body = json.dumps(completion(prompt="x" * DEFAULT_MAX_BODY_BYTES)).encode()
    with pytest.raises(BodyTooLarge) as caught:
        parse(body, COMPLETIONS, CONFIG)
    assert caught.value.status == 413 and caught.value.kind == "invalid_request_error"
    assert (
        "request body" in caught.value.message
        and str(DEFAULT_MAX_BODY_BYTES) in caught.value.message
    )
    with pytest.raises(BodyTooLarge):
        parse(b"{not even json, but too long}", COMPLETIONS, CONFIG, limit=10)  # size first
    check_size(10, limit=10)  # at the limit is fine
    with pytest.raises(BodyTooLarge):
        check_size(11, limit=10)
    assert DEFAULT_MAX_BODY_BYTES == 4 * 1024 * 1024


VALID: list[tuple[str, Endpoint, dict[str, Any]]] = [
    ("chat", CHAT, chat()),
    ("completion", COMPLETIONS, completion()),
    ("no-model", CHAT, {"messages": [USER]}),
    ("pinned-tier", COMPLETIONS, completion(model=f"{MODEL}:large")),
    ("stream-one-choice", CHAT, chat(stream=True, n=1, stream_options={"include_usage": True})),
    ("several-choices-unstreamed", CHAT, chat(n=3, temperature=0.7)),
    ("nulls-mean-defaults", CHAT, chat(temperature=None, top_p=None, n=None, stop=None, seed=None)),
    ("bounds-inclusive", CHAT, chat(temperature=2, top_p=1, top_k=-1, min_p=0,
                                    presence_penalty=-2, frequency_penalty=2, min_tokens=4)),
    ("echo-only", COMPLETIONS, completion(echo=True, max_tokens=0, logprobs=1)),
    ("logprobs", CHAT, chat(logprobs=True, top_logprobs=5)),
    ("token-ids", COMPLETIONS, completion(prompt=[1, 2, 3])),
    ("content-parts", CHAT, said(content=[{"type": "text", "text": "hi"}])),
    ("conversation", CHAT, chat(messages=[
        {"role": "system", "content": "Be brief."}, USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "46"},
    ])),
    ("unknown-fields-are-ignored-as-vllm-does", CHAT, chat(frobnicate=True)),
]  # fmt: skip


@pytest.mark.parametrize(("endpoint", "body"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_requests_pass_as_the_typed_request_models(
    endpoint: Endpoint, body: dict[str, Any]
) -> None:
    request = parse(json.dumps(body).encode(), endpoint, CONFIG)
    assert isinstance(request, ChatCompletionRequest if endpoint is CHAT else CompletionRequest)
    for message in getattr(request, "messages", []):
        for key in ("content", "tool_calls"):  # no lazy iterators left to pickle or drain
            assert message.get(key) is None or isinstance(message[key], str | list)


def test_without_a_config_any_model_name_passes() -> None:
    assert validate(chat(model="gpt-4"), CHAT).model == "gpt-4"


def test_fastapi_style_errors_are_translated_too() -> None:
    errors = [
        {"type": "int_parsing", "loc": ("max_tokens",), "msg": "Input should be a valid integer"}
    ]
    error = from_validation_error(errors, {"max_tokens": "many"})
    assert (error.status, error.param) == (400, "max_tokens")
    assert "max_tokens" in error.message and "a string" in error.message
