"""The whole kuberay stack on this machine: control plane + a real node (containerd, kubelet,
kube-scheduler, kube-proxy, CoreDNS) + the serving image imported + the KubeRay operator (a pod
from an image of its binary, or a host process) + the tierserve operator. Dev tooling (Linux,
root), for `tierserve demo --backend kuberay` and tests.

    python -m tierserve.dev.kuberay_node up [--detach]   # prints each step's time
    python -m tierserve.dev.kuberay_node down            # stops what `up --detach` left running
    python -m tierserve.dev.kuberay_node raycluster      # a hand-written RayCluster (head + 1)
    python -m tierserve.dev.kuberay_node modeltier       # the tiny models as a kuberay ModelTier

Without `--detach`, `up` holds everything until Ctrl-C/SIGTERM and then stops it; every process
is bound to the caller either way (tierserve.dev.proc), and the node's janitor undoes the host
changes (mounts, namespaces, the bridge, KUBE-* iptables chains, cgroups) if the caller dies.

Everything gets its own state dir (default ``cache_dir()/kuberay-node``), so it never collides
with a control plane or node someone else started from the default ones; the node's containerd
root lives there too, so an image is imported once and kept across `down`/`up` (`down --purge`
deletes it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from tierserve.dev.controlplane import cluster
from tierserve.dev.controlplane.build import REPO_ROOT, say
from tierserve.dev.controlplane.components import (
    alive,
    apiserver_ready,
    kubectl,
    rss_mib,
    stop_pid,
)
from tierserve.dev.controlplane.kuberay import start_kuberay_operator
from tierserve.dev.controlplane.node import NodeInfo, import_image, start_node, stop_node
from tierserve.dev.controlplane.state import ControlPlaneInfo
from tierserve.dev.operator_run import start_operator
from tierserve.dev.proc import (
    ComponentError,
    Process,
    cache_dir,
    interrupt_on_signals,
)

SERVING_IMAGE = "localhost/tierserve/serving:0.1.0-cpu"
OperatorMode = Literal["pod", "host", "none"]
STATE_FILE = "stack.json"
OPERATOR = "tierserve-operator"


def default_stack_dir() -> Path:
    return cache_dir() / "kuberay-node"


def image_archive(kind: str = "serving") -> Path:
    """The newest locally built image archive of `kind` (tierserve.dev.images); never builds
    (a cold serving image takes ~11 min: `python -m tierserve.dev.images build`)."""
    archives = sorted(
        (cache_dir() / "images").glob(f"{kind}-*.oci.tar"), key=lambda p: p.stat().st_mtime
    )
    if not archives:
        raise ComponentError(
            "images", f"no {kind} image archive: `python -m tierserve.dev.images build {kind}`"
        )
    return archives[-1]


@dataclass
class Stack:
    state_dir: Path
    cp: ControlPlaneInfo
    node: NodeInfo
    operator: Process | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.cp.kubeconfig)}

    def kubectl(self, *args: str, **kwargs: Any) -> str:
        return kubectl(self.cp, *args, **kwargs).stdout


def _step(timings: dict[str, float], name: str, began: float) -> None:
    timings[name] = time.monotonic() - began
    say(f"==> [{timings[name]:6.1f}s] {name}")


IMPORTED_FILE = "imported.json"


def _archive_id(archive: Path) -> str:
    stat = archive.stat()
    return f"{archive.name}:{stat.st_size}:{int(stat.st_mtime)}"


def archive_images(archive: Path) -> list[str]:
    """The image names an OCI archive's index.json gives (its first members, as written)."""
    import tarfile

    with tarfile.open(archive, "r|") as tar:
        for member in tar:
            if member.name.lstrip("./") == "index.json":
                fh = tar.extractfile(member)
                index = json.loads(fh.read()) if fh else {}
                names = []
                for manifest in index.get("manifests", []):
                    notes = manifest.get("annotations", {})
                    ref = notes.get("org.opencontainers.image.ref.name", "")
                    name = notes.get("io.containerd.image.name") or ("/" in ref and ref)
                    if name:
                        names.append(name)
                return names
    return []


