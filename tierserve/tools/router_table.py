"""A calibration table from a live ModelTier: labelled prompts replayed through its router.

`tierserve calibrate cascade --from-router URL --labelled FILE` builds the table that
`calibrate_cascade` evaluates from the deployment users actually get: each prompt is sent,
pinned (`<modeltier>:<tier>`), to the lower tier with logprobs and to the top tier, and both
answers are scored against the known answer. With a self-check prompt, the lower tier is also
asked about its own answer the way the router's `selfCheck` asks it (same request shape), so
the table can compare that metric too. Greedy decoding, so the table is reproducible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tierserve.serving.routing import p_yes
from tierserve.tools.labelled import DataError

SELF_CHECK_TOP_LOGPROBS = 20  # as the router asks (tierserve.serving.tiers)


def read_labelled(path: Path) -> list[dict[str, str]]:
    """JSON Lines of {"prompt": ..., "answer": ...}; clear errors naming the line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected an object with prompt and answer")
        for key in ("prompt", "answer"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{path}:{n}: column {key!r} must be a string")
        rows.append({"prompt": row["prompt"], "answer": row["answer"]})
    if not rows:
        raise DataError(f"{path}: no labelled prompts")
    return rows


def ladder(client: httpx.Client, base_url: str) -> tuple[str, list[str]]:
    """The ModelTier's name and its tiers, cheapest first, from the router's /v1/models."""
    r = client.get(f"{base_url}/models")
    r.raise_for_status()
    ids = [m["id"] for m in r.json().get("data", [])]
    pinned = [i for i in ids if ":" in i]
    if not pinned:
        raise DataError(f"{base_url}/models lists no <modeltier>:<tier> models: {ids}")
    model = pinned[0].split(":", 1)[0]
    return model, [i.split(":", 1)[1] for i in pinned]


def _complete(client: httpx.Client, base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"{base_url}/completions", json=body)
    if r.status_code != 200:
        raise DataError(f"{base_url}/completions answered {r.status_code}: {r.text[:300]}")
    out: dict[str, Any] = r.json()
    return out


def replay(
    base_url: str,
    labelled: Sequence[dict[str, str]],
    *,
    lower: str | None = None,
    top: str | None = None,
    max_tokens: int = 8,
    self_check_prompt: str | None = None,
    yes_tokens: Sequence[str] = ("yes",),
    timeout: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[dict[str, Any]]:
    """One table row per labelled prompt (columns as `calibrate_cascade` reads them)."""
    base_url = base_url.rstrip("/")
    rows = []
    with httpx.Client(timeout=timeout, transport=transport) as client:
        model, tiers = ladder(client, base_url)
        lower, top = lower or tiers[0], top or tiers[-1]
        for name in (lower, top):
            if name not in tiers:
                raise DataError(f"tier {name!r} is not in ModelTier {model}: {tiers}")
        greedy = {"max_tokens": max_tokens, "temperature": 0}
        for n, item in enumerate(labelled, 1):
            prompt, answer = item["prompt"], item["answer"].strip()
            weak = _complete(
                client,
                base_url,
                {"model": f"{model}:{lower}", "prompt": prompt, "logprobs": 1, **greedy},
            )
            strong = _complete(
                client, base_url, {"model": f"{model}:{top}", "prompt": prompt, **greedy}
            )
            choice = weak["choices"][0]
            text = str(choice.get("text") or "")
            top_text = str(strong["choices"][0].get("text") or "")
            row: dict[str, Any] = {
                "prompt": prompt,
                "token_logprobs": list((choice.get("logprobs") or {}).get("token_logprobs") or []),
                "weak_correct": int(text.strip() == answer),
                "strong_correct": int(top_text.strip() == answer),
            }
            if self_check_prompt is not None:
                check = _complete(
                    client,
                    base_url,
                    {
                        "model": f"{model}:{lower}",
                        "prompt": f"{prompt}{text}\n{self_check_prompt}\n",
                        "max_tokens": 1,
                        "temperature": 0,
                        "logprobs": SELF_CHECK_TOP_LOGPROBS,
                    },
                )
                probability = p_yes(check, False, yes_tokens)
                row["self_check_yes_logprob"] = math.log(probability) if probability > 0 else -1e9
            rows.append(row)
            if progress is not None:
                progress(n, len(labelled))
    return rows
