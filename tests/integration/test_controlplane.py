"""The local control plane behaves like a real cluster's, as far as tierserve relies on it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.waiting import eventually
from tierserve.dev import controlplane
from tierserve.dev.controlplane import ControlPlaneInfo, Ports
from tierserve.dev.proc import ComponentError

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "e2e" / "samples"


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_readyz_ok_and_server_reports_pinned_version(kubectl: Any, kube_api: Any) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = client.VersionApi(kube_api).get_code()
    expected = controlplane.kube_build().version()
    assert version.git_version == expected, "ldflags must stamp the real release version"


def test_kuberay_crds_apply_and_sample_rayservice(
    kubectl: Any, kuberay_crds: list[Path], namespace: str
) -> None:
    kinds = {crd["kind"] for crd in controlplane.kuberay_crd_index()}
    assert {"RayService", "RayCluster", "RayJob"} <= kinds
    assert {p.name for p in kuberay_crds} >= {"ray.io_rayservices.yaml", "ray.io_rayclusters.yaml"}
    # The fixture ran `kubectl apply --server-side -f <each CRD>` (client-side apply cannot: the
    # CRDs exceed its 256 KiB annotation cap) and waited for Established; now they are served.
    served = kubectl("api-resources", "--api-group=ray.io", "-o", "name").stdout.split()
    assert {"rayservices.ray.io", "rayclusters.ray.io", "rayjobs.ray.io"} <= set(served)

    kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "rayservice.yaml"))
    listed = kubectl("get", "rayservices", "-n", namespace, "-o", "name").stdout.split()
    assert listed == ["rayservice.ray.io/tierserve-sample"]

    explained = kubectl("explain", "rayservice.spec").stdout
    assert "serveConfigV2" in explained and "rayClusterConfig" in explained


def test_rayservice_schema_is_enforced(
    kubectl: Any, kuberay_crds: list[Path], namespace: str
) -> None:
    bad = yaml.safe_load((SAMPLES / "rayservice.yaml").read_text())
    bad["metadata"]["name"] = "bad"
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"] = "not-a-map"
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0
    assert "rayStartParams" in result.stderr


def test_owned_object_is_garbage_collected(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata and owner.metadata.uid
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owned", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)
    eventually(
        lambda: gone(lambda: core.read_namespaced_config_map("owned", namespace)),
        "ConfigMap 'owned' to be garbage-collected after its owner was deleted",
        timeout=60,
        interval=0.5,
    )


def test_namespace_deletion_completes(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    name = f"doomed-{time.time_ns() % 10**8}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    core.delete_namespace(name)
    eventually(
        lambda: gone(lambda: core.read_namespace(name)),
        f"namespace {name} to be deleted",
        timeout=90,
        interval=0.5,
    )


def test_helm_install_and_uninstall(helm: Any, kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    chart = str(SAMPLES / "chart")
    helm("install", "smoke", chart, "-n", namespace, "--set", "greeting=hi", "--wait",
         "--timeout", "60s", timeout=90)  # fmt: skip
    cm = core.read_namespaced_config_map("smoke-smoke", namespace)
    assert cm.data == {"greeting": "hi"}
    assert "deployed" in helm("status", "smoke", "-n", namespace).stdout

    helm("uninstall", "smoke", "-n", namespace, "--wait", "--timeout", "60s", timeout=90)
    assert gone(lambda: core.read_namespaced_config_map("smoke-smoke", namespace))
    assert "smoke" not in helm("list", "-n", namespace, "-q").stdout.split()


def _assert_one_clear_line(exc: ComponentError, component: str, port: int, state: Path) -> None:
    msg = str(exc)
    assert "\n" not in msg
    assert msg.startswith(f"{component}: ")
    assert f"127.0.0.1:{port}" in msg and "already in use" in msg
    log = state / "logs" / f"{component}.log"
    assert f"see {log}" in msg and log.is_file()
    assert controlplane.ControlPlaneInfo.load(state) is None, "a failed up() leaves nothing behind"


def test_port_in_use_fails_with_one_clear_line(tmp_path: Path) -> None:
    ports = Ports.free()
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.apiserver))
        held.listen()
        with pytest.raises(ComponentError) as info:
            controlplane.up(tmp_path, ports=ports)
    _assert_one_clear_line(info.value, "kube-apiserver", ports.apiserver, tmp_path)


def test_port_bound_but_not_listening_is_reported_by_the_real_binary(tmp_path: Path) -> None:
    # A bound, not-yet-listening socket passes a connect() probe: etcd's own bind must fail and
    # be reported as the port clash it is.
    ports = Ports.free()
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.etcd_client))
        with pytest.raises(ComponentError) as info:
            controlplane.up(tmp_path, ports=ports)
    _assert_one_clear_line(info.value, "etcd", ports.etcd_client, tmp_path)


def test_kuberay_operator_creates_raycluster_for_rayservice(
    control_plane: ControlPlaneInfo, kuberay_crds: list[Path], kube_api: Any, kubectl: Any,
    namespace: str,
) -> None:  # fmt: skip
    binary = controlplane.kuberay_operator_binary()
    if binary is None:
        pytest.skip(
            "KubeRay operator not built (optional; `python -m tierserve.dev.controlplane "
            "build --kuberay` builds it)"
        )
    operator = controlplane.start_kuberay_operator(control_plane, binary)
    try:
        kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "rayservice.yaml"))
        custom = client.CustomObjectsApi(kube_api)

        def raycluster_owned_by_rayservice() -> bool:
            listed: Any = custom.list_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayclusters"
            )
            items = listed["items"]
            return any(
                ref.get("kind") == "RayService" and ref.get("name") == "tierserve-sample"
                for item in items
                for ref in item["metadata"].get("ownerReferences", [])
            )

        eventually(
            raycluster_owned_by_rayservice,
            "the KubeRay operator to create a RayCluster owned by the RayService",
            timeout=120,
            interval=0.5,
        )
        core = client.CoreV1Api(kube_api)
        eventually(
            lambda: (
                core.list_namespaced_pod(namespace, label_selector="ray.io/node-type=head").items
            ),
            "the KubeRay operator to create the Ray head Pod object (it stays Pending: no kubelet)",
            timeout=60,
            interval=0.5,
        )
        assert operator.alive(), f"KubeRay operator exited; see {operator.log}"
    finally:
        controlplane.stop_kuberay_operator(control_plane)
