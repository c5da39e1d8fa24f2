"""Shared fixtures. Each real component's fixtures live in tests/fixtures/<component>.py."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

import tierserve
from tierserve.dev.proc import interrupt_on_signals

# Property tests explore freely on developers' machines; CI replays a fixed sequence so a
# submission is judged on its code, not on the draw (failures found locally become @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

pytest_plugins = [
    "tests.fixtures.controlplane",
    "tests.fixtures.ray",
    "tests.fixtures.prometheus",
    "tests.fixtures.operator",
]

# The venv is shared by every checkout on this machine; `make` points it at the one that runs it.
ROOT = Path(__file__).resolve().parents[1]
if Path(tierserve.__file__).resolve().parent != ROOT / "tierserve":
    raise RuntimeError(
        f"the venv imports tierserve from {Path(tierserve.__file__).parent}, not from this "
        f"checkout ({ROOT}); run `make test` (or scripts/install-python.sh) here first"
    )


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM/SIGHUP (a CI runner cancelling, a closed terminal) end the run like Ctrl-C does:
    by default they kill pytest at once and no fixture teardown runs, leaving the control plane,
    Prometheus and Ray running. As a KeyboardInterrupt they stop the session and pytest tears
    every fixture down. SIGKILL is covered by the parent-death signal and the watchdog of
    tierserve.dev.proc."""
    interrupt_on_signals()
