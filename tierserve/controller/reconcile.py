"""The reconcile: one per ModelTier at a time, level-based, free of Kopf so it is unit-tested
against a fake backend (tests/unit/test_reconcile.py).

Each pass observes the backend (Serve's status and the threshold the deployed router has),
runs the threshold policy when its interval is due, renders and applies, and builds the whole
status. It returns what to write (only the difference), the Events and what to measure; the
Kopf handlers (handlers.py) carry that out, so status has one writer and one write per pass.

The live threshold is read back from the deployed application, not from status: it survives
operator restarts, and a status that lags (a watch event not seen yet) can never push an old
threshold back to the router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tierserve.api.v1alpha1 import (
    HISTORY_LENGTH,
    AutoscaleMode,
    Condition,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    EscalationStatus,
    ModelTier,
    ModelTierStatus,
    QualityStatus,
    ThresholdMove,
)
from tierserve.autoscale.policy import Decision, PolicyMemory, PolicyParams, decide
from tierserve.autoscale.signals import Reading
from tierserve.controller import status as st
from tierserve.controller.backend import Action, Backend, BackendError, Observed

NO_SAMPLES = "no usable samples for the escalation rate, queue or latency"
METRICS = ConditionType.METRICS_AVAILABLE
Reason = ConditionReason
Cond = tuple[ConditionType, bool, ConditionReason, str]


@dataclass
class ObjectState:
    """What the operator keeps per ModelTier between passes (in Kopf's per-object memo).

    Losing it (an operator restart) costs only the policy's learning: everything else is read
    back from the cluster."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # timers run beside change handlers
    next_pass: float = 0.0  # monotonic time the timer reconciles next
    policy_due: float | None = None  # monotonic time the policy decides next
    policy: PolicyMemory = field(default_factory=PolicyMemory)
    status: ModelTierStatus | None = None  # the status last built: newer than a lagging body's


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PolicyStep:
    """One decision of the policy and what it was made from (for status and metrics)."""

    current: float  # the live threshold it started from
    decision: Decision
    signals: dict[str, float]
    available: bool
    error: str  # why Prometheus could not be read at all
    applied: bool = True
    quality: dict[str, tuple[float, float]] = field(
        default_factory=dict
    )  # shadow verdicts  # False in observe mode: the decision is reported, not carried out

    @property
    def proposes_move(self) -> bool:
        """The decision changes the threshold (or would, in observe mode)."""
        return self.decision.threshold != self.current

    @property
    def moved(self) -> bool:
        return self.applied and self.proposes_move

    @property
    def live(self) -> float:
        """The threshold in effect after this decision."""
        return self.decision.threshold if self.applied else self.current

    def metrics_condition(self) -> Cond:
        if self.available:
            return (METRICS, True, Reason.SIGNALS_READ, "signals read from Prometheus")
        return (METRICS, False, Reason.SIGNALS_UNAVAILABLE, self.error or NO_SAMPLES)


@dataclass(frozen=True)
class Result:
    status_patch: dict[str, Any]  # a JSON merge patch of status; {}: nothing to write
    events: list[Event]
    outcome: str  # created, updated, unchanged, error or invalid (the metrics label)
    autoscaled: bool = False
    step: PolicyStep | None = None  # set when the policy ran and its threshold was applied
    cost_factor: float | None = None


@dataclass(frozen=True)
class Deps:
    """Everything the reconcile reaches outside itself, injected so tests can fake it."""

    backend_for: Callable[[ModelTier], Backend]
    read_signals: Callable[[ModelTier], Awaitable[Reading]]
    resync_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], str] = st.now


async def reconcile(body: Mapping[str, Any], state: ObjectState, deps: Deps) -> Result | None:
    """One pass; passes of one object never overlap. None: the object is being deleted."""
    async with state.lock:
        # Checked under the lock: the timer's body is kept fresh by Kopf, and the delete
        # handler holds the lock, so nothing is applied (a RayService re-created after its
        # owner went) once deletion has begun.
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        return await _reconcile(body, state, deps)


