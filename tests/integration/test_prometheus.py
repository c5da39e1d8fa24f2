"""Prometheus really scrapes a real exporter and answers PromQL over its HTTP API."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tierserve.dev.proc import free_port
from tierserve.dev.prometheus import Prometheus

pytestmark = pytest.mark.integration


def test_scrapes_a_target_and_answers_queries(prometheus: Prometheus) -> None:
    registry = CollectorRegistry()
    queue = Gauge("tierserve_test_queue_length", "a probe gauge", ["tier"], registry=registry)
    queue.labels(tier="frontier").set(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prometheus.set_targets({"probe": [f"127.0.0.1:{port}"]})
        series = prometheus.wait_for_series('tierserve_test_queue_length{tier="frontier"}')
        assert float(series[0]["value"][1]) == 7.0
        assert series[0]["metric"]["job"] == "probe"

        queue.labels(tier="frontier").set(3)
        prometheus.wait_for_series('tierserve_test_queue_length{tier="frontier"} == 3')
        up = prometheus.query('up{job="probe"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        server.shutdown()
        thread.join(timeout=5)
