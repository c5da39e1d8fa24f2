"""Building the control plane's binaries from the pinned Go modules in e2e/.

No registry reachable from CI ships these binaries, so they are built with `go build` and cached
under ``cache_dir()`` by a hash of what decides the build (pins, ldflags, packages); a warm run
only checks that the files exist. Concurrent builds of the same thing (make and a test run, say)
are serialised by a lock file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tierserve.dev.proc import ComponentError, cache_dir, file_lock, logs_dir

REPO_ROOT = Path(__file__).resolve().parents[3]
E2E_DIR = REPO_ROOT / "e2e"
BUILD_TIMEOUT = 3600.0


def say(msg: str) -> None:
    """Progress goes to stderr so `up`'s stdout stays eval-able (`eval "$(... up)"`)."""
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class GoBuild:
    """One `go build` of a pinned module; the output dir is keyed by version and content hash."""

    component: str  # cache subdir and log name: k8s, helm, kuberay
    module_dir: Path
    pinned_module: str  # whose version names the cache dir
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    hashed_files: tuple[str, ...]
    cold_minutes: int  # measured on 2 cores (after the k8s build warmed GOCACHE), for progress
    ldflags: str = "-s -w"

    def version(self) -> str:
        return module_version(self.module_dir / "go.mod", self.pinned_module)

    def bin_dir(self) -> Path:
        digest = hashlib.sha256(self.ldflags.encode())
        digest.update(" ".join(self.packages).encode())
        for name in self.hashed_files:
            path = self.module_dir / name
            if not path.is_file():
                raise ComponentError(self.component, f"missing {path} (is this a full checkout?)")
            digest.update(name.encode() + b"\0" + path.read_bytes())
        return cache_dir() / self.component / f"{self.version()}-{digest.hexdigest()[:12]}" / "bin"

    def built(self) -> bool:
        try:
            bin_dir = self.bin_dir()
        except ComponentError:
            return False
        return all((bin_dir / b).is_file() for b in self.binaries)


