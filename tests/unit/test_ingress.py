"""The ingress through its FastAPI app, with fake tier handles (tests/unit/llm_fakes.py).

No Ray and no Serve: `TierIngress` is a plain class (Serve wraps it with `serve.ingress()` in
`tierserve.serving.ingress.deployment`), instantiated here directly; its app is the one Serve
gets from `__serve_build_asgi_app__`, driven over ASGI by httpx. Metrics go to a `MemorySink`,
the breakers' clock is injected where cooldowns matter, shadow sampling draws 0 (always).

Tests named `test_stream_*` pin the old streaming path's bugs (hard-coded nextTier, breakers
never read or updated, no shadow evaluation, a timeout per chunk instead of per request).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.unit.llm_fakes import CONFIDENT, UNSURE, FakeTier, Reply, full
from tests.unit.test_validation import MALFORMED
from tierserve.serving.ingress import MAX_BODY_BYTES_ENV, TierIngress, deployment
from tierserve.serving.metrics import MemorySink
from tierserve.serving.validation import DEFAULT_MAX_BODY_BYTES, Endpoint

pytestmark = pytest.mark.unit

MODEL = "assist"
PROMPT = {"model": MODEL, "prompt": "12+34=", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "12+34="}], "max_tokens": 4}


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test on a fresh event loop (shadow tasks live on it until it ends)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def user_config(tiers: Sequence[str], **routing: Any) -> dict[str, Any]:
    """A user_config shaped as tierserve.build.render writes it."""
    return {
        "modelTier": MODEL,
        "tiers": [{"name": t, "modelId": f"{t}-model", "gpus": 1} for t in tiers],
        "threshold": 0.5,
        "bounds": {"min": 0.0, "max": 1.0},
        "mode": "cascade",
        **routing,
    }


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FixedScorer:
    def __init__(self, score: float):
        self.value = score

    def score(self, text: str) -> float:
        return self.value


@dataclass
class Stack:
    ingress: TierIngress
    sink: MemorySink
    tiers: dict[str, FakeTier]

    def __post_init__(self) -> None:
        self.app = self.ingress.__serve_build_asgi_app__()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            return await client.request(method, path, **kwargs)

    async def post(self, path: str = "/v1/completions", **body: Any) -> httpx.Response:
        base = CHAT if path.endswith("chat/completions") else PROMPT
        return await self.request("POST", path, json={**base, **body})

    def metric(self, name: str, **tags: str) -> float:
        return self.sink.get(name, **tags)


def stack(
    *tiers: FakeTier,
    clock: Callable[[], float] = time.monotonic,
    sample: Callable[[], float] = lambda: 0.0,
    max_body_bytes: int | None = None,
    **routing: Any,
) -> Stack:
    sink = MemorySink()
    ingress = TierIngress(
        MODEL,
        [(t.name, t) for t in tiers],
        metrics=sink,
        clock=clock,
        sample=sample,
        max_body_bytes=max_body_bytes,
    )
    ingress.reconfigure(user_config([t.name for t in tiers], **routing))
    return Stack(ingress, sink, {t.name: t for t in tiers})


def events(r: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in r.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed_text(r: httpx.Response) -> str:
    text = ""
    for event in events(r):
        if isinstance(event, dict):
            for choice in event.get("choices") or []:
                text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


def info(r: httpx.Response) -> tuple[str, bool, str]:
    body = r.json()["tierserve"]
    return body["tier"], body["escalated"], body["reason"]


def headers(r: httpx.Response) -> tuple[str, str, str]:
    h = r.headers
    return h["x-tierserve-tier"], h["x-tierserve-escalated"], h["x-tierserve-reason"]


# -- modes ------------------------------------------------------------------------------------


@aio
async def test_mode_none_sends_everything_to_the_first_tier() -> None:
    s = stack(FakeTier("small", Reply(logprobs=[UNSURE])), FakeTier("large"), mode="none")
    r = await s.post()
    assert r.status_code == 200
    assert info(r) == ("small", False, "first-tier") and headers(r)[0] == "small"
    assert r.json()["tierserve"]["confidence"] is None
    assert r.json()["model"] == MODEL and r.json()["choices"][0]["text"] == "42"
    assert not s.tiers["large"].requests
    assert s.tiers["small"].requests[0].logprobs is None  # no decision, no logprobs asked
    assert s.metric("tierserve_requests", tier="small", mode="none", outcome="ok") == 1
    assert s.metric("tierserve_tokens", tier="small", kind="completion") == 2


@aio
async def test_cascade_keeps_a_confident_answer_and_hides_the_logprobs_it_asked_for() -> None:
    s = stack(FakeTier("small", Reply(logprobs=[-0.1, -0.3])), FakeTier("large"))
    r = await s.post()
    assert info(r) == ("small", False, "cascade")
    assert r.json()["tierserve"]["confidence"] == pytest.approx(math.exp(-0.3))
    assert float(r.headers["x-tierserve-confidence"]) == pytest.approx(math.exp(-0.3), abs=1e-4)
    asked = s.tiers["small"].requests[0]
    assert (asked.model, asked.logprobs, asked.stream) == ("small-model", 1, False)
    assert "logprobs" not in r.json()["choices"][0]
    assert not s.tiers["large"].requests
    assert s.sink.samples("tierserve_confidence", tier="small") == [pytest.approx(math.exp(-0.3))]


@aio
async def test_cascade_escalates_an_unsure_answer_and_keeps_logprobs_the_client_asked_for() -> None:
    s = stack(FakeTier("small", Reply(text="41", logprobs=[UNSURE])), FakeTier("large"))
    r = await s.post(logprobs=2)
    assert info(r) == ("large", True, "low-confidence")
    assert headers(r) == ("large", "true", "low-confidence")
    assert r.json()["tierserve"]["confidence"] == pytest.approx(math.exp(UNSURE))
    assert r.json()["choices"][0]["text"] == "42"
    assert r.json()["choices"][0]["logprobs"]["token_logprobs"]  # the client asked
    assert s.tiers["small"].requests[0].logprobs == 2  # never less than the client asked
    assert s.tiers["large"].requests[0].model == "large-model"
    assert s.metric("tierserve_escalations", from_tier="small", to_tier="large") == 1


@aio
async def test_cascade_climbs_a_three_tier_ladder_one_rung_at_a_time() -> None:
    unsure = Reply(logprobs=[UNSURE])
    s = stack(FakeTier("small", unsure), FakeTier("mid", unsure), FakeTier("large"))
    r = await s.post()
    assert info(r) == ("large", True, "low-confidence")
    assert s.metric("tierserve_escalations", from_tier="small", to_tier="mid") == 1
    assert s.metric("tierserve_escalations", from_tier="mid", to_tier="large") == 1
    assert s.tiers["mid"].requests[0].logprobs == 1  # mid decides too
    assert s.tiers["large"].requests[0].logprobs is None  # the top tier does not


@aio
async def test_threshold_extremes_and_a_live_reconfigure() -> None:
    s = stack(FakeTier("small", Reply(logprobs=[-0.5])), FakeTier("large"), threshold=1.0)
    assert info(await s.post())[0] == "small"
    before = (await s.request("GET", "/tierserve/config")).json()
    s.ingress.reconfigure(user_config(["small", "large"], threshold=0.0))
    after = (await s.request("GET", "/tierserve/config")).json()
    assert info(await s.post())[0] == "large"
    assert before["configHash"] != after["configHash"] and after["threshold"] == 0.0
    assert after == {
        "modelTier": MODEL,
        "configHash": after["configHash"],
        "mode": "cascade",
        "threshold": 0.0,
        "tiers": ["small", "large"],
        "openCircuits": [],
    }
    assert s.metric("tierserve_escalation_threshold") == 0.0


@aio
async def test_upfront_mode_routes_by_the_prompt_score_alone() -> None:
    s = stack(FakeTier("small"), FakeTier("large"), mode="upfront", threshold=0.5)
    s.ingress.scorer = FixedScorer(0.8)
    r = await s.post()
    assert info(r) == ("large", True, "upfront-score")
    assert r.json()["tierserve"]["upfrontScore"] == 0.8
    assert float(r.headers["x-tierserve-upfront-score"]) == pytest.approx(0.8)
    assert s.metric("tierserve_escalations", reason="upfront-score") == 1
    s.ingress.scorer = FixedScorer(0.2)
    r = await s.post()
    assert info(r) == ("small", False, "upfront-score")
    assert r.json()["tierserve"]["confidence"] is None
    assert s.tiers["small"].requests[0].logprobs is None  # no cascade decision to make


@aio
async def test_hybrid_decides_clear_cases_up_front_and_cascades_the_band() -> None:
    s = stack(
        FakeTier("small", Reply(logprobs=[UNSURE])),
        FakeTier("large"),
        mode="hybrid",
        threshold=0.5,
        upfront={"hybridMargin": 0.1},
    )
    cases = [
        (0.7, ("large", True, "upfront-score")),  # clearly hard
        (0.3, ("small", False, "upfront-score")),  # clearly easy
        (0.55, ("large", True, "low-confidence")),  # the band: small answered, unsure
    ]
    for score, want in cases:
        s.ingress.scorer = FixedScorer(score)
        assert info(await s.post()) == want, score


@aio
async def test_pinned_tiers_and_unknown_models() -> None:
    s = stack(FakeTier("small"), FakeTier("large"))
    assert info(await s.post(model=f"{MODEL}:large")) == ("large", False, "pinned")
    assert s.tiers["large"].requests[0].logprobs is None
    for model in (f"{MODEL}:huge", "gpt-4"):
        r = await s.post(model=model)
        assert r.status_code == 404, model
        assert r.json()["error"]["param"] == "model"
        assert r.json()["error"]["type"] == "model_not_found"
    assert s.metric("tierserve_escalations") == 0  # pinning is not an escalation


@aio
async def test_force_top_tier_rules_send_high_risk_prompts_to_the_top() -> None:
    rules = [{"name": "medical", "keywords": ["dosage"], "patterns": [r"over\s*dose"]}]
    s = stack(FakeTier("small"), FakeTier("large"), forceTopTier=rules)
    r = await s.post(prompt="What DOSAGE is safe?")
    assert info(r) == ("large", False, "forced:medical")
    assert s.metric("tierserve_escalations", reason="forced:medical") == 1
    chat = [{"role": "user", "content": [{"type": "text", "text": "risk of over dose"}]}]
    r = await s.post("/v1/chat/completions", messages=chat)
    assert info(r) == ("large", False, "forced:medical")
    assert not s.tiers["small"].requests


@aio
async def test_chat_cascade_reads_chat_logprobs_and_answers_in_chat_shape() -> None:
    s = stack(FakeTier("small", Reply(logprobs=[UNSURE])), FakeTier("large"))
    r = await s.post("/v1/chat/completions")
    assert info(r) == ("large", True, "low-confidence")
    assert r.json()["choices"][0]["message"]["content"] == "42"
    assert s.tiers["small"].requests[0].logprobs is True
    r = await s.post("/v1/chat/completions", stream=True)
    assert headers(r) == ("large", "true", "low-confidence")
    assert streamed_text(r) == "42" and events(r)[-1] == "[DONE]"


# -- fallback orders and circuit breakers ---------------------------------------------------


@aio
async def test_next_tier_fallback_moves_a_failed_request_up() -> None:
    s = stack(FakeTier("small", Reply(raises=RuntimeError("replica died"))), FakeTier("large"))
    r = await s.post()
    assert info(r) == ("large", False, "fallback:small")
    assert s.metric("tierserve_fallbacks", from_tier="small", to_tier="large", reason="error") == 1


@aio
async def test_previous_tier_fallback_moves_a_failed_request_down() -> None:
    s = stack(
        FakeTier("small"),
        FakeTier("large", Reply(error=(500, "engine dead", None))),
        fallback="previousTier",
    )
    r = await s.post(model=f"{MODEL}:large")
    assert info(r) == ("small", False, "fallback:large")


@aio
async def test_fallback_none_answers_503_with_retry_after() -> None:
    s = stack(
        FakeTier("small", Reply(raises=RuntimeError("boom"))), FakeTier("large"), fallback="none"
    )
    r = await s.post()
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert (
        r.json()["error"]["type"] == "service_unavailable"
        and "small" in r.json()["error"]["message"]
    )
    assert not s.tiers["large"].requests
    assert s.metric("tierserve_requests", tier="small", outcome="error") == 1


@aio
async def test_previous_tier_comes_back_to_the_lower_answer_without_asking_again() -> None:
    """Escalated, the top tier fails: previousTier serves the held lower answer, not a re-ask."""
    for stream in (False, True):
        s = stack(
            FakeTier("small", Reply(text="41", logprobs=[UNSURE])),
            FakeTier("large", Reply(raises=RuntimeError("gone"))),
            fallback="previousTier",
        )
        r = await s.post(stream=stream)
        assert headers(r) == ("small", "false", "fallback:large"), stream
        text = streamed_text(r) if stream else r.json()["choices"][0]["text"]
        assert text == "41" and len(s.tiers["small"].requests) == 1


@aio
async def test_breaker_opens_after_three_failures_then_probes_and_closes() -> None:
    clock = Clock()
    small = FakeTier("small", *[Reply(raises=RuntimeError("down"))] * 3, Reply())
    s = stack(small, FakeTier("large"), clock=clock)
    for _ in range(3):
        assert info(await s.post())[2] == "fallback:small"
    assert (await s.request("GET", "/tierserve/config")).json()["openCircuits"] == ["small"]
    assert info(await s.post())[:2] == ("large", False)  # open: small is not even asked
    assert len(small.requests) == 3
    clock.now += 31  # half-open: one probe goes through, and it answers
    assert info(await s.post())[0] == "small"
    assert (await s.request("GET", "/tierserve/config")).json()["openCircuits"] == []


@aio
async def test_a_failed_probe_reopens_the_breaker_at_once() -> None:
    clock = Clock()
    small = FakeTier("small", Reply(raises=RuntimeError("still down")))
    s = stack(small, FakeTier("large"), clock=clock)
    for _ in range(3):
        await s.post()
    clock.now += 31
    assert info(await s.post())[2] == "fallback:small"  # the probe failed
    assert len(small.requests) == 4
    assert info(await s.post())[0] == "large" and len(small.requests) == 4


@aio
async def test_a_client_error_from_a_tier_is_400_with_its_param_and_no_fallback() -> None:
    s = stack(
        FakeTier("small", Reply(error=(400, "max_tokens is too large", "max_tokens"))),
        FakeTier("large"),
    )
    for stream in (False, True):
        r = await s.post(stream=stream)
        assert r.status_code == 400, stream
        assert r.json()["error"]["param"] == "max_tokens"
    assert not s.tiers["large"].requests
    assert s.ingress.engine.breaker("small").available(time.monotonic())


# -- backpressure ---------------------------------------------------------------------------


@aio
async def test_a_full_tier_is_429_with_retry_after_and_never_trips_its_breaker() -> None:
    s = stack(FakeTier("small"), FakeTier("large", Reply(raises=full(2.5))))
    for _ in range(5):
        r = await s.post(model=f"{MODEL}:large")
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "3"
        assert r.json()["error"]["type"] == "rate_limit_exceeded"
        assert "capacity" in r.json()["error"]["message"]
    assert s.metric("tierserve_requests", tier="large", outcome="overloaded") == 5
    s.tiers["large"].replies = [Reply()]
    assert (await s.post(model=f"{MODEL}:large")).status_code == 200


@aio
async def test_a_full_tier_falls_back_as_overloaded() -> None:
    s = stack(FakeTier("small", Reply(raises=full(None))), FakeTier("large"))
    r = await s.post()
    assert info(r) == ("large", False, "fallback:small")
    assert s.metric("tierserve_fallbacks", from_tier="small", reason="overloaded") == 1
    assert s.ingress.engine.breakers["small"].available(time.monotonic())


@aio
async def test_429_only_when_every_refusal_was_a_full_queue() -> None:
    s = stack(
        FakeTier("small", Reply(raises=full(4.0))), FakeTier("large", Reply(raises=full(1.0)))
    )
    r = await s.post()
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # the soonest
    s = stack(
        FakeTier("small", Reply(raises=full())), FakeTier("large", Reply(raises=RuntimeError("x")))
    )
    r = await s.post()
    assert r.status_code == 503 and "Retry-After" in r.headers  # a broken tier: not just busy


# -- streaming ------------------------------------------------------------------------------


@aio
async def test_streaming_decides_on_the_first_tokens_and_keeps_a_confident_stream() -> None:
    text = "0123456789abcdef"
    # Confident on the first 4 tokens, unsure later: the decision is made on the first 4.
    small = FakeTier("small", Reply(text=text, logprobs=[CONFIDENT] * 4 + [UNSURE]))
    s = stack(small, FakeTier("large"), cascade={"earlyDecisionTokens": 4})
    r = await s.post(stream=True)
    assert headers(r) == ("small", "false", "cascade")
    assert float(r.headers["x-tierserve-confidence"]) == pytest.approx(
        math.exp(CONFIDENT), abs=1e-4
    )
    assert streamed_text(r) == text and events(r)[-1] == "[DONE]"
    assert all(not c.get("logprobs") for e in events(r)[:-1] for c in e["choices"])
    assert all(e["model"] == MODEL for e in events(r)[:-1])
    assert (small.requests[0].stream, small.requests[0].logprobs) == (True, 1)
    assert not s.tiers["large"].requests


@aio
async def test_streaming_escalation_never_shows_the_abandoned_tokens() -> None:
    small = FakeTier("small", Reply(text="SMALL-ANSWER-LONG", logprobs=[UNSURE]))
    s = stack(small, FakeTier("large", Reply(text="large")), cascade={"earlyDecisionTokens": 2})
    r = await s.post(stream=True)
    assert headers(r) == ("large", "true", "low-confidence")
    assert streamed_text(r) == "large"
    assert small.abandoned == 1 and small.tokens_sent <= 2 + 2  # k tokens, one batch at most
    assert s.tiers["large"].requests[0].logprobs is None


@aio
async def test_streaming_usage_is_counted_when_the_client_asks_for_it() -> None:
    s = stack(FakeTier("small", Reply(text="4242")), FakeTier("large"))
    r = await s.post(stream=True, stream_options={"include_usage": True})
    assert events(r)[-2]["usage"]["completion_tokens"] == 4
    assert s.metric("tierserve_tokens", tier="small", kind="completion") == 4


@aio
async def test_streaming_honours_fallback_none() -> None:
    s = stack(
        FakeTier("small", Reply(raises=RuntimeError("boom"))), FakeTier("large"), fallback="none"
    )
    r = await s.post(stream=True)
    assert r.status_code == 503
    assert not s.tiers["large"].requests


@aio
async def test_stream_honours_previous_tier_fallback() -> None:
    s = stack(
        FakeTier("small"),
        FakeTier("large", Reply(raises=RuntimeError("boom"))),
        fallback="previousTier",
    )
    r = await s.post(model=f"{MODEL}:large", stream=True)
    assert r.status_code == 200
    assert headers(r) == ("small", "false", "fallback:large")
    assert streamed_text(r) == "42"


@aio
async def test_stream_skips_a_tier_whose_circuit_is_open() -> None:
    small = FakeTier("small", Reply(raises=RuntimeError("down")))
    s = stack(small, FakeTier("large"))
    for _ in range(3):
        await s.post()
    r = await s.post(stream=True)
    assert headers(r)[0] == "large"
    assert len(small.requests) == 3  # the stream never asked the broken tier


@aio
async def test_stream_failures_count_against_the_breaker() -> None:
    s = stack(FakeTier("small", Reply(raises=RuntimeError("down"))), FakeTier("large"))
    for _ in range(3):
        assert headers(await s.post(stream=True))[2] == "fallback:small"
    assert (await s.request("GET", "/tierserve/config")).json()["openCircuits"] == ["small"]


@aio
async def test_stream_is_shadow_evaluated_after_it_ends() -> None:
    s = stack(
        FakeTier("small", Reply(text="41")),
        FakeTier("large", Reply(text="42")),
        shadow={"sampleRate": 1.0},
    )
    r = await s.post(stream=True)
    assert streamed_text(r) == "41"
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_evaluations", tier="small", agreed="false") == 1
    shadow = s.tiers["large"].requests[0]
    assert (shadow.stream, shadow.stream_options) == (False, None)


@aio
async def test_stream_deadline_bounds_the_whole_stream_not_each_chunk() -> None:
    # 40 items 20 ms apart: each chunk is quick, the whole stream takes 800 ms, more than the
    # request's deadline of 2 tiers x 150 ms.
    slow = Reply(text="x" * 80, delay=0.02)
    s = stack(FakeTier("small", slow), FakeTier("large"), mode="none", requestTimeoutSeconds=0.15)
    started = time.monotonic()
    r = await s.post(stream=True)
    assert time.monotonic() - started < 0.6
    assert r.status_code == 200 and headers(r)[0] == "small"
    last = events(r)[-2]
    assert last["error"]["code"] == 504 and last["error"]["type"] == "timeout"
    assert s.metric("tierserve_requests", tier="small", outcome="error") == 1
    assert s.tiers["small"].abandoned == 1


@aio
async def test_a_tier_failing_mid_stream_ends_it_with_an_error_event() -> None:
    s = stack(
        FakeTier("small", Reply(text="abcdefgh", break_after=3, batch=1)),
        FakeTier("large"),
        mode="none",
    )
    r = await s.post(stream=True)
    body = events(r)
    assert body[-1] == "[DONE]" and body[-2]["error"]["code"] == 503
    assert streamed_text(r) == "abc"
    assert s.metric("tierserve_requests", tier="small", outcome="error") == 1
    assert s.ingress.engine.breaker("small")._consecutive == 1


# -- the deadline ---------------------------------------------------------------------------


@aio
async def test_a_hung_tier_falls_back_after_its_attempt_timeout() -> None:
    """A dead replica's requests wait for Serve to replace it: the per-tier bound makes that
    wait a fallback, within the request's deadline (one attempt per tier)."""
    s = stack(FakeTier("small", Reply(hang=True)), FakeTier("large"), requestTimeoutSeconds=0.2)
    started = time.monotonic()
    r = await s.post()
    assert 0.2 <= time.monotonic() - started < 0.4
    assert info(r) == ("large", False, "fallback:small")
    assert s.ingress.engine.breaker("small")._consecutive == 1  # a timeout is a failure


