"""The cascade's rank score: thresholds that mean shares, even when confidences tie at 1.0."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from ray.serve.llm.openai_api_models import CompletionRequest

from tests.unit.llm_fakes import FakeTier, Reply
from tierserve.serving import rank
from tierserve.serving.cascade import CascadeEngine, Deadline
from tierserve.serving.config import IngressConfig
from tierserve.serving.metrics import IngressMetrics, MemorySink
from tierserve.serving.rank import RankWindow, escalation_score, tie_break
from tierserve.serving.routing import Plan
from tierserve.serving.tiers import Call

pytestmark = pytest.mark.unit


def tied_confidences(n: int, tied_share: float, seed: int = 0) -> list[float]:
    """`tied_share` of answers certain (confidence exactly 1.0), the rest spread below."""
    rng = random.Random(seed)
    return [1.0 if rng.random() < tied_share else rng.uniform(0.2, 0.99) for _ in range(n)]


def escalated_share(confidences: list[float], threshold: float, window: RankWindow) -> float:
    escalated = 0
    for i, c in enumerate(confidences):
        score = escalation_score(window, c, tie_break(f"prompt {i}", 0), seeded=True)
        escalated += score > threshold
    return escalated / len(confidences)


def test_the_rank_of_a_value_splits_its_ties_by_the_draw() -> None:
    w = RankWindow(10, seed=[0.1, 0.2, 1.0, 1.0, 1.0])
    assert w.rank(0.05, 0.5) == 0.0
    assert w.rank(0.15, 0.0) == pytest.approx(0.2)
    assert w.rank(1.0, 0.0) == pytest.approx(0.4)  # below the three ties
    assert w.rank(1.0, 0.999) == pytest.approx(0.4 + 0.999 * 0.6)


def test_the_window_forgets_its_oldest_values() -> None:
    w = RankWindow(3)
    for v in (0.9, 0.1, 0.5, 0.7):  # 0.9 is evicted by 0.7
        w.add(v)
    assert len(w) == 3
    assert w.rank(0.8, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.4, 0.5, 0.55])
def test_with_sixty_percent_ties_at_one_every_share_is_reachable(budget: float) -> None:
    """The old absolute rule escalates either <= 40% or everything here; ranks reach any share."""
    reference = tied_confidences(2000, 0.6, seed=1)
    traffic = tied_confidences(3000, 0.6, seed=2)
    share = escalated_share(traffic, 1.0 - budget, RankWindow(1000, reference))
    assert share == pytest.approx(budget, abs=0.02)
    absolute = sum(1.0 - c > 1.0 - budget for c in traffic) / len(traffic)
    if budget > 0.4:
        assert absolute < budget - 0.05  # unreachable: the tied 60% never clears the bar


def test_escalation_share_moves_linearly_with_the_threshold() -> None:
    reference = tied_confidences(2000, 0.6, seed=3)
    traffic = tied_confidences(2000, 0.6, seed=4)
    shares = [
        escalated_share(traffic, t, RankWindow(1000, reference)) for t in (0.3, 0.5, 0.7, 0.9)
    ]
    for t, share in zip((0.3, 0.5, 0.7, 0.9), shares, strict=True):
        assert share == pytest.approx(1.0 - t, abs=0.03)


def test_the_window_follows_live_traffic_after_a_shift() -> None:
    """Seeded on easy traffic, then the mix turns harder: the window re-learns, and the same
    threshold escalates its share of the new traffic again."""
    window = RankWindow(500, [random.Random(5).uniform(0.8, 1.0) for _ in range(500)])
    hard = [random.Random(6).uniform(0.0, 0.6) for _ in range(3000)]
    first = escalated_share(hard[:200], 0.7, window)
    later = escalated_share(hard[1000:], 0.7, window)
    assert first > 0.9  # against the old reference, everything looks unsure
    assert later == pytest.approx(0.3, abs=0.04)


def test_an_unseeded_window_scores_by_uncertainty_until_it_has_a_tenth_of_its_size() -> None:
    w = RankWindow(100)
    assert escalation_score(w, 0.8, 0.5, seeded=False) == pytest.approx(0.2)
    for _ in range(9):
        escalation_score(w, 0.5, 0.5, seeded=False)
    assert len(w) == 10
    assert escalation_score(w, 0.9, 0.5, seeded=False) == pytest.approx(0.0)  # above all ten


def test_the_tie_break_is_stable_and_uniform() -> None:
    assert tie_break("what is 2+2?", 0) == tie_break("what is 2+2?", 0)
    assert tie_break("what is 2+2?", 0) != tie_break("what is 2+2?", 1)
    draws = [tie_break(f"p{i}", 0) for i in range(4000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert sum(d < 0.3 for d in draws) / len(draws) == pytest.approx(0.3, abs=0.03)


def test_reference_files_are_checked_with_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "ref.json"
    good.write_text(
        json.dumps({"kind": "CascadeReference", "metric": "minTokenProb", "confidences": [0.5, 1]})
    )
    assert rank.load_reference(good) == ("minTokenProb", "", [0.5, 1.0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "CascadeReference", "confidences": [0.5, 1.5]}))
    with pytest.raises(ValueError, match=r"confidences\[1\] = 1.5 not in \[0, 1\]"):
        rank.load_reference(bad)
    with pytest.raises(ValueError, match="cannot read it"):
        rank.load_reference(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a CascadeReference file"):
        rank.load_reference(tmp_path / "other.json")


def cascade_config(**cascade: object) -> IngressConfig:
    ladder = [{"name": "small"}, {"name": "large"}]
    return IngressConfig.model_validate(
        {"modelTier": "m", "tiers": ladder, "threshold": 0.3, "cascade": cascade}
    )


def test_the_engine_escalates_the_configured_share_of_tied_answers(tmp_path: Path) -> None:
    """Every answer of the small tier is certain (logprob 0.0): the absolute rule never
    escalates; with ranks against a reference where 60% tie at 1.0 (ranks 0.4 to 1), threshold
    0.3 escalates the tied answers whose rank falls below 0.7: about half of them."""
    ref = tmp_path / "ref.json"
    confidences = tied_confidences(1000, 0.6, seed=7)
    ref.write_text(json.dumps({"kind": "CascadeReference", "confidences": confidences}))

    def share(cfg: IngressConfig, n: int = 300) -> float:
        async def scenario() -> float:
            small, large = FakeTier("small", Reply(logprobs=[0.0])), FakeTier("large")
            engine = CascadeEngine(
                {"small": small, "large": large}, IngressMetrics("m", MemorySink())
            )
            engine.configure(cfg)
            for i in range(n):
                request = CompletionRequest.model_validate(
                    {"model": "m", "prompt": f"{i} + {i} =", "max_tokens": 2}
                )
                call = Call(request, False, "m")
                outcome = await engine.run(
                    cfg, Plan(0, "cascade", True), call, Deadline(60, engine.clock)
                )
                await outcome.attempt.close()
            return len(large.requests) / n

        return asyncio.run(scenario())

    assert share(cascade_config()) == 0.0  # uncertainty 0.0 never clears 0.3
    ranked = cascade_config(score="rank", rank={"window": 1000, "referencePath": str(ref)})
    # Each certain answer joins the window (evicting the oldest), so the tied block grows from
    # 60% to ~70% over the run and the share escalated from 50% to ~57%.
    assert 0.45 <= share(ranked) <= 0.62


def test_a_reference_of_another_metric_is_refused_at_configure(tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    ref.write_text(
        json.dumps({"kind": "CascadeReference", "metric": "meanLogprob", "confidences": [0.5]})
    )
    engine = CascadeEngine(
        {"small": FakeTier("small"), "large": FakeTier("large")}, IngressMetrics("m", MemorySink())
    )
    with pytest.raises(ValueError, match="holds meanLogprob confidences"):
        engine.configure(cascade_config(score="rank", rank={"referencePath": str(ref)}))


def test_threshold_moves_keep_the_window() -> None:
    engine = CascadeEngine(
        {"small": FakeTier("small"), "large": FakeTier("large")}, IngressMetrics("m", MemorySink())
    )
    cfg = cascade_config(score="rank")
    engine.configure(cfg)
    engine.windows["small"].add(0.5)
    moved = IngressConfig.model_validate({**cfg.model_dump(by_alias=True), "threshold": 0.7})
    engine.configure(moved)
    assert len(engine.windows["small"]) == 1
