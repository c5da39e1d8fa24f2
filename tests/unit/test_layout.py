"""The operator/ folder never breaks the standard library's `operator` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_operator_works_when_run_from_the_checkout_root() -> None:
    # `python -c` from the root puts the root first on sys.path, as vLLM's spawned processes do.
    code = "import operator, collections; print(operator.eq(2, 2), collections.Counter('aa')['a'])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "2"]


def test_operator_and_serving_folders_are_tierserve_subpackages() -> None:
    import tierserve.operator
    import tierserve.serving

    assert Path(next(iter(tierserve.operator.__path__))).resolve() == ROOT / "operator"
    assert Path(next(iter(tierserve.serving.__path__))).resolve() == ROOT / "serving"
