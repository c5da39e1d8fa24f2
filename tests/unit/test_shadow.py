"""Shadow evaluation: the bounded sampler, the pairwise judge (blind, random order, strict
verdicts) and what reaches the metrics; through the ingress with fake tiers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.unit.llm_fakes import FakeTier, Reply
from tests.unit.test_ingress import MODEL, aio, info, stack
from tierserve.api.v1alpha1 import Shadow
from tierserve.serving.shadow import ShadowGate, Verdict, pairwise_verdict, parse_verdict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [("A", "A"), (" b.", "B"), ("TIE", "TIE"), ("tie.\n", "TIE")]
    + [(bad, None) for bad in ("A is better", "Answer: A", "", "AB", "yes", "42", "A/B", "TIE!")],
)
def test_verdicts_are_parsed_strictly(reply: str, parsed: str | None) -> None:
    assert parse_verdict(reply) == parsed


def test_the_verdict_is_the_lower_tiers_whatever_the_order() -> None:
    assert pairwise_verdict("A", lower_first=True) == Verdict.WIN
    assert pairwise_verdict("A", lower_first=False) == Verdict.LOSS
    assert pairwise_verdict("B", lower_first=False) == Verdict.WIN
    assert pairwise_verdict("tie", lower_first=False) == Verdict.TIE
    assert pairwise_verdict("A, clearly", lower_first=True) == Verdict.UNPARSEABLE
    assert not Verdict.UNPARSEABLE.agreed and not Verdict.ERROR.judged


def test_the_gate_bounds_concurrency_and_the_hourly_budget() -> None:
    gate, limits = ShadowGate(), Shadow(max_concurrent=2, max_per_hour=3)
    assert [gate.admit(limits, 0.0) for _ in range(3)] == [None, None, "concurrency"]
    gate.release()
    gate.release()
    assert gate.admit(limits, 0.0) is None  # the third of the hour's three
    gate.release()
    assert gate.admit(limits, 1.0) == "budget"
    assert gate.admit(limits, 1200.0) is None  # a third of an hour refills one


def test_under_load_the_gate_drops_shadows_first_without_spending_the_budget() -> None:
    gate, limits = ShadowGate(), Shadow(max_concurrent=1, max_per_hour=1, max_user_in_flight=2)
    assert gate.admit(limits, 0.0, users=3) == "load"
    assert gate.in_flight == 0
    assert gate.admit(limits, 0.0, users=2) is None  # the hour's one, not spent by the drop


def judged(verdicts: list[str]) -> FakeTier:
    """The top tier: answers users' sums with '46', and judge prompts with the next verdict."""
    replies = iter(verdicts)

    def reply(request: Any) -> Reply:
        if "Verdict:" in (request.prompt or ""):
            return Reply(text=next(replies))
        return Reply(text="46")

    return FakeTier("large", reply)


@aio
async def test_pairwise_judge_is_blind_and_counts_win_tie_loss() -> None:
    draws = iter([0.0, 0.2, 0.0, 0.9, 0.0, 0.3])  # sample, order, sample, order, ...
    large = judged(["A", "A", "TIE"])
    s = stack(
        FakeTier("small", Reply(text="45")),
        large,
        sample=lambda: next(draws),
        shadow={"sampleRate": 1.0, "judge": "pairwise"},
    )
    for _ in range(3):
        assert info(await s.post())[0] == "small"
        await s.ingress.engine.drain()
    prompts = [r.prompt for r in large.requests if "Verdict:" in r.prompt]
    assert len(prompts) == 3
    first, second = prompts[0], prompts[1]
    assert "Answer A:\n45" in first and "Answer B:\n46" in first  # lower first (draw 0.2)
    assert "Answer A:\n46" in second and "Answer B:\n45" in second  # top first (draw 0.9)
    assert "small" not in first and "large" not in first  # blind: no tier names
    assert "Request:\n12+34=" in first
    assert [r.max_tokens for r in large.requests if "Verdict:" in r.prompt] == [4, 4, 4]
    m = s.metric
    assert m("tierserve_shadow_verdicts", tier="small", judge="pairwise", verdict="win") == 1
    assert m("tierserve_shadow_verdicts", verdict="loss") == 1
    assert m("tierserve_shadow_verdicts", verdict="tie") == 1
    assert m("tierserve_shadow_evaluations", tier="small", agreed="true") == 2  # win + tie
    assert m("tierserve_shadow_evaluations", tier="small", agreed="false") == 1
    # Their cost is counted apart from users': the top tier's shadow answers and the judge's.
    assert m("tierserve_cost", tier="large", kind="shadow") > 0
    assert m("tierserve_cost", tier="large", kind="judge") > 0
    assert m("tierserve_cost", tier="large", kind="answer") == 0  # every user answer was small's


