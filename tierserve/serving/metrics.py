"""The ingress's Prometheus metrics (names in docs/metrics.md).

They are Ray Serve application metrics, so Ray's metrics agent exports them (with a `ray_`
prefix) next to Serve's and vLLM's own, from every ingress replica, with no extra endpoint.
Where they go is a `MetricSink`: Ray's by default; tests pass a `MemorySink` and read the values
back, with no Ray running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ray.serve import metrics as serve_metrics

LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
CONFIDENCE_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def _keys(*names: str) -> Any:
    """Ray types tag_keys as Tuple[str] though it takes any number of keys."""
    return names


class Counter(Protocol):
    def inc(self, value: float, tags: dict[str, str]) -> Any: ...


class Histogram(Protocol):
    def observe(self, value: float, tags: dict[str, str]) -> Any: ...


class Gauge(Protocol):
    def set(self, value: float, tags: dict[str, str]) -> Any: ...


class MetricSink(Protocol):
    """Makes the metric objects, with `ray.serve.metrics`' constructor arguments."""

    def counter(self, name: str, description: str, tag_keys: Any) -> Counter: ...

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Any
    ) -> Histogram: ...

    def gauge(self, name: str, description: str, tag_keys: Any) -> Gauge: ...


class RaySink:
    """Ray Serve application metrics, exported by Ray's metrics agent."""

    def counter(self, name: str, description: str, tag_keys: Any) -> Counter:
        return serve_metrics.Counter(name, description, tag_keys)

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Any
    ) -> Histogram:
        return serve_metrics.Histogram(name, description, boundaries, tag_keys)

    def gauge(self, name: str, description: str, tag_keys: Any) -> Gauge:
        return serve_metrics.Gauge(name, description, tag_keys)


Tags = tuple[tuple[str, str], ...]


class _Recorded:
    def __init__(self, sink: MemorySink, name: str, tag_keys: Sequence[str]):
        self.sink, self.name, self.tag_keys = sink, name, set(tag_keys)
        sink.declared[name] = tuple(tag_keys)

    def _key(self, tags: dict[str, str]) -> Tags:
        if set(tags) != self.tag_keys:  # as strict as Ray: every declared label, no other
            raise ValueError(f"{self.name}: labels {sorted(tags)} != {sorted(self.tag_keys)}")
        return tuple(sorted(tags.items()))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        key = (self.name, self._key(tags))
        self.sink.values[key] = self.sink.values.get(key, 0.0) + value

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sink.values[(self.name, self._key(tags))] = value

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.sink.observed.setdefault((self.name, self._key(tags)), []).append(value)


class MemorySink:
    """Keeps every value in memory (counters summed, gauges last, histograms as lists)."""

    def __init__(self) -> None:
        self.declared: dict[str, tuple[str, ...]] = {}
        self.values: dict[tuple[str, Tags], float] = {}
        self.observed: dict[tuple[str, Tags], list[float]] = {}

    def counter(self, name: str, description: str, tag_keys: Any) -> Counter:
        return _Recorded(self, name, tag_keys)

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Any
    ) -> Histogram:
        return _Recorded(self, name, tag_keys)

    def gauge(self, name: str, description: str, tag_keys: Any) -> Gauge:
        return _Recorded(self, name, tag_keys)

    def get(self, name: str, **tags: str) -> float:
        """Sum over the series of `name` whose labels include `tags`."""
        return sum(
            v for (n, key), v in self.values.items() if n == name and set(tags.items()) <= set(key)
        )

    def samples(self, name: str, **tags: str) -> Sequence[float]:
        return [
            v
            for (n, key), vs in self.observed.items()
            if n == name and set(tags.items()) <= set(key)
            for v in vs
        ]