@aio
async def test_no_answer_within_the_deadline_is_504() -> None:
    s = stack(
        FakeTier("small", Reply(hang=True)),
        FakeTier("large", Reply(hang=True)),
        requestTimeoutSeconds=0.1,
    )
    for stream in (False, True):
        started = time.monotonic()
        r = await s.post(stream=stream)
        assert time.monotonic() - started < 0.35  # two tiers, 0.1 s each
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert s.metric("tierserve_requests", outcome="error") == 2


@aio
async def test_stream_tail_is_bounded_by_the_deadline_too() -> None:
    """A stream that stalls after the decision is cut at the deadline (it used to hang)."""
    s = stack(
        FakeTier("small", Reply(text="abcdef", stall_after=2)),
        FakeTier("large"),
        mode="none",
        requestTimeoutSeconds=0.1,
    )
    r = await s.post(stream=True)
    assert streamed_text(r) == "ab" and events(r)[-2]["error"]["code"] == 504


# -- shadow evaluation ----------------------------------------------------------------------


@aio
async def test_shadow_samples_lower_tier_answers_off_the_request_path() -> None:
    s = stack(
        FakeTier("small", Reply(text="42")),
        FakeTier("large", Reply(text=" 42 ")),
        shadow={"sampleRate": 0.5},
    )
    assert info(await s.post())[0] == "small"
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_evaluations", tier="small", agreed="true") == 1
    s.ingress.engine.shadows.sample = lambda: 0.7  # above the rate: not sampled
    await s.post()
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_evaluations") == 1
    assert len(s.tiers["large"].requests) == 1