def ensure_image(node: NodeInfo, archive: Path) -> bool:
    """Imports `archive` unless this node's containerd already holds exactly it (the node's
    images outlive `down`); True if it imported. An archive rebuilt since is imported again."""
    record = node.state_dir / IMPORTED_FILE
    imported = json.loads(record.read_text()) if record.is_file() else {}
    images = archive_images(archive)
    listed = set(node.ctr("images", "list", "-q").stdout.split())
    if imported.get(archive.name) == _archive_id(archive) and images and set(images) <= listed:
        say(f"==> {archive.name} already imported ({', '.join(images)})")
        return False
    import_image(node, archive)
    imported = {k: v for k, v in imported.items() if k.split("-")[0] != archive.name.split("-")[0]}
    imported[archive.name] = _archive_id(archive)
    record.write_text(json.dumps(imported, indent=2))
    return True


def apply_tierserve_crds(cp: ControlPlaneInfo) -> None:
    kubectl(cp, "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", "-f",
            str(REPO_ROOT / "crds"), timeout=90)  # fmt: skip


OPERATOR_RELEASE = "tierserve"
OPERATOR_NAMESPACE = "tierserve-system"

KUBERAY_NAMESPACE = "kuberay-system"
KUBERAY_NAME = "kuberay-operator"
KUBERAY_PROBE_PORT = 8082
KubeRayMode = Literal["pod", "host"]


def kuberay_manifests(rules: list[dict[str, Any]], image: str, key: str) -> list[dict[str, Any]]:
    """The KubeRay operator as a pod, the way its own config/manager and config/rbac install it:
    a ServiceAccount bound to KubeRay's ClusterRole (`rules`, from its module), one Deployment
    (Recreate, leader election off: one replica), non-root with a read-only root filesystem.
    `key` (the image archive's hash) rolls the pod when the image changes under the same tag.
    In a pod it dials each head's dashboard through cluster DNS, as on any cluster (the host
    process needs --use-kubernetes-proxy instead). The CPU request is token-sized: the node's
    2 cores are the Ray pods'."""
    labels = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": KUBERAY_NAME}
    meta = {"name": KUBERAY_NAME, "namespace": KUBERAY_NAMESPACE, "labels": labels}

    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": KUBERAY_PROBE_PORT}, "periodSeconds": 5}

    container = {
        "name": KUBERAY_NAME,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["/manager"],
        "args": [
            "--enable-leader-election=false",
            "--log-stdout-encoder=console",
            "--metrics-addr=:8080",
            f"--health-probe-bind-address=:{KUBERAY_PROBE_PORT}",
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": probe("/readyz"),
        "livenessProbe": probe("/healthz"),
        "resources": {
            "requests": {"cpu": "10m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = {
        "metadata": {"labels": labels, "annotations": {"tierserve.io/image-hash": key}},
        "spec": {
            "serviceAccountName": KUBERAY_NAME,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [container],
        },
    }
    cluster_meta = {"name": KUBERAY_NAME, "labels": labels}
    subject = {"kind": "ServiceAccount", "name": KUBERAY_NAME, "namespace": KUBERAY_NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUBERAY_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": cluster_meta,
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": cluster_meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": KUBERAY_NAME,
            },
            "subjects": [subject],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": pod,
            },
        },
    ]


def kuberay_image() -> Path:
    """The KubeRay operator's image archive, built from the binary of the pinned module."""
    from tierserve.dev.controlplane.build import ensure_kuberay_operator, kuberay_version
    from tierserve.dev.images import ensure_binary_image

    binary = ensure_kuberay_operator()
    if binary is None:
        raise ComponentError("kuberay-operator", "the KubeRay operator could not be built")
    return ensure_binary_image("kuberay", binary, f"localhost/kuberay/operator:{kuberay_version()}")