async def _reconcile(body: Mapping[str, Any], state: ObjectState, deps: Deps) -> Result:
    started, now = deps.clock(), deps.now()
    meta = dict(body.get("metadata") or {})
    generation = int(meta.get("generation") or 0)
    found = st.parse(body.get("status"))
    previous = state.status or found
    state.next_pass = started + deps.resync_seconds

    def conditions(specs: list[Cond]) -> list[Condition]:
        return [st.condition(*c, generation=generation, previous=previous, now=now) for c in specs]

    try:
        mt = ModelTier.model_validate({"metadata": meta, "spec": dict(body.get("spec") or {})})
    except ValidationError as exc:  # admission normally refuses this first
        first = exc.errors()[0]
        message = f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        update = {"conditions": conditions(st.invalid_conditions(message))}
        desired = previous.model_copy(update=update | {"observed_generation": generation})
        return _result(state, found, desired, [], "invalid")

    params = None
    if mt.spec.routing.escalation.autoscale is not None:
        params = PolicyParams.from_spec(mt.spec.routing.escalation, mt.spec.routing.mode)
        state.next_pass = started + min(deps.resync_seconds, params.interval_seconds)
    backend = deps.backend_for(mt)
    done = await _drive(mt, backend, params, state, deps, started)
    tiers = st.tier_statuses(mt, done.seen.app)
    specs = st.serving_conditions(
        done.seen.app, done.error, tiers, backend.application, done.seen.pod_problems
    )
    escalation, metrics = _escalation(mt, previous, done, now)
    desired = ModelTierStatus(
        observed_generation=generation,
        conditions=conditions(specs + ([metrics] if metrics else [])),
        tiers=tiers,
        escalation=escalation,
        ready=f"{sum(t.ready for t in tiers)}/{len(tiers)}",
        tier_names=",".join(t.name for t in mt.spec.tiers),
        application=backend.application,
        modelled_cost_factor=_cost_factor(mt, previous, done.step),
        quality=_quality(mt, previous, done.step),
    )
    events = _events(done, backend, previous)
    outcome = "error" if done.error else done.action.value
    return _result(state, found, desired, events, outcome, params is not None, done.step)


@dataclass(frozen=True)
class _Done:
    """What a pass did to the backend."""

    action: Action = Action.UNCHANGED
    seen: Observed = field(default_factory=Observed)
    threshold: float | None = None  # in effect after the pass (None: unknown, on errors)
    step: PolicyStep | None = None
    error: BackendError | None = None


async def _drive(
    mt: ModelTier,
    backend: Backend,
    params: PolicyParams | None,
    state: ObjectState,
    deps: Deps,
    started: float,
) -> _Done:
    """Observe, decide the threshold when due, apply. Backend errors end the pass: they are
    reported as Degraded and retried on the next one, never in a hot loop."""
    step = None
    try:
        seen = await backend.observe()
        threshold = _live_threshold(mt, seen)
        if params is not None and state.policy_due is None:
            # The first decision waits an interval: its signals are rates over one, and a new
            # application has none yet (nor is a create held up by Prometheus).
            state.policy_due = started + params.interval_seconds
        elif params is not None and state.policy_due is not None and started >= state.policy_due:
            state.policy_due = started + params.interval_seconds
            step = await _decide(mt, threshold, params, state, deps)
            threshold = step.live
        action, seen = await backend.apply(threshold)
    except BackendError as exc:
        return _Done(error=exc)
    if step is not None:
        # Learned only from decisions the backend accepted. In observe mode the threshold
        # holds, so the pooled rate evidence stays valid and no slope is learned from a
        # move that did not happen (the next pass sees no change).
        state.policy = step.decision.memory
    return _Done(action, seen, threshold, step)


def _events(done: _Done, backend: Backend, previous: ModelTierStatus) -> list[Event]:
    events = []
    if done.error is not None and st.degraded_reason(previous) != done.error.reason:
        events.append(Event("Warning", done.error.reason, str(done.error)))  # once per cause
    if done.action != Action.UNCHANGED:
        what = f"{done.action.value} {backend.kind} {backend.application}"
        events.append(Event("Normal", done.action.value.capitalize(), what))
    if done.step is not None and done.step.proposes_move:
        decision = done.step.decision
        why = f"threshold {done.step.current:g} -> {decision.threshold:g}: {decision.reason}"
        if not done.step.applied:
            why = f"observe mode, not applied: would move {why}"
        events.append(Event("Normal", decision.constraint, why))
    return events


