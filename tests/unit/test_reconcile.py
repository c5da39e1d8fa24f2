"""The reconcile against a fake backend and fake signals: every pass, no Kopf, no cluster.

`Cluster` plays the API server's part: it keeps the ModelTier's body, applies each status patch
(a JSON merge patch, as Kopf sends it) and bumps resourceVersion only when the object changes,
so "a no-op reconcile writes nothing" is a count of writes.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tierserve.api.v1alpha1 import ConditionReason, ModelTier
from tierserve.autoscale.policy import Signals
from tierserve.autoscale.signals import Reading
from tierserve.controller.backend import AppState, BackendError
from tierserve.controller.fakes import FakeBackend
from tierserve.controller.reconcile import Deps, ObjectState, Result, reconcile
from tierserve.controller.status import find_condition

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-assistant.yaml"
INTERVAL = 30.0  # the example's autoscale interval
OVER_BUDGET = Signals(escalation_rate=0.6, request_rate=10.0)  # budget 0.25: raise threshold
UNREACHABLE = "Prometheus at http://prometheus.monitoring:9090 is unreachable: ConnectError"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies Kopf's status patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


class Cluster:
    """One ModelTier as the API server keeps it, the operator's memo, and its clock."""

    def __init__(self, autoscale: bool = True) -> None:
        self.body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        self.body["metadata"].update(namespace="llm", generation=1, uid="u1")
        self.body["metadata"]["resourceVersion"] = "1"
        if not autoscale:
            del self.body["spec"]["routing"]["escalation"]["autoscale"]
        self.backend = FakeBackend()
        self.state = ObjectState()
        self.time = 1000.0
        self.signals = Reading(Signals(), UNREACHABLE)
        self.writes = 0
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.deps = Deps(
            backend_for=self.backend.bind,
            read_signals=self.read_signals,
            resync_seconds=60.0,
            clock=lambda: self.time,
            now=lambda: f"t{self.time:g}",
        )

    async def read_signals(self, mt: ModelTier) -> Reading:
        return self.signals

    def reconcile(self, body: dict[str, Any] | None = None) -> Result:
        """One pass on `body` (default: the object as stored), its patch written like Kopf."""
        result = asyncio.run(reconcile(copy.deepcopy(body or self.body), self.state, self.deps))
        assert result is not None
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        if result.status_patch:
            status = merge(self.body.get("status") or {}, result.status_patch)
            if status != self.body.get("status"):
                self.body["status"] = status
                self.writes += 1
                self.bump()
            self.patches.append(result.status_patch)
        return result

    def bump(self) -> None:
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    def edit_spec(self, path: str, value: Any) -> None:
        node = self.body["spec"]
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
        self.body["metadata"]["generation"] += 1
        self.bump()

    def later(self, seconds: float = INTERVAL) -> None:
        self.time += seconds

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})

    def condition(self, type_: str) -> tuple[str, str]:
        cond = find_condition(self.status, type_)
        return cond.get("status", ""), cond.get("reason", "")


def test_create_then_every_pass_without_change_writes_nothing() -> None:
    c = Cluster(autoscale=False)
    first = c.reconcile()
    assert first.outcome == "created"
    assert c.events == [("Normal", "Created", "created RayService support-assistant")]
    assert c.condition("Ready") == ("False", "Deploying")
    assert c.condition("Progressing") == ("True", "Deploying")
    assert c.condition("Degraded") == ("False", "AsExpected")
    assert c.status["ready"] == "0/2" and c.status["tierNames"] == "small,frontier"
    assert c.status["escalation"] == {"threshold": 0.6}
    version = c.body["metadata"]["resourceVersion"]
    for _ in range(5):
        c.later()
        result = c.reconcile()
        assert (result.outcome, result.status_patch, result.events) == ("unchanged", {}, [])
    assert c.body["metadata"]["resourceVersion"] == version and c.writes == 1
    assert c.backend.applies == 1


