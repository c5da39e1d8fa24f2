"""The operator against the real control plane: ModelTier in, owned RayService out.

There is no kubelet here, so KubeRay cannot run Ray pods; these tests check what the operator
writes and how the API server treats it (admission, ownership, garbage collection).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.operator import start_operator
from tests.waiting import eventually
from tierserve.dev.controlplane import ControlPlaneInfo
from tierserve.dev.proc import Process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
Run = Callable[..., subprocess.CompletedProcess[str]]


def get(kubectl: Run, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    out = kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_applying_an_example_creates_its_owned_rayservice(
    example: Path, kubectl: Run, namespace: str, operator: Process
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(example))
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    mt = get(kubectl, "mt", name, namespace)
    assert mt is not None
    rs = eventually(lambda: get(kubectl, "rayservice", name, namespace), "the RayService")
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "ModelTier",
        mt["metadata"]["uid"],
        True,
    )
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert len(serve["applications"][0]["args"]["tiers"]) == len(mt["spec"]["tiers"])

    def status_written() -> dict[str, Any] | None:
        live = get(kubectl, "mt", name, namespace) or {"metadata": {}}
        status = live.get("status") or {}
        generation = live["metadata"].get("generation")
        return status if status.get("observedGeneration") == generation else None

    status = eventually(status_written, "status with observedGeneration")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert set(conditions) == {"Ready", "Progressing", "Degraded"}
    assert conditions["Progressing"]["status"] == "True"  # no Ray pods can start here
    assert conditions["Degraded"]["status"] == "False"

    table = kubectl("get", "mt", "-n", namespace).stdout
    header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
    assert header == ["NAME", "TIERS", "MODE", "THRESHOLD", "READY", "AGE"]
    tiers = ",".join(t["name"] for t in mt["spec"]["tiers"])
    assert row[:5] == [
        name,
        tiers,
        mt["spec"]["routing"]["mode"],
        str(mt["spec"]["routing"]["escalation"]["threshold"]),
        f"0/{len(mt['spec']['tiers'])}",
    ]


def test_changing_replicas_and_tp_updates_the_rayservice_in_place(
    kubectl: Run, namespace: str, operator: Process
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "three-tier-upfront.yaml"))
    rs = eventually(lambda: get(kubectl, "rayservice", "code-helper", namespace), "the RayService")
    patch = [
        {"op": "replace", "path": "/spec/tiers/0/replicas/max", "value": 6},
        {"op": "replace", "path": "/spec/tiers/1/tensorParallelSize", "value": 1},
        {"op": "replace", "path": "/spec/tiers/1/gpusPerReplica", "value": 1},
    ]
    kubectl("patch", "mt", "code-helper", "-n", namespace, "--type=json", "-p", json.dumps(patch))

    def updated() -> dict[str, Any] | None:
        live = get(kubectl, "rayservice", "code-helper", namespace) or {}
        groups = {g["groupName"]: g for g in live["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        return live if "gpu2" not in groups and groups["gpu1"]["maxReplicas"] == 6 + 4 else None

    live = eventually(updated, "the RayService to follow the new spec")
    assert live["metadata"]["uid"] == rs["metadata"]["uid"]  # updated, not recreated
    args = yaml.safe_load(live["spec"]["serveConfigV2"])["applications"][0]["args"]
    medium = args["tiers"][1]["llmConfig"]
    assert medium["engine_kwargs"]["tensor_parallel_size"] == 1


def test_hand_edits_of_the_rayservice_are_reverted(
    kubectl: Run, namespace: str, operator: Process
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "support-assistant.yaml"))
    eventually(lambda: get(kubectl, "rayservice", "support-assistant", namespace), "the RayService")
    kubectl(
        "patch",
        "rayservice",
        "support-assistant",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"rayClusterConfig": {"rayVersion": "2.0.0"}}}),
    )
    eventually(
        lambda: (
            (get(kubectl, "rayservice", "support-assistant", namespace) or {})["spec"][
                "rayClusterConfig"
            ]["rayVersion"]
            == "2.60.0"
        ),
        "the hand edit to be reverted",
    )
    # Server-side apply: the operator's field manager owns what it renders.
    out = kubectl(
        "get", "rayservice", "support-assistant", "-n", namespace, "-o", "json",
        "--show-managed-fields",
    )  # fmt: skip
    fields = json.loads(out.stdout)["metadata"]["managedFields"]
    managers = {(f["manager"], f["operation"]) for f in fields}
    assert ("tierserve", "Apply") in managers, managers


def test_deleting_the_modeltier_removes_what_it_created(
    kubectl: Run, namespace: str, operator: Process
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "support-assistant.yaml"))
    eventually(lambda: get(kubectl, "rayservice", "support-assistant", namespace), "the RayService")
    kubectl("delete", "mt", "support-assistant", "-n", namespace, "--wait=true", "--timeout=30s")
    eventually(
        lambda: get(kubectl, "rayservice", "support-assistant", namespace) is None,
        "garbage collection of the RayService",
        timeout=60,
    )


def test_operator_restart_makes_no_duplicates_and_no_writes(
    control_plane: ControlPlaneInfo, kubectl: Run, namespace: str, modeltier_crd: None
) -> None:
    # A static threshold: with autoscaling on and no Prometheus, the time without signals is
    # itself news, and the status says so every interval.
    first = start_operator(control_plane, namespace)
    try:
        kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "three-tier-upfront.yaml"))
        eventually(
            lambda: ((get(kubectl, "mt", "code-helper", namespace) or {}).get("status") or {}).get(
                "observedGeneration"
            ),
            "first status",
        )
        time.sleep(3)  # let the first resyncs settle
    finally:
        first.stop()
    before_mt = get(kubectl, "mt", "code-helper", namespace)
    before_rs = get(kubectl, "rayservice", "code-helper", namespace)
    assert before_mt and before_rs
    second = start_operator(control_plane, namespace)
    try:
        time.sleep(6)  # resume + several 1 s resyncs
    finally:
        second.stop()
    after_mt = get(kubectl, "mt", "code-helper", namespace)
    after_rs = get(kubectl, "rayservice", "code-helper", namespace)
    assert after_mt and after_rs
    assert after_mt["metadata"]["resourceVersion"] == before_mt["metadata"]["resourceVersion"]
    assert after_rs["metadata"]["resourceVersion"] == before_rs["metadata"]["resourceVersion"]
    items = json.loads(kubectl("get", "rayservices", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(items) == 1
    # Metadata is exactly what the user applied plus what the API server sets: no annotations.
    assert "annotations" not in after_mt["metadata"] or set(
        after_mt["metadata"]["annotations"]
    ) <= {"kubectl.kubernetes.io/last-applied-configuration"}


def test_kubectl_explain_teaches_the_api(kubectl: Run, modeltier_crd: None) -> None:
    out = kubectl("explain", "modeltier.spec.tiers").stdout
    assert "gpusPerReplica" in out and "GPUs per replica" in out
    out = kubectl("explain", "modeltier.spec.routing.escalation.threshold").stdout
    assert "fewer escalations" in out


def _base() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "support-assistant.yaml").read_text())
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


DELETE = object()

# (case id, path to change, new value, text the API server's refusal must contain)
INVALID = [
    ("no-tiers", "spec.tiers", [], "spec.tiers"),
    ("tp-times-pp-vs-gpus", "spec.tiers.1.tensorParallelSize", 4, "spec.tiers[1].gpusPerReplica"),
    ("cpu-tier-with-tp", "spec.tiers.1.gpusPerReplica", 0, "spec.tiers[1].gpusPerReplica"),
    (
        "replicas-min-above-max",
        "spec.tiers.0.replicas",
        {"min": 5, "max": 2},
        "spec.tiers[0].replicas.min",
    ),
    (
        "target-above-max-ongoing",
        "spec.tiers.0.replicas",
        {"targetOngoingRequests": 8, "maxOngoingRequests": 4},
        "spec.tiers[0].replicas.targetOngoingRequests",
    ),
    ("negative-gpus", "spec.tiers.0.gpusPerReplica", -1, "spec.tiers[0].gpusPerReplica"),
    ("bad-tier-name", "spec.tiers.0.name", "Small_Tier", "spec.tiers[0].name"),
    ("duplicate-tier-names", "spec.tiers.1.name", "small", "spec.tiers[1]"),
    ("missing-model", "spec.tiers.0.model", DELETE, "spec.tiers[0].model"),
    ("unknown-mode", "spec.routing.mode", "roundrobin", "spec.routing.mode"),
    (
        "threshold-above-one",
        "spec.routing.escalation.threshold",
        1.5,
        "spec.routing.escalation.threshold",
    ),
    (
        "threshold-outside-bounds",
        "spec.routing.escalation.threshold",
        0.95,
        "spec.routing.escalation.threshold",
    ),
    (
        "bounds-inverted",
        "spec.routing.escalation.bounds",
        {"min": 0.8, "max": 0.2},
        "spec.routing.escalation.bounds.min",
    ),
    ("one-tier-cascade", "spec.tiers", [_base()["spec"]["tiers"][0]], "spec.routing.mode"),
    ("kuberay-without-image", "spec.ray.image", DELETE, "spec.ray.image"),
    ("external-without-dashboard", "spec.ray.backend", "external", "spec.ray.dashboardURL"),
    (
        "bad-interval",
        "spec.routing.escalation.autoscale.interval",
        "soon",
        "spec.routing.escalation.autoscale.interval",
    ),
    ("unknown-backend", "spec.ray.backend", "slurm", "spec.ray.backend"),
    ("unknown-field", "spec.tiers.0.gpuPerReplica", 2, "gpuPerReplica"),
    ("bad-fallback", "spec.routing.fallback", "random", "spec.routing.fallback"),
    ("negative-cost", "spec.tiers.0.costPerHour", -1, "spec.tiers[0].costPerHour"),
    (
        "unknown-autoscale-mode",
        "spec.routing.escalation.autoscale.mode",
        "dryrun",
        "spec.routing.escalation.autoscale.mode",
    ),
    (
        "unknown-cascade-score",
        "spec.routing.cascade",
        {"score": "percentile"},
        "spec.routing.cascade.score",
    ),
    (
        "rank-window-too-small",
        "spec.routing.cascade",
        {"rank": {"window": 2}},
        "spec.routing.cascade.rank.window",
    ),
    (
        "self-check-without-yes",
        "spec.routing.cascade",
        {"confidence": "selfCheck", "selfCheck": {"yesTokens": []}},
        "spec.routing.cascade.selfCheck.yesTokens",
    ),
    (
        "judge-tier-unknown",
        "spec.routing.shadow",
        {"judgeTier": "medium"},
        "spec.routing.shadow.judgeTier",
    ),
    (
        "judge-prompt-without-answers",
        "spec.routing.shadow",
        {"judge": "pairwise", "judgePrompt": "Which is better?"},
        "spec.routing.shadow.judgePrompt",
    ),
]


@pytest.mark.parametrize(("case", "path", "value", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_refused_naming_the_field(
    case: str, path: str, value: Any, field: str, kubectl: Run, namespace: str, modeltier_crd: None
) -> None:
    doc = _set(_base(), path, value)
    doc["metadata"]["name"] = case
    out = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0, f"{case} was accepted"
    assert field in out.stderr, out.stderr
    assert get(kubectl, "mt", case, namespace) is None
