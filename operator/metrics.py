"""The operator's own Prometheus metrics (documented names; scraped from --metrics-port)."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, start_http_server

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