def test_serving_is_ready_and_keeps_its_transition_times() -> None:
    c = Cluster(autoscale=False)
    c.reconcile()
    c.backend.serving()
    c.later()
    c.reconcile()
    assert c.condition("Ready") == ("True", "Serving")
    assert c.condition("Progressing") == ("False", "Deployed")
    assert c.status["ready"] == "2/2"
    assert all(t["ready"] and t["replicas"] == 1 for t in c.status["tiers"])
    ready_since = find_condition(c.status, "Ready")["lastTransitionTime"]
    degraded_since = find_condition(c.status, "Degraded")["lastTransitionTime"]
    assert (ready_since, degraded_since) == ("t1030", "t1000")  # Degraded stayed False
    c.later()
    assert c.reconcile().status_patch == {}


def test_backend_errors_are_degraded_warned_once_and_retried_on_the_next_pass() -> None:
    c = Cluster(autoscale=False)
    c.reconcile()
    c.backend.error = BackendError(ConditionReason.DASHBOARD_UNREACHABLE, "no route to 10.0.0.1")
    c.later()
    result = c.reconcile()
    assert result.outcome == "error"
    assert c.condition("Degraded") == ("True", "DashboardUnreachable")
    assert find_condition(c.status, "Degraded")["message"] == "no route to 10.0.0.1"
    assert c.condition("Ready") == ("False", "DashboardUnreachable")
    assert c.condition("Progressing") == ("False", "Blocked")
    assert c.events[-1] == ("Warning", "DashboardUnreachable", "no route to 10.0.0.1")
    c.later()
    again = c.reconcile()  # the same cause: no second Event, nothing to write
    assert (again.outcome, again.events, again.status_patch) == ("error", [], {})
    assert c.state.next_pass == c.time + 60.0  # retried at the next pass, not at once

    c.backend.error = None
    c.later()
    c.reconcile()
    assert c.condition("Degraded") == ("False", "AsExpected")


def test_a_failed_application_is_degraded_with_serves_message_on_one_line() -> None:
    c = Cluster(autoscale=False)
    c.reconcile()
    c.backend.app = AppState(status="DEPLOY_FAILED", message="ImportError:\n  no module")
    c.later()
    c.reconcile()
    assert c.condition("Degraded") == ("True", "ApplicationFailed")
    assert find_condition(c.status, "Degraded")["message"] == "ImportError: no module"


def test_a_spec_that_does_not_parse_is_invalid_spec() -> None:
    c = Cluster(autoscale=False)
    c.body["spec"]["tiers"][0]["gpuPerReplica"] = 2  # what admission normally refuses
    result = c.reconcile()
    assert result.outcome == "invalid"
    for type_ in ("Ready", "Progressing"):
        assert c.condition(type_) == ("False", "InvalidSpec")
    assert c.condition("Degraded") == ("True", "InvalidSpec")
    assert "gpuPerReplica" in find_condition(c.status, "Degraded")["message"]
    assert c.status["observedGeneration"] == 1
    assert c.backend.applies == 0


def test_the_policy_moves_the_deployed_threshold_with_an_event_and_one_write() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()  # creates; the first decision waits one interval
    assert "MetricsAvailable" not in {x["type"] for x in c.status["conditions"]}
    writes = c.writes
    c.later()
    result = c.reconcile()
    assert result.step is not None and result.step.moved
    assert c.backend.threshold == 0.65  # the router has it (maxStep 0.05)
    esc = c.status["escalation"]
    assert esc["threshold"] == 0.65 and esc["lastChangeTime"] == "t1030"
    assert esc["signals"] == {"escalationRate": 0.6, "requestRate": 10.0}
    assert "budget" in esc["reason"]
    assert c.condition("MetricsAvailable") == ("True", "SignalsRead")
    assert c.status["modelledCostFactor"] == pytest.approx(13.5 / (1.1 + 0.6 * 13.5), rel=1e-3)
    assert c.events[-1][:2] == ("Normal", "Budget")
    assert c.events[-1][2].startswith("threshold 0.6 -> 0.65: escalation 60%")
    assert c.writes == writes + 1
    assert c.body["spec"]["routing"]["escalation"]["threshold"] == 0.6  # spec never written


