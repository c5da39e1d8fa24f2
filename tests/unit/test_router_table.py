"""`tierserve calibrate cascade --from-router`: the table built by replaying labelled prompts
through a router, here a fake one speaking the router's OpenAI API (httpx MockTransport)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tierserve.tools import calibrate_cascade as cc
from tierserve.tools.labelled import DataError
from tierserve.tools.router_table import read_labelled, replay

pytestmark = pytest.mark.unit

# prompt -> (small's answer, its token logprob, large's answer, P(yes) of the self-check)
ROUTER = {
    "1+1=": ("2", -0.01, "2", 0.9),
    "2+2=": ("5", -1.5, "4", 0.2),
    "3+3=": ("6", -0.2, "6", 0.7),
    "4+4=": ("9", -0.9, "8", 0.4),
}


def fake_router(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            ids = ["sums", "sums:small", "sums:large"]
            return httpx.Response(200, json={"data": [{"id": i} for i in ids]})
        body = json.loads(request.content)
        seen.append(body)
        prompt, model = body["prompt"], body["model"]
        if "\nCheck?\n" in prompt:
            p = ROUTER[prompt[:4]][3]
            top = {"yes": math.log(p), "no": math.log(1 - p)}
            logprobs = {"tokens": ["yes"], "token_logprobs": [math.log(p)], "top_logprobs": [top]}
            return httpx.Response(200, json={"choices": [{"text": "yes", "logprobs": logprobs}]})
        small, lp, large, _ = ROUTER[prompt]
        if model == "sums:small":
            logprobs = {"tokens": [small], "token_logprobs": [lp], "top_logprobs": [None]}
            return httpx.Response(200, json={"choices": [{"text": small, "logprobs": logprobs}]})
        return httpx.Response(200, json={"choices": [{"text": large}]})

    return httpx.MockTransport(handle)


def labelled() -> list[dict[str, str]]:
    return [{"prompt": p, "answer": str(2 * int(p[0]))} for p in ROUTER]


def test_replay_pins_each_tier_and_labels_both_answers() -> None:
    seen: list[dict[str, Any]] = []
    rows = replay("http://router/sums/v1", labelled(), transport=fake_router(seen))
    assert [(r["weak_correct"], r["strong_correct"]) for r in rows] == [
        (1, 1),
        (0, 1),
        (1, 1),
        (0, 1),
    ]
    assert rows[1]["token_logprobs"] == [-1.5]
    assert {b["model"] for b in seen} == {"sums:small", "sums:large"}
    assert all(b["temperature"] == 0 for b in seen)
    assert all(b.get("logprobs") == 1 for b in seen if b["model"] == "sums:small")


def test_the_self_check_is_asked_as_the_router_asks_it() -> None:
    seen: list[dict[str, Any]] = []
    rows = replay(
        "http://router/sums/v1",
        labelled(),
        self_check_prompt="Check?",
        transport=fake_router(seen),
    )
    checks = [b for b in seen if b["max_tokens"] == 1]
    assert checks[0]["prompt"] == "1+1=2\nCheck?\n" and checks[0]["logprobs"] == 20
    assert [round(math.exp(r["self_check_yes_logprob"]), 3) for r in rows] == [0.9, 0.2, 0.7, 0.4]
    table = cc.table_from_rows(
        ((cc.Where("t", n), r) for n, r in enumerate(rows, 1)), "t", list(rows[0])
    )
    report, _ = cc.evaluate_table(table, [0.5], None, "small")
    metrics = {m["metric"]: m for m in report["metrics"]}
    assert metrics["selfCheck"]["auroc"] == 1.0  # P(yes) separates right from wrong here
    assert metrics["minTokenProb"]["auroc"] == 1.0


def test_unknown_tiers_and_bad_labels_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tier 'medium' is not in ModelTier sums"):
        replay("http://router/sums/v1", labelled(), lower="medium", transport=fake_router([]))
    bad = tmp_path / "l.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": 2}\n')
    with pytest.raises(DataError, match=r"l.jsonl:1: column 'answer' must be a string"):
        read_labelled(bad)
