"""The operator's own Prometheus metrics (names in docs/metrics.md; served on --metrics-port).

Per-ModelTier series exist while the ModelTier autoscales its threshold: `forget` removes them
when it is deleted or its autoscale removed, so no series outlives what it describes.
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "tierserve_operator_reconciles_total",
    "Reconciles of ModelTiers, by outcome (created, updated, unchanged, error, invalid).",
    ["outcome"],
)
RECONCILE_SECONDS = Histogram(
    "tierserve_operator_reconcile_duration_seconds",
    "Time one reconcile took, including backend calls.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
THRESHOLD = Gauge(
    "tierserve_operator_threshold", "The live escalation threshold.", ["namespace", "modeltier"]
)
DESIRED = Gauge(
    "tierserve_operator_desired_threshold",
    "The threshold the policy is heading for.",
    ["namespace", "modeltier"],
)
PROPOSED = Gauge(
    "tierserve_operator_proposed_threshold",
    "The threshold the policy chose at its last decision (observe mode: would have set).",
    ["namespace", "modeltier"],
)
OBSERVING = Gauge(
    "tierserve_operator_autoscale_observing",
    "1 when the autoscaler is in observe mode (decisions reported, not applied).",
    ["namespace", "modeltier"],
)
SIGNAL = Gauge(
    "tierserve_operator_signal",
    "Signals the threshold policy last used.",
    ["namespace", "modeltier", "signal"],
)
AVAILABLE = Gauge(
    "tierserve_operator_metrics_available",
    "1 when the autoscaler could read its signals from Prometheus.",
    ["namespace", "modeltier"],
)
COST_FACTOR = Gauge(
    "tierserve_operator_modelled_cost_factor",
    "All-top-tier cost divided by the modelled cost at the realized escalation rate.",
    ["namespace", "modeltier"],
)
PER_MODELTIER = (THRESHOLD, DESIRED, PROPOSED, OBSERVING, AVAILABLE, COST_FACTOR)

# The signal series each ModelTier has, to remove exactly those (a signal can go missing).
_signals: dict[tuple[str, str], set[str]] = {}
_started = False


def observe_reconcile(outcome: str, seconds: float) -> None:
    RECONCILES.labels(outcome=outcome).inc()
    RECONCILE_SECONDS.observe(seconds)


def observe_policy(
    namespace: str,
    name: str,
    *,
    threshold: float,
    desired: float,
    proposed: float,
    observing: bool,
    signals: dict[str, float],
    available: bool,
    cost_factor: float | None,
) -> None:
    """One decision of the threshold policy; missing signals have no series."""
    THRESHOLD.labels(namespace, name).set(threshold)
    DESIRED.labels(namespace, name).set(desired)
    PROPOSED.labels(namespace, name).set(proposed)
    OBSERVING.labels(namespace, name).set(1 if observing else 0)
    AVAILABLE.labels(namespace, name).set(1 if available else 0)
    if cost_factor is not None:
        COST_FACTOR.labels(namespace, name).set(cost_factor)
    for gone in _signals.get((namespace, name), set()) - signals.keys():
        SIGNAL.remove(namespace, name, gone)
    for signal, value in signals.items():
        SIGNAL.labels(namespace, name, signal).set(value)
    _signals[(namespace, name)] = set(signals)


def forget(namespace: str, name: str) -> None:
    """Removes every series of this ModelTier (deleted, or no longer autoscaled)."""
    for signal in _signals.pop((namespace, name), set()):
        SIGNAL.remove(namespace, name, signal)
    for gauge in PER_MODELTIER:
        with contextlib.suppress(KeyError):  # never set; prometheus-client < 0.21 raises
            gauge.remove(namespace, name)


def start_server() -> None:
    """Starts the /metrics endpoint once (TIERSERVE_OPERATOR_METRICS_PORT, 0 disables it)."""
    global _started
    port = int(os.environ.get("TIERSERVE_OPERATOR_METRICS_PORT", "8080"))
    if _started or port == 0:
        return
    start_http_server(port, addr=os.environ.get("TIERSERVE_OPERATOR_METRICS_ADDR", "0.0.0.0"))
    _started = True
