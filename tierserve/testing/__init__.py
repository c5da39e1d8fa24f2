"""Real local components for tests and the demo: control plane, Ray, Prometheus, tiny models.

Everything here starts real upstream processes on loopback; nothing is mocked.
"""
