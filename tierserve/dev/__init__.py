"""Development harness: real local components for tests and the demo (control plane, Ray,
Prometheus, tiny models). Nothing here is imported by the operator or the router at runtime.
"""
