"""A three-rung ladder on the live stack, and load shedding when a tier is full.

small -> mid -> large, where `mid` serves the small model again (a distilled middle rung): its
confidence on a prompt equals small's, so a request that leaves small also leaves mid, and the
climb is visible rung by rung in Ray's metrics. The top tier accepts one request at a time with
one queued (`replicas.maxOngoingRequests` / `maxQueuedRequests`): beyond that the router answers
429 with Retry-After instead of queueing without bound.
"""

from __future__ import annotations

import concurrent.futures as futures
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import eventually
from tierserve.dev.ray_local import RayHead
from tierserve.dev.tiered import TieredApp, complete, serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import TinyModels

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ladder(ray_head: RayHead, tiny_models: TinyModels) -> Iterator[TieredApp]:
    serve_on_loopback(ray_head.dashboard_url, ray_head.serve_http_port)
    doc = tiny_modeltier(
        "ladder",
        {
            "small": str(tiny_models.small),
            "mid": str(tiny_models.small),
            "large": str(tiny_models.large),
        },
        dashboard_url=ray_head.dashboard_url,
        routing={"mode": "cascade", "escalation": {"threshold": 1.0}},
    )
    doc["spec"]["tiers"][1]["model"]["id"] = "mid"
    doc["spec"]["tiers"][2]["replicas"] = {
        "targetOngoingRequests": 1,
        "maxOngoingRequests": 1,
        "maxQueuedRequests": 1,
    }
    tiered = TieredApp(doc, ray_head.serve_url)
    tiered.deploy(progress=print)
    try:
        yield tiered
    finally:
        tiered.remove()


def escalations(head: RayHead, model_tier: str) -> dict[tuple[str, str], float]:
    """(from_tier, to_tier) -> ray_tierserve_escalations_total, from Ray's exporter."""
    text = httpx.get(head.metrics_url, timeout=10).text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ray_tierserve_escalations_total" and s.labels["modeltier"] == model_tier:
                key = (s.labels["from_tier"], s.labels["to_tier"])
                out[key] = out.get(key, 0.0) + s.value
    return out


PROMPTS = ["12+34=", "57+38=", "91+19=", "23+77="]


def test_three_tiers_escalate_one_rung_at_a_time(ladder: TieredApp, ray_head: RayHead) -> None:
    ids = {m["id"] for m in httpx.get(f"{ladder.base_url}/models", timeout=30).json()["data"]}
    assert ids == {"ladder", "ladder:small", "ladder:mid", "ladder:large"}
    assert complete(ladder, "12+34=", "ladder:mid").json()["tierserve"]["tier"] == "mid"
    for prompt in PROMPTS:  # threshold 1: nobody escalates
        info = complete(ladder, prompt).json()["tierserve"]
        assert (info["tier"], info["escalated"]) == ("small", False), info

    before = escalations(ray_head, "ladder")
    ladder.route(escalation={"threshold": 0.0})
    for prompt in PROMPTS:
        info = complete(ladder, prompt).json()["tierserve"]
        assert (info["tier"], info["escalated"], info["reason"]) == (
            "large",
            True,
            "low-confidence",
        ), info

    def climbed() -> dict[tuple[str, str], float] | None:
        now = escalations(ray_head, "ladder")
        delta = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in now}
        moved = {k: v for k, v in delta.items() if v}
        return moved if sum(moved.values()) >= 2 * len(PROMPTS) else None

    moved = eventually(climbed, "escalations in Ray's metrics", timeout=90)
    assert moved == {("small", "mid"): len(PROMPTS), ("mid", "large"): len(PROMPTS)}


def test_a_full_tier_sheds_load_with_429_and_retry_after(ladder: TieredApp) -> None:
    """Sixteen at once on a tier that takes one plus one queued: the rest get 429, none is lost.
    (Long answers, so the burst overlaps even when a loaded machine staggers its arrivals.)"""
    body = {"max_tokens": 160, "min_tokens": 160}
    with futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda _: complete(ladder, "12+34=", "ladder:large", **body), range(16))
        )
    codes = sorted(r.status_code for r in results)
    assert set(codes) == {200, 429}, codes
    for r in results:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["type"] == "rate_limit_exceeded" and "capacity" in error["message"]
            assert int(r.headers["Retry-After"]) >= 1
        else:
            assert r.json()["tierserve"]["tier"] == "large"
    # Once the burst is over the tier answers again: shedding is not a breaker trip.
    assert complete(ladder, "12+34=", "ladder:large").status_code == 200