class IngressMetrics:
    def __init__(self, model_tier: str, sink: MetricSink | None = None):
        metrics = sink or RaySink()
        self.tags = {"modeltier": model_tier}
        self._requests = metrics.counter(
            "tierserve_requests",
            "Requests answered, by tier.",
            _keys("modeltier", "tier", "mode", "outcome"),
        )
        self._tokens = metrics.counter(
            "tierserve_tokens",
            "Prompt and completion tokens, by tier.",
            _keys("modeltier", "tier", "kind"),
        )
        self._escalations = metrics.counter(
            "tierserve_escalations",
            "Escalations up the ladder, by reason.",
            _keys("modeltier", "from_tier", "to_tier", "reason"),
        )
        self._confidence = metrics.histogram(
            "tierserve_confidence",
            "Confidence scores cascade decisions were made on.",
            CONFIDENCE_BUCKETS,
            _keys("modeltier", "tier"),
        )
        self._decision = metrics.histogram(
            "tierserve_routing_decision_seconds",
            "Time spent deciding where a request goes (excludes generation).",
            LATENCY_BUCKETS,
            _keys("modeltier"),
        )
        self._fallbacks = metrics.counter(
            "tierserve_fallbacks",
            "Requests moved off a failing tier.",
            _keys("modeltier", "from_tier", "to_tier", "reason"),
        )
        self._shadow = metrics.counter(
            "tierserve_shadow_evaluations",
            "Lower-tier answers compared with the top tier's.",
            _keys("modeltier", "tier", "agreed"),
        )
        self._self_checks = metrics.counter(
            "tierserve_self_checks",
            "selfCheck calls to a lower tier (their cost: one more prompt each), by outcome.",
            _keys("modeltier", "tier", "outcome"),
        )
        self._shadow_verdicts = metrics.counter(
            "tierserve_shadow_verdicts",
            "Shadow evaluations by verdict for the kept lower-tier answer (win, tie, loss, "
            "unparseable, error) and judge (exactMatch, pairwise).",
            _keys("modeltier", "tier", "judge", "verdict"),
        )
        self._shadow_dropped = metrics.counter(
            "tierserve_shadow_dropped",
            "Sampled answers not evaluated (concurrency, budget, overloaded).",
            _keys("modeltier", "tier", "reason"),
        )
        self._shadow_in_flight = metrics.gauge(
            "tierserve_shadow_in_flight",
            "Shadow evaluations in progress on this router replica.",
            _keys("modeltier", "tier"),
        )
        self._in_flight = metrics.gauge(
            "tierserve_in_flight_requests",
            "Requests in progress, by tier.",
            _keys("modeltier", "tier"),
        )
        self._gpu_seconds = metrics.counter(
            "tierserve_gpu_seconds",
            "Request seconds times GPUs per replica, for cost accounting.",
            _keys("modeltier", "tier"),
        )
        self._cost = metrics.counter(
            "tierserve_cost",
            "Spend by the cost ledger's prices, by tier and kind (answer, wasted, self_check, "
            "shadow, judge).",
            _keys("modeltier", "tier", "mode", "kind"),
        )
        self._top_tier_alone = metrics.counter(
            "tierserve_top_tier_alone_cost",
            "What the top tier alone would have charged for the answers, by answering tier.",
            _keys("modeltier", "tier", "mode"),
        )
        self._capped = metrics.counter(
            "tierserve_capped_requests",
            "Requests a per-request cap kept off a higher tier, by the tier that answered.",
            _keys("modeltier", "tier", "cap"),
        )
        self._threshold = metrics.gauge(
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

    def self_check(self, tier: str, outcome: str, usage: dict[str, Any]) -> None:
        """One selfCheck call (`ok` or `error`); its tokens count as the tier's `self_check`."""
        self._self_checks.inc(1, self._t(tier=tier, outcome=outcome))
        for kind in ("prompt", "completion"):
            count = usage.get(f"{kind}_tokens")
            if count:
                self._tokens.inc(count, self._t(tier=tier, kind=f"self_check_{kind}"))

    def shadow_verdict(self, tier: str, judge: str, verdict: str) -> None:
        self._shadow_verdicts.inc(1, self._t(tier=tier, judge=judge, verdict=verdict))

    def shadow_dropped(self, tier: str, reason: str) -> None:
        self._shadow_dropped.inc(1, self._t(tier=tier, reason=reason))

    def shadow_in_flight(self, tier: str, change: int) -> None:
        key = f"shadow:{tier}"
        self._active[key] = self._active.get(key, 0) + change
        self._shadow_in_flight.set(self._active[key], self._t(tier=tier))

    def gpu_seconds(self, tier: str, gpus: int, seconds: float) -> None:
        if gpus > 0:
            self._gpu_seconds.inc(gpus * seconds, self._t(tier=tier))

    def cost(self, tier: str, mode: str, kind: str, value: float) -> None:
        """Spend on `tier` (ledger prices); zero is not recorded (Ray's counters refuse it)."""
        if value > 0:
            self._cost.inc(value, self._t(tier=tier, mode=mode, kind=kind))

    def top_tier_alone(self, tier: str, mode: str, value: float) -> None:
        """An answer of `tier` priced at the top tier's rates: savings = this - cost. A counter
        of savings could not be: one request's savings are negative when it climbed."""
        if value > 0:
            self._top_tier_alone.inc(value, self._t(tier=tier, mode=mode))

    def capped(self, tier: str, cap: str) -> None:
        """A cap (`rungs`, `cost`) stopped a request from going above `tier`."""
        self._capped.inc(1, self._t(tier=tier, cap=cap))

    def threshold(self, value: float) -> None:
        self._threshold.set(value, self._t())

    def in_flight(self, tier: str, change: int) -> None:
        """A call to `tier` started (+1) or ended (-1)."""
        self._active[tier] = self._active.get(tier, 0) + change
        self._in_flight.set(self._active[tier], self._t(tier=tier))
