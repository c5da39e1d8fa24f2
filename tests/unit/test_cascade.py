"""The cascade engine and its calls to the tiers: what is read from LLMServer, what is sent to it,
what is accounted."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
)

from tests.unit.llm_fakes import UNSURE, FakeTier, Reply, full
from tierserve.serving import tiers
from tierserve.serving.cascade import CascadeEngine, Deadline
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import InvalidRequest
from tierserve.serving.metrics import IngressMetrics, MemorySink
from tierserve.serving.routing import Plan
from tierserve.serving.tiers import Call, TierFailed

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def config(**routing: object) -> IngressConfig:
    ladder = [
        {"name": "small", "modelId": "s", "gpus": 1},
        {"name": "large", "modelId": "l", "gpus": 2},
    ]
    return IngressConfig.model_validate({"modelTier": "m", "tiers": ladder, **routing})


def completion(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "1+1=", **fields})


def test_payloads_reads_every_shape_llmserver_yields() -> None:
    whole = CompletionResponse.model_validate(
        {
            "model": "s",
            "choices": [{"index": 0, "text": "4", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    chunks, done = tiers.payloads(whole)
    assert chunks[0]["choices"][0]["text"] == "4" and not done
    batch = ['data: {"choices": [{"index": 0, "text": "1"}]}\n\n', "data: [DONE]\n\n"]
    chunks, done = tiers.payloads(batch)
    assert [c["choices"][0]["text"] for c in chunks] == ["1"] and done
    joined = 'data: {"a": 1}\n\ndata: {"a": 2}\n\n'  # two events in one string
    assert tiers.payloads(joined)[0] == [{"a": 1}, {"a": 2}]
    error = ErrorResponse.model_validate(
        {"error": {"message": "m", "type": "t", "param": "max_tokens", "code": 400}}
    )
    assert tiers.payloads([error])[0][0]["error"]["param"] == "max_tokens"
    assert tiers.payloads({"plain": "dict"})[0] == [{"plain": "dict"}]


def test_tier_errors_are_the_requests_fault_below_500_and_the_tiers_above() -> None:
    client = tiers.tier_error({"error": {"message": "too long", "param": "prompt", "code": 413}})
    assert isinstance(client, InvalidRequest)
    assert (client.status, client.param, client.message) == (413, "prompt", "too long")
    assert isinstance(tiers.tier_error({"error": {"message": "oom", "code": 500}}), TierFailed)
    assert isinstance(tiers.tier_error({"object": "error", "message": "x"}), TierFailed)
    assert tiers.tier_error({"choices": []}) is None


def test_backpressure_is_found_when_serve_wraps_it() -> None:
    busy = full(3.0)
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = busy
    assert tiers.backpressure(wrapped) is busy
    assert tiers.backpressure(RuntimeError("x")) is None


def test_tier_request_asks_what_the_decision_needs_and_leaves_the_clients_alone() -> None:
    cfg = config()
    asked = completion(logprobs=3, stream=True)
    sent = tiers.tier_request(cfg, Call(asked, False, "m"), 0, logprobs=True, stream=True)
    assert (sent.model, sent.logprobs, sent.stream) == ("s", 3, True)
    plain = completion(stream=True, stream_options={"include_usage": True})
    sent = tiers.tier_request(cfg, Call(plain, False, "m"), 1, logprobs=True, stream=False)
    assert (sent.model, sent.logprobs, sent.stream, sent.stream_options) == ("l", 1, False, None)
    assert (plain.model, plain.logprobs, plain.stream) == ("m", None, True)
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    sent = tiers.tier_request(cfg, Call(chat, True, "m"), 0, logprobs=True, stream=False)
    assert sent.logprobs is True and sent.messages == chat.messages


def test_the_deadline_counts_from_the_request_on_the_injected_clock() -> None:
    now = [10.0]
    deadline = Deadline(5.0, lambda: now[0])
    now[0] = 13.5
    assert deadline.left() == pytest.approx(1.5)


def test_every_tier_call_is_accounted_for_abandoned_failed_or_kept() -> None:
    """In-flight gauges return to zero and GPU seconds cover every call, abandoned ones too."""

    async def scenario() -> MemorySink:
        sink = MemorySink()
        now = [0.0]
        small = FakeTier("small", Reply(logprobs=[UNSURE]), Reply(raises=RuntimeError("down")))
        engine = CascadeEngine(
            {"small": small, "large": FakeTier("large")},
            IngressMetrics("m", sink),
            clock=lambda: now[0],
        )
        cfg = config()
        for stream in (True, False):
            request = completion(stream=stream)
            call = Call(request, False, "m")
            deadline = Deadline(60.0, engine.clock)
            outcome = await engine.run(cfg, Plan(0, "cascade", True), call, deadline)
            now[0] += 1.0
            assert [chunk async for chunk in engine.deliver(cfg, call, outcome, deadline)]
        return sink

    sink = asyncio.run(scenario())
    assert sink.get("tierserve_in_flight_requests", tier="small") == 0
    assert sink.get("tierserve_in_flight_requests", tier="large") == 0
    # large (2 GPUs) answered both requests, 1 s each on the clock; small's calls (abandoned,
    # failed) were closed and accounted as well.
    assert sink.get("tierserve_gpu_seconds", tier="large") == pytest.approx(4.0)
    assert any(
        name == "tierserve_gpu_seconds" and ("tier", "small") in key for name, key in sink.values
    )
    assert sink.get("tierserve_requests", tier="large", outcome="ok") == 2


def test_metric_names_and_labels_are_the_documented_ones() -> None:
    sink = MemorySink()
    IngressMetrics("m", sink)
    documented = {}
    for name, labels in re.findall(
        r"^\| `ray_(tierserve_\w+)` \| \w+ \| ([\w, ]+) \|", DOCS.read_text(), re.M
    ):
        documented[name.removesuffix("_total")] = tuple(labels.replace(" ", "").split(","))
    assert sink.declared == documented
