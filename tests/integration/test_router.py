"""The router on the live stack: two generated tiny models through vLLM on CPU behind Ray Serve,
deployed from a rendered ModelTier exactly as the operator's external backend deploys it.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import eventually
from tierserve.dev.ray_local import RayHead
from tierserve.dev.tiered import TieredApp, complete, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import TinyModels, read_heldout
from tierserve.serving.routing import p_yes
from tierserve.tools.quality import apgr

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(ray_head: RayHead, tiny_models: TinyModels) -> Iterator[TieredApp]:
    serve_on_loopback(ray_head.dashboard_url, ray_head.serve_http_port)
    doc = tiny_modeltier(
        "sums",
        {"small": str(tiny_models.small), "large": str(tiny_models.large)},
        dashboard_url=ray_head.dashboard_url,
        routing={
            "mode": "cascade",
            "escalation": {"threshold": 0.5},
            "cascade": {"earlyDecisionTokens": 2},
            "forceTopTier": [{"name": "finance", "keywords": ["invoice"]}],
        },
    )
    tiered = TieredApp(doc, ray_head.serve_url)
    tiered.deploy(progress=print)
    try:
        yield tiered
    finally:
        tiered.remove()


def stream(app: TieredApp, prompt: str) -> tuple[httpx.Headers, str]:
    body = {"model": app.model, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True}
    text = ""
    with httpx.stream("POST", f"{app.base_url}/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "logprobs" not in chunk["choices"][0] or not chunk["choices"][0]["logprobs"]
                text += chunk["choices"][0].get("text", "")
        return r.headers, text


PROMPTS = ["12+34=", "57+38=", "91+19=", "23+77=", "45+45=", "66+29="]


def test_threshold_extremes_decide_who_answers(app: TieredApp) -> None:
    app.route(mode="cascade", escalation={"threshold": 0.0})
    for prompt in PROMPTS:
        r = complete(app, prompt)
        info = r.json()["tierserve"]
        assert (info["tier"], info["escalated"]) == ("large", True), info
        assert r.headers["x-tierserve-tier"] == "large"
        assert float(r.headers["x-tierserve-confidence"]) == pytest.approx(
            info["confidence"], abs=1e-3
        )
    app.route(escalation={"threshold": 1.0})
    for prompt in PROMPTS:
        info = complete(app, prompt).json()["tierserve"]
        assert (info["tier"], info["escalated"]) == ("small", False), info
        assert 0.0 < info["confidence"] <= 1.0


def test_streaming_follows_the_same_decision(app: TieredApp) -> None:
    app.route(mode="cascade", escalation={"threshold": 0.0})
    headers, text = stream(app, "12+34=")
    assert headers["x-tierserve-tier"] == "large" and headers["x-tierserve-escalated"] == "true"
    assert text == complete(app, "12+34=", f"{app.model}:large").json()["choices"][0]["text"]
    app.route(escalation={"threshold": 1.0})
    headers, text = stream(app, "12+34=")
    assert headers["x-tierserve-tier"] == "small"
    assert text == complete(app, "12+34=", f"{app.model}:small").json()["choices"][0]["text"]


def test_mode_none_pinning_and_high_risk_rules(app: TieredApp) -> None:
    app.route(mode="none", escalation={"threshold": 0.0})
    assert complete(app, "12+34=").json()["tierserve"]["tier"] == "small"
    assert complete(app, "12+34=", f"{app.model}:large").json()["tierserve"]["reason"] == "pinned"
    forced = complete(app, "invoice 12+34=").json()["tierserve"]
    assert (forced["tier"], forced["reason"]) == ("large", "forced:finance")
    bad = complete(app, "1+1=", "gpt-4")
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "model"
    missing = httpx.post(f"{app.base_url}/completions", json={"model": app.model}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"


def test_openai_client_works_unchanged(app: TieredApp) -> None:
    openai = pytest.importorskip("openai")
    app.route(mode="cascade", escalation={"threshold": 0.5})
    client = openai.OpenAI(base_url=app.base_url, api_key="unused")
    assert app.model in {m.id for m in client.models.list().data}
    done = client.completions.create(model=app.model, prompt="12+34=", max_tokens=4, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens > 0
    chat = client.chat.completions.create(
        model=app.model,
        messages=[{"role": "user", "content": "12+34="}],
        max_tokens=4,
        temperature=0,
    )
    assert chat.choices[0].message.content
    pieces = client.chat.completions.create(
        model=app.model,
        messages=[{"role": "user", "content": "12+34="}],
        max_tokens=4,
        temperature=0,
        stream=True,
    )
    streamed = "".join((c.choices[0].delta.content or "") for c in pieces if c.choices)
    assert streamed == chat.choices[0].message.content


def test_threshold_change_applies_to_the_next_request_without_failures(app: TieredApp) -> None:
    app.route(mode="cascade", escalation={"threshold": 1.0})
    results: list[tuple[int, str]] = []
    stop = time.monotonic() + 60

    def traffic() -> None:
        while time.monotonic() < stop and len(results) < 400:
            r = complete(app, "12+34=")
            results.append((r.status_code, r.headers.get("x-tierserve-tier", "")))

    with futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(traffic) for _ in range(2)]
        time.sleep(2)
        before = len(results)
        app.route(escalation={"threshold": 0.0})  # returns once the router reports it
        changed_at = len(results)
        time.sleep(3)
        stop = time.monotonic()
        for f in running:
            f.result()
    assert all(code == 200 for code, _ in results), results
    assert {tier for _, tier in results[:before]} == {"small"}
    after = [tier for _, tier in results[changed_at + 2 :]]  # requests in flight at the switch
    assert after and set(after) == {"large"}


def test_cascade_routes_by_quality_on_held_out_sums(
    app: TieredApp, tiny_models: TinyModels
) -> None:
    """Accuracy vs share escalated from the live cascade; APGR clearly above random (0.5)."""
    heldout = read_heldout(tiny_models.heldout)[:150]
    app.route(mode="cascade", escalation={"threshold": 1.0})  # small answers, reports confidence
    small = [complete(app, h["prompt"]).json() for h in heldout]
    large = [complete(app, h["prompt"], f"{app.model}:large").json() for h in heldout]
    small_ok = [
        s["choices"][0]["text"].strip() == h["answer"] for s, h in zip(small, heldout, strict=True)
    ]
    large_ok = [
        x["choices"][0]["text"].strip() == h["answer"] for x, h in zip(large, heldout, strict=True)
    ]
    uncertainty = [1.0 - s["tierserve"]["confidence"] for s in small]
    score = apgr(uncertainty, small_ok, large_ok)
    print(
        f"\nheld-out {len(heldout)}: small {sum(small_ok) / len(heldout):.2f}, "
        f"large {sum(large_ok) / len(heldout):.2f}, cascade APGR {score:.3f}"
    )
    assert sum(large_ok) > sum(small_ok)
    assert score > 0.58  # random routing scores 0.5

    # One threshold live: the router's own escalations and accuracy match the offline curve.
    threshold = sorted(uncertainty)[len(uncertainty) // 2]
    app.route(escalation={"threshold": threshold})
    live = [complete(app, h["prompt"]).json() for h in heldout]
    escalated = [r["tierserve"]["escalated"] for r in live]
    expected = [u > threshold for u in uncertainty]
    assert sum(a == b for a, b in zip(escalated, expected, strict=True)) >= len(heldout) - 2
    live_ok = sum(
        r["choices"][0]["text"].strip() == h["answer"] for r, h in zip(live, heldout, strict=True)
    )
    assert live_ok > sum(small_ok)
    print(
        f"live threshold {threshold:.3f}: escalated {sum(escalated) / len(heldout):.2f}, "
        f"accuracy {live_ok / len(heldout):.2f}"
    )


# Prompts of growing length and difficulty markers, so the upfront scorer spreads them out.
VARIED = [
    "12+34=",
    "Add: 57+38=",
    "Please add these two numbers carefully. 91+19=",
    "First think step by step, then explain why the carry matters, then answer. 23+77=",
    "Write a python function def add(a, b): return a + b; prove it correct step by step for "
    "every integer, explain each step, check the edge cases, and then compute 45+45=",
]


def upfront_scores(app: TieredApp) -> dict[str, float]:
    """Each VARIED prompt's upfront score, as the router reports it (threshold 1: all small)."""
    eventually(
        lambda: complete(app, "1+1=", f"{app.model}:small").json()["tierserve"]["tier"] == "small",
        "the small tier to answer",
        timeout=120,
    )
    app.route(
        mode="upfront", upfront={"scorer": {"type": "heuristic"}}, escalation={"threshold": 1.0}
    )
    scores = {}
    for prompt in VARIED:
        info = complete(app, prompt).json()["tierserve"]
        assert (info["tier"], info["reason"]) == ("small", "upfront-score"), info
        assert info["escalated"] is False
        scores[prompt] = info["upfrontScore"]
    assert len(set(scores.values())) >= 3, scores  # spread enough to split both ways
    return scores


