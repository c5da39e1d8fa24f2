"""KubeRay on the local control plane: its CRDs (taken from the pinned ray-operator Go module, so
they always match the operator's version), installed and waited for until served, and its
operator run as one more component (it reconciles RayService -> RayCluster -> Pods objects;
with no kubelet the pods stay Pending).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tierserve.dev.controlplane.build import (
    E2E_DIR,
    ensure_kuberay_operator,
    go_executable,
    kuberay_version,
)
from tierserve.dev.controlplane.components import (
    get,
    kubectl,
    launch,
    ssl_context,
    stop_pid,
    wait_started,
)
from tierserve.dev.controlplane.state import ControlPlaneInfo
from tierserve.dev.proc import ComponentError, Process, cache_dir, logs_dir, wait_until

KUBERAY_TIMEOUT = 90.0

CRD_INDEX = "index.json"
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~7x faster


def kuberay_crds() -> list[Path]:
    """The KubeRay CRDs (ray.io_*.yaml) of the pinned ray-operator module, copied into the cache.

    They come from the Go module rather than the repo so the CRDs always match the pinned
    operator version; warm calls don't run go at all.
    """
    version = kuberay_version()
    dest = cache_dir() / "kuberay" / version / "crds"
    if (dest / CRD_INDEX).is_file():
        return sorted(dest.glob("ray.io_*.yaml"))
    log = logs_dir() / "kuberay-crds.log"
    module = f"github.com/ray-project/kuberay/ray-operator@{version}"
    with open(log, "w") as fh:
        try:
            result = subprocess.run(
                [go_executable(), "mod", "download", "-json", module],
                cwd=E2E_DIR / "kuberay",
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ComponentError(
                "kuberay-crds", f"go mod download {module} timed out", log
            ) from None
        fh.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise ComponentError("kuberay-crds", f"go mod download {module} failed", log)
    source = Path(json.loads(result.stdout)["Dir"]) / "config" / "crd" / "bases"
    crds = sorted(source.glob("ray.io_*.yaml"))
    if not crds:
        raise ComponentError("kuberay-crds", f"no ray.io_*.yaml under {source}", log)
    dest.mkdir(parents=True, exist_ok=True)
    index = []
    for crd in crds:
        shutil.copyfile(crd, dest / crd.name)  # copyfile: the module cache is read-only
        (dest / crd.name).chmod(0o644)
        spec = yaml.load(crd.read_text(), Loader=_YamlLoader)["spec"]
        served = [v["name"] for v in spec["versions"] if v.get("served")]
        index.append(
            {
                "file": crd.name,
                "name": f"{spec['names']['plural']}.{spec['group']}",
                "kind": spec["names"]["kind"],
                "group": spec["group"],
                "plural": spec["names"]["plural"],
                "versions": served,
            }
        )
    (dest / CRD_INDEX).write_text(json.dumps(index, indent=2))  # written last: marks completion
    return sorted(dest.glob("ray.io_*.yaml"))


def kuberay_crd_index() -> list[dict[str, Any]]:
    """Name, kind, group, plural and served versions of each KubeRay CRD.

    Parsed once when the CRDs are copied: they are ~4 MB of YAML (seconds to parse in Python).
    """
    kuberay_crds()
    return list(
        json.loads((cache_dir() / "kuberay" / kuberay_version() / "crds" / CRD_INDEX).read_text())
    )


def kuberay_crds_apply(
    info: ControlPlaneInfo, timeout: float = 60.0, *, only_missing: bool = False
) -> list[Path]:
    """Installs the KubeRay CRDs and waits (bounded) until the API server serves them.

    Server-side apply: the CRDs are too large for client-side apply's last-applied annotation.
    Re-applying ~4 MB of schemas takes seconds, hence `only_missing` for callers that just need
    them. Readiness is read from API discovery, not `kubectl wait`: right after a server-side
    apply, status.conditions is null and kubectl 1.36 fails ("accessor error") instead of waiting.
    """
    crds = kuberay_crds()
    index = kuberay_crd_index()
    ctx = ssl_context(info.state_dir / "pki")

    def served() -> set[str]:
        names = set()
        for group, version in {(c["group"], c["versions"][0]) for c in index}:
            code, body = get(f"{info.server_url}/apis/{group}/{version}", ctx)
            if code == 200:
                names |= {f"{r['name']}.{group}" for r in json.loads(body)["resources"]}
        return names

    wanted = {c["name"] for c in index}
    todo = [c for c in index if c["name"] not in served()] if only_missing else index
    if todo:
        files = [arg for c in todo for arg in ("-f", str(crds[0].parent / c["file"]))]
        kubectl(info, "apply", "--server-side", "--force-conflicts", *files, timeout=timeout)
    wait_until(
        lambda: wanted <= served(),
        timeout=timeout,
        component="kuberay-crds",
        what=f"served by the API server ({', '.join(sorted(wanted))})",
    )
    return crds


def start_kuberay_operator(
    info: ControlPlaneInfo,
    binary: Path | None = None,
    *,
    detach: bool = False,
    use_kubernetes_proxy: bool = False,
) -> Process:
    """Runs the KubeRay operator against the control plane (CRDs installed first).

    With no kubelet its Ray pods stay Pending, but it reconciles: RayService -> RayCluster ->
    Pods/Services objects. Recorded in the state file so `down` stops it too. It ends with this
    process unless `detach`.

    `use_kubernetes_proxy`: the operator reaches each head's dashboard (Serve REST API, job
    API) through the API server's service proxy instead of dialling
    `<cluster>-head-svc.<ns>.svc.cluster.local`, which a host process cannot resolve. Needed
    with a local node (node.py), whose pods run for real.
    """
    binary = binary or ensure_kuberay_operator()
    if binary is None:
        raise ComponentError("kuberay-operator", "not built", logs_dir() / "build-kuberay.log")
    kuberay_crds_apply(info, only_missing=True)
    ports = info.ports
    kuberay_ports = {
        ports.kuberay_metrics: "kuberay-operator --metrics-addr",
        ports.kuberay_probe: "kuberay-operator --health-probe-bind-address",
    }
    process = launch(
        "kuberay-operator",
        [
            str(binary),
            f"--kubeconfig={info.kubeconfig}",
            f"--metrics-addr=127.0.0.1:{ports.kuberay_metrics}",
            f"--health-probe-bind-address=127.0.0.1:{ports.kuberay_probe}",
            "--enable-leader-election=false",
            "--log-stdout-encoder=console",
            *(["--use-kubernetes-proxy"] if use_kubernetes_proxy else []),
        ],
        info,
        [],
        kuberay_ports,
        detach=detach,
    )
    try:
        wait_started(
            process,
            lambda: get(f"http://127.0.0.1:{ports.kuberay_probe}/readyz")[0] == 200,
            f"ready at http://127.0.0.1:{ports.kuberay_probe}/readyz",
            KUBERAY_TIMEOUT,
            kuberay_ports,
        )
    except BaseException:
        process.stop()
        raise
    info.save()
    return process


def stop_kuberay_operator(info: ControlPlaneInfo) -> None:
    pid = info.pids.pop("kuberay-operator", None)
    if pid is not None:
        stop_pid("kuberay-operator", pid, info.start_times.pop("kuberay-operator", None) or None)
        info.save()
