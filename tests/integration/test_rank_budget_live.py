"""The rank score reaches an escalation budget that the absolute threshold cannot, live (#12).

Every part is real: the router and vLLM on a local Ray head, Ray's metrics exporter, Prometheus,
and the operator (its own process, on the real control plane) moving the router's threshold.

The ties, by construction. The small model's own probabilities never reach 1.0 on the sums (its
greedy answers' minTokenProb is at most ~0.92 on the training sums); a hosted model reports
logprob 0.0 for most short answers because it reports what it sampled from. So here the small
tier reports *processed* logprobs (vLLM `logprobs_mode: processed_logprobs`, the distribution it
samples from) and the traffic samples at temperature 0.01 (a fixed seed per prompt, so every
prompt always gets the same answer): wherever the model's top token leads by a visible margin
the sharpened logprob rounds to exactly 0.0 in float32. The traffic cycles through 200 sums the
model was trained on, measured on this stack: 70.5% of its answers come back with confidence
exactly 1.0 and 27-30% of those certain answers are wrong ("certain and often wrong"); 16% are
below 0.999, 4% below 0.5. The measured distribution is printed.

Why more than 60% ties: with exactly 60% of confidences at 1.0, `1 - confidence > 0` escalates
exactly the other 40%, so the absolute bar would reach a 40% budget at threshold 0. With ~70%
ties it tops out at the untied ~30% (and below 20% at any threshold the autoscaler can tell from
0, since most untied confidences are above 0.999): the budget is out of its reach, which the
test computes from the confidences the router returned, the same traffic, not a second run.

The rank score (`routing.cascade.score: rank`, a 200-answer window) splits the ties by a stable
hash of the prompt, so threshold t escalates about 1 - t of the traffic; the autoscaler, in apply
mode with `maxEscalationRate: 0.4`, moves the spec's 0.8 (about 20% escalated) until Prometheus
shows the budget.

What is asserted, and why that tolerance. The share is measured over the first 400 requests sent
45 s (the operator's rate window and Ray's export delay) after the router took the threshold the
operator then held: two full cycles of the 200 prompts,
so the measurement adds no sampling noise of its own (each prompt counts twice, the window holds
the same 200 confidences), and it equals the rate the operator's Prometheus queries see. The
operator holds once the rate it measures is within its deadband: the larger of rateTolerance
(1 point) and two standard errors of the requests it pooled at that threshold, about 5 points at
400 requests. So the test asserts |share - 0.4| <= 0.05 and prints the figure; the issue's goal is
±2 points, which the printout shows or not.
"""

from __future__ import annotations

import concurrent.futures as futures
import itertools
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.operator import (
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
from tierserve.dev.tinymodels import TinyModels, prompt, split_pairs

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]

BUDGET = 0.4
TOLERANCE = 0.05  # the operator's deadband at ~400 pooled requests; see the module docstring
GOAL = 0.02  # the goal, printed
SPEC_THRESHOLD = 0.8  # rank score: about 20% escalated before the operator acts
POOL = 200  # prompts the traffic cycles through; also the rank window
MEASURED = 2 * POOL  # requests measured: two full cycles
TEMPERATURE = 0.01
MIN_TIED = 0.6  # the "60% of confidences exactly 1.0": at least that
CLIENTS = 4
TRAFFIC_BOUND_S = 420.0  # from the first request to the end of the measurement
INTERVAL_S = 30  # autoscale interval; equal to the operator's rate window (30 s at least)
# Counting starts this long after the router took a threshold: the operator's 30 s rate window
# plus Ray's ~10 s metrics export, so the threshold has held through one decision that saw only
# traffic at it (with a 10 s interval it overshot: three moves before the first showed).
SETTLE_S = 45.0


@dataclass(frozen=True)
class Answer:
    seq: int  # send order
    sent: float  # monotonic
    prompt: str
    code: int
    escalated: bool
    confidence: float | None  # the small tier's confidence, as the router reports it
    correct: bool


