"""A local Kubernetes control plane made of real upstream binaries: etcd, kube-apiserver and
kube-controller-manager, plus kubectl, helm, the KubeRay CRDs and (optionally) the KubeRay operator.

Why this exists: tierserve's operator must be tested against a real API server (CRD schema
validation, server-side apply, ownerReference garbage collection, namespace deletion), and no
registry reachable from CI ships these binaries. So they are built from the pinned Go modules in
e2e/ and cached under ``cache_dir()`` by a hash of what decides the build; a warm run only checks
that the files exist. There is no kubelet or scheduler: pods stay Pending, which the tests accept.

Modules: `build` (the Go builds), `pki` (certificates, kubeconfigs), `state` (the state file),
`components` (one component as a process), `kuberay` (its CRDs and operator), `cluster` (`up`,
`down`, `status`), `cli` (``python -m tierserve.dev.controlplane build|up|down|status``).
"""

from tierserve.dev.controlplane.build import (
    GoBuild,
    ensure_binaries,
    ensure_helm,
    ensure_kuberay_operator,
    helm_build,
    kube_build,
    kuberay_build,
    kuberay_operator_binary,
    kuberay_version,
    module_version,
)
from tierserve.dev.controlplane.cli import main
from tierserve.dev.controlplane.cluster import down, status, up
from tierserve.dev.controlplane.components import kubectl
from tierserve.dev.controlplane.kuberay import (
    kuberay_crd_index,
    kuberay_crds,
    kuberay_crds_apply,
    start_kuberay_operator,
    stop_kuberay_operator,
)
from tierserve.dev.controlplane.state import ControlPlaneInfo, Ports, default_state_dir

__all__ = [
    "ControlPlaneInfo",
    "GoBuild",
    "Ports",
    "default_state_dir",
    "down",
    "ensure_binaries",
    "ensure_helm",
    "ensure_kuberay_operator",
    "helm_build",
    "kube_build",
    "kubectl",
    "kuberay_build",
    "kuberay_crd_index",
    "kuberay_crds",
    "kuberay_crds_apply",
    "kuberay_operator_binary",
    "kuberay_version",
    "main",
    "module_version",
    "start_kuberay_operator",
    "status",
    "stop_kuberay_operator",
    "up",
]
