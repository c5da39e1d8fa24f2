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
from tierserve.serving.cascade import CascadeEngine, Deadline, Refusals, exempt, next_tier
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import InvalidRequest, TierUnavailable
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


def test_a_refusal_sends_the_request_on_by_the_policy_of_its_cause() -> None:
    """Each refused tier passes the request on in its own policy's direction: `spillover` when
    it was full, `fallback` when it failed; tiers already refused are skipped."""
    assert next_tier(3, 0, "nextTier", set()) == 1
    assert next_tier(3, 0, "nextTier", {1}) == 2
    assert next_tier(3, 2, "previousTier", {1}) == 0
    assert next_tier(3, 1, "none", set()) is None
    assert next_tier(3, 2, "nextTier", set()) is None
    assert exempt(Plan(1, "pinned", False)) and exempt(Plan(1, "forced:medical", False))
    assert not exempt(Plan(1, "upfront-score", False)) and not exempt(Plan(0, "cascade", True))


def test_refusals_over_the_cost_cap_are_named_and_full_queues_stay_429() -> None:
    deadline = Deadline(60.0, lambda: 0.0)
    busy = Refusals(busy={0: 2.0}, capped=["tier large would take it past its maxCost"])
    error = busy.error(config(), deadline)
    assert (error.status, "maxCost" in error.message) == (429, True)
    broken = Refusals(broken=["tier small failed: x"], capped=busy.capped)
    error = broken.error(config(), deadline)
    assert error.status == 503 and "small failed" in error.message and "maxCost" in error.message


def test_a_request_that_fails_after_climbing_is_charged_for_what_it_wasted() -> None:
    async def scenario() -> MemorySink:
        sink = MemorySink()
        small = FakeTier("small", Reply(logprobs=[UNSURE]))
        large = FakeTier("large", Reply(raises=RuntimeError("down")))
        engine = CascadeEngine({"small": small, "large": large}, IngressMetrics("m", sink))
        call = Call(completion(), False, "m")
        # fallback none: the failed climb is an error (the default would keep small's answer)
        cfg, plan = config(fallback="none"), Plan(0, "cascade", True)
        with pytest.raises(TierUnavailable):
            await engine.run(cfg, plan, call, Deadline(60.0, engine.clock))
        return sink

    sink = asyncio.run(scenario())
    # small (1 GPU, no costPerHour: 1 GPU-hour per 3.6 M tokens) answered 3 + 2 tokens.
    per_token = 1.0 / 3600 / 1000
    assert sink.get("tierserve_cost", tier="small", kind="wasted") == pytest.approx(5 * per_token)
    assert sink.get("tierserve_cost", kind="answer") == 0
    assert sink.get("tierserve_requests", outcome="error") == 1


def test_the_cap_lowers_only_an_upfront_jump_to_a_tier_within_it() -> None:
    engine = CascadeEngine({}, IngressMetrics("m", MemorySink()))
    call = Call(completion(max_tokens=100), False, "m")
    # large (2 GPUs: 2 GPU-hours per 3.6 M tokens) estimated at 1 prompt token ("1+1=", four
    # characters) and max_tokens 100.
    estimate = 101 * 2.0 / 3600 / 1000
    cfg = config(limits={"maxCost": estimate * 0.999})
    jump = Plan(1, "upfront-score", False)
    assert engine.cap_start(cfg, jump, call) == Plan(0, "cap:cost", False)
    assert engine.cap_start(config(limits={"maxCost": estimate * 1.001}), jump, call) is jump
    assert engine.cap_start(cfg, Plan(1, "forced:x", False), call).start == 1
    assert engine.cap_start(cfg, Plan(0, "cascade", True), call).start == 0