def traffic_pool() -> list[tuple[str, str]]:
    """(prompt, answer): 200 sums the tiny models were trained on, a fixed draw."""
    train, _ = split_pairs()
    return [(prompt(a, b), str(a + b)) for a, b in random.Random(12).sample(train, POOL)]


def test_rank_score_reaches_a_40_percent_budget_over_70_percent_ties(
    control_plane: ControlPlaneInfo,
    kubectl: Run,
    namespace: str,
    modeltier_crd: None,
    ray_head: RayHead,
    tiny_models: TinyModels,
) -> None:
    serve_on_loopback(ray_head.dashboard_url, ray_head.serve_http_port)
    scrape = {"ray": [f"127.0.0.1:{ray_head.metrics_export_port}"]}
    prom = start_prometheus(
        scrape, port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="tierserve-prom-rank-"))
    )
    operator = start_operator(control_plane, namespace, resync=5.0)
    name = "rank-budget"
    base = f"{ray_head.serve_url}/{name}"
    try:
        doc = tiny_modeltier(
            name,
            {"small": str(tiny_models.small), "large": str(tiny_models.large)},
            dashboard_url=ray_head.dashboard_url,
            routing={
                "mode": "cascade",
                "escalation": {
                    "threshold": SPEC_THRESHOLD,
                    "bounds": {"min": 0.0, "max": 1.0},
                    "autoscale": {
                        "mode": "apply",
                        "prometheusURL": prom.url,
                        "interval": f"{INTERVAL_S}s",
                        "maxEscalationRate": BUDGET,
                        "topTierQueueTarget": 50,  # only the budget constrains
                        "maxStep": 0.1,
                    },
                },
                "cascade": {"score": "rank", "rank": {"window": POOL}},
            },
        )
        del doc["metadata"]["namespace"]
        # The small tier reports the logprobs it samples from (after temperature): see above.
        doc["spec"]["tiers"][0]["engineArgs"]["logprobs_mode"] = "processed_logprobs"
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

        t0 = time.monotonic()
        wait_ready(kubectl, name, namespace)
        print(f"\nModelTier Ready in {time.monotonic() - t0:.0f}s")

        pool = traffic_pool()
        answers: list[Answer] = []
        lock = threading.Lock()
        counter = itertools.count()
        start = time.monotonic()
        stop_at = start + TRAFFIC_BOUND_S

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop_at:
                    with lock:
                        seq = next(counter)
                    text, right = pool[seq % POOL]
                    body = {
                        "model": name,
                        "prompt": text,
                        "max_tokens": 4,
                        "temperature": TEMPERATURE,
                        "seed": seq % POOL,  # the same answer for a prompt every cycle
                    }
                    sent = time.monotonic()
                    r = http.post(f"{base}/v1/completions", json=body)
                    reply = r.json() if r.status_code == 200 else {}
                    info = reply.get("tierserve") or {}
                    said = reply["choices"][0]["text"].strip() if reply else ""
                    with lock:
                        answers.append(
                            Answer(
                                seq,
                                sent,
                                text,
                                r.status_code,
                                bool(info.get("escalated")),
                                info.get("confidence"),
                                said == right,
                            )
                        )

        def router_threshold() -> float:
            return float(httpx.get(f"{base}/tierserve/config", timeout=10).json()["threshold"])

        # The router's threshold, polled: when it last changed, and the operator's status.
        seen = {"threshold": SPEC_THRESHOLD, "since": start, "moves": 0}
        last: dict[str, Any] = {}

        def measured() -> list[Answer] | None:
            """The first MEASURED answers sent SETTLE_S after the router took its current
            threshold, once the operator has moved it at least once and they are all back."""
            now = router_threshold()
            if now != seen["threshold"]:
                seen.update(threshold=now, since=time.monotonic(), moves=seen["moves"] + 1)
            last.update(mt_status(kubectl, name, namespace).get("escalation") or {})
            if not seen["moves"]:
                return None
            with lock:
                after = sorted(
                    (a for a in answers if a.sent > seen["since"] + SETTLE_S),
                    key=lambda a: a.seq,
                )
            if len(after) < MEASURED:
                return None
            # All sent after the switch, and none missing in between (in-flight ones): by seq.
            first = after[0].seq
            window = [a for a in after if a.seq < first + MEASURED]
            return window if len(window) == MEASURED else None

        with futures.ThreadPoolExecutor(CLIENTS) as threads:
            running = [threads.submit(client) for _ in range(CLIENTS)]
            try:
                try:
                    window = eventually(
                        measured,
                        f"{MEASURED} requests at a threshold the operator set",
                        timeout=TRAFFIC_BOUND_S,
                        interval=2.0,
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; last status.escalation: {last}") from None
            finally:
                stop_at = time.monotonic()
                for f in running:
                    f.result()
        elapsed = time.monotonic() - start
        after_window = router_threshold()

        codes = {a.code for a in answers}
        assert codes == {200}, codes
        share = sum(a.escalated for a in window) / len(window)
        confidences = [a.confidence for a in answers]
        assert all(c is not None for c in confidences), "every answer reports its confidence"
        conf = [float(c) for c in confidences if c is not None]
        tied = sum(c == 1.0 for c in conf) / len(conf)
        certain = [a for a in answers if a.confidence == 1.0]
        wrong_when_certain = sum(not a.correct for a in certain) / max(1, len(certain))
        tied_escalated = sum(a.escalated for a in window if a.confidence == 1.0)
        # The absolute score escalates when 1 - confidence > t: at the lowest bar, t = 0, the
        # answers below 1.0; at the autoscaler's smallest move off 0 (0.001), those below 0.999.
        absolute_max = sum(c < 1.0 for c in conf) / len(conf)
        absolute_off_zero = sum(1.0 - c > 0.001 for c in conf) / len(conf)
        history = [
            (h["from"], h["to"], h["constraint"], h["applied"]) for h in last.get("history", [])
        ]
        print(
            f"traffic: {len(answers)} requests in {elapsed:.0f}s ({len(answers) / elapsed:.1f}/s), "
            f"{CLIENTS} clients, {POOL} training sums at temperature {TEMPERATURE}\n"
            f"small tier's confidences: {tied:.1%} exactly 1.0 ({wrong_when_certain:.0%} of those "
            f"answers wrong), {absolute_off_zero:.1%} below 0.999, "
            f"{sum(c < 0.5 for c in conf) / len(conf):.1%} below 0.5\n"
            f"rank score, budget {BUDGET:.0%}: {share:.1%} escalated over the {len(window)} "
            f"requests at threshold {seen['threshold']} (router now {after_window}; "
            f"{tied_escalated} of them tied at 1.0 and escalated; "
            f"{'within' if abs(share - BUDGET) <= GOAL else 'outside'} the "
            f"±{100 * GOAL:g} point goal); "
            f"the router's threshold changed {seen['moves']} times\n"
            f"absolute score on the same traffic: at most {absolute_max:.1%} escalated "
            f"(threshold 0), {absolute_off_zero:.1%} at 0.001\n"
            f"operator's moves (from, to, constraint, applied): {history}\n"
            f"status.escalation.reason: {last.get('reason')}"
        )
        assert tied >= MIN_TIED, f"only {tied:.1%} of confidences are exactly 1.0"
        assert absolute_max <= BUDGET - 0.05, absolute_max  # out of the absolute score's reach
        assert tied_escalated > 0, "the rank score splits the ties: some certain answers go up"
        assert abs(share - BUDGET) <= TOLERANCE, (share, last)
        assert last.get("mode") == "apply" and any(h[3] for h in history), last
    finally:  # the ModelTier first, while the operator can still remove its finalizer
        remove_modeltier(kubectl, name, namespace)
        operator.stop()
        prom.stop()