def test_upfront_mode_routes_by_the_prompt_score(app: TieredApp) -> None:
    scores = upfront_scores(app)
    ordered = sorted(set(scores.values()))
    threshold = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    app.route(escalation={"threshold": threshold})
    for prompt, score in scores.items():
        want = "large" if score > threshold else "small"
        r = complete(app, prompt)
        info = r.json()["tierserve"]
        assert (info["tier"], info["escalated"]) == (want, want == "large"), (score, info)
        assert info["reason"] == "upfront-score" and info["confidence"] is None
        assert float(r.headers["x-tierserve-upfront-score"]) == pytest.approx(score, abs=1e-4)
        headers, text = stream(app, prompt)
        assert headers["x-tierserve-tier"] == want
        assert text == r.json()["choices"][0]["text"]
        assert headers["x-tierserve-escalated"] == str(want == "large").lower()


def test_hybrid_decides_clear_cases_upfront_and_cascades_the_rest(app: TieredApp) -> None:
    scores = upfront_scores(app)
    ordered = sorted(set(scores.values()))
    mid = len(ordered) // 2
    threshold = ordered[mid]  # that prompt sits in the band; its neighbours sit outside it
    margin = min(ordered[mid] - ordered[mid - 1], ordered[mid + 1] - ordered[mid]) / 2
    app.route(
        mode="hybrid",
        upfront={"scorer": {"type": "heuristic"}, "hybridMargin": margin},
        escalation={"threshold": threshold},
    )
    seen = set()
    for prompt, score in scores.items():
        answer = complete(app, prompt).json()
        info = answer["tierserve"]
        if score >= threshold + margin:
            assert (info["tier"], info["reason"]) == ("large", "upfront-score"), info
            seen.add("hard")
        elif score <= threshold - margin:
            assert (info["tier"], info["reason"]) == ("small", "upfront-score"), info
            seen.add("easy")
        else:  # cascaded: the small tier answered first and its confidence decided
            assert info["reason"] in ("cascade", "low-confidence") and info["confidence"], info
            assert info["escalated"] == (1.0 - info["confidence"] > threshold), info
            headers, text = stream(app, prompt)  # the same decision, the same words
            assert headers["x-tierserve-tier"] == info["tier"]
            assert text == answer["choices"][0]["text"]
            seen.add("band")
    assert seen == {"hard", "easy", "band"}, seen


