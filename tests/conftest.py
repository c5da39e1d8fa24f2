"""Shared fixtures. Each real component's fixtures live in tests/fixtures/<component>.py."""

from pathlib import Path

import tierserve

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
