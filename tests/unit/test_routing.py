"""Routing decisions (pure functions) and the ingress config they read."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tierserve.api.v1alpha1 import ModelTier, Routing
from tierserve.build import render
from tierserve.serving import routing
from tierserve.serving.config import IngressConfig
from tierserve.serving.errors import ModelNotFound

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def cfg(**overrides: object) -> IngressConfig:
    user_config = {
        "modelTier": "assist",
        "tiers": [{"name": "small", "modelId": "s"}, {"name": "large", "modelId": "l"}],
        "mode": "cascade",
        "threshold": 0.5,
        "forceTopTier": [{"name": "medical", "keywords": ["dosage"], "patterns": [r"over\s*dose"]}],
        **overrides,
    }
    return IngressConfig.model_validate(user_config)


def test_model_name_picks_router_or_pins_a_tier() -> None:
    c = cfg()
    assert routing.resolve_model(c, "assist") is None
    assert routing.resolve_model(c, None) is None
    assert routing.resolve_model(c, "assist:large") == 1
    with pytest.raises(ModelNotFound, match="unknown tier 'huge'") as err:
        routing.resolve_model(c, "assist:huge")
    assert err.value.param == "model" and err.value.status == 404
    with pytest.raises(ModelNotFound, match="not served here"):
        routing.resolve_model(c, "gpt-4")


def test_high_risk_rules_match_keywords_and_patterns_case_insensitively() -> None:
    c = cfg()
    assert routing.forced_rule(c, "What DOSAGE of ibuprofen?") == "medical"
    assert routing.forced_rule(c, "risk of over   dose") == "medical"
    assert routing.forced_rule(c, "dosages are fine") is None  # whole words only
    assert routing.forced_rule(c, "what is 2+2") is None


def test_confidence_metrics() -> None:
    lps = [math.log(0.9), math.log(0.2), math.log(0.95)]
    assert routing.confidence(lps) == pytest.approx(0.2)
    assert routing.confidence(lps, "meanLogprob") == pytest.approx((0.9 * 0.2 * 0.95) ** (1 / 3))
    assert routing.confidence(lps, "quantile") == pytest.approx(0.2)
    assert routing.confidence([]) == 0.0
    assert routing.confidence([None, math.log(0.5)]) == pytest.approx(0.5)


def test_higher_threshold_means_fewer_escalations() -> None:
    scores = [i / 20 for i in range(21)]
    counts = [sum(routing.should_escalate(s, t / 10) for s in scores) for t in range(11)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1] == 0


def test_prompt_text_reads_prompts_and_chat_messages() -> None:
    assert routing.prompt_text(prompt="12+3=") == "12+3="
    assert routing.prompt_text(prompt=["a", "b"]) == "a b"
    chat = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"content": "there"}]
    assert routing.prompt_text(chat) == "hi\nthere"
    assert routing.prompt_text() == ""


def test_plan_pins_forces_or_cascades() -> None:
    c = cfg()
    assert routing.plan_request(c, 1, None) == routing.Plan(1, "pinned", False)
    assert routing.plan_request(c, None, "medical") == routing.Plan(1, "forced:medical", False)
    assert routing.plan_request(c, None, None) == routing.Plan(0, "cascade", True)
    assert routing.plan_request(cfg(mode="none"), None, None) == routing.Plan(
        0, "first-tier", False
    )


def test_circuit_breaker_opens_after_repeated_failures_and_probes_after_cooldown() -> None:
    b = routing.CircuitBreaker(failures=3, cooldown=30)
    for t in (0, 1):
        b.record(False, t)
        assert b.available(t)
    b.record(False, 2)
    assert not b.available(3) and not b.available(31)
    assert b.available(32)  # half-open: one probe
    b.record(False, 32)  # the probe fails: open again at once
    assert not b.available(33)
    b.record(True, 70)
    assert b.available(70) and not b.open


def test_fallback_order_follows_the_configured_direction() -> None:
    assert routing.fallback_order(3, 0, "nextTier") == [0, 1, 2]
    assert routing.fallback_order(3, 1, "nextTier") == [1, 2]
    assert routing.fallback_order(3, 2, "previousTier") == [2, 1, 0]
    assert routing.fallback_order(3, 2, "nextTier") == [2]
    assert routing.fallback_order(3, 1, "none") == [1]


def test_a_tier_gets_its_own_bound_within_the_requests_deadline() -> None:
    assert routing.attempt_budget(120.0, 60.0) == 60.0  # a tier gets its own bound
    assert routing.attempt_budget(45.0, 60.0) == 45.0  # within what the request has left
    assert routing.attempt_budget(-1.0, 60.0) == 0.0
    assert routing.request_deadline(60.0, 3) == 180.0  # one attempt per tier
    assert routing.request_deadline(4.0, 0) == 4.0


def test_logprobs_are_read_from_completion_and_chat_chunks() -> None:
    completion = {"choices": [{"text": "4", "logprobs": {"token_logprobs": [-0.1, -2.0]}}]}
    chat = {"choices": [{"delta": {"content": "4"}, "logprobs": {"content": [{"logprob": -0.5}]}}]}
    assert routing.stream_chunk_logprobs(completion, chat=False) == [-0.1, -2.0]
    assert routing.stream_chunk_logprobs(chat, chat=True) == [-0.5]
    assert routing.answer_text(chat, chat=True) == "4"
    second = {"choices": [{"index": 1, "text": "x"}, {"index": 0, "text": "y"}]}
    assert routing.answer_text(second, chat=False) == "y"  # n > 1: the first choice's text
    assert routing.normalise_answer("  The  Answer\n") == routing.normalise_answer("the answer")


def test_upfront_and_hybrid_plans_follow_the_score() -> None:
    up = cfg(mode="upfront", threshold=0.5)
    assert routing.plan_request(up, None, None, 0.7) == routing.Plan(1, "upfront-score", False)
    assert routing.plan_request(up, None, None, 0.3) == routing.Plan(0, "upfront-score", False)
    hybrid = cfg(mode="hybrid", threshold=0.5, upfront={"hybridMargin": 0.1})
    assert routing.plan_request(hybrid, None, None, 0.65).start == 1  # clearly hard
    assert routing.plan_request(hybrid, None, None, 0.35) == routing.Plan(0, "upfront-score", False)
    assert routing.plan_request(hybrid, None, None, 0.55) == routing.Plan(0, "cascade", True)
    # A higher threshold never sends more requests up front.
    scores = [i / 50 for i in range(51)]
    ups = [
        sum(
            routing.plan_request(cfg(mode="upfront", threshold=t / 10), None, None, s).start > 0
            for s in scores
        )
        for t in range(11)
    ]
    assert ups == sorted(ups, reverse=True)


def test_the_config_is_the_apis_routing_with_its_defaults() -> None:
    """Every default lives once, in the API: a minimal user_config gets the API's."""
    minimal = IngressConfig.model_validate({"modelTier": "a", "tiers": [{"name": "s"}]})
    api = Routing()
    for name in Routing.model_fields:
        assert getattr(minimal, name) == getattr(api, name), name
    assert minimal.threshold == api.escalation.threshold
    assert minimal.tiers[0].model_id == "s"
    with pytest.raises(ValueError, match="Extra inputs"):
        IngressConfig.model_validate({"modelTier": "a", "tiers": [{"name": "s"}], "treshold": 1})
    with pytest.raises(ValueError, match="unique"):
        IngressConfig.model_validate({"modelTier": "a", "tiers": [{"name": "s"}, {"name": "s"}]})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_what_the_renderer_writes_is_what_the_ingress_reads(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        mt = ModelTier.model_validate(doc)
        user_config = render.serve_application(mt, threshold=0.42)["deployments"][0]["user_config"]
        config = IngressConfig.model_validate(user_config)
        spec = mt.spec.routing
        assert config.threshold == 0.42
        assert config.escalation.bounds == spec.escalation.bounds
        assert config.model_dump(exclude={"escalation", "model_tier", "tiers"}) == spec.model_dump(
            exclude={"escalation"}
        )
        assert [(t.name, t.model_id) for t in config.tiers] == [
            (t.name, t.model.id or t.name) for t in mt.spec.tiers
        ]
        assert [r.name for r in config.rules] == [r.name for r in spec.force_top_tier]
