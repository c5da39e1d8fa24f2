"""Threshold autoscaling end to end, every part real: the router and vLLM on a local Ray head
export their metrics through Ray's exporter, Prometheus scrapes it, and the operator (its own
process, on the real control plane) reads Prometheus's HTTP API and moves the router's threshold.

The top tier runs one sequence at a time (vLLM `max_num_seqs: 1`), so a burst of requests to it
builds a real vLLM queue (`vllm:num_requests_waiting`) past `topTierQueueTarget`.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.operator import (
    condition,
    mt_status,
    remove_modeltier,
    start_operator,
    wait_ready,
)
from tests.waiting import eventually
from tierserve.dev.controlplane import ControlPlaneInfo
from tierserve.dev.proc import free_port
from tierserve.dev.prometheus import start_prometheus
from tierserve.dev.ray_local import RayHead
from tierserve.dev.tiered import serve_on_loopback, tiny_modeltier
from tierserve.dev.tinymodels import TinyModels

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]
SPEC_THRESHOLD = 0.5


def test_observe_then_apply_under_queue_pressure_and_prometheus_loss_holds_it(
    control_plane: ControlPlaneInfo,
    kubectl: Run,
    namespace: str,
    modeltier_crd: None,
    ray_head: RayHead,
    tiny_models: TinyModels,
) -> None:
    serve_on_loopback(ray_head.dashboard_url, ray_head.serve_http_port)
    scrape = {"ray": [f"127.0.0.1:{ray_head.metrics_export_port}"]}
    prom_port, prom_dir = free_port(), Path(tempfile.mkdtemp(prefix="tierserve-prom-live-"))
    prom = start_prometheus(scrape, port=prom_port, workdir=prom_dir)
    operator = start_operator(control_plane, namespace, resync=5.0)
    name = "live"
    base = f"{ray_head.serve_url}/{name}/v1"
    try:
        doc = tiny_modeltier(
            name,
            {"small": str(tiny_models.small), "large": str(tiny_models.large)},
            dashboard_url=ray_head.dashboard_url,
            routing={
                "mode": "cascade",
                "escalation": {
                    "threshold": SPEC_THRESHOLD,
                    "bounds": {"min": 0.2, "max": 0.95},
                    "autoscale": {
                        "mode": "observe",  # first: report the decisions, move nothing
                        "prometheusURL": prom.url,
                        "interval": "5s",
                        "maxEscalationRate": 1.0,  # no budget: only the queue can push back
                        "topTierQueueTarget": 1,
                        "maxStep": 0.1,
                    },
                },
            },
        )
        del doc["metadata"]["namespace"]
        doc["spec"]["tiers"][1]["engineArgs"]["max_num_seqs"] = 1
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

        wait_ready(kubectl, name, namespace)

        # Drive the top tier past its queue target: six clients pinned to it, each request
        # generating 200 tokens (~0.5 s here), so about five wait in vLLM's queue at any time.
        stop_at = time.monotonic() + 240
        codes: list[int] = []

        def burst() -> None:
            body = {
                "model": f"{name}:large",
                "prompt": "12+34=",
                "max_tokens": 200,
                "min_tokens": 200,
                "temperature": 0,
            }
            while time.monotonic() < stop_at:
                codes.append(httpx.post(f"{base}/completions", json=body, timeout=120).status_code)

        last: dict[str, Any] = {}

        def router_threshold() -> float:
            url = f"{ray_head.serve_url}/{name}/tierserve/config"
            return float(httpx.get(url, timeout=10).json()["threshold"])

        def observed() -> dict[str, Any] | None:
            last.update(mt_status(kubectl, name, namespace).get("escalation") or {})
            proposed = float(last.get("proposedThreshold") or 0)
            return dict(last) if proposed > SPEC_THRESHOLD else None

        def raised() -> dict[str, Any] | None:
            last.update(mt_status(kubectl, name, namespace).get("escalation") or {})
            return dict(last) if float(last.get("threshold") or 0) > SPEC_THRESHOLD else None

        with futures.ThreadPoolExecutor(6) as pool:
            running = [pool.submit(burst) for _ in range(6)]
            try:
                try:
                    seen = eventually(observed, "observe mode to propose a rise", timeout=120)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; last status.escalation: {last}") from None
                # Observe mode: the decision is in status, the router keeps the spec's value.
                print(f"\nobserve mode under queue pressure: {seen}")
                assert seen["mode"] == "observe" and seen["threshold"] == SPEC_THRESHOLD, seen
                assert seen["reason"].startswith("observe mode: top-tier queue"), seen
                assert seen["history"] and not seen["history"][-1]["applied"], seen
                assert seen["history"][-1]["from"] == SPEC_THRESHOLD, seen
                assert router_threshold() == SPEC_THRESHOLD
                patch = {"spec": {"routing": {"escalation": {"autoscale": {"mode": "apply"}}}}}
                kubectl(
                    "patch", "mt", name, "-n", namespace, "--type", "merge", "-p", json.dumps(patch)
                )
                try:
                    esc = eventually(raised, "the threshold to rise under load", timeout=120)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; last status.escalation: {last}") from None
            finally:
                stop_at = time.monotonic()
                for f in running:
                    f.result()
        assert codes and set(codes) == {200}, set(codes)
        print(f"\nunder queue pressure: {esc}")
        # The queue, or the top tier's capacity the policy learned from it while observing.
        backing_off = ("top-tier queue", "top tier completes")
        assert any(why in esc["reason"] for why in backing_off), esc
        assert esc["signals"]["topTierQueue"] > 1, esc
        events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
        reasons = ("TopTierQueue", "TopTierCapacity")
        moves = [e for e in events["items"] if e.get("reason") in reasons]
        messages = [e["message"] for e in moves]  # one Event per move, in no set order
        assert any(m.startswith("threshold 0.5 -> ") for m in messages), messages
        assert any(m.startswith("observe mode, not applied: would move") for m in messages)
        assert all(any(why in m for why in backing_off) for m in messages), messages
        assert esc["history"][-1]["applied"] and esc["mode"] == "apply", esc
        # The router itself decides with the new threshold (pushed through user_config).
        assert router_threshold() > SPEC_THRESHOLD

        # Prometheus gone: the threshold holds where it is and MetricsAvailable=False says why.
        prom.stop()

        def unavailable() -> dict[str, Any] | None:
            cond = condition(mt_status(kubectl, name, namespace), "MetricsAvailable")
            return cond if cond.get("status") == "False" else None

        cond = eventually(unavailable, "MetricsAvailable=False", timeout=60)
        assert prom.url in cond["message"] or "Prometheus" in cond["message"], cond
        held = float(mt_status(kubectl, name, namespace)["escalation"]["threshold"])
        time.sleep(12)  # two more intervals without signals
        assert float(mt_status(kubectl, name, namespace)["escalation"]["threshold"]) == held
        assert held > SPEC_THRESHOLD
        assert operator.alive()

        # Prometheus back (same port, same data): signals return and the condition recovers.
        prom = start_prometheus(scrape, port=prom_port, workdir=prom_dir)

        def recovered() -> dict[str, Any] | None:
            cond = condition(mt_status(kubectl, name, namespace), "MetricsAvailable")
            return cond if cond.get("status") == "True" else None

        eventually(recovered, "MetricsAvailable=True after Prometheus returns", timeout=90)
        spec = json.loads(kubectl("get", "mt", name, "-n", namespace, "-o", "json").stdout)
        assert spec["spec"]["routing"]["escalation"]["threshold"] == SPEC_THRESHOLD
    finally:  # the ModelTier first, while the operator can still remove its finalizer
        remove_modeltier(kubectl, name, namespace)
        operator.stop()
        prom.stop()