@aio
async def test_a_garbage_judge_is_unparseable_never_agreement() -> None:
    s = stack(
        FakeTier("small", Reply(text="45")),
        judged(["The first one is better", "A because", "46"]),
        shadow={"sampleRate": 1.0, "judge": "pairwise"},
    )
    for _ in range(3):
        await s.post()
        await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_verdicts", verdict="unparseable") == 3
    assert s.metric("tierserve_shadow_evaluations") == 0


@aio
async def test_a_judge_that_is_down_costs_users_nothing() -> None:
    def reply(request: Any) -> Reply:
        if "Verdict:" in (request.prompt or ""):
            return Reply(raises=RuntimeError("judge replica died"))
        return Reply(text="46")

    s = stack(
        FakeTier("small", Reply(text="45")),
        FakeTier("large", reply),
        FakeTier("judge", Reply(raises=RuntimeError("down"))),
        shadow={"sampleRate": 1.0, "judge": "pairwise", "judgeTier": "judge"},
        mode="cascade",
    )
    codes = []
    for _ in range(5):
        r = await s.post()
        codes.append(r.status_code)
        await s.ingress.engine.drain()
    assert codes == [200] * 5
    assert s.metric("tierserve_shadow_verdicts", verdict="error") == 5
    assert s.metric("tierserve_shadow_evaluations") == 0
    assert s.ingress.engine.breaker("judge").available(time.monotonic())


@aio
async def test_at_most_max_concurrent_shadows_run_the_rest_are_dropped() -> None:
    large = FakeTier("large", Reply(text="46", hang=True))  # its shadow answers never come
    s = stack(
        FakeTier("small", Reply(text="45")),
        large,
        shadow={"sampleRate": 1.0, "maxConcurrent": 1},
    )
    for _ in range(10):
        assert info(await s.post())[0] == "small"  # users are answered while shadows hang
    await asyncio.sleep(0)
    assert len(large.requests) == 1
    assert s.metric("tierserve_shadow_in_flight", tier="small") == 1
    assert s.metric("tierserve_shadow_dropped", tier="small", reason="concurrency") == 9
    for task in list(s.ingress.engine.shadows.tasks):
        task.cancel()
    await asyncio.gather(*s.ingress.engine.shadows.tasks, return_exceptions=True)
    assert s.metric("tierserve_shadow_in_flight", tier="small") == 0


@aio
async def test_shadows_wait_for_a_lull_in_user_traffic() -> None:
    """maxUserInFlight 0: an answer kept while another user's request is still streaming is
    not shadowed (reason load); the last one, kept with nothing else in flight, is."""
    large = FakeTier("large", Reply(text="45"))
    small = FakeTier("small", Reply(text="45", delay=0.3), Reply(text="45"))
    s = stack(small, large, shadow={"sampleRate": 1.0, "maxUserInFlight": 0})
    slow = asyncio.create_task(s.post(stream=True))
    while not small.requests:
        await asyncio.sleep(0.01)
    assert (await s.post(stream=True)).status_code == 200  # answered while `slow` streams
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_dropped", tier="small", reason="load") == 1
    assert large.requests == []
    assert (await slow).status_code == 200
    await s.ingress.engine.drain()
    assert len(large.requests) == 1
    assert s.metric("tierserve_shadow_verdicts", verdict="tie") == 1