def test_observe_mode_reports_the_move_it_would_make_and_moves_nothing() -> None:
    c = Cluster()
    c.body["spec"]["routing"]["escalation"]["autoscale"]["mode"] = "observe"
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    for _ in range(3):
        c.later()
        result = c.reconcile()
        assert result.step is not None and not result.step.moved
        assert c.backend.threshold == 0.6  # the router keeps the spec's threshold
    esc = c.status["escalation"]
    assert esc["mode"] == "observe"
    assert esc["threshold"] == 0.6 and esc["proposedThreshold"] == 0.65
    assert esc["reason"].startswith("observe mode: escalation 60%")
    assert "lastChangeTime" not in esc
    assert [(m["from"], m["to"], m["applied"]) for m in esc["history"]] == [(0.6, 0.65, False)] * 3
    assert esc["history"][-1]["signals"] == {"escalationRate": 0.6, "requestRate": 10.0}
    assert c.events[-1][2].startswith("observe mode, not applied: would move threshold 0.6 -> 0.65")

    # Switching to apply makes the move at the next decision, and history says it was applied.
    c.edit_spec("routing.escalation.autoscale.mode", "apply")
    c.later()
    c.reconcile()
    assert c.backend.threshold == 0.65
    esc = c.status["escalation"]
    assert esc["mode"] == "apply" and esc["threshold"] == 0.65
    assert esc["history"][-1]["applied"] is True and esc["history"][-1]["to"] == 0.65


def test_shadow_quality_is_in_status_with_its_interval() -> None:
    c = Cluster()
    c.body["spec"]["routing"]["shadow"] = {"sampleRate": 0.1}
    c.signals = Reading(OVER_BUDGET, "", {"small": (45.0, 50.0)})
    c.reconcile()
    assert "quality" not in c.status  # read with the policy's first decision
    c.later()
    c.reconcile()
    quality = c.status["quality"]
    (small,) = quality["tiers"]
    assert (small["tier"], small["samples"], small["winOrTieRate"]) == ("small", 50, 0.9)
    assert small["low"] < 0.9 < small["high"] and small["window"] == "1h"
    assert quality["routerVsTopTier"]["notWorseRate"] == pytest.approx(0.6 + 0.4 * 0.9)
    c.later(5)  # between decisions the reading stands, and nothing is written
    assert c.reconcile().status_patch == {}


def test_history_keeps_the_last_ten_moves_oldest_first() -> None:
    c = Cluster()
    c.edit_spec("routing.escalation.bounds.max", 1.0)
    c.edit_spec("routing.escalation.threshold", 0.3)  # 14 steps of maxStep 0.05 to the bound
    c.signals = Reading(Signals(escalation_rate=0.9, request_rate=10.0), "")
    c.reconcile()
    for _ in range(12):
        c.later()
        c.reconcile()
    history = c.status["escalation"]["history"]
    assert len(history) == 10
    assert all(m["applied"] for m in history)
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(history))
    assert history[-1]["to"] == c.backend.threshold
    assert history[0]["time"] < history[-1]["time"]


def test_passes_between_decisions_write_nothing_and_never_move_the_threshold_back() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    c.later()
    c.reconcile()
    writes = c.writes
    for _ in range(3):  # change handlers and resyncs between two decisions
        c.later(5)
        assert c.reconcile().status_patch == {}
        assert c.backend.threshold == 0.65
    assert c.writes == writes


def test_a_spec_change_and_a_threshold_move_arriving_together_are_one_write() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    c.later()
    c.reconcile()
    writes, applies = c.writes, c.backend.applies
    c.edit_spec("tiers.0.replicas.max", 6)
    c.later()  # the policy is due in the same pass as the new generation
    result = c.reconcile()
    assert result.step is not None and result.step.moved
    assert c.writes == writes + 1 and c.backend.applies == applies + 1
    patch = c.patches[-1]
    assert patch["observedGeneration"] == 2
    assert patch["escalation"]["threshold"] == 0.7
    deployed = c.backend.deployed
    assert deployed is not None
    assert deployed["deployments"][0]["user_config"]["threshold"] == 0.7
    small = next(d for d in deployed["deployments"] if d["name"] == "tier-small")
    assert small["autoscaling_config"]["max_replicas"] == 6
    c.later(5)
    assert c.reconcile().status_patch == {}


