"""Each image carries its own layer only: the operator runs with no Ray, the router with no Kopf.

`lint-imports` (make lint) checks the import graph between tierserve's layers; these tests
check what it cannot: that importing a layer's entry points, with the other layer's third-party
packages made unimportable, still works, and that the extras the images install say the same.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _import_without(blocked: list[str], modules: list[str]) -> subprocess.CompletedProcess[str]:
    """Imports `modules` in a fresh interpreter where `blocked` packages raise ImportError."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        f"for module in {modules!r}:\n"
        "    __import__(module)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{blocked!r} and sys.modules[m] is not None)\n"
        "assert not leaked, leaked\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _names(requirements: list[str]) -> set[str]:
    return {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() for r in requirements}


def test_the_operator_imports_and_runs_its_cli_without_ray_or_vllm() -> None:
    modules = [
        "tierserve.controller.main",
        "tierserve.controller.handlers",
        "tierserve.build.render",
        "tierserve.cli",
    ]
    out = _import_without(["ray", "vllm", "torch"], modules)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_serving_layer_imports_without_kopf_or_kubernetes() -> None:
    modules = ["tierserve.serving.app", "tierserve.serving.ingress", "tierserve.serving.scorers"]
    out = _import_without(["kopf", "kubernetes", "sklearn"], modules)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_extras_match_the_layers() -> None:
    controller, serving = _names(EXTRAS["controller"]), _names(EXTRAS["serving"])
    assert {"kopf", "kubernetes"} <= controller and not {"ray", "vllm", "torch"} & controller
    assert "ray" in serving and not {"kopf", "kubernetes"} & serving
    dockerfile = (ROOT / "docker" / "operator.Dockerfile").read_text()
    assert '"/src[controller]"' in dockerfile