def test_a_busy_top_tier_drops_shadows_before_any_other_bound() -> None:
    gate, limits = ShadowGate(), Shadow(max_concurrent=1, max_per_hour=1, max_top_tier_in_flight=0)
    assert gate.admit(limits, 0.0, users=5, top_users=1) == "top-tier-busy"
    assert gate.in_flight == 0
    assert gate.admit(limits, 0.0, users=5, top_users=0) is None  # the hour's one, unspent


@aio
async def test_shadows_use_the_top_tiers_idle_capacity_only() -> None:
    """maxTopTierInFlight 0: an answer kept on `small` while a user's request streams from
    `large` is not shadowed (reason top-tier-busy), however idle the replica is otherwise; the
    next one, with `large` free of users, is. Shadows' own calls never count as users'."""
    large = FakeTier("large", Reply(text="46", delay=0.3), Reply(text="46"))
    s = stack(FakeTier("small", Reply(text="45")), large,
              shadow={"sampleRate": 1.0, "maxConcurrent": 4, "maxTopTierInFlight": 0})  # fmt: skip
    slow = asyncio.create_task(s.post(model=f"{MODEL}:large", stream=True))
    while not large.requests:
        await asyncio.sleep(0.01)
    assert info(await s.post())[0] == "small"
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_dropped", tier="small", reason="top-tier-busy") == 1
    assert len(large.requests) == 1  # only the user's
    assert (await slow).status_code == 200
    assert info(await s.post())[0] == "small"
    assert info(await s.post())[0] == "small"  # while the first shadow may still be open
    await s.ingress.engine.drain()
    assert len(large.requests) == 3  # both shadowed: a shadow's call is not a user's
    assert s.metric("tierserve_shadow_verdicts", verdict="tie") == 0
    assert s.metric("tierserve_shadow_verdicts", verdict="loss") == 2
    assert s.ingress.engine.user_calls == {"small": 0, "large": 0}


@aio
async def test_a_judge_is_not_asked_while_users_wait_for_its_tier() -> None:
    """The judge's call is gated again: users who reached the top tier while its reference
    answer was computed keep it, and the half-done evaluation is dropped, not judged."""
    reference = asyncio.Event()
    user_on_top = asyncio.Event()

    def reply(request: Any) -> Reply:
        if request.stream:  # the user's, pinned to large
            return Reply(text="46", delay=0.2)
        return Reply(text="46")

    large = FakeTier("large", reply)
    s = stack(FakeTier("small", Reply(text="45")), large,
              shadow={"sampleRate": 1.0, "judge": "pairwise", "maxTopTierInFlight": 0})  # fmt: skip
    real_ask = s.ingress.engine.shadows._ask

    async def ask(cfg: Any, call: Any, index: int, prompt: str | None) -> str | None:
        answer = await real_ask(cfg, call, index, prompt)
        if prompt is None:  # the reference is in: hold until a user is on the top tier
            reference.set()
            await user_on_top.wait()
        return answer

    s.ingress.engine.shadows._ask = ask  # type: ignore[method-assign]
    assert info(await s.post())[0] == "small"
    await reference.wait()
    slow = asyncio.create_task(s.post(model=f"{MODEL}:large", stream=True))
    while s.ingress.engine.user_calls.get("large", 0) == 0:
        await asyncio.sleep(0.01)
    user_on_top.set()
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_dropped", tier="small", reason="top-tier-busy") == 1
    assert not [r for r in large.requests if "Verdict:" in (r.prompt or "")]
    assert s.metric("tierserve_shadow_verdicts") == 0
    assert (await slow).status_code == 200