def _live_threshold(mt: ModelTier, seen: Observed) -> float:
    """The threshold in effect: with autoscale the deployed router's (kept within the bounds,
    which may have changed since), else the spec's."""
    escalation = mt.spec.routing.escalation
    if escalation.autoscale is None or seen.threshold is None:
        return escalation.threshold
    return min(max(seen.threshold, escalation.bounds.min), escalation.bounds.max)


async def _decide(
    mt: ModelTier, current: float, params: PolicyParams, state: ObjectState, deps: Deps
) -> PolicyStep:
    reading = await deps.read_signals(mt)
    decision = decide(current, reading.signals, params, state.policy)
    signals = reading.signals
    auto = mt.spec.routing.escalation.autoscale
    applied = auto is None or auto.mode == AutoscaleMode.APPLY
    return PolicyStep(
        current,
        decision,
        signals.as_status(),
        signals.available(),
        reading.error,
        applied,
        reading.quality,
    )


def _escalation(
    mt: ModelTier, previous: ModelTierStatus, done: _Done, now: str
) -> tuple[EscalationStatus, Cond | None]:
    """status.escalation and the MetricsAvailable condition.

    Without autoscale: the spec's threshold, no condition. With it, the last decision stands
    between decisions (and while the backend fails), with the threshold the router has."""
    spec = mt.spec.routing.escalation
    if spec.autoscale is None:
        return EscalationStatus(threshold=spec.threshold), None
    old, step = previous.escalation, done.step
    if step is None:
        live = done.threshold if done.threshold is not None else old.threshold
        update = {
            "threshold": spec.threshold if live is None else live,
            "mode": spec.autoscale.mode,
        }
        kept = old.model_copy(update=update)
        cond = previous.condition(METRICS)
        if cond is None:
            return kept, None
        return kept, (METRICS, cond.status == ConditionStatus.TRUE, cond.reason, cond.message)
    decision = step.decision
    history = old.history
    if step.proposes_move:
        move = ThresholdMove.model_validate(
            {
                "time": now,
                "from": step.current,
                "to": decision.threshold,
                "applied": step.applied,
                "constraint": decision.constraint,
                "reason": decision.reason,
                "signals": step.signals,
            }
        )
        history = [*history, move][-HISTORY_LENGTH:]
    escalation = EscalationStatus(
        threshold=step.live,
        desired_threshold=decision.desired,
        proposed_threshold=decision.threshold,
        mode=spec.autoscale.mode,
        reason=decision.reason if step.applied else f"observe mode: {decision.reason}",
        last_change_time=now if step.moved else old.last_change_time,
        signals=step.signals,
        history=history,
    )
    return escalation, step.metrics_condition()


def _cost_factor(mt: ModelTier, previous: ModelTierStatus, step: PolicyStep | None) -> float | None:
    """Modelled from the realized escalation rate, so only with autoscale; the last value
    stands while the rate is missing."""
    if mt.spec.routing.escalation.autoscale is None:
        return None
    rate = step.signals.get("escalationRate") if step else None
    factor = st.modelled_cost_factor(mt, rate)
    return factor if factor is not None else previous.modelled_cost_factor


def _quality(
    mt: ModelTier, previous: ModelTierStatus, step: PolicyStep | None
) -> QualityStatus | None:
    """Shadow verdicts from Prometheus, read with the policy's signals (so only with autoscale
    and shadow sampling); the last reading stands between decisions."""
    if mt.spec.routing.escalation.autoscale is None or mt.spec.routing.shadow.sample_rate <= 0:
        return None
    if step is None or not step.quality:
        return previous.quality
    return st.quality_status(step.quality, step.signals.get("escalationRate"))


def _result(
    state: ObjectState,
    found: ModelTierStatus,
    desired: ModelTierStatus,
    events: list[Event],
    outcome: str,
    autoscaled: bool = False,
    step: PolicyStep | None = None,
) -> Result:
    """Remembers `desired` and diffs it against the status the API server last showed us."""
    state.status = desired
    patch = st.merge_patch(st.dump(found), st.dump(desired))
    return Result(patch, events, outcome, autoscaled, step, desired.modelled_cost_factor)
