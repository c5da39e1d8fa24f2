"""The router on the live stack: two generated tiny models through vLLM on CPU behind Ray Serve,
deployed from a rendered ModelTier exactly as the operator's external backend deploys it.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tierserve.quality import apgr
from tierserve.testing.ray_local import RayHead
from tierserve.testing.tiered import TieredApp, serve_on_loopback, tiny_modeltier
from tierserve.testing.tinymodels import TinyModels, read_heldout

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


def complete(app: TieredApp, prompt: str, model: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": model or app.model, "prompt": prompt, "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{app.base_url}/completions", json={**body, **extra}, timeout=120)


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


def test_killing_the_small_tier_during_traffic_loses_no_request(app: TieredApp) -> None:
    # A dead replica's requests wait for Serve to start a new one (~30 s here): the per-tier
    # timeout is what turns that wait into a fallback to the next tier.
    app.route(mode="cascade", escalation={"threshold": 1.0}, requestTimeoutSeconds=4)
    assert complete(app, "12+34=").json()["tierserve"]["tier"] == "small"
    results: list[httpx.Response] = []
    stop = time.monotonic() + 45

    def traffic() -> None:
        while time.monotonic() < stop and len(results) < 300:
            results.append(complete(app, "12+34="))

    with futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(traffic) for _ in range(3)]
        time.sleep(2)
        killed = kill_replica(f"ServeReplica:{app.name}:tier-small")
        for f in running:
            f.result()
    assert killed, "no small-tier replica process found to kill"
    codes = [r.status_code for r in results]
    assert all(
        c == 200 or (c == 503 and r.json()["error"]) for c, r in zip(codes, results, strict=True)
    )
    answered = [r.json()["tierserve"] for r in results if r.status_code == 200]
    assert len(answered) == len(results), f"{len(results) - len(answered)} got 503"
    fell_back = [a for a in answered if a["reason"].startswith("fallback")]
    assert fell_back and all(a["tier"] == "large" for a in fell_back)


def kill_replica(title: str) -> list[int]:
    """SIGKILLs the Ray worker whose process title names the replica (a real crash)."""
    out = subprocess.run(["pgrep", "-f", title], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids
