"""The operator's own Prometheus metrics (documented names; scraped from --metrics-port)."""

from __future__ import annotations

import os
from typing import Any

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

_started = False


def observe_reconcile(outcome: str, seconds: float) -> None:
    RECONCILES.labels(outcome=outcome).inc()
    RECONCILE_SECONDS.observe(seconds)


def start_server() -> None:
    """Starts the /metrics endpoint once (TIERSERVE_OPERATOR_METRICS_PORT, 0 disables it)."""
    global _started
    port = int(os.environ.get("TIERSERVE_OPERATOR_METRICS_PORT", "8080"))
    if _started or port == 0:
        return
    start_http_server(port, addr=os.environ.get("TIERSERVE_OPERATOR_METRICS_ADDR", "0.0.0.0"))
    _started = True


THRESHOLD = Gauge(
    "tierserve_operator_threshold", "The live escalation threshold.", ["namespace", "modeltier"]
)
DESIRED = Gauge(
    "tierserve_operator_desired_threshold",
    "The threshold the policy is heading for.",
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
COST_REDUCTION = Gauge(
    "tierserve_operator_modelled_cost_factor",
    "All-top-tier cost divided by the modelled cost at the realized escalation rate.",
    ["namespace", "modeltier"],
)


def observe_threshold(
    namespace: str,
    name: str,
    decision: Any,
    signals: dict[str, float],
    available: bool,
    reduction: float | None,
) -> None:
    THRESHOLD.labels(namespace, name).set(decision.threshold)
    DESIRED.labels(namespace, name).set(decision.desired)
    AVAILABLE.labels(namespace, name).set(1 if available else 0)
    for signal, value in signals.items():
        SIGNAL.labels(namespace, name, signal).set(value)
    if reduction is not None:
        COST_REDUCTION.labels(namespace, name).set(reduction)
