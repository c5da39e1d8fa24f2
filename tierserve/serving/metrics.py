"""The router's Prometheus metrics (names in docs/metrics.md).

They are Ray Serve application metrics, so Ray's metrics agent exports them (with a `ray_`
prefix) next to Serve's and vLLM's own, from every router replica, with no extra endpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ray.serve import metrics

LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
CONFIDENCE_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def _keys(*names: str) -> Any:
    """Ray types tag_keys as Tuple[str] though it takes any number of keys."""
    return names


class RouterMetrics:
    def __init__(self, model_tier: str):
        self.tags = {"modeltier": model_tier}
        self._requests = metrics.Counter(
            "tierserve_requests",
            "Requests answered, by tier.",
            _keys("modeltier", "tier", "mode", "outcome"),
        )
        self._tokens = metrics.Counter(
            "tierserve_tokens",
            "Prompt and completion tokens, by tier.",
            _keys("modeltier", "tier", "kind"),
        )
        self._escalations = metrics.Counter(
            "tierserve_escalations",
            "Escalations up the ladder, by reason.",
            _keys("modeltier", "from_tier", "to_tier", "reason"),
        )
        self._confidence = metrics.Histogram(
            "tierserve_confidence",
            "Confidence scores cascade decisions were made on.",
            CONFIDENCE_BUCKETS,
            _keys("modeltier", "tier"),
        )
        self._decision = metrics.Histogram(
            "tierserve_routing_decision_seconds",
            "Time spent deciding where a request goes (excludes generation).",
            LATENCY_BUCKETS,
            _keys("modeltier"),
        )
        self._fallbacks = metrics.Counter(
            "tierserve_fallbacks",
            "Requests moved off a failing tier.",
            _keys("modeltier", "from_tier", "to_tier", "reason"),
        )
        self._shadow = metrics.Counter(
            "tierserve_shadow_evaluations",
            "Lower-tier answers compared with the top tier's.",
            _keys("modeltier", "tier", "agreed"),
        )
        self._in_flight = metrics.Gauge(
            "tierserve_in_flight_requests",
            "Requests in progress, by tier.",
            _keys("modeltier", "tier"),
        )
        self._gpu_seconds = metrics.Counter(
            "tierserve_gpu_seconds",
            "Request seconds times GPUs per replica, for cost accounting.",
            _keys("modeltier", "tier"),
        )
        self._threshold = metrics.Gauge(
            "tierserve_escalation_threshold",
            "The threshold the router uses now.",
            _keys("modeltier"),
        )
        self._active: dict[str, int] = {}

    def _t(self, **tags: str) -> dict[str, str]:
        return {**self.tags, **tags}

    def answered(self, tier: str, mode: str, usage: dict[str, Any], outcome: str = "ok") -> None:
        self._requests.inc(1, self._t(tier=tier, mode=mode, outcome=outcome))
        for kind in ("prompt", "completion"):
            count = usage.get(f"{kind}_tokens")
            if count:
                self._tokens.inc(count, self._t(tier=tier, kind=kind))

    def escalation(self, from_tier: str, to_tier: str, reason: str) -> None:
        self._escalations.inc(1, self._t(from_tier=from_tier, to_tier=to_tier, reason=reason))

    def confidence(self, tier: str, value: float) -> None:
        self._confidence.observe(value, self._t(tier=tier))

    def decision(self, seconds: float) -> None:
        self._decision.observe(seconds, self._t())

    def fallback(self, from_tier: str, to_tier: str, reason: str) -> None:
        self._fallbacks.inc(1, self._t(from_tier=from_tier, to_tier=to_tier, reason=reason))

    def shadow(self, tier: str, agreed: bool) -> None:
        self._shadow.inc(1, self._t(tier=tier, agreed=str(agreed).lower()))

    def gpu_seconds(self, tier: str, gpus: int, seconds: float) -> None:
        if gpus > 0:
            self._gpu_seconds.inc(gpus * seconds, self._t(tier=tier))

    def threshold(self, value: float) -> None:
        self._threshold.set(value, self._t())

    @contextlib.contextmanager
    def in_flight(self, tier: str) -> Iterator[None]:
        self._active[tier] = self._active.get(tier, 0) + 1
        self._in_flight.set(self._active[tier], self._t(tier=tier))
        try:
            yield
        finally:
            self._active[tier] -= 1
            self._in_flight.set(self._active[tier], self._t(tier=tier))