@aio
async def test_top_tier_answers_and_failed_shadows_are_not_counted() -> None:
    s = stack(
        FakeTier("small", Reply(logprobs=[UNSURE])), FakeTier("large"), shadow={"sampleRate": 1.0}
    )
    assert info(await s.post())[0] == "large"
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_evaluations") == 0
    s = stack(
        FakeTier("small"),
        FakeTier("large", Reply(raises=RuntimeError("x"))),
        shadow={"sampleRate": 1.0},
    )
    assert (await s.post()).status_code == 200
    await s.ingress.engine.drain()
    assert s.metric("tierserve_shadow_evaluations") == 0
    assert s.ingress.engine.breaker("large").available(time.monotonic())  # shadows never trip


# -- invalid requests, reconfigure, small endpoints -----------------------------------------


@aio
async def test_invalid_requests_are_400_naming_the_field() -> None:
    s = stack(FakeTier("small"), FakeTier("large"))
    cases: list[tuple[str, Any, str | None]] = [
        ("/v1/completions", b"{not json", None),
        ("/v1/completions", b"[1, 2]", None),
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/completions", {**PROMPT, "max_tokens": "many"}, "max_tokens"),
        (
            "/v1/completions",
            {**PROMPT, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ]
    for path, body, param in cases:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await s.request("POST", path, **kwargs)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert not s.tiers["small"].requests


def tiers_called(s: Stack) -> int:
    return sum(len(t.requests) for t in s.tiers.values())


def is_json_error(r: httpx.Response) -> bool:
    """An OpenAI-style error body: JSON, never text and never an event stream."""
    if not r.headers["content-type"].startswith("application/json"):
        return False
    error = r.json().get("error") or {}
    return {"message", "type", "param", "code"} <= error.keys() and error["code"] == r.status_code


@aio
async def test_malformed_requests_never_reach_a_tier() -> None:
    """Every malformed kind of tests/unit/test_validation.py, through the app."""
    s = stack(FakeTier("small"), FakeTier("large"))
    for case in MALFORMED:
        path = "/v1/chat/completions" if case.endpoint is Endpoint.CHAT else "/v1/completions"
        content = json.dumps(case.body).encode()
        r = await s.request("POST", path, content=content)
        assert r.status_code == case.status, (case.name, r.text)
        assert is_json_error(r), (case.name, r.text)
        assert r.json()["error"]["param"] == case.param, case.name
    assert tiers_called(s) == 0


@aio
async def test_a_malformed_streaming_request_is_a_json_error_before_any_stream() -> None:
    s = stack(FakeTier("small"), FakeTier("large"))
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"n": 2}, 400, "n"),  # vLLM refuses it before streaming; the router streamed an error
        ({"temperature": -1}, 400, "temperature"),
        ({"max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "gpt-4"}, 404, "model"),
    ]
    for path in ("/v1/completions", "/v1/chat/completions"):
        for fields, status, param in bad:
            r = await s.post(path, stream=True, **fields)
            assert (r.status_code, is_json_error(r)) == (status, True), (path, fields, r.text)
            assert r.json()["error"]["param"] == param and "data:" not in r.text
    assert tiers_called(s) == 0


@aio
async def test_an_oversize_body_is_413_whether_announced_or_chunked() -> None:
    s = stack(FakeTier("small"), FakeTier("large"), max_body_bytes=1000)
    big = json.dumps({**PROMPT, "prompt": "x" * 2000}).encode()
    r = await s.request("POST", "/v1/completions", content=big)  # with a Content-Length
    assert (r.status_code, is_json_error(r)) == (413, True)
    assert "request body" in r.json()["error"]["message"]

    async def chunked() -> Any:  # no Content-Length: counted while it is read
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    r = await s.request("POST", "/v1/completions", content=chunked())
    assert (r.status_code, is_json_error(r)) == (413, True)
    assert (await s.post(prompt="x" * 500)).status_code == 200  # under the limit
    assert tiers_called(s) == 1


def test_the_body_limit_defaults_to_4_mib_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert stack(FakeTier("small")).ingress.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    monkeypatch.setenv(MAX_BODY_BYTES_ENV, "65536")
    assert stack(FakeTier("small")).ingress.max_body_bytes == 65536


@aio
async def test_an_exception_inside_a_tier_is_a_json_error_not_text() -> None:
    boom = Reply(raises=KeyError("unexpected"))
    s = stack(FakeTier("small", boom), FakeTier("large", boom))
    for stream in (False, True):
        r = await s.post(stream=stream)
        assert (r.status_code, is_json_error(r)) == (503, True), r.text
        assert "unexpected" in r.json()["error"]["message"]


class BrokenScorer:
    def score(self, text: str) -> float:
        raise ZeroDivisionError("a bug on the request path")


@aio
async def test_an_unexpected_exception_in_the_handler_is_a_json_500_not_text() -> None:
    s = stack(FakeTier("small"), FakeTier("large"), mode="upfront")
    s.ingress.scorer = BrokenScorer()
    for stream in (False, True):
        r = await s.post(stream=stream)
        assert (r.status_code, is_json_error(r)) == (500, True), r.text
        assert r.json()["error"]["type"] == "server_error"
        assert "ZeroDivisionError" in r.json()["error"]["message"]
    assert tiers_called(s) == 0


@aio
async def test_unknown_paths_and_methods_are_json_errors_too() -> None:
    s = stack(FakeTier("small"))
    r = await s.request("POST", "/v1/embeddings", json=PROMPT)
    assert (r.status_code, is_json_error(r)) == (404, True)
    r = await s.request("GET", "/v1/chat/completions")
    assert (r.status_code, is_json_error(r)) == (405, True)
    assert "POST" in r.headers["allow"]


@aio
async def test_a_prompt_longer_than_a_tiers_context_is_its_400_passed_through() -> None:
    too_long = (
        "This model's maximum context length is 2048 tokens. However, your prompt contains "
        "5000 input tokens, which exceeds this limit even without any output tokens."
    )
    refusal = Reply(error=(400, too_long, "input_tokens"))  # as vLLM's renderer names it
    s = stack(FakeTier("small", refusal), FakeTier("large"))
    for path, param in (("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")):
        for stream in (False, True):
            r = await s.post(path, stream=stream)
            assert (r.status_code, is_json_error(r)) == (400, True), (path, stream, r.text)
            assert r.json()["error"]["message"] == too_long
            assert r.json()["error"]["param"] == param
    assert not s.tiers["large"].requests  # the request's fault: no fallback


def test_reconfigure_refuses_bad_configs_and_keeps_the_last_good_one() -> None:
    s = stack(FakeTier("small"), FakeTier("large"), threshold=0.3)
    good = s.ingress.config
    bad = [
        user_config(
            ["small", "large"],
            mode="upfront",
            upfront={"scorer": {"type": "linear", "path": "/nope.json"}},
        ),
        user_config(["small", "large"], threshold=1.5),
        user_config(["small", "large"], thresold=0.2),
        user_config(["small", "huge"]),
        user_config(["small", "large"], forceTopTier=[{"name": "x", "patterns": ["("]}]),
    ]
    for config in bad:
        with pytest.raises(Exception):  # noqa: B017 - pydantic, ValueError, re.error, OSError
            s.ingress.reconfigure(config)
        assert s.ingress.config is good


@aio
async def test_models_and_health() -> None:
    s = stack(FakeTier("small"), FakeTier("large"))
    ids = [m["id"] for m in (await s.request("GET", "/v1/models")).json()["data"]]
    assert ids == [MODEL, f"{MODEL}:small", f"{MODEL}:large"]
    assert (await s.request("GET", "/healthz")).json() == {"status": "ok"}


def test_the_deployment_wraps_the_plain_class_under_the_shared_name() -> None:
    from tierserve.names import INGRESS_DEPLOYMENT

    assert deployment.name == INGRESS_DEPLOYMENT
    assert issubclass(deployment.func_or_class, TierIngress)


def test_build_args_are_validated_like_llm_serving_args() -> None:
    from tierserve.api.v1alpha1 import ModelTier
    from tierserve.build import render
    from tierserve.serving.app import TieredServingArgs

    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(examples.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            mt = ModelTier.model_validate(doc)
            args = render.serve_application(mt)["args"]
            spec = TieredServingArgs.model_validate(args)
            assert [t.name for t in spec.tiers] == [t.name for t in mt.spec.tiers]
            assert spec.tiers[0].llm_config.model_id == (
                mt.spec.tiers[0].model.id or mt.spec.tiers[0].name
            )
            for bad in (
                {**args, "tiers": []},
                {**args, "tiers": args["tiers"] * 2},
                {**args, "x": 1},
            ):
                with pytest.raises(ValueError):
                    TieredServingArgs.model_validate(bad)


# -- the cost ledger, caps and spill-over ----------------------------------------------------

PRICES = {"small": (1.0, 2.0), "mid": (10.0, 20.0), "large": (100.0, 200.0)}  # per million


def priced(*names: str) -> list[dict[str, Any]]:
    """The tiers of a user_config with explicit prices (the renderer writes them all)."""
    return [
        {
            "name": n,
            "modelId": f"{n}-model",
            "gpus": 1,
            "price": {"promptPerMillion": PRICES[n][0], "completionPerMillion": PRICES[n][1]},
        }
        for n in names
    ]


def priced_stack(*tiers: FakeTier, **routing: Any) -> Stack:
    """A stack whose tiers have PRICES."""
    s = stack(*tiers, **routing)
    names = [t.name for t in tiers]
    s.ingress.reconfigure({**user_config(names, **routing), "tiers": priced(*names)})
    return s


def by_hand(tier: str, prompt: int, completion: int) -> float:
    """The documented model: (prompt x promptPerMillion + completion x completionPerMillion)
    / 1e6."""
    per_prompt, per_completion = PRICES[tier]
    return (prompt * per_prompt + completion * per_completion) / 1e6


def bill(r: httpx.Response) -> dict[str, Any]:
    """The cost the client reads: the body's `tierserve`, or a stream's last chunk's."""
    if r.headers["content-type"].startswith("text/event-stream"):
        return dict(events(r)[-2]["tierserve"]["cost"])
    return dict(r.json()["tierserve"]["cost"])


def line(tier: str, kind: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "tier": tier,
        "kind": kind,
        "promptTokens": prompt,
        "completionTokens": completion,
        "cost": pytest.approx(by_hand(tier, prompt, completion)),
    }


@aio
async def test_every_answer_carries_its_cost_by_the_documented_model() -> None:
    small = FakeTier("small", Reply(text="42"), Reply(text="41", logprobs=[UNSURE]))
    s = priced_stack(small, FakeTier("large", Reply(text="4242")))
    # Kept on small: 3 prompt and 2 completion tokens (the fakes' usage).
    r = await s.post()
    kept, alone = by_hand("small", 3, 2), by_hand("large", 3, 2)
    assert bill(r) == {
        "total": pytest.approx(kept),
        "wasted": 0,
        "topTierAlone": pytest.approx(alone),
        "savings": pytest.approx(alone - kept),
        "tiers": [line("small", "answer", 3, 2)],
    }
    assert r.headers["x-tierserve-cost"] == f"{kept:.6g}"
    assert r.headers["x-tierserve-savings"] == f"{alone - kept:.6g}"
    # Escalated: small's answer was wasted, large's 4 tokens kept; the top tier alone would
    # have charged what large did, so the request saved less than nothing.
    r = await s.post()
    wasted, kept = by_hand("small", 3, 2), by_hand("large", 3, 4)
    assert bill(r) == {
        "total": pytest.approx(wasted + kept),
        "wasted": pytest.approx(wasted),
        "topTierAlone": pytest.approx(kept),
        "savings": pytest.approx(-wasted),
        "tiers": [line("small", "wasted", 3, 2), line("large", "answer", 3, 4)],
    }
    assert float(r.headers["x-tierserve-cost"]) == pytest.approx(wasted + kept, rel=1e-5)


@aio
async def test_a_stream_carries_its_cost_in_its_last_chunk_and_usage_only_if_asked() -> None:
    small = FakeTier("small", Reply(text="SMALL-ANSWER-LONG", logprobs=[UNSURE]))
    s = priced_stack(
        small, FakeTier("large", Reply(text="large")), cascade={"earlyDecisionTokens": 2}
    )
    r = await s.post(stream=True)
    assert headers(r) == ("large", "true", "low-confidence")
    assert "x-tierserve-cost" not in r.headers  # sent before the cost was known
    body = events(r)
    assert body[-1] == "[DONE]" and streamed_text(r) == "large"
    last = body[-2]
    assert last["choices"][0]["finish_reason"] == "length"  # the tier's own last chunk
    assert last["tierserve"]["tier"] == "large" and last["tierserve"]["reason"] == "low-confidence"
    # small was abandoned after its 2 early-decision tokens: its usage so far, as reported.
    assert bill(r)["tiers"] == [line("small", "wasted", 3, 2), line("large", "answer", 3, 5)]
    assert bill(r)["total"] == pytest.approx(by_hand("small", 3, 2) + by_hand("large", 3, 5))
    assert all("tierserve" not in e for e in body[:-2])
    assert all("usage" not in e for e in body[:-1])  # the client did not ask for usage
    for tier in s.tiers.values():  # every tier was asked for its usage on every chunk
        options = tier.requests[0].stream_options
        assert options.include_usage and options.continuous_usage_stats
    # Asked for the final usage only, the client gets just that (and the cost on it).
    small.replies = [Reply(text="4242")]
    r = await s.post(stream=True, stream_options={"include_usage": True})
    usage_chunk = events(r)[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4
    assert bill(r)["tiers"] == [line("small", "answer", 3, 4)]
    assert all("usage" not in e for e in events(r)[:-2])


@aio
async def test_cost_metrics_are_the_sum_of_the_bills() -> None:
    small = FakeTier(
        "small",
        Reply(text="42"),
        Reply(text="41", logprobs=[UNSURE]),
        Reply(text="4242"),
        Reply(text="SMALL-ANSWER", logprobs=[UNSURE]),
    )
    s = priced_stack(small, FakeTier("large", Reply(text="43")))
    bills = [bill(await s.post(stream=stream)) for stream in (False, False, True, True)]
    for tier in ("small", "large"):
        for kind in ("answer", "wasted"):
            billed = sum(
                ln["cost"]
                for b in bills
                for ln in b["tiers"]
                if (ln["tier"], ln["kind"]) == (tier, kind)
            )
            metered = s.metric("tierserve_cost", tier=tier, mode="cascade", kind=kind)
            assert metered == pytest.approx(billed), (tier, kind)
    assert s.metric("tierserve_cost") == pytest.approx(sum(b["total"] for b in bills))
    alone = s.metric("tierserve_top_tier_alone_cost", mode="cascade")
    assert alone == pytest.approx(sum(b["topTierAlone"] for b in bills))
    assert alone - s.metric("tierserve_cost") == pytest.approx(sum(b["savings"] for b in bills))


@aio
async def test_a_self_check_is_on_the_bill_as_its_own_line() -> None:
    def small_reply(request: Any) -> Reply:
        if request.max_tokens != 1:
            return Reply(text="42")
        return Reply(text="Y", top={"Yes": math.log(0.9), "No": math.log(0.1)})

    s = priced_stack(
        FakeTier("small", small_reply), FakeTier("large"), cascade={"confidence": "selfCheck"}
    )
    r = await s.post()
    assert info(r) == ("small", False, "cascade")
    assert bill(r)["tiers"] == [line("small", "self_check", 3, 1), line("small", "answer", 3, 2)]
    check = by_hand("small", 3, 1)
    assert s.metric("tierserve_cost", tier="small", kind="self_check") == pytest.approx(check)


@aio
async def test_a_cap_of_one_rung_stops_every_climb_at_the_middle_tier() -> None:
    unsure = Reply(logprobs=[UNSURE])
    s = priced_stack(
        FakeTier("small", unsure),
        FakeTier("mid", unsure),
        FakeTier("large"),
        limits={"maxRungs": 1},
    )
    for path, stream in [("/v1/completions", False), ("/v1/completions", True)] * 2 + [
        ("/v1/chat/completions", False)
    ]:
        r = await s.post(path, stream=stream)
        assert headers(r) == ("mid", "true", "cap:rungs"), (path, stream)
        decision = events(r)[-2]["tierserve"] if stream else r.json()["tierserve"]
        assert decision["reason"] == "cap:rungs"
        assert decision["confidence"] == pytest.approx(math.exp(UNSURE))  # why it would climb
    assert not s.tiers["large"].requests
    assert s.metric("tierserve_capped_requests", tier="mid", cap="rungs") == 5
    assert s.metric("tierserve_escalations", from_tier="mid") == 0
    assert s.metric("tierserve_escalations", from_tier="small", to_tier="mid") == 5
    # maxRungs 0: a cascade never leaves its first tier.
    s.ingress.reconfigure(user_config(["small", "mid", "large"], limits={"maxRungs": 0}))
    assert headers(await s.post()) == ("small", "false", "cap:rungs")


@aio
async def test_a_spend_cap_below_the_top_tiers_cost_keeps_requests_off_it() -> None:
    """The top tier's estimate for PROMPT (3 prompt tokens as small reports them, else 2 from
    the text; max_tokens 4) is 0.0011 or 0.001: over a cap of 0.0005 whichever way a request
    would get there. Mid's (0.00011) fits after small's answer (0.000007)."""
    cap = {"maxCost": 0.0005}
    unsure = Reply(logprobs=[UNSURE])

    def ladder(small: Reply, mid: Reply, **routing: Any) -> Stack:
        tiers = FakeTier("small", small), FakeTier("mid", mid), FakeTier("large")
        return priced_stack(*tiers, **routing)

    # A cascade climbs to mid, then stops: mid's unsure answer is kept, saying why.
    s = ladder(unsure, unsure, limits=cap)
    for stream in (False, True):
        r = await s.post(stream=stream)
        assert headers(r) == ("mid", "true", "cap:cost"), stream
        assert bill(r)["total"] <= 0.0005
    assert s.metric("tierserve_capped_requests", tier="mid", cap="cost") == 2
    # An upfront jump to the top lands on the highest tier within the cap.
    s = ladder(Reply(), Reply(), limits=cap, mode="upfront")
    s.ingress.scorer = FixedScorer(0.9)
    r = await s.post()
    assert info(r) == ("mid", True, "cap:cost") and r.json()["tierserve"]["upfrontScore"] == 0.9
    # A fallback (or a spill-over) does not reach it either: 503 (429) rather than the top.
    s = ladder(
        Reply(raises=RuntimeError("down")),
        Reply(raises=RuntimeError("down")),
        limits=cap,
    )
    r = await s.post()
    assert r.status_code == 503 and "maxCost" in r.json()["error"]["message"]
    s = ladder(Reply(raises=full(1.0)), Reply(raises=full(1.0)), limits=cap)
    r = await s.post()
    assert r.status_code == 429 and "maxCost" in r.json()["error"]["message"]
    assert not s.tiers["large"].requests
    # Without the cap the same climb reaches the top.
    s = ladder(unsure, unsure)
    assert headers(await s.post()) == ("large", "true", "low-confidence")


@aio
async def test_pinned_requests_and_force_rules_are_not_capped() -> None:
    rules = [{"name": "medical", "keywords": ["dosage"]}]
    s = priced_stack(
        FakeTier("small"),
        FakeTier("large"),
        limits={"maxCost": 0.0, "maxRungs": 0},
        forceTopTier=rules,
    )
    assert info(await s.post(prompt="What dosage?")) == ("large", False, "forced:medical")
    assert info(await s.post(model=f"{MODEL}:large")) == ("large", False, "pinned")
    assert s.metric("tierserve_capped_requests") == 0


@aio
async def test_spillover_sends_a_saturated_tiers_request_by_its_own_policy() -> None:
    # spillover none: a full tier answers 429 while a failing one still falls back up.
    s = stack(FakeTier("small", Reply(raises=full(1.0))), FakeTier("large"), spillover="none")
    r = await s.post()
    assert r.status_code == 429 and not s.tiers["large"].requests
    s.tiers["small"].replies = [Reply(raises=RuntimeError("down"))]
    assert info(await s.post()) == ("large", False, "fallback:small")
    # spillover previousTier: a full top tier sends the request back down, metered.
    s = stack(FakeTier("small"), FakeTier("large", Reply(raises=full())), spillover="previousTier")
    assert info(await s.post(model=f"{MODEL}:large")) == ("small", False, "fallback:large")
    assert (
        s.metric("tierserve_fallbacks", from_tier="large", to_tier="small", reason="overloaded")
        == 1
    )
    # ...and to an escalated request's own lower answer, without asking again.
    small = FakeTier("small", Reply(text="41", logprobs=[UNSURE]))
    s = priced_stack(small, FakeTier("large", Reply(raises=full())), spillover="previousTier")
    r = await s.post()
    assert info(r) == ("small", False, "fallback:large") and r.json()["choices"][0]["text"] == "41"
    assert len(small.requests) == 1
    assert bill(r)["tiers"] == [line("small", "answer", 3, 2)]  # came back to: not waste
    # A failing top tier still falls back as `fallback` says (nextTier: nowhere above).
    s = stack(
        FakeTier("small"),
        FakeTier("large", Reply(raises=RuntimeError("x"))),
        spillover="previousTier",
    )
    assert (await s.post(model=f"{MODEL}:large")).status_code == 503


@aio
async def test_a_failed_climb_keeps_the_lower_answer_it_already_has() -> None:
    """nextTier (the default), the top tier dies mid-escalation: the request gets the lower
    tier's whole answer, marked as a fallback, instead of a 503 (a top-tier worker lost took
    34 of 60 escalated requests with it on the node). Streams hold only their first tokens,
    so they keep it only under previousTier; fallback none keeps the error it asked for."""
    for error in (RuntimeError("worker died"), full(1.0)):
        small = FakeTier("small", Reply(text="41", logprobs=[UNSURE]))
        s = priced_stack(small, FakeTier("large", Reply(raises=error)))
        r = await s.post()
        assert info(r) == ("small", False, "fallback:large"), error
        assert r.json()["choices"][0]["text"] == "41" and len(small.requests) == 1
        assert bill(r)["tiers"] == [line("small", "answer", 3, 2)]  # kept: not waste
        reason = "error" if isinstance(error, RuntimeError) else "overloaded"
        assert s.metric("tierserve_fallbacks", from_tier="large", to_tier="small",
                        reason=reason) == 1  # fmt: skip
    s = stack(
        FakeTier("small", Reply(logprobs=[UNSURE])),
        FakeTier("large", Reply(raises=RuntimeError("x"))),
    )
    assert (await s.post(stream=True)).status_code == 503
    s = stack(
        FakeTier("small", Reply(logprobs=[UNSURE])),
        FakeTier("large", Reply(raises=RuntimeError("x"))),
        fallback="none",
    )
    assert (await s.post()).status_code == 503