def test_a_lagging_body_cannot_undo_a_move() -> None:
    """A change handler can run on a body from before the timer's last write landed."""
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    stale = copy.deepcopy(c.body)
    c.later()
    c.reconcile()
    c.later(5)
    c.reconcile(stale)
    assert c.backend.threshold == 0.65
    assert c.status["escalation"]["threshold"] == 0.65
    assert c.status["escalation"]["lastChangeTime"] == "t1030"


def test_after_a_restart_the_threshold_comes_from_the_deployed_application() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    c.later()
    c.reconcile()
    c.state = ObjectState()  # the operator restarts: its memo is gone
    c.signals = Reading(Signals(escalation_rate=0.25, request_rate=10.0), "")  # at budget
    for _ in range(3):
        c.later()
        c.reconcile()
    assert c.backend.threshold == 0.65  # not the spec's 0.6
    assert c.status["escalation"]["threshold"] == 0.65


def test_missing_signals_hold_then_walk_back_to_the_spec_and_say_why() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    for _ in range(2):
        c.later()
        c.reconcile()
    assert c.backend.threshold == 0.7
    c.signals = Reading(Signals(), UNREACHABLE)
    c.later()
    c.reconcile()
    assert c.condition("MetricsAvailable") == ("False", "SignalsUnavailable")
    assert find_condition(c.status, "MetricsAvailable")["message"] == UNREACHABLE
    assert c.status["escalation"]["reason"].startswith("no signals: holding 0.7")
    writes = c.writes
    for _ in range(8):  # within the 5m grace period: held, and a steady outage writes nothing
        c.later()
        c.reconcile()
    assert c.backend.threshold == 0.7 and c.writes == writes
    path = []
    for _ in range(4):
        c.later()
        c.reconcile()
        path.append(c.backend.threshold)
    assert path == [0.65, 0.6, 0.6, 0.6]
    assert "spec's threshold" in c.status["escalation"]["reason"]
    assert any(e[1] == "RevertingToSpec" for e in c.events)
    c.signals = Reading(Signals(), "")  # Prometheus answers, with no samples
    c.later()
    c.reconcile()
    assert "no usable samples" in find_condition(c.status, "MetricsAvailable")["message"]


def test_removing_autoscale_returns_to_the_spec_and_drops_what_autoscale_wrote() -> None:
    c = Cluster()
    c.signals = Reading(OVER_BUDGET, "")
    c.reconcile()
    c.later()
    c.reconcile()
    c.edit_spec("routing.escalation.autoscale", None)
    del c.body["spec"]["routing"]["escalation"]["autoscale"]
    result = c.reconcile()
    assert not result.autoscaled
    assert c.backend.threshold == 0.6
    # What the API server keeps of an escalation with just a threshold (reason, signals and
    # history have schema defaults); the policy's desiredThreshold, lastChangeTime, mode and
    # its history are gone.
    assert c.status["escalation"] == {"threshold": 0.6, "reason": "", "signals": {}, "history": []}
    assert "modelledCostFactor" not in c.status
    assert "MetricsAvailable" not in {x["type"] for x in c.status["conditions"]}


def test_nothing_is_applied_once_deletion_has_begun() -> None:
    """Else a pass could re-create the RayService that garbage collection just removed."""
    c = Cluster(autoscale=False)
    c.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert asyncio.run(reconcile(c.body, c.state, c.deps)) is None
    assert c.backend.applies == 0