def install_kuberay_pod(cp: ControlPlaneInfo, archive: Path) -> None:
    """KubeRay's CRDs, then its operator as a Deployment from `archive` (already imported into
    the node's containerd); waits (bounded) until its pod is ready."""
    from tierserve.dev.controlplane.kuberay import kuberay_crds_apply, kuberay_rbac_rules

    kuberay_crds_apply(cp, only_missing=True)
    (image,) = archive_images(archive)
    docs = kuberay_manifests(kuberay_rbac_rules(), image, archive.name)
    kubectl(cp, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        kubectl(cp, "rollout", "status", f"deployment/{KUBERAY_NAME}", "-n", KUBERAY_NAMESPACE,
                "--timeout=180s", timeout=200)  # fmt: skip
    except ComponentError as exc:
        pods = _pod_list(cp, KUBERAY_NAMESPACE)
        raise ComponentError(KUBERAY_NAME, f"not ready as a pod: {exc}\n{pods}") from None


def _pod_list(cp: ControlPlaneInfo, namespace: str) -> str:
    """`kubectl get pods -o wide` of `namespace`, for an error message ("" if it fails too)."""
    with contextlib.suppress(ComponentError):
        return kubectl(cp, "get", "pods", "-n", namespace, "-o", "wide").stdout
    return ""


def helm_install_operator(cp: ControlPlaneInfo, state: Path, namespace: str | None) -> None:
    """`helm upgrade --install` of charts/tierserve with the locally built operator image (never
    pulled): the operator runs as the chart's Deployment, under its ServiceAccount and RBAC,
    in OPERATOR_NAMESPACE, and reaches the API server in-cluster (the `kubernetes` Service).
    The chart ships the CRDs, but helm never upgrades a CRD that exists (etcd outlives `down`
    here, as a cluster outlives a release): they are applied server-side first, as the chart's
    README tells users to on every upgrade. Waits (bounded) until the pod is ready."""
    apply_tierserve_crds(cp)
    from tierserve.dev.controlplane.build import ensure_helm
    from tierserve.dev.images import REFS, image_hash

    repository, tag = REFS["operator"].rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [namespace] if namespace else [],
        "operator": {"resyncSeconds": 5},
        # The tag stays while the image changes: the hash of what went into it rolls the
        # Deployment, or the operator pod kept in etcd from an earlier run (started by the
        # kubelet before this image was imported) would go on running the old code.
        "podAnnotations": {"tierserve.io/image-hash": image_hash("operator")},
    }
    values_file = state / "operator-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    import subprocess

    chart = REPO_ROOT / "charts" / "tierserve"
    argv = [str(ensure_helm()), "upgrade", "--install", OPERATOR_RELEASE, str(chart),
            "-n", OPERATOR_NAMESPACE, "--create-namespace", "-f", str(values_file),
            "--wait", "--timeout", "180s"]  # fmt: skip
    out = subprocess.run(
        argv, env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        pods = _pod_list(cp, OPERATOR_NAMESPACE)
        raise ComponentError(
            "tierserve-operator",
            f"helm install failed: {out.stderr.strip() or out.stdout.strip()}\n{pods}",
        )


def port_forward(
    cp: ControlPlaneInfo, namespace: str, target: str, port: int, remote: int, log: Path
) -> Process:
    """`kubectl port-forward` of `target` (e.g. svc/x-serve-svc) to 127.0.0.1:`port`, bound to
    this process; returns once the port accepts connections (bounded)."""
    from tierserve.dev.proc import port_in_use, start, wait_until

    proc = start(
        "port-forward",
        [str(cp.kubectl), f"--kubeconfig={cp.kubeconfig}", "port-forward", "-n", namespace,
         "--address", "127.0.0.1", target, f"{port}:{remote}"],
        log=log,
    )  # fmt: skip
    try:
        wait_until(
            lambda: port_in_use(port), timeout=30, component="port-forward",
            what=f"listening on 127.0.0.1:{port}", log=log, proc=proc.popen,
        )  # fmt: skip
    except BaseException:
        proc.stop()
        raise
    return proc


def start_tierserve_operator(
    cp: ControlPlaneInfo, state: Path, namespace: str | None, *, detach: bool
) -> Process:
    """`tierserve operator` as a host process (one namespace, or all with None)."""
    return start_operator(
        {"KUBECONFIG": str(cp.kubeconfig)},
        namespace,
        resync=5.0,
        log=state / "logs" / "tierserve-operator.log",
        bind=not detach,
    )


def up(
    state_dir: Path | str | None = None,
    *,
    images: Sequence[Path] | None = None,
    operator_namespace: str | None = "default",
    operator: OperatorMode = "pod",
    kuberay: KubeRayMode = "pod",
    detach: bool = False,
) -> Stack:
    """Brings the whole stack up (idempotent per step; builds what is missing) and returns it.
    Timings per step are printed and kept in `Stack.timings`. On failure everything started is
    stopped again.

    `operator`: "pod" installs the chart (the operator as a pod from its image, the main path
    users take), "host" runs `tierserve operator` as a host process (faster to iterate on: no
    image rebuild after a code change), "none" leaves it out. `kuberay`: "pod" runs the KubeRay
    operator as a Deployment from an image of its binary, "host" as a host process."""
    state = Path(state_dir) if state_dir else default_stack_dir()
    state.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        t = time.monotonic()
        cp = cluster.up(state / "controlplane", detach=detach)
        _step(timings, "control plane", t)
        t = time.monotonic()
        node = start_node(cp, state / "node", services=True, detach=detach)
        _step(timings, "node (containerd, kubelet, scheduler, kube-proxy, CoreDNS)", t)
        if images is None:
            kinds = ["serving", "operator"] if operator == "pod" else ["serving"]
            images = [image_archive(kind) for kind in kinds]
        for archive in images:
            t = time.monotonic()
            ensure_image(node, archive)
            _step(timings, f"image {archive.name}", t)
        t = time.monotonic()
        if kuberay == "pod":
            archive = kuberay_image()
            ensure_image(node, archive)
            install_kuberay_pod(cp, archive)
            _step(timings, "KubeRay operator (a pod)", t)
        else:  # never two KubeRay operators: a pod kept in etcd from a "pod" run goes
            kubectl(cp, "delete", "deployment", KUBERAY_NAME, "-n", KUBERAY_NAMESPACE,
                    "--ignore-not-found", timeout=60)  # fmt: skip
            start_kuberay_operator(cp, detach=detach, use_kubernetes_proxy=True)
            _step(timings, "KubeRay operator (host process)", t)
        stack = Stack(state, cp, node, timings=timings)
        if operator == "host":
            t = time.monotonic()
            apply_tierserve_crds(cp)
            stack.operator = start_tierserve_operator(cp, state, operator_namespace, detach=detach)
            _save(state, {OPERATOR: stack.operator})
            _step(timings, "tierserve CRDs and operator (host process)", t)
        elif operator == "pod":
            t = time.monotonic()
            helm_install_operator(cp, state, operator_namespace)
            _step(timings, "tierserve operator (helm install, a pod)", t)
    except BaseException:
        with contextlib.suppress(Exception):
            down(state)
        raise
    timings["total"] = time.monotonic() - began
    say(f"==> stack up in {timings['total']:.1f}s; export KUBECONFIG={cp.kubeconfig}")
    return stack


def _save(state: Path, procs: dict[str, Process]) -> None:
    data = {n: {"pid": p.popen.pid, "start_time": p.start_time} for n, p in procs.items()}
    (state / STATE_FILE).write_text(json.dumps(data))


def down(state_dir: Path | str | None = None, *, purge: bool = False) -> list[str]:
    """Stops everything `up` started from `state_dir` (from any process), node host changes
    undone; keeps images and certificates unless `purge`."""
    state = Path(state_dir) if state_dir else default_stack_dir()
    done: list[str] = []
    path = state / STATE_FILE
    if path.is_file():
        for name, rec in json.loads(path.read_text()).items():
            if alive(rec["pid"], rec["start_time"]):
                stop_pid(name, rec["pid"], rec["start_time"])
                done.append(f"stopped {name} (pid {rec['pid']})")
        path.unlink()
    cp = ControlPlaneInfo.load(state / "controlplane")
    if cp is not None and apiserver_ready(cp):
        # While the API server still answers: ModelTiers (etcd data outlives `down`, so a kept
        # one would be deployed again at the next `up`), then the Ray objects they owned.
        with contextlib.suppress(ComponentError):
            kubectl(cp, "delete", "modeltiers.tierserve.io", "--all", "-A", "--wait=false",
                    timeout=30)  # fmt: skip
        with contextlib.suppress(ComponentError):
            kubectl(cp, "delete", "rayservices,rayclusters", "--all", "-A", "--wait=false",
                    timeout=30)  # fmt: skip
    done += stop_node(state / "node", purge=purge)
    if cluster.down(state / "controlplane"):
        done.append("stopped the control plane (and the KubeRay operator)")
    return done


def memory(stack_dir: Path | str | None = None) -> list[str]:
    """RSS of each host component and memory of each pod (its cgroup's usage)."""
    state = Path(stack_dir) if stack_dir else default_stack_dir()
    lines = []
    cp = ControlPlaneInfo.load(state / "controlplane")
    node = NodeInfo.load(state / "node")
    for info in (cp, node):
        for name, pid in (info.pids if info else {}).items():
            rss = rss_mib(pid)
            lines.append(f"{name}: {rss:.0f} MiB" if rss is not None else f"{name}: gone")
    root = Path("/sys/fs/cgroup")
    for top in (root / "memory" / "kubepods", root / "kubepods"):
        for pod in sorted(top.rglob("pod*")) if top.is_dir() else []:
            if not pod.name.startswith("pod") or not pod.is_dir():
                continue
            usage = pod / "memory.usage_in_bytes"
            usage = usage if usage.is_file() else pod / "memory.current"
            with contextlib.suppress(OSError, ValueError):
                lines.append(f"pod {pod.name}: {int(usage.read_text()) / 2**20:.0f} MiB")
    return lines


# ---- The hand-written RayCluster and the ModelTier


def raycluster(name: str = "raytest", image: str = SERVING_IMAGE) -> dict[str, Any]:
    """A RayCluster with a head and one worker, sized for a 2-core machine."""

    def pod(container: str, cpu_request: str, cpu_limit: str, memory: str) -> dict[str, Any]:
        return {
            "spec": {
                "containers": [
                    {
                        "name": container,
                        "image": image,
                        "imagePullPolicy": "Never",
                        "resources": {
                            "requests": {"cpu": cpu_request, "memory": memory},
                            "limits": {"cpu": cpu_limit, "memory": memory},
                        },
                        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                    }
                ],
                "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            }
        }

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": pod("ray-head", "250m", "1", "3Gi"),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "cpu",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": pod("ray-worker", "250m", "1", "3Gi"),
                }
            ],
        },
    }


