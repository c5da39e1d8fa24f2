"""Shared fixtures. Each real component's fixtures live in tests/fixtures/<component>.py."""

pytest_plugins = [
    "tests.fixtures.controlplane",
    "tests.fixtures.ray",
    "tests.fixtures.prometheus",
    "tests.fixtures.operator",
]
