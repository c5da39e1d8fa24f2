"""The Argo CD health check for ModelTier (deploy/argocd/health.lua), run by a real Lua 5.4.

Argo CD runs the script with the live object in the global `obj` and reads the returned table's
`status` and `message`. The harness here does the same: the object becomes a Lua table literal,
the script is loaded with `dofile`, and the result is printed. The cases are Argo CD's own test
layout (deploy/argocd/health_test.yaml + testdata/), plus edge cases built inline.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
LUA = shutil.which("lua5.4")

HARNESS = """
local hs = dofile(arg[1])
io.write(hs.status, "\\n", hs.message or "", "\\n")
"""


def lua_literal(value: Any) -> str:
    """A Python JSON-like value as a Lua expression (lists become 1-based sequences)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this data
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def health(obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    if LUA is None:
        pytest.fail("lua5.4 is not installed (apt-get install lua5.4)", pytrace=False)
    harness = tmp_path / "harness.lua"
    harness.write_text(f"obj = {lua_literal(obj)}\n{HARNESS}")
    out = subprocess.run(
        [LUA, str(harness), str(HEALTH_LUA)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    status, message = out.stdout.split("\n")[:2]
    return status, message


CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_health_of_sample_objects(case: dict[str, Any], tmp_path: Path) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    expected = case["healthStatus"]
    assert health(obj, tmp_path) == (expected["status"], expected["message"])


def test_covers_ready_progressing_degraded_and_no_status() -> None:
    statuses = {c["healthStatus"]["status"] for c in CASES}
    assert statuses == {"Healthy", "Progressing", "Degraded"}
    assert {Path(c["inputPath"]).stem for c in CASES} >= {
        "ready",
        "new-generation",
        "degraded",
        "no-status",
    }


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ARGOCD / "testdata" / f"{name}.yaml").read_text())
    return doc


def test_a_degraded_status_about_an_older_generation_is_progressing(tmp_path: Path) -> None:
    obj = _load("degraded")
    obj["metadata"]["generation"] = 3  # the user fixed the spec; the operator has not seen it
    status, message = health(obj, tmp_path)
    assert status == "Progressing"
    assert "generation 3" in message


def test_degraded_wins_over_ready(tmp_path: Path) -> None:
    obj = _load("ready")
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Degraded":
            cond.update(status="True", message="Ray dashboard is unreachable")
    assert health(obj, tmp_path) == ("Degraded", "Ray dashboard is unreachable")


def test_status_without_conditions_is_progressing(tmp_path: Path) -> None:
    obj = _load("ready")
    obj["status"] = {"observedGeneration": 3}
    assert health(obj, tmp_path) == (
        "Progressing",
        "Waiting for the ModelTier to become Ready",
    )


def test_status_written_by_kopf_only_is_progressing(tmp_path: Path) -> None:
    """Kopf's bookkeeping can land in status before the first reconcile writes anything."""
    obj = _load("no-status")
    obj["status"] = {"kopf": {"progress": {}}}
    status, _ = health(obj, tmp_path)
    assert status == "Progressing"


def test_generation_given_as_float_like_argo_cds_json_numbers(tmp_path: Path) -> None:
    """gopher-lua (Argo CD's Lua) holds JSON numbers as floats; comparisons must still work."""
    obj = copy.deepcopy(_load("new-generation"))
    obj["metadata"]["generation"] = 4.0
    obj["status"]["observedGeneration"] = 3.0
    status, message = health(obj, tmp_path)
    assert status == "Progressing"
    assert "generation 4 " in message


def test_argocd_cm_snippet_embeds_health_lua_verbatim() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    script = cm["data"]["resource.customizations.health.tierserve.io_ModelTier"]
    assert script == HEALTH_LUA.read_text()


def test_example_application_deploys_the_chart_with_server_side_apply() -> None:
    docs = list(yaml.safe_load_all((ARGOCD / "application.yaml").read_text()))
    apps = {d["metadata"]["name"]: d for d in docs}
    operator = apps["tierserve-operator"]
    assert operator["kind"] == "Application"
    assert operator["spec"]["source"]["path"] == "charts/tierserve"
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").is_file()
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    modeltiers = apps["tierserve-modeltiers"]
    assert (ROOT / modeltiers["spec"]["source"]["path"]).is_dir()
    wave = "argocd.argoproj.io/sync-wave"
    assert int(modeltiers["metadata"]["annotations"][wave]) > int(
        operator["metadata"]["annotations"][wave]
    )
