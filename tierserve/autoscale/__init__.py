"""The escalation threshold's control loop: a pure policy and the Prometheus signals it reads."""
