"""The selfCheck confidence: the lower tier is asked whether its answer is right, and P(yes)
decides, with the extra call counted."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from tests.unit.llm_fakes import CONFIDENT, FakeTier, Reply
from tierserve.serving import routing
from tierserve.serving.cascade import CascadeEngine, Deadline
from tierserve.serving.config import IngressConfig
from tierserve.serving.metrics import IngressMetrics, MemorySink
from tierserve.serving.routing import Plan
from tierserve.serving.tiers import Call

pytestmark = pytest.mark.unit


def config(**cascade: Any) -> IngressConfig:
    return IngressConfig.model_validate(
        {
            "modelTier": "m",
            "tiers": [{"name": "small"}, {"name": "large"}],
            "threshold": 0.5,
            "cascade": {"confidence": "selfCheck", **cascade},
        }
    )


def small_tier(p_yes: float | None, answer: str = "42") -> FakeTier:
    """Answers `answer` with full confidence; asked to check itself, says Yes with `p_yes`."""

    def reply(request: Any) -> Reply:
        if request.max_tokens != 1:
            return Reply(text=answer, logprobs=[CONFIDENT])
        if p_yes is None:
            return Reply(raises=RuntimeError("replica died"))
        top = {
            "Yes": math.log(p_yes * 0.75),
            " yes": math.log(p_yes * 0.25),
            "No": math.log(1 - p_yes),
        }
        return Reply(text="Y", top=top)

    return FakeTier("small", reply)


def run(
    small: FakeTier, request: Any, chat: bool, cfg: IngressConfig
) -> tuple[str, FakeTier, MemorySink, str]:
    async def scenario() -> tuple[str, FakeTier, MemorySink, str]:
        sink, large = MemorySink(), FakeTier("large", Reply(text="43"))
        engine = CascadeEngine({"small": small, "large": large}, IngressMetrics("m", sink))
        call = Call(request, chat, "m")
        deadline = Deadline(60.0, engine.clock)
        outcome = await engine.run(cfg, Plan(0, "cascade", True), call, deadline)
        chunks = [c async for c in engine.deliver(cfg, call, outcome, deadline)]
        text = "".join(routing.answer_text(c, chat) for c in chunks)
        return outcome.tier, large, sink, text

    return asyncio.run(scenario())


def test_p_yes_sums_the_yes_spellings_in_both_response_shapes() -> None:
    completion = {
        "choices": [
            {
                "logprobs": {
                    "tokens": ["Yes"],
                    "token_logprobs": [math.log(0.5)],
                    "top_logprobs": [
                        {"Yes": math.log(0.5), " yes": math.log(0.2), "No": math.log(0.3)}
                    ],
                }
            }
        ]
    }
    assert routing.p_yes(completion, False, ["yes"]) == pytest.approx(0.7)
    chat = {
        "choices": [
            {
                "logprobs": {
                    "content": [
                        {
                            "token": "No",
                            "logprob": math.log(0.6),
                            "top_logprobs": [
                                {"token": "No", "logprob": math.log(0.6)},
                                {"token": "YES", "logprob": math.log(0.1)},
                            ],
                        }
                    ]
                }
            }
        ]
    }
    assert routing.p_yes(chat, True, ["yes"]) == pytest.approx(0.1)
    assert routing.p_yes(chat, True, ["oui"]) == 0.0
    assert routing.p_yes({"choices": []}, True, ["yes"]) == 0.0


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(("p", "kept"), [(0.9, True), (0.3, False)])
def test_the_decision_follows_p_yes_not_the_answers_logprobs(
    chat: bool, p: float, kept: bool
) -> None:
    """The answer's own tokens are all but certain; only the self-check says whether to climb."""
    small = small_tier(p)
    if chat:
        request: Any = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "6*7?"}]}
        )
    else:
        request = CompletionRequest.model_validate({"model": "m", "prompt": "6*7="})
    tier, large, sink, text = run(small, request, chat, config())
    assert tier == ("small" if kept else "large")
    assert text == ("42" if kept else "43")
    assert len(large.requests) == (0 if kept else 1)
    answer, check = small.requests
    assert answer.max_tokens != 1 and check.max_tokens == 1 and not check.stream
    if chat:
        roles = [m["role"] for m in check.messages]
        assert roles == ["user", "assistant", "user"]
        assert check.messages[1]["content"] == "42"
        assert check.messages[2]["content"].startswith("Is the answer above correct?")
        assert check.top_logprobs == 20
    else:
        assert check.prompt.startswith("6*7=42\nIs the answer above correct?")
        assert check.logprobs == 20
    assert sink.get("tierserve_self_checks", tier="small", outcome="ok") == 1
    assert sink.get("tierserve_tokens", tier="small", kind="self_check_prompt") == 3
    assert sink.samples("tierserve_confidence", tier="small") == [pytest.approx(p)]
    assert sink.get("tierserve_in_flight_requests", tier="small") == 0


def test_a_failed_self_check_escalates_and_is_counted() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "6*7="})
    tier, large, sink, _ = run(small_tier(None), request, False, config())
    assert tier == "large" and len(large.requests) == 1
    assert sink.get("tierserve_self_checks", tier="small", outcome="error") == 1


def test_streaming_checks_the_early_tokens_before_any_is_released() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "6*7=", "stream": True})
    small = small_tier(0.9, answer="42 is the answer")
    tier, _, _, text = run(small, request, False, config(earlyDecisionTokens=2))
    assert tier == "small" and text == "42 is the answer"
    check = small.requests[1]
    assert check.prompt.startswith("6*7=42\n"), check.prompt  # asked about the first 2 tokens


def test_the_verification_prompt_and_yes_tokens_are_configurable() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "6*7="})
    small = small_tier(0.9)
    cfg = config(selfCheck={"prompt": "Correct?", "yesTokens": ["no"]})  # inverted on purpose
    tier, _, _, _ = run(small, request, False, cfg)
    assert tier == "large"  # P("no") = 0.1 read as the yes mass: unsure, so it climbs
    assert small.requests[1].prompt == "6*7=42\nCorrect?\n"