def pod_models_dir(root: Path, state_dir: Path | None = None) -> Path:
    """A copy of the tiny models (a few MB) that the serving image's `ray` user (UID 1000, GID
    100) owns: the cache's weights are root's and mode 0600, unreadable in the pods, and HF_HOME
    (the model cache's mount) must be writable for the hub's own cache files."""
    import shutil

    dest = (state_dir or default_stack_dir()) / "models" / root.name
    if not (dest / ".complete").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(root, dest)
        for path in [dest, *dest.rglob("*")]:
            os.chown(path, 1000, 100)
            path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def tiny_kuberay_modeltier(
    name: str = "tiny-sums",
    namespace: str = "default",
    routing: dict[str, Any] | None = None,
    route_prefix: str | None = None,
) -> dict[str, Any]:
    """The demo's tiny models as a kuberay ModelTier on the local node: the models directory as
    spec.ray.modelCache.hostPath (read-only), the local serving image (never pulled), small CPU
    requests, /dev/shm as memory. `routing` as in tiered.tiny_modeltier; the route prefix is
    /<name> unless given."""
    from tierserve.dev.tiered import tiny_modeltier
    from tierserve.dev.tinymodels import ensure_models

    models_dir = pod_models_dir(ensure_models().root)
    mount = "/models"
    doc = tiny_modeltier(
        name,
        {tier: f"{mount}/{tier}" for tier in ("small", "large")},
        dashboard_url="http://unused",
        route_prefix=route_prefix or f"/{name}",
        namespace=namespace,
        routing=routing,
    )
    shm = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
    shm_mount = {"name": "shm", "mountPath": "/dev/shm"}
    volumes: list[dict[str, Any]] = [shm]
    mounts: list[dict[str, Any]] = [shm_mount]

    def pod(cpu_request: str, cpu_limit: str, memory: str) -> dict[str, Any]:
        return {
            "resources": {
                "requests": {"cpu": cpu_request, "memory": memory},
                "limits": {"cpu": cpu_limit, "memory": memory},
            },
            "volumes": volumes,
            "volumeMounts": mounts,
        }

    doc["spec"]["ray"] = {
        "backend": "kuberay",
        "image": SERVING_IMAGE,
        "imagePullPolicy": "Never",
        "routePrefix": route_prefix or f"/{name}",
        "modelCache": {"hostPath": str(models_dir), "mountPath": mount},
        "head": pod("250m", "1", "3Gi"),
    }
    for tier in doc["spec"]["tiers"]:
        # Ray's logical CPUs come from the limit (KubeRay sets num-cpus from it): a CPU tier's
        # replica needs 2 (ray.serve.llm puts the replica actor's CPU into its placement
        # bundle with the engine's); the third is headroom (the router is pinned to the head:
        # render.ROUTER_RESOURCE); the request stays small so both workers and the head fit on
        # 2 cores.
        tier["pod"] = pod("500m", "3", "5Gi")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierserve.dev.kuberay_node")
    parser.add_argument("--state-dir", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up")
    up_cmd.add_argument("--detach", action="store_true")
    up_cmd.add_argument(
        "--operator", choices=get_args(OperatorMode), default="pod",
        help="pod: helm install the chart (default); host: a host process; none",
    )  # fmt: skip
    up_cmd.add_argument(
        "--kuberay", choices=get_args(KubeRayMode), default="pod",
        help="pod: the KubeRay operator as a Deployment (default); host: a host process",
    )  # fmt: skip
    up_cmd.add_argument(
        "--no-images", action="store_true", help="import nothing (use what the node holds)"
    )
    down_cmd = sub.add_parser("down")
    down_cmd.add_argument("--purge", action="store_true")
    sub.add_parser("memory")
    sub.add_parser("raycluster", help="print the hand-written RayCluster")
    mt = sub.add_parser("modeltier", help="print the tiny kuberay ModelTier")
    mt.add_argument("--name", default="tiny-sums")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            stack = up(
                args.state_dir,
                images=[] if args.no_images else None,
                operator=args.operator,
                kuberay=args.kuberay,
                detach=args.detach,
            )
            print(f"export KUBECONFIG={stack.cp.kubeconfig}")
            print(f"export PATH={stack.cp.bin_dir}:$PATH")
            if not args.detach:
                say("==> holding the stack; Ctrl-C stops it")
                interrupt_on_signals()
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
                for line in down(args.state_dir):
                    say(line)
        elif args.command == "down":
            for line in down(args.state_dir, purge=args.purge):
                say(line)
        elif args.command == "memory":
            print("\n".join(memory(args.state_dir)))
        elif args.command == "raycluster":
            print(yaml.safe_dump(raycluster(), sort_keys=False))
        else:
            print(yaml.safe_dump(tiny_kuberay_modeltier(args.name), sort_keys=False))
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
