"""The trace-replay simulator: its queueing model, and the policy on small traces (a second or
two each; the full figures come from `tierserve simulate` and bench/simulate_policy.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tierserve.autoscale.policy import PolicyParams
from tierserve.tools import simulate as sim
from tierserve.tools.simulate import queueing

pytestmark = pytest.mark.unit

PARAMS = PolicyParams(budget=0.25, queue_target=5.0, max_step=0.05, interval_seconds=30.0)


def test_fifo_queue_and_busy_time() -> None:
    trace = sim.synthetic("load-swing", minutes=1, scale=0.05)
    trace.arrival = np.array([0.0, 0.0, 1.0])
    trace.prompt_tokens = np.zeros(3)
    trace.small_tokens = np.array([200.0, 100.0, 100.0])  # 2 s, 1 s, 1 s at 100 tok/s
    for field in ("score", "small_correct", "large_correct", "agree", "large_tokens"):
        setattr(trace, field, getattr(trace, field)[:3])
    start, done = queueing._small_tier(trace, replace(sim.SMALL, replicas=1, slots=1))
    assert start.tolist() == [0.0, 2.0, 3.0] and done.tolist() == [2.0, 3.0, 4.0]
    busy = queueing._busy_seconds(start, done, np.array([0.0, 1.0, 2.5, 10.0]))
    assert busy.tolist() == pytest.approx([1.0, 1.5, 1.5])


def test_every_request_is_counted_once_and_deterministically() -> None:
    trace = sim.synthetic("difficulty-shift", minutes=10, scale=0.3)
    setup = sim.sized(trace, PARAMS)
    a, b = sim.simulate(trace, setup), sim.simulate(trace, setup)
    assert a.requests.sum() == len(trace)
    assert a.escalated.sum() == a.escalated_mask.sum()
    assert np.array_equal(a.threshold, b.threshold) and np.array_equal(a.correct, b.correct)
    kept = ~a.escalated_mask
    assert np.array_equal(a.correct[kept], trace.small_correct[kept])  # kept answers: the small's


def test_static_calibration_hits_the_average_rate() -> None:
    trace = sim.synthetic("difficulty-shift", minutes=10, scale=0.3)
    setup = sim.sized(trace, PARAMS)
    t = sim.calibrate_static(trace, 0.2)
    run = sim.simulate(trace, setup, static=t)
    assert run.escalated.sum() / run.requests.sum() == pytest.approx(0.2, abs=1e-3)
    assert np.all(run.threshold == t)


def test_difficulty_shift_keeps_the_budget_and_settles() -> None:
    trace = sim.synthetic("difficulty-shift", minutes=15, scale=0.5)
    result = sim.compare(trace, sim.sized(trace, PARAMS), safe=False)
    f = result["figures"]
    budget = f["adaptive"]["budget"]
    assert budget["budget_bound_intervals"] >= 12 and budget["mean_abs_error_pp"] < 1.5
    for event in f["settling"]:
        assert event["settle_intervals"] <= event["fewest_possible"] + 1, event
        assert event["reversals"] <= 1, event
    static = result["runs"]["static"]
    hard = slice(12, 20)  # the harder middle third: the static threshold overspends there
    assert static.rate[hard].mean() > PARAMS.budget + 0.03
    assert abs(result["runs"]["adaptive"].rate[hard][2:].mean() - PARAMS.budget) < 0.02


def test_with_sixty_percent_ties_only_the_rank_score_reaches_a_fifty_percent_budget() -> None:
    """60% of answers have confidence exactly 1.0: 1 - confidence > t can escalate at most the
    other 40% at any threshold; the rank score splits the ties and the policy lands on 50%."""
    params = replace(PARAMS, budget=0.5)
    trace = sim.synthetic("ties", minutes=15, scale=0.5)
    assert np.mean(trace.score == 0.0) == pytest.approx(0.6, abs=0.01)
    absolute = sim.compare(trace, sim.sized(trace, params), safe=False)["figures"]["adaptive"]
    assert absolute["escalation_rate"] < 0.42
    ranked = sim.ranked(trace)
    figures = sim.compare(ranked, sim.sized(ranked, params), safe=False)["figures"]["adaptive"]
    assert figures["budget"]["within_2pp"] >= 0.95
    assert figures["escalation_rate"] == pytest.approx(0.5, abs=0.01)


def test_load_step_on_a_short_frontier_backs_off_and_recovers() -> None:
    trace = sim.synthetic("load-swing", minutes=15, scale=0.5)
    setup = sim.sized(trace, PARAMS, top_tier_busy=1 / 0.6)
    adaptive = sim.simulate(trace, setup)
    at_budget = sim.simulate(trace, setup, static=sim.calibrate_static(trace, PARAMS.budget))
    over = adaptive.queue > PARAMS.queue_target
    assert over.sum() <= 5 and not over[:10].any() and not over[16:].any()  # just after the step
    assert (at_budget.queue > PARAMS.queue_target).sum() >= 8  # the whole peak
    peak = slice(14, 20)
    assert adaptive.rate[peak].mean() < 0.2  # capacity, not the budget, limits it at peak
    assert adaptive.rate[-4:].mean() == pytest.approx(PARAMS.budget, abs=0.03)  # back to budget
    assert adaptive.timeouts.sum() < at_budget.timeouts.sum()
    assert any(c == "TopTierCapacity" for c in adaptive.constraints)


def test_csv_trace_replays_through_main(tmp_path: Path) -> None:
    trace = sim.synthetic("difficulty-shift", minutes=6, scale=0.2)
    path = tmp_path / "trace.csv"
    columns = ["arrival", "confidence", "small_correct", "large_correct", "prompt_tokens"]
    columns += ["small_tokens", "large_tokens"]
    rows = zip(
        trace.arrival,
        1 - trace.score,
        trace.small_correct,
        trace.large_correct,
        trace.prompt_tokens,
        trace.small_tokens,
        trace.large_tokens,
        strict=True,
    )
    path.write_text(",".join(columns) + "\n" + "\n".join(",".join(map(str, r)) for r in rows))
    replayed = sim.read_trace(path)
    assert len(replayed) == len(trace)
    assert np.allclose(replayed.score, trace.score)
    out = tmp_path / "out"
    assert sim.main(["--trace", str(path), "--out", str(out), "--interval", "20s"]) == 0
    figures = json.loads((out / "figures.json").read_text())["trace"]
    assert figures["adaptive"]["accuracy"] > 0.5 and figures["intervals"] == 18
    assert (out / "trace.png").stat().st_size > 10_000
    assert len((out / "trace.csv").read_text().splitlines()) == 19


@pytest.mark.skipif(not (sim.ROUTELLM / "mmlu").is_dir(), reason="RouteLLM data not present")
def test_mmlu_scores_are_a_weak_signal_of_weak_model_errors() -> None:
    trace = sim.mmlu(minutes=2, rate=50.0)
    assert 0.6 < trace.small_correct.mean() < 0.75 and 0.75 < trace.large_correct.mean() < 0.85
    wrong = ~trace.small_correct
    ranks = np.argsort(np.argsort(trace.score))
    auroc = (ranks[wrong].mean() - (wrong.sum() - 1) / 2) / (~wrong).sum()
    assert 0.72 < auroc < 0.84
