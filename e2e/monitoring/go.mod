// Pins the Prometheus Operator whose CRDs (ServiceMonitor, PodMonitor, PrometheusRule) the chart
// test installs, so the chart's monitoring objects are validated by the real API server against
// the upstream schemas (tests/integration/test_chart.py). Only its example/ CRDs are used; nothing
// is built. See e2e/README.md.
module tierserve.io/e2e/monitoring

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