def test_passes_of_one_object_never_overlap() -> None:
    c = Cluster(autoscale=False)
    inside, most = 0, 0
    observe = c.backend.observe

    async def slow_observe() -> Any:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return await observe()

    c.backend.observe = slow_observe  # type: ignore[method-assign]

    async def both() -> None:
        body = copy.deepcopy(c.body)
        await asyncio.gather(*(reconcile(body, c.state, c.deps) for _ in range(3)))

    asyncio.run(both())
    assert most == 1
    assert c.backend.applies == 1


class Stopped:
    """Kopf's `stopped` flag for a timer: set, or waited on (then set by the wait)."""

    def __init__(self, stopped: bool = False) -> None:
        self.stopped, self.waits = stopped, 0

    def __bool__(self) -> bool:
        return self.stopped

    async def wait(self, timeout: float) -> Stopped:
        self.waits += 1
        self.stopped = self.waits > 1  # the ModelTier goes while the timer waits again
        return self


def test_the_kopf_glue_writes_one_patch_posts_events_and_records_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from tierserve.controller import handlers, metrics

    c = Cluster(autoscale=False)
    monkeypatch.setattr(handlers, "DEPS", c.deps)
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda body, type, reason, message: posted.append((reason, message))
    )
    memo, patch = kopf.Memo(), kopf.Patch()
    before = metrics.RECONCILES.labels(outcome="created")._value.get()

    asyncio.run(handlers.run(kopf.Body(cast(Any, c.body)), patch, memo))
    assert patch["status"]["conditions"][0]["type"] == "Ready"
    assert patch["status"]["escalation"] == {"threshold": 0.6}
    assert posted == [("Created", "created RayService support-assistant")]
    assert metrics.RECONCILES.labels(outcome="created")._value.get() == before + 1

    # The timer waits for this object's next pass (resync here), then reconciles.
    state = handlers.object_state(memo)
    assert state is handlers.object_state(memo)
    state.next_pass = time.monotonic() - 1  # due
    timer_patch = kopf.Patch()
    body = kopf.Body(cast(Any, merge_status(c.body, patch["status"])))
    timer: Any = handlers.resync  # typed by Kopf's decorator for Kopf's own calls
    asyncio.run(timer(body=body, patch=timer_patch, memo=memo, stopped=Stopped()))
    assert dict(timer_patch) == {}  # nothing changed: nothing to write
    state.next_pass = time.monotonic() + 60
    stopped = Stopped()
    asyncio.run(timer(body=body, patch=timer_patch, memo=memo, stopped=stopped))
    assert stopped.waits == 2 and c.backend.applies == 1  # deleted while waiting: no pass


def merge_status(body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**body, "status": merge(body.get("status") or {}, status)}


def test_deleting_an_external_modeltier_removes_its_app_and_its_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from tierserve.controller import handlers, metrics
    from tierserve.controller.external import External
    from tierserve.controller.fakes import FakeDashboard
    from tierserve.controller.serve_client import ServeClient

    c = Cluster()
    c.body["spec"]["ray"] = {"backend": "external", "dashboardURL": "http://dashboard:8265"}
    dashboard = FakeDashboard()
    dashboard.configs["llm-support-assistant"] = {
        "name": "llm-support-assistant",
        "import_path": "x:y",
    }
    dashboard.configs["other"] = {"name": "other", "import_path": "a:b"}

    def external(mt: ModelTier) -> External:
        return External(mt, ServeClient("http://dashboard:8265", transport=dashboard.transport()))

    monkeypatch.setattr(handlers, "backend_for", external)
    forgotten: list[tuple[str, str]] = []
    monkeypatch.setattr(metrics, "forget", lambda ns, name: forgotten.append((ns, name)))
    delete: Any = handlers.on_delete  # typed by Kopf's decorator for Kopf's own calls
    body = kopf.Body(cast(Any, c.body))

    dashboard.down = True  # retried by Kopf every 30 s, not lost
    with pytest.raises(kopf.TemporaryError, match="unreachable"):
        asyncio.run(delete(body=body, memo=kopf.Memo()))
    dashboard.down = False
    asyncio.run(delete(body=body, memo=kopf.Memo()))
    assert list(dashboard.configs) == ["other"]
    assert forgotten == [("llm", "support-assistant")] * 2
