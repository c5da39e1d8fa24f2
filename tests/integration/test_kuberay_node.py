"""The product's main path on a real node: `helm install` of the operator (a pod from its image),
`kubectl apply` of a `backend: kuberay` ModelTier, KubeRay's RayService and RayCluster whose
head and worker pods run the serving image, and the router answering through the RayService's
serve Service. Nothing is faked: kubelet + containerd + runc, kube-proxy, CoreDNS, KubeRay.

Heavy (root; the images take ~11 min to build cold, the kubelet and CoreDNS ~9 min each), so it
runs when the images of this exact tree are already built (`make images`) or when
TIERSERVE_NODE_E2E=1 asks for it (then it builds what is missing); otherwise it is skipped,
saying how to run it. It uses the shared stack dir of `python -m tierserve.dev.kuberay_node`
(images imported into the node's containerd are kept there) and stops the stack at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierserve.dev import images, kuberay_node
from tierserve.dev.controlplane.components import kubectl
from tierserve.dev.proc import ComponentError, free_port, wait_until
from tierserve.dev.tinymodels import ensure_models, read_heldout

NAME = "node-sums"
NAMESPACE = "default"
READY_TIMEOUT = 600.0  # two vLLM engines loading on a 2-core node; measured ~100 s idle

# The first test's setup brings the stack up (image import included) and waits for Ready.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def _wanted() -> str | None:
    """Why the test must be skipped, or None to run it."""
    if os.geteuid() != 0:
        return "needs root (a kubelet, containerd, network namespaces)"
    if os.environ.get("TIERSERVE_NODE_E2E") == "1":
        return None
    missing = [k for k in images.KINDS if not images.archive_path(k).exists()]
    if missing:
        return (
            f"images of this tree not built ({', '.join(missing)}): `make images` first, or "
            "TIERSERVE_NODE_E2E=1 to build them here (~11 min cold)"
        )
    return None


@pytest.fixture(scope="module")
def stack() -> Iterator[kuberay_node.Stack]:
    reason = _wanted()
    if reason:
        pytest.skip(reason)
    archives = [images.ensure_image(k) for k in images.KINDS]
    try:
        up = kuberay_node.up(images=archives, operator="pod", operator_namespace=NAMESPACE)
    except ComponentError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield up
    finally:
        kuberay_node.down()


def get(stack: kuberay_node.Stack, *what: str, ns: str = NAMESPACE) -> dict[str, Any] | None:
    try:
        out = kubectl(stack.cp, "get", *what, "-n", ns, "-o", "yaml").stdout
    except ComponentError as exc:
        if "NotFound" in str(exc):
            return None
        raise
    doc: dict[str, Any] = yaml.safe_load(out)
    return doc


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module")
def served(stack: kuberay_node.Stack) -> Iterator[dict[str, Any]]:
    """The tiny ModelTier applied with kubectl, Ready; yields its status."""
    doc = kuberay_node.tiny_kuberay_modeltier(NAME, NAMESPACE)
    kubectl(stack.cp, "apply", "-f", "-", input=yaml.safe_dump(doc))

    def ready() -> dict[str, Any]:
        mt = get(stack, "modeltier", NAME) or {}
        status: dict[str, Any] = mt.get("status") or {}
        degraded = condition(status, "Degraded")
        if degraded.get("status") == "True":
            raise AssertionError(f"Degraded: {degraded.get('reason')}: {degraded.get('message')}")
        return status if condition(status, "Ready").get("status") == "True" else {}

    try:
        yield wait_until(
            ready, timeout=READY_TIMEOUT, component="ModelTier", what="Ready", interval=3,
            retry=(ComponentError,),
        )  # fmt: skip
    finally:
        with contextlib.suppress(ComponentError):
            kubectl(stack.cp, "delete", "modeltier", NAME, "-n", NAMESPACE, "--wait=false")


def test_the_operator_runs_as_a_pod_from_its_image(stack: kuberay_node.Stack) -> None:
    deploy = get(stack, "deployment", kuberay_node.OPERATOR_RELEASE,
                 ns=kuberay_node.OPERATOR_NAMESPACE)  # fmt: skip
    assert deploy is not None, "helm install created no operator Deployment"
    assert deploy["status"].get("readyReplicas") == 1
    pod = deploy["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == images.REFS["operator"]
    assert pod["serviceAccountName"] == kuberay_node.OPERATOR_RELEASE


def test_a_kuberay_modeltier_serves_through_the_rayservice(
    stack: kuberay_node.Stack, served: dict[str, Any], tmp_path: Path
) -> None:
    # Status from KubeRay's, as the external backend shows it: per-tier readiness, the live
    # threshold, the Serve application.
    assert served["ready"] == "2/2"
    assert {t["name"]: t["ready"] for t in served["tiers"]} == {"small": True, "large": True}
    doc = kuberay_node.tiny_kuberay_modeltier(NAME, NAMESPACE)
    spec_threshold = doc["spec"]["routing"]["escalation"]["threshold"]
    assert served["escalation"]["threshold"] == pytest.approx(spec_threshold)

    # The objects the operator owns: a RayService whose cluster's pods run the serving image.
    rs = get(stack, "rayservice", NAME)
    assert rs is not None
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelTier", NAME)
    pods = get(
        stack,
        "pods",
        "-l",
        f"ray.io/cluster={rs['status']['activeServiceStatus']['rayClusterName']}",
    )
    assert pods is not None
    running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    assert len(running) >= 3, "head + one worker per tier"
    assert {c["image"] for p in running for c in p["spec"]["containers"]} == {
        kuberay_node.SERVING_IMAGE
    }

    # The router answers OpenAI requests through the RayService's serve Service.
    port = free_port()
    forward = kuberay_node.port_forward(
        stack.cp, NAMESPACE, f"svc/{NAME}-serve-svc", port, 8000, tmp_path / "pf.log"
    )
    try:
        prompts = read_heldout(ensure_models().heldout)[:20]
        base = f"http://127.0.0.1:{port}/{NAME}/v1"
        correct, tiers = 0, set()
        with httpx.Client(timeout=120) as http:
            for example in prompts:
                r = http.post(
                    f"{base}/completions",
                    json={"model": NAME, "prompt": example["prompt"], "max_tokens": 4},
                )
                assert r.status_code == 200, r.text
                body = r.json()
                tiers.add(body["tierserve"]["tier"])
                # The cascade: an answer from 'large' is an escalation, one from 'small' is not.
                assert body["tierserve"]["escalated"] == (body["tierserve"]["tier"] == "large")
                correct += body["choices"][0]["text"].strip() == example["answer"]
            bad = http.post(f"{base}/completions", json={"model": NAME, "prompt": 7})
    finally:
        forward.stop()
    assert correct >= 0.8 * len(prompts), f"{correct}/{len(prompts)} held-out sums right"
    assert tiers <= {"small", "large"} and tiers
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


def test_deleting_the_modeltier_removes_its_rayservice(
    stack: kuberay_node.Stack, served: dict[str, Any]
) -> None:
    kubectl(stack.cp, "delete", "modeltier", NAME, "-n", NAMESPACE, "--wait=true",
            "--timeout=120s", timeout=150)  # fmt: skip
    wait_until(
        lambda: get(stack, "rayservice", NAME) is None, timeout=120, component="RayService",
        what="deleted", interval=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "break_it", "expected"),
    [
        (
            "node-noimage",
            lambda ray: ray.update(image="localhost/tierserve/does-not-exist:0"),
            "ErrImageNeverPull",
        ),
        (
            "node-nosecret",
            lambda ray: ray.update(hubTokenSecret={"name": "no-such-secret"}),
            "CreateContainerConfigError",
        ),
    ],
)
def test_pods_that_cannot_run_show_as_degraded_with_the_kubelets_message(
    stack: kuberay_node.Stack, name: str, break_it: Any, expected: str
) -> None:
    """Bad input on this path is not a silent Pending: the ModelTier says which pod cannot run
    and why, in the kubelet's words. Runs after the serving tests (whose pods are gone by
    then); the requests are tiny, so these pods are placed and fail for the intended reason."""
    # The serving tests' pods hold most of the node's CPU until they have terminated.
    wait_until(
        lambda: not (get(stack, "pods", "-l", "ray.io/node-type") or {}).get("items"),
        timeout=180, component="pods", what="gone from earlier tests", interval=3,
        retry=(ComponentError,),
    )  # fmt: skip
    doc = kuberay_node.tiny_kuberay_modeltier(name, NAMESPACE)
    for shape in [doc["spec"]["ray"]["head"], *(t["pod"] for t in doc["spec"]["tiers"])]:
        shape["resources"]["requests"] = {"cpu": "10m", "memory": "64Mi"}
    break_it(doc["spec"]["ray"])
    kubectl(stack.cp, "apply", "-f", "-", input=yaml.safe_dump(doc))
    try:

        def degraded() -> dict[str, Any]:
            status = (get(stack, "modeltier", name) or {}).get("status") or {}
            cond = condition(status, "Degraded")
            found = cond.get("reason") == "PodsFailing" and expected in cond.get("message", "")
            return status if found else {}

        try:
            status = wait_until(
                degraded, timeout=180, component="ModelTier",
                what=f"Degraded (PodsFailing, {expected})", interval=3, retry=(ComponentError,),
            )  # fmt: skip
        except ComponentError as exc:
            seen = (get(stack, "modeltier", name) or {}).get("status")
            pods = kubectl(stack.cp, "get", "pods", "-A", "-o", "wide").stdout
            raise AssertionError(f"{exc}\nstatus: {seen}\npods:\n{pods}") from exc
        cond = condition(status, "Degraded")
        assert cond["status"] == "True" and expected in cond["message"], cond
        assert condition(status, "Ready")["status"] == "False"
    finally:
        kubectl(stack.cp, "delete", "modeltier", name, "-n", NAMESPACE, "--wait=true",
                "--timeout=120s", timeout=150)  # fmt: skip