def test_shadow_evaluation_exports_agreement_with_the_top_tier(
    app: TieredApp, ray_head: RayHead
) -> None:
    prompts = [h["prompt"] for h in SHADOW_SUMS]
    small = [complete(app, p, f"{app.model}:small").json()["choices"][0]["text"] for p in prompts]
    large = [complete(app, p, f"{app.model}:large").json()["choices"][0]["text"] for p in prompts]
    expected = sum(a.strip() == b.strip() for a, b in zip(small, large, strict=True))
    before = shadow_counts(ray_head, app.model)
    app.route(mode="cascade", escalation={"threshold": 1.0}, shadow={"sampleRate": 1.0})
    try:
        for prompt in prompts:  # all answered by small; every one shadowed to large
            assert complete(app, prompt).json()["tierserve"]["tier"] == "small"

        def counted() -> dict[str, float] | None:
            now = shadow_counts(ray_head, app.model)
            delta = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in ("true", "false")}
            return delta if sum(delta.values()) >= len(prompts) else None

        delta = eventually(counted, "shadow evaluations in Ray's metrics", timeout=90)
    finally:
        app.route(shadow={"sampleRate": 0.0})
    assert delta == {"true": expected, "false": len(prompts) - expected}
    assert 0 < expected < len(prompts)  # the small model is right on some sums, not all


