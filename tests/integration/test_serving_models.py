"""The tiny models through Ray Serve LLM + vLLM on CPU, on a real local Ray head.

Both models are served behind one OpenAI-compatible endpoint (`served_models`); the large one is
measurably better than the small one on sums neither was trained on.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tierserve.controller.serve_client import ServeClient
from tierserve.dev.local_models import APP_NAME
from tierserve.dev.ray_local import RayHead
from tierserve.dev.tinymodels import TinyModels, read_heldout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

N_HELDOUT = 100


def _post(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{base_url}{path}", json=body, timeout=120.0)
    assert r.status_code == 200, f"{path} returned {r.status_code}: {r.text[:500]}"
    return dict(r.json())


def test_models_listed(served_models: str) -> None:
    r = httpx.get(f"{served_models}/models", timeout=30.0)
    assert r.status_code == 200
    assert {"small", "large"} <= {m["id"] for m in r.json()["data"]}


def test_completion_returns_per_token_logprobs(served_models: str) -> None:
    body = {"model": "small", "prompt": "37+48=", "max_tokens": 4, "temperature": 0, "logprobs": 1}
    latencies = []
    for _ in range(10):
        t0 = time.monotonic()
        out = _post(served_models, "/completions", body)
        latencies.append(time.monotonic() - t0)
    latencies.sort()
    print(
        f"completion with logprobs, 10 sequential: median {latencies[5] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert lp is not None, out
    tokens, token_logprobs = lp["tokens"], lp["token_logprobs"]
    assert tokens and len(tokens) == len(token_logprobs)
    assert all(isinstance(x, float) and x <= 0.0 for x in token_logprobs)
    # Digits are single tokens: each generated token is one character of the answer.
    assert "".join(tokens).startswith(choice["text"].strip()[:1])
    assert len(lp["top_logprobs"]) == len(tokens)
    assert out["usage"]["completion_tokens"] == len(tokens)


def test_chat_completion_answers_like_completion(served_models: str) -> None:
    prompt = "37+48="
    chat = _post(
        served_models,
        "/chat/completions",
        {
            "model": "large",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 4,
            "temperature": 0,
        },
    )
    content = chat["choices"][0]["message"]["content"]
    completion = _post(
        served_models,
        "/completions",
        {"model": "large", "prompt": prompt, "max_tokens": 4, "temperature": 0},
    )
    print(f"chat: {prompt}{content!r}  completion: {prompt}{completion['choices'][0]['text']!r}")
    # The chat template renders the user message to exactly the completion prompt.
    assert content.strip() == completion["choices"][0]["text"].strip()
    assert content.strip().isdigit()


def _accuracy(base_url: str, model: str, examples: list[dict[str, str]]) -> float:
    """Greedy exact-match accuracy; one batched /v1/completions request."""
    out = _post(
        base_url,
        "/completions",
        {
            "model": model,
            "prompt": [e["prompt"] for e in examples],
            "max_tokens": 4,
            "temperature": 0,
        },
    )
    texts = {c["index"]: c["text"] for c in out["choices"]}
    assert len(texts) == len(examples)
    return sum(texts[i].strip() == e["answer"] for i, e in enumerate(examples)) / len(examples)


def test_large_is_clearly_better_on_heldout_sums(
    served_models: str, tiny_models: TinyModels
) -> None:
    # Every 5th held-out sum: spread over all operands (the file is sorted by the first one).
    examples = read_heldout(tiny_models.heldout)[::5][:N_HELDOUT]
    t0 = time.monotonic()
    small = _accuracy(served_models, "small", examples)
    large = _accuracy(served_models, "large", examples)
    print(
        f"held-out accuracy over {len(examples)} sums via vLLM: small {small:.0%}, "
        f"large {large:.0%} ({time.monotonic() - t0:.1f}s); transformers measured "
        f"small {tiny_models.meta['models']['small']['heldout_accuracy']:.0%}, "
        f"large {tiny_models.meta['models']['large']['heldout_accuracy']:.0%} on all "
        f"{tiny_models.meta['heldout_pairs']}"
    )
    assert large >= 0.8
    assert large >= small + 0.3


def test_dashboard_serve_api_lists_the_application(served_models: str, ray_head: RayHead) -> None:
    apps = ServeClient(ray_head.dashboard_url, timeout=30.0).details().applications
    assert APP_NAME in apps, apps.keys()
    app = apps[APP_NAME]
    assert app.status == "RUNNING"
    assert app.route_prefix == "/"
    deployments = app.deployments
    print(f"{APP_NAME}: " + ", ".join(f"{n} {d.status}" for n, d in deployments.items()))
    assert all(d.status == "HEALTHY" for d in deployments.values())
    assert len(deployments) >= 3  # the OpenAI ingress and one LLM server per model
