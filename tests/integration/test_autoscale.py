"""The threshold autoscaler against the real control plane and a real Prometheus.

The signals come from a real Prometheus scraping a real exporter that publishes series under the
router's metric names, with values the test sets (traffic of a chosen shape without generating
it); the operator reads them through Prometheus's HTTP API like in production.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.fixtures.operator import start_operator
from tests.waiting import eventually
from tierserve.controller.status import find_condition
from tierserve.dev.controlplane import ControlPlaneInfo
from tierserve.dev.proc import free_port
from tierserve.dev.prometheus import Prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
Run = Callable[..., subprocess.CompletedProcess[str]]


def manifest(prometheus_url: str, name: str = "support-assistant") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "support-assistant.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["routing"]["escalation"] = {
        "threshold": 0.6,
        "bounds": {"min": 0.3, "max": 0.9},
        "autoscale": {
            "prometheusURL": prometheus_url,
            "interval": "2s",
            "maxEscalationRate": 0.25,
            "topTierQueueTarget": 5,
            "maxStep": 0.05,
        },
    }
    return doc


def get(kubectl: Run, kind: str, name: str, ns: str) -> dict[str, Any]:
    """The object, or {} while it does not exist yet."""
    out = kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def metrics_condition(kubectl: Run, name: str, ns: str) -> dict[str, Any]:
    status = get(kubectl, "mt", name, ns).get("status") or {}
    return find_condition(status, "MetricsAvailable")


class RouterExporter:
    """A real HTTP exporter of the router's request counter, scraped by the test's Prometheus.

    `traffic()` adds 100 requests, 60% of them on the top tier: far over a 25% budget, so the
    policy raises the threshold. `stop()` takes the target down: Prometheus marks its series
    stale at the next failed scrape, and the operator finds no samples."""

    def __init__(self, prometheus: Prometheus, modeltier: str) -> None:
        self.modeltier = modeltier
        registry = CollectorRegistry()
        self.requests = Counter(
            "ray_tierserve_requests",
            "router requests",
            ["modeltier", "tier", "mode", "outcome"],
            registry=registry,
        )
        port = free_port()
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        prometheus.set_targets({"router": [f"127.0.0.1:{port}"]})
        self.traffic()
        prometheus.wait_for_series(f'ray_tierserve_requests_total{{modeltier="{modeltier}"}}')

    def traffic(self) -> None:
        self.requests.labels(self.modeltier, "small", "cascade", "ok").inc(40)
        self.requests.labels(self.modeltier, "frontier", "cascade", "ok").inc(60)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def operator_in(
    control_plane: ControlPlaneInfo, namespace: str, modeltier_crd: None
) -> Iterator[None]:
    proc = start_operator(control_plane, namespace, resync=5.0)
    try:
        yield
    finally:
        proc.stop()


def test_unreachable_prometheus_holds_the_threshold_and_says_why(
    kubectl: Run, namespace: str, operator_in: None
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest(url)))
    cond = eventually(
        lambda: (
            (c := metrics_condition(kubectl, "support-assistant", namespace)).get("status")
            == "False"
            and c
        ),
        "MetricsAvailable=False",
    )
    assert cond["reason"] == "SignalsUnavailable" and url in cond["message"]
    live = get(kubectl, "mt", "support-assistant", namespace)
    assert live["status"]["escalation"]["threshold"] == 0.6
    assert live["spec"]["routing"]["escalation"]["threshold"] == 0.6  # spec never written

    # A steady outage is one status write, not one per interval: over several 2s intervals
    # (and a 5s resync of the reconcile) the object is not written again, and neither is the
    # RayService, though every pass applies it (server-side apply of the same object).
    version = live["metadata"]["resourceVersion"]
    rs_version = get(kubectl, "rayservice", "support-assistant", namespace)["metadata"][
        "resourceVersion"
    ]
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(1)
        now = get(kubectl, "mt", "support-assistant", namespace)
        assert now["metadata"]["resourceVersion"] == version, (
            live["status"]["escalation"],
            now["status"]["escalation"],
        )
        rs = get(kubectl, "rayservice", "support-assistant", namespace)
        assert rs["metadata"]["resourceVersion"] == rs_version


def test_signals_from_prometheus_move_the_threshold_within_bounds(
    kubectl: Run, namespace: str, operator_in: None, prometheus: Prometheus
) -> None:
    exporter = RouterExporter(prometheus, "support-assistant")
    stop = time.monotonic() + 120
    traffic = exporter.traffic
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest(prometheus.url)))
        rayservice = eventually(
            lambda: get(kubectl, "rayservice", "support-assistant", namespace), "RayService"
        )
        workers_before = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]

        def raised() -> dict[str, Any] | None:
            traffic()
            status = get(kubectl, "mt", "support-assistant", namespace).get("status") or {}
            esc = status.get("escalation") or {}
            return status if esc.get("threshold", 0) >= 0.7 else None

        status = eventually(
            raised, "the threshold to rise above 0.7", timeout=stop - time.monotonic()
        )
        esc = status["escalation"]
        assert 0.3 <= esc["threshold"] <= 0.9
        assert esc["signals"]["escalationRate"] == pytest.approx(0.6, abs=0.05)
        assert "budget" in esc["reason"].lower() or "rate" in esc["reason"].lower(), esc["reason"]
        assert esc["lastChangeTime"]
        cond = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
        assert cond["status"] == "True"
        assert status["modelledCostFactor"] == pytest.approx(13.5 / (1.1 + 0.6 * 13.5), rel=0.1)

        live = get(kubectl, "rayservice", "support-assistant", namespace)
        serve = yaml.safe_load(live["spec"]["serveConfigV2"])
        router = serve["applications"][0]["deployments"][0]["user_config"]
        assert router["threshold"] >= 0.7  # the router got it
        assert live["spec"]["rayClusterConfig"]["workerGroupSpecs"] == workers_before
        mt = get(kubectl, "mt", "support-assistant", namespace)
        assert mt["spec"]["routing"]["escalation"]["threshold"] == 0.6  # spec untouched
        events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
        moves = [e["message"] for e in events["items"] if e["message"].startswith("threshold ")]
        assert moves, [e["message"] for e in events["items"]]
        steps = [m.split(":")[0].split() for m in moves]  # "threshold 0.6 -> 0.65"
        assert any(float(s[1]) == 0.6 for s in steps)
        assert all(0 < float(s[3]) - float(s[1]) <= 0.05 + 1e-9 for s in steps)  # maxStep
        table = kubectl("get", "mt", "-n", namespace).stdout.splitlines()[1].split()
        assert float(table[3]) >= 0.7
    finally:
        exporter.stop()


def test_a_spec_change_while_the_threshold_moves_keeps_the_autoscaled_threshold(
    kubectl: Run, namespace: str, operator_in: None, prometheus: Prometheus
) -> None:
    """The spec change and the autoscaler's moves go through one reconcile: the new spec
    reaches the RayService with the autoscaled threshold, which never falls back to the spec's,
    and status and RayService agree once it has converged."""
    name = "spec-change"
    exporter = RouterExporter(prometheus, name)
    try:
        kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=yaml.safe_dump(manifest(prometheus.url, name)),
        )

        def threshold() -> float:
            exporter.traffic()
            esc = (get(kubectl, "mt", name, namespace).get("status") or {}).get("escalation")
            return float((esc or {}).get("threshold") or 0)

        eventually(lambda: threshold() >= 0.65, "the threshold to rise", timeout=120)
        patch = [{"op": "replace", "path": "/spec/tiers/0/replicas/max", "value": 6}]
        kubectl("patch", "mt", name, "-n", namespace, "--type=json", "-p", json.dumps(patch))
        generation = get(kubectl, "mt", name, namespace)["metadata"]["generation"]

        seen: list[float] = []

        def converged() -> dict[str, Any] | None:
            exporter.traffic()
            mt = get(kubectl, "mt", name, namespace)
            status = mt.get("status") or {}
            seen.append(float(status["escalation"]["threshold"]))
            rs = get(kubectl, "rayservice", name, namespace)
            serve = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
            small = next(d for d in serve["deployments"] if d["name"] == "tier-small")
            router = serve["deployments"][0]["user_config"]
            done = (
                status.get("observedGeneration") == generation
                and small["autoscaling_config"]["max_replicas"] == 6
                and router["threshold"] == status["escalation"]["threshold"]
            )
            return status if done else None

        status = eventually(converged, "the new spec with the autoscaled threshold", timeout=60)
        assert status["escalation"]["threshold"] >= 0.65
        assert min(seen) >= 0.65, seen  # never back to the spec's 0.6
        mt = get(kubectl, "mt", name, namespace)
        assert mt["spec"]["routing"]["escalation"]["threshold"] == 0.6  # spec never written
    finally:
        exporter.stop()


def _observe(kubectl: Run, name: str, ns: str) -> tuple[float, float, str, str]:
    """(monotonic time, live threshold, MetricsAvailable status, status reason), from one read."""
    status = get(kubectl, "mt", name, ns).get("status") or {}
    esc = status.get("escalation") or {}
    conditions = status.get("conditions") or []
    cond: dict[str, Any] = next((c for c in conditions if c["type"] == "MetricsAvailable"), {})
    threshold = float(esc.get("threshold", -1))
    return time.monotonic(), threshold, cond.get("status", ""), esc.get("reason", "")


def test_missing_signals_hold_the_threshold_for_the_grace_period_then_return_to_the_spec(
    kubectl: Run, namespace: str, operator_in: None, prometheus: Prometheus
) -> None:
    """Real signals move the threshold off the spec's 0.6; then the router's target goes down.
    The threshold holds for `signalGracePeriod` (10s, five 2s intervals), then walks back to 0.6
    at most maxStep per interval, and MetricsAvailable=False says why throughout."""
    name, grace, interval = "grace", 10.0, 2.0
    doc = manifest(prometheus.url, name)
    doc["spec"]["routing"]["escalation"]["autoscale"]["signalGracePeriod"] = "10s"
    exporter = RouterExporter(prometheus, name)
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

        def moved() -> bool:
            exporter.traffic()
            _, threshold, available, _ = _observe(kubectl, name, namespace)
            return available == "True" and threshold >= 0.7

        eventually(moved, "real signals to raise the threshold to 0.7", timeout=120)
    finally:
        exporter.stop()

    seen = [_observe(kubectl, name, namespace)]
    deadline = time.monotonic() + 90  # grace + 3 steps of 2s, with room for a loaded machine
    while seen[-1][1] != 0.6 and time.monotonic() < deadline:
        time.sleep(0.25)
        seen.append(_observe(kubectl, name, namespace))
    assert seen[-1][1] == 0.6, f"threshold not back at the spec's 0.6: {seen[-1]}"

    lost = next(i for i, o in enumerate(seen) if o[2] == "False")
    held = seen[lost][1]
    assert held >= 0.7, seen[lost]
    first_move = next(i for i in range(lost, len(seen)) if seen[i][1] != held)
    assert all(o[2] == "False" for o in seen[lost:]), "signals came back during the outage"
    # Held a grace period (less one interval: the first missing interval counts) less a poll
    # either way; well short of the 5m default, so the spec's knob is what it obeyed.
    hold = seen[first_move][0] - seen[lost][0]
    assert grace - 2 * interval <= hold < 60, (hold, seen[lost : first_move + 1])
    assert seen[lost][3].startswith("no signals: holding"), seen[lost][3]
    path = [held] + [o[1] for o in seen[first_move:]]
    steps = [b - a for a, b in itertools.pairwise(path) if b != a]
    assert all(-0.05 - 1e-9 <= d < 0 for d in steps), path  # down, at most maxStep a time

    live = get(kubectl, "mt", name, namespace)
    cond = next(c for c in live["status"]["conditions"] if c["type"] == "MetricsAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "SignalsUnavailable")
    assert "no usable samples" in cond["message"]
    assert "spec's threshold" in live["status"]["escalation"]["reason"]
    assert live["spec"]["routing"]["escalation"]["threshold"] == 0.6  # spec never written
    serve = yaml.safe_load(get(kubectl, "rayservice", name, namespace)["spec"]["serveConfigV2"])
    assert serve["applications"][0]["deployments"][0]["user_config"]["threshold"] == 0.6
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    assert any(e["reason"] == "RevertingToSpec" for e in events["items"])