SHADOW_SUMS = [{"prompt": f"{a}+{b}="} for a, b in [(12, 34), (57, 38), (91, 19), (66, 29)]] + [
    {"prompt": f"{a}+{b}="} for a, b in [(45, 45), (23, 77), (38, 47), (19, 84)]
]


def shadow_counts(head: RayHead, model_tier: str) -> dict[str, float]:
    """`agreed` -> count of ray_tierserve_shadow_evaluations_total, from Ray's exporter."""
    text = httpx.get(head.metrics_url, timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "ray_tierserve_shadow_evaluations_total":
                continue
            if sample.labels.get("modeltier") != model_tier:
                continue
            agreed = sample.labels["agreed"]
            counts[agreed] = counts.get(agreed, 0.0) + sample.value
    return counts


def test_malformed_requests_are_refused_before_any_stream_starts(app: TieredApp) -> None:
    """On the live stack: a 4xx JSON error naming the parameter, never a 200 stream."""
    cases = [
        ({"prompt": "1+1=", "stream": True, "n": 2}, "completions", "n"),
        ({"prompt": "1+1=", "stream": True, "max_tokens": -1}, "completions", "max_tokens"),
        ({"messages": "1+1=", "stream": True}, "chat/completions", "messages"),
        ({"messages": [], "stream": True}, "chat/completions", "messages"),
        ({"prompt": "1+1=", "stream": True, "model": 7}, "completions", "model"),
    ]
    for body, path, param in cases:
        r = httpx.post(f"{app.base_url}/{path}", json={"model": app.model, **body}, timeout=30)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), r.headers
        error = r.json()["error"]
        assert error["param"] == param and param in error["message"], (body, error)


CHECK_PROMPT = "Check:"  # the tiny models know only sums: P("1") is a real, varying number
DEFAULT_CASCADE = {"confidence": "minTokenProb", "score": "uncertainty", "earlyDecisionTokens": 2}