def module_version(gomod: Path, module: str) -> str:
    """The version `gomod` requires of `module` (go.mod is the single place versions are pinned)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod.read_text(), re.M)
    if not match:
        raise ComponentError("build", f"{gomod} does not require {module}")
    return match.group(1)


def _kube_ldflags() -> str:
    # What kubernetes' hack/lib/version.sh sets, so /version and `kubectl version` report the
    # real release instead of v0.0.0-master (helm and clients parse the server version).
    version = module_version(E2E_DIR / "kube" / "go.mod", "k8s.io/kubernetes")
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        for key, value in (
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", "1970-01-01T00:00:00Z"),
        ):
            flags.append(f"-X {pkg}.{key}={value}")
    return " ".join(flags)


def _helm_ldflags() -> str:
    # As helm's Makefile does: its version, and the Kubernetes version `helm template` assumes.
    gomod = E2E_DIR / "helm" / "go.mod"
    version = module_version(gomod, "helm.sh/helm/v3")
    minor = module_version(gomod, "k8s.io/client-go").split(".")[1]
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}",
             "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]  # fmt: skip
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def kube_build() -> GoBuild:
    return GoBuild(
        component="k8s",
        module_dir=E2E_DIR / "kube",
        pinned_module="k8s.io/kubernetes",
        packages=(
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kubectl",
            "./etcd",
        ),
        binaries=("kube-apiserver", "kube-controller-manager", "kubectl", "etcd"),
        hashed_files=("go.mod", "go.sum", "etcd/main.go"),
        cold_minutes=6,
        ldflags=_kube_ldflags(),
    )


def helm_build() -> GoBuild:
    return GoBuild(
        component="helm",
        module_dir=E2E_DIR / "helm",
        pinned_module="helm.sh/helm/v3",
        packages=("helm.sh/helm/v3/cmd/helm",),
        binaries=("helm",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=2,
        ldflags=_helm_ldflags(),
    )


def kuberay_build() -> GoBuild:
    return GoBuild(
        component="kuberay",
        module_dir=E2E_DIR / "kuberay",
        pinned_module="github.com/ray-project/kuberay/ray-operator",
        packages=("github.com/ray-project/kuberay/ray-operator",),
        binaries=("ray-operator",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=2,
    )


def go_executable() -> str:
    go = shutil.which("go")
    if not go:
        raise ComponentError(
            "go", "the Go toolchain is not on PATH; install Go >= 1.26 (https://go.dev/dl)"
        )
    return go


def go_build(spec: GoBuild) -> Path:
    """Builds `spec` unless its binaries are already cached; returns the bin dir."""
    bin_dir = spec.bin_dir()
    if spec.built():
        return bin_dir
    lock = bin_dir.parent / ".build.lock"
    what = f"able to lock {lock} (another build holds it)"
    with file_lock(lock, timeout=BUILD_TIMEOUT, component=spec.component, what=what):
        if spec.built():  # another process finished it while we waited
            return bin_dir
        go = go_executable()
        log = logs_dir() / f"build-{spec.component}.log"
        names = ", ".join(spec.binaries)
        say(
            f"==> building {names} {spec.version()} (cold build takes ~{spec.cold_minutes} min on "
            f"2 cores, warm seconds; log: {log})"
        )
        began = time.monotonic()
        out = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_dir.parent))
        argv = [go, "build", "-ldflags", spec.ldflags, "-o", f"{out}/", *spec.packages]
        try:
            with open(log, "w") as fh:
                fh.write(f"$ (cd {spec.module_dir} && {' '.join(argv)})\n")
                fh.flush()
                try:
                    result = subprocess.run(
                        argv,
                        cwd=spec.module_dir,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        timeout=BUILD_TIMEOUT,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise ComponentError(
                        spec.component, f"go build still running after {BUILD_TIMEOUT:.0f}s", log
                    ) from None
            if result.returncode != 0:
                raise ComponentError(
                    spec.component, f"go build failed with exit code {result.returncode}", log
                )
            bin_dir.mkdir(parents=True, exist_ok=True)
            for name in spec.binaries:
                os.replace(out / name, bin_dir / name)  # atomic: never a half-written binary
        finally:
            shutil.rmtree(out, ignore_errors=True)
        say(f"==> built {names} in {time.monotonic() - began:.0f}s -> {bin_dir}")
    return bin_dir


def ensure_binaries() -> Path:
    """kube-apiserver, kube-controller-manager, kubectl and etcd; returns their directory."""
    return go_build(kube_build())


def ensure_helm() -> Path:
    """The helm binary, built from e2e/helm (its own module so its k8s libraries stay its own)."""
    return go_build(helm_build()) / "helm"


def kuberay_operator_binary() -> Path | None:
    """The KubeRay operator if it has been built already; never builds (a cold build is slow)."""
    spec = kuberay_build()
    return spec.bin_dir() / "ray-operator" if spec.built() else None


def ensure_kuberay_operator() -> Path | None:
    """Builds the KubeRay operator (optional component): None, with one line said, on failure."""
    try:
        return go_build(kuberay_build()) / "ray-operator"
    except ComponentError as exc:
        say(f"==> KubeRay operator not available: {exc}")
        return None


def kuberay_version() -> str:
    return kuberay_build().version()


def kubelet_build() -> GoBuild:
    """The kubelet, for a local node (tierserve.dev.controlplane.node), from e2e/node: the same
    k8s.io/kubernetes release as e2e/kube (checked by node.py), in its own module because the
    kubelet needs modules e2e/kube's go.sum does not list (and changing that would rebuild it)."""
    return GoBuild(
        component="kubelet",
        module_dir=E2E_DIR / "node",
        pinned_module="k8s.io/kubernetes",
        packages=("k8s.io/kubernetes/cmd/kubelet",),
        binaries=("kubelet",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=9,  # 558 s with a cold GOCACHE, beside a concurrent k8s build
        ldflags=_kube_ldflags(),
    )


def scheduler_build() -> GoBuild:
    """kube-scheduler, for a local node (pods without spec.nodeName get bound): e2e/kube's
    go.sum already covers it, so it is built from there, cached apart from kube_build()."""
    return GoBuild(
        component="kube-scheduler",
        module_dir=E2E_DIR / "kube",
        pinned_module="k8s.io/kubernetes",
        packages=("k8s.io/kubernetes/cmd/kube-scheduler",),
        binaries=("kube-scheduler",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=1,  # 17 s once the k8s build warmed GOCACHE
        ldflags=_kube_ldflags(),
    )


def kube_proxy_build() -> GoBuild:
    """kube-proxy (iptables mode), so Service cluster IPs route on a local node: from e2e/proxy,
    the same k8s.io/kubernetes release as e2e/kube and e2e/node (its own module: kube-proxy needs
    k8s.io/kube-proxy, which neither of their go.sum files lists)."""
    return GoBuild(
        component="kube-proxy",
        module_dir=E2E_DIR / "proxy",
        pinned_module="k8s.io/kubernetes",
        packages=("k8s.io/kubernetes/cmd/kube-proxy",),
        binaries=("kube-proxy",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=2,
        ldflags=_kube_ldflags(),
    )


def coredns_build() -> GoBuild:
    """CoreDNS, the cluster DNS of a local node (its `kubernetes` plugin serves cluster.local
    from the API server), from e2e/coredns."""
    version = module_version(E2E_DIR / "coredns" / "go.mod", "github.com/coredns/coredns")
    return GoBuild(
        component="coredns",
        module_dir=E2E_DIR / "coredns",
        pinned_module="github.com/coredns/coredns",
        packages=("github.com/coredns/coredns",),
        binaries=("coredns",),
        hashed_files=("go.mod", "go.sum"),
        cold_minutes=5,
        # as CoreDNS's Makefile does (GITCOMMIT); the version itself is a constant in coremain
        ldflags=f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={version}",
    )
