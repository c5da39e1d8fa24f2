"""Routing decisions (pure functions)."""

from __future__ import annotations

import math

import pytest

from tierserve.serving import routing
from tierserve.serving.routing import RouterConfig, RoutingError

pytestmark = pytest.mark.unit


def cfg(**overrides: object) -> RouterConfig:
    user_config = {
        "modelTier": "assist",
        "tiers": [{"name": "small", "modelId": "s"}, {"name": "large", "modelId": "l"}],
        "mode": "cascade",
        "threshold": 0.5,
        "forceTopTier": [{"name": "medical", "keywords": ["dosage"], "patterns": [r"over\s*dose"]}],
        **overrides,
    }
    return RouterConfig.from_user_config(user_config)


def test_model_name_picks_router_or_pins_a_tier() -> None:
    c = cfg()
    assert routing.resolve_model(c, "assist") is None
    assert routing.resolve_model(c, None) is None
    assert routing.resolve_model(c, "assist:large") == 1
    with pytest.raises(RoutingError, match="unknown tier 'huge'") as err:
        routing.resolve_model(c, "assist:huge")
    assert err.value.param == "model" and err.value.status == 404
    with pytest.raises(RoutingError, match="not served here"):
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
    assert routing.prompt_text({"prompt": "12+3="}) == "12+3="
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert routing.prompt_text(chat) == "hi"