def test_rank_score_and_self_check_on_held_out_sums(
    app: TieredApp, tiny_models: TinyModels, tmp_path: Path
) -> None:
    """Rank score: threshold 0.6 escalates about 40% of live traffic once the window fills.
    selfCheck: the router's confidence is P(yes) of one more call to the small tier (checked
    against the same call made directly), and the escalations follow it. APGR of the three
    confidences is printed side by side."""
    heldout = read_heldout(tiny_models.heldout)[:100]
    prompts = [h["prompt"] for h in heldout]
    try:
        # Rank: a window of 40 (unseeded: 1 - confidence for the first 4 answers).
        app.route(
            mode="cascade",
            escalation={"threshold": 0.6},
            cascade={**DEFAULT_CASCADE, "score": "rank", "rank": {"window": 40}},
        )
        ranked = [complete(app, p).json()["tierserve"]["escalated"] for p in prompts]
        share = sum(ranked[20:]) / len(ranked[20:])
        print(f"\nrank score, threshold 0.6: escalated {share:.2f} of requests 20-99")
        assert 0.25 <= share <= 0.55, share

        # Confidence of each metric at threshold 1.0 (the small tier keeps every answer).
        answers: dict[str, list[dict[str, Any]]] = {}
        for metric in ("minTokenProb", "meanLogprob", "selfCheck"):
            cascade = {
                **DEFAULT_CASCADE,
                "confidence": metric,
                "selfCheck": {"prompt": CHECK_PROMPT, "yesTokens": ["1"]},
            }
            app.route(escalation={"threshold": 1.0}, cascade=cascade)
            answers[metric] = [complete(app, p).json() for p in prompts]
        large = [complete(app, p, f"{app.model}:large").json() for p in prompts]
        small_ok = [
            r["choices"][0]["text"].strip() == h["answer"]
            for r, h in zip(answers["minTokenProb"], heldout, strict=True)
        ]
        large_ok = [
            r["choices"][0]["text"].strip() == h["answer"]
            for r, h in zip(large, heldout, strict=True)
        ]
        conf = {m: [float(r["tierserve"]["confidence"]) for r in rs] for m, rs in answers.items()}
        scores = {m: apgr([1 - c for c in cs], small_ok, large_ok) for m, cs in conf.items()}
        print("APGR on held-out sums: " + ", ".join(f"{m} {v:.3f}" for m, v in scores.items()))

        # `tierserve calibrate cascade --from-router` replays the same prompts, pinned to each
        # tier, and reports the same APGR for the metrics the router computed.
        labelled = tmp_path / "heldout.jsonl"
        labelled.write_text("".join(json.dumps(h) + "\n" for h in heldout))
        cli = [sys.executable, "-m", "tierserve", "calibrate", "cascade", "--json"]
        cli += ["--from-router", app.base_url, "--labelled", str(labelled), "--max-tokens", "4"]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        offline = {m["metric"]: m["apgr"] for m in json.loads(done.stdout)["metrics"]}
        for metric in ("minTokenProb", "meanLogprob"):
            assert offline[metric] == pytest.approx(scores[metric], abs=0.01), (offline, scores)

        # selfCheck's confidence is P("1") after "<prompt><answer>\nCheck:\n", as asked directly.
        for prompt, reply, c in list(
            zip(prompts, answers["selfCheck"], conf["selfCheck"], strict=True)
        )[:10]:
            text = reply["choices"][0]["text"]
            direct = complete(
                app,
                f"{prompt}{text}\n{CHECK_PROMPT}\n",
                f"{app.model}:small",
                max_tokens=1,
                logprobs=20,
            ).json()
            assert c == pytest.approx(p_yes(direct, False, ["1"]), abs=2e-3), (prompt, text)
        assert len({round(c, 3) for c in conf["selfCheck"]}) > 5  # it varies across prompts

        # The escalations follow P(yes): a threshold at its median splits the traffic there.
        uncertain = sorted(1 - c for c in conf["selfCheck"])
        threshold = uncertain[len(uncertain) // 2]
        app.route(escalation={"threshold": threshold})
        live = [complete(app, p).json()["tierserve"] for p in prompts]
        for info, c in zip(live, conf["selfCheck"], strict=True):
            if abs((1 - c) - threshold) > 2e-3:  # clear of the bar
                assert info["escalated"] == (1 - c > threshold), (info, c, threshold)
    finally:
        app.route(escalation={"threshold": 0.5}, cascade=DEFAULT_CASCADE)


def cost_totals(head: RayHead, model_tier: str) -> dict[str, float]:
    """`kind` -> ray_tierserve_cost_total summed over tiers and modes, from Ray's exporter."""
    text = httpx.get(head.metrics_url, timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "ray_tierserve_cost_total"
                and sample.labels.get("modeltier") == model_tier
            ):
                kind = sample.labels["kind"]
                totals[kind] = totals.get(kind, 0.0) + sample.value
    return totals


def test_per_request_costs_add_up_to_the_cost_metrics(app: TieredApp, ray_head: RayHead) -> None:
    """Each answer's cost (header, body, a stream's last event) is the ledger's; their sum is
    what Prometheus gets."""
    app.route(mode="cascade", escalation={"threshold": 0.5})

    def settled() -> dict[str, float] | None:
        """Totals that no earlier request still adds to (Ray exports every few seconds)."""
        first = cost_totals(ray_head, app.model)
        time.sleep(12)
        return first if cost_totals(ray_head, app.model) == first else None

    before = eventually(settled, "the cost totals to settle", timeout=120, interval=0.1)
    billed = 0.0
    for prompt in PROMPTS * 2:
        r = complete(app, prompt)
        bill = r.json()["tierserve"]["cost"]
        assert float(r.headers["x-tierserve-cost"]) == pytest.approx(bill["total"], rel=1e-5)
        assert bill["total"] == pytest.approx(sum(t["cost"] for t in bill["tiers"]))
        assert bill["savings"] == pytest.approx(bill["topTierAlone"] - bill["total"])
        billed += bill["total"]
    body = {
        "model": app.model,
        "prompt": "12+34=",
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    last: dict[str, Any] = {}
    with httpx.stream("POST", f"{app.base_url}/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                last = json.loads(line[6:])
    billed += last["tierserve"]["cost"]["total"]

    seen: dict[str, Any] = {}

    def added() -> float | None:
        now = cost_totals(ray_head, app.model)
        spent = sum(v - before.get(k, 0.0) for k, v in now.items() if k not in ("shadow", "judge"))
        seen.update(now=now, spent=spent)
        return spent if spent == pytest.approx(billed, rel=1e-6) else None

    try:
        eventually(added, f"ray_tierserve_cost_total to add up to {billed:.6g}", timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; before {before}, last seen {seen}") from None


def test_killing_the_small_tier_during_traffic_loses_no_request(app: TieredApp) -> None:
    # A dead replica's requests wait for Serve to start a new one (~30 s here): the per-tier
    # timeout is what turns that wait into a fallback to the next tier.
    app.route(mode="cascade", escalation={"threshold": 1.0}, requestTimeoutSeconds=4)
    assert complete(app, "12+34=").json()["tierserve"]["tier"] == "small"
    results = traffic_while_killing(app, "small", seconds=45)
    codes = [r.status_code for r in results]
    assert all(
        c == 200 or (c == 503 and r.json()["error"]) for c, r in zip(codes, results, strict=True)
    )
    answered = [r.json()["tierserve"] for r in results if r.status_code == 200]
    assert len(answered) == len(results), f"{len(results) - len(answered)} got 503"
    fell_back = [a for a in answered if a["reason"].startswith("fallback")]
    assert fell_back and all(a["tier"] == "large" for a in fell_back)


def test_killing_the_top_tier_during_escalations_answers_with_the_lower_tier(
    app: TieredApp,
) -> None:
    """Every request escalates (threshold 0); the large tier's replica is killed. There is no
    tier above it, so each request that meets the dead tier (timed out, then its breaker open)
    gets the small answer it already holds, marked fallback:large, instead of a 503. Runs last:
    Serve is still restarting the large tier when the module's app is removed."""
    app.route(mode="cascade", escalation={"threshold": 0.0}, requestTimeoutSeconds=4)

    def small_answers() -> bool:
        """The test before killed small: Serve restarts it (~30 s) and the router's breaker
        probes it again after 30 s. Until both, there is no lower answer to keep."""
        answer = complete(app, "12+34=").json()["tierserve"]
        return (answer["tier"], answer["reason"]) == ("large", "low-confidence")

    eventually(small_answers, "small answering and escalating again", timeout=180,
               interval=2, retry=(httpx.HTTPError, KeyError, ValueError))  # fmt: skip
    results = traffic_while_killing(app, "large", seconds=30)
    lost = [(r.status_code, r.text[:200]) for r in results if r.status_code != 200]
    assert not lost, f"{len(lost)}/{len(results)} not answered: {lost[:3]}"
    answered = [r.json()["tierserve"] for r in results]
    kept = [a for a in answered if a["reason"] == "fallback:large"]
    assert kept and all((a["tier"], a["escalated"]) == ("small", False) for a in kept), kept[:3]


def traffic_while_killing(app: TieredApp, tier: str, seconds: float) -> list[httpx.Response]:
    """3 clients ask "12+34=" for `seconds` (at most 300 requests); 2 s in, `tier`'s replica
    process is SIGKILLed. Every response, in order of arrival."""
    results: list[httpx.Response] = []
    stop = time.monotonic() + seconds

    def traffic() -> None:
        while time.monotonic() < stop and len(results) < 300:
            results.append(complete(app, "12+34="))

    with futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(traffic) for _ in range(3)]
        time.sleep(2)
        killed = kill_replica(f"ServeReplica:{app.name}:tier-{tier}")
        for f in running:
            f.result()
    assert killed, f"no {tier}-tier replica process found to kill"
    return results


def kill_replica(title: str) -> list[int]:
    """SIGKILLs the Ray worker whose process title names the replica (a real crash)."""
    out = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids
