"""A real node beside the local control plane: containerd + runc + a CNI bridge, a kubelet built
from the pinned k8s.io/kubernetes module, and (optionally) kube-scheduler, so pods actually run
(the control plane alone leaves them Pending). Dev tooling: Linux, root, cgroup v1 or v2.

What it needs and does (measured on the project's 2-core machine kind, cgroup v1, no swap):

- containerd, ctr, runc and the CNI plugins come from Debian (``apt-get install containerd runc
  containernetworking-plugins iptables``; containerd 1.6.20 works with kubelet 1.36, which falls
  back to its own ``cgroupDriver`` because 1.6 lacks the RuntimeConfig CRI call). The kubelet and
  kube-scheduler are built like the control plane's binaries (``build.kubelet_build``,
  ``build.scheduler_build``) and cached by version.
- No registry is reachable: the sandbox ("pause") image is built here from kubernetes'
  ``build/pause/linux/pause.c`` (gcc -static) and imported under ``PAUSE_IMAGE``; other images are
  made from a root filesystem with `oci_archive` and imported with `import_image`. Pods must use
  ``imagePullPolicy: Never`` (or IfNotPresent) and the image's fully qualified name.
- Everything lives under one state dir (containerd root/state/socket, runc root, CNI config and
  IPAM data, kubelet root dir, pod logs). Host-wide changes: the bridge ``ts0`` (10.244.0.1/16),
  network namespaces under /run/netns, cgroups under ``kubepods``, the kubelet's KUBE-* iptables
  chains (the CNI config has no portmap and no masquerade, so CNI adds no rules), sysctls the
  kubelet sets (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops) and ip_forward,
  /var/lib/cni (CNI result cache), /var/log/containers, /run/containerd (1.6 shim sockets).
  `stop_node` undoes each (it records what existed before the start).
- The node IP is the bridge address (the kubelet refuses a loopback node IP). The kubelet
  serves on it (the API server runs with --kubelet-preferred-address-types=InternalIP,Hostname)
  and takes only clients with a certificate of the control plane's CA (the API server presents
  the admin client certificate as --kubelet-client-certificate): pods can reach that address,
  so no anonymous access. The node is still named ``localhost``.
- The session lacks CAP_SYS_RESOURCE, so containerd clamps oom_score_adj (restrict_oom_score_adj).
- Cluster services (``start_node(services=True)``, the default): kube-proxy in iptables mode
  (``build.kube_proxy_build``, from e2e/proxy) so Service cluster IPs (10.96.0.0/16) route from
  pods and from the host; CoreDNS (``build.coredns_build``, from e2e/coredns) on 10.244.0.1:53
  only, serving cluster.local from the API server (the kubelet's clusterDNS), other names
  forwarded to the host's resolvers; and a TCP relay (``relay.py``) on 10.244.0.1:<API server
  port> to the API server on 127.0.0.1, named by an EndpointSlice of the `kubernetes` Service,
  so in-cluster clients (KubeRay's Ray autoscaler sidecar) reach 10.96.0.1:443. kube-proxy is
  configured to leave host sysctls alone (no conntrack tuning, no route_localnet) and serves
  NodePorts on the bridge address only; its iptables chains (KUBE-*) are removed by stop_node
  like the kubelet's. The host's own resolver does not know cluster.local: host processes reach
  Services by cluster IP (or through the API server's service proxy, as KubeRay's operator does
  with --use-kubernetes-proxy).
- Nothing outlives the process that started the node (unless `detach`): a bound "janitor"
  child runs `stop_node` when that process dies, however it dies (the watchdog alone would end
  the processes but leave mounts, namespaces, the bridge, iptables chains and sysctls, and
  orphaned containers: a container whose PID 1 ignores SIGTERM outlives its shim, so
  `stop_node` kills containers by their kubepods cgroup).
- Figures: Node Ready ~1.3 s after the kubelet starts (whole node ~2.5 s, containerd ~0.4 s;
  with the cluster services ~5 s: kube-proxy synced and CoreDNS answering in ~1.5-2 s);
  RSS kube-proxy ~60 MiB, CoreDNS ~60 MiB, the relay ~26 MiB;
  a pod's container runs ~1 s after the Pod is created; RSS kubelet ~90 MiB, containerd ~50 MiB,
  kube-scheduler ~65 MiB; a 3.6 GB image imports in ~2 min, a 180 MB one in 3-11 s.

``python -m tierserve.dev.controlplane.node build|up|down|status|import|image`` drives it;
`start_node`/`stop_node` are the functions behind it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import yaml

from tierserve.dev.controlplane.build import (
    REPO_ROOT,
    coredns_build,
    go_build,
    go_executable,
    kube_build,
    kube_proxy_build,
    kubelet_build,
    say,
    scheduler_build,
)
from tierserve.dev.controlplane.components import alive, kubectl, rss_mib, stop_pid
from tierserve.dev.controlplane.pki import _sign, write_kubeconfig
from tierserve.dev.controlplane.state import ControlPlaneInfo, default_state_dir
from tierserve.dev.proc import (
    ComponentError,
    Process,
    WaitTimeout,
    bind,
    cache_dir,
    find_processes,
    require_free_port,
    start,
    terminate,
    unbind,
    wait_until,
)

# The API server reaches the kubelet (logs, exec, port-forward) at the Node's InternalIP (the
# bridge address, --kubelet-preferred-address-types=InternalIP,Hostname); "localhost" stays the
# name (it resolves here without touching /etc/hosts).
NODE_NAME = "localhost"
BRIDGE = "ts0"
POD_SUBNET = "10.244.0.0/16"  # not 10.88/16: podman/buildah put cni-podman0 there
BRIDGE_IP = "10.244.0.1"  # the gateway, and the node's InternalIP (loopback is refused)
CNI_NETWORK = "tierserve"
CNI_BIN_DIR = Path("/usr/lib/cni")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
KUBELET_PORT = 18250
KUBELET_HEALTHZ_PORT = 18248
SCHEDULER_PORT = 18259
# Cluster services (start_node(services=True)): kube-proxy (iptables mode) so Service cluster IPs
# route, CoreDNS on the bridge address as the pods' cluster DNS, and a relay so pods reach the
# API server (which listens on 127.0.0.1) through the `kubernetes` Service.
KUBE_PROXY_HEALTHZ_PORT = 18256
KUBE_PROXY_METRICS_PORT = 18249
COREDNS_READY_PORT = 18181
COREDNS_METRICS_PORT = 18153
CLUSTER_DOMAIN = "cluster.local"
CLUSTER_DNS = BRIDGE_IP  # CoreDNS listens here (port 53) only, never on 0.0.0.0
SERVICES_TIMEOUT = 60.0
API_RELAY = "apiserver-relay"
API_ENDPOINTSLICE = "kubernetes-tierserve-node"
NODE_STATE_FILE = "node.json"
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses

CONTAINERD_TIMEOUT = 60.0
NODE_READY_TIMEOUT = 180.0
SCHEDULER_TIMEOUT = 60.0

# Sysctls the kubelet sets on start (protectKernelDefaults: false) and the bridge plugin
# (ip_forward): saved before the start, restored by stop_node.
SAVED_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    # kube-proxy's (it is configured to leave them alone; saved in case a version does not)
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_max",
)
# Host paths containerd 1.6, CNI and the kubelet create outside the state dir: removed by
# stop_node when they did not exist before start_node (and nothing is mounted in them).
HOST_PATHS = (
    "/run/netns",
    "/var/lib/cni",
    "/run/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
)
# Host tools: command or file -> Debian package.
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "ip": "iproute2",
    "gcc": "gcc",
}
CNI_PLUGINS = ("bridge", "host-local", "loopback")
IPTABLES_TABLES = ("filter", "nat", "mangle")


# ---- Binaries and images


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    scheduler: Path | None
    containerd: Path
    ctr: Path
    runc: Path
    kube_proxy: Path | None = None
    coredns: Path | None = None


def host_tools() -> dict[str, Path]:
    """The Debian-provided tools, or a ComponentError naming the packages to install."""
    found: dict[str, Path] = {}
    missing: set[str] = set()
    for tool, package in HOST_TOOLS.items():
        path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path:
            found[tool] = Path(path)
        else:
            missing.add(package)
    missing |= {
        "containernetworking-plugins"
        for plugin in CNI_PLUGINS
        if not (CNI_BIN_DIR / plugin).is_file()
    }
    if missing:
        raise ComponentError(
            "node", f"missing host tools; install: apt-get install -y {' '.join(sorted(missing))}"
        )
    return found


def ensure_node_binaries(*, scheduler: bool = True, services: bool = False) -> NodeBinaries:
    """Builds (or finds cached) kubelet and kube-scheduler (and with `services` kube-proxy and
    CoreDNS); checks the Debian tools."""
    kube_version = kube_build().version()
    spec = kubelet_build()
    if spec.version() != kube_version:
        raise ComponentError(
            "kubelet",
            f"e2e/node pins k8s.io/kubernetes {spec.version()} but e2e/kube pins {kube_version}:"
            " update e2e/node/go.mod (and `go mod tidy` there)",
        )
    tools = host_tools()
    kubelet = go_build(spec) / "kubelet"
    sched = go_build(scheduler_build()) / "kube-scheduler" if scheduler else None
    proxy = dns = None
    if services:
        proxy_spec = kube_proxy_build()
        if proxy_spec.version() != kube_version:
            raise ComponentError(
                "kube-proxy",
                f"e2e/proxy pins k8s.io/kubernetes {proxy_spec.version()} but e2e/kube pins "
                f"{kube_version}: update e2e/proxy/go.mod (and `go mod tidy` there)",
            )
        proxy = go_build(proxy_spec) / "kube-proxy"
        dns = go_build(coredns_build()) / "coredns"
    return NodeBinaries(
        kubelet, sched, tools["containerd"], tools["ctr"], tools["runc"], proxy, dns
    )


def normalize_image(name: str) -> str:
    """The fully qualified reference the CRI resolves `name` to (docker.io/library/x:latest)."""
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def _rootfs_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = info.name.split("/")
    if len(parts) > 1 and parts[0] in ("dev", "proc", "sys", "run", "tmp"):
        return None  # the runtime provides these (the directories themselves are kept)
    if info.name.startswith(("var/cache/apt/archives/", "var/lib/apt/lists/")) and info.isfile():
        return None
    info.uname = info.gname = ""
    return info


class _HashingWriter:
    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)


def oci_archive(
    out: Path,
    name: str,
    *,
    rootfs: Path | None = None,
    files: Mapping[str, Path] | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    workdir: str = "/",
) -> Path:
    """Writes a one-layer OCI image archive (`ctr images import` reads it) named `name`.

    The layer is a root filesystem directory (`rootfs`, e.g. from `debootstrap`) and/or single
    files (`files`: path in the image -> host file, e.g. a static binary). Uncompressed, so a
    200 MB rootfs packs in seconds; containerd stores it as is. Pure Python: no buildah/umoci.
    """
    if rootfs is None and not files:
        raise ValueError("oci_archive needs a rootfs or files")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".oci-") as tmp:
        blobs = Path(tmp) / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_tmp = Path(tmp) / "layer.tar"
        with open(layer_tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                if rootfs is not None:
                    for entry in sorted(os.listdir(rootfs)):
                        tar.add(rootfs / entry, arcname=entry, filter=_rootfs_filter)
                for dest, src in (files or {}).items():
                    info = tar.gettarinfo(str(src), arcname=dest.lstrip("/"))
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(src, "rb") as fh:
                        tar.addfile(info, fh)
        layer_digest = writer.sha.hexdigest()
        os.replace(layer_tmp, blobs / layer_digest)

        def blob(data: dict[str, Any]) -> tuple[str, int]:
            raw_json = json.dumps(data, separators=(",", ":")).encode()
            digest = hashlib.sha256(raw_json).hexdigest()
            (blobs / digest).write_bytes(raw_json)
            return digest, len(raw_json)

        config: dict[str, Any] = {"Env": list(env), "WorkingDir": workdir}
        if entrypoint:
            config["Entrypoint"] = list(entrypoint)
        if cmd:
            config["Cmd"] = list(cmd)
        config_digest, config_size = blob(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
                "history": [{"created_by": "tierserve.dev.controlplane.node.oci_archive"}],
            }
        )
        manifest_digest, manifest_size = blob(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{config_digest}",
                    "size": config_size,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer_digest}",
                        "size": writer.size,
                    }
                ],
            }
        )
        full = normalize_image(name)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{manifest_digest}",
                    "size": manifest_size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": full,
                        "org.opencontainers.image.ref.name": full.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        (Path(tmp) / "index.json").write_text(json.dumps(index))
        (Path(tmp) / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        partial = out.with_name(f".{out.name}.partial")
        with tarfile.open(partial, "w") as tar:
            for entry in ("oci-layout", "index.json", "blobs"):
                tar.add(Path(tmp) / entry, arcname=entry)
        os.replace(partial, out)
    return out


def pause_image_archive() -> Path:
    """The sandbox image, built here: kubernetes' own pause.c (from the pinned module) compiled
    statically, as PAUSE_IMAGE. Cached by the kubernetes version."""
    version = kube_build().version()
    dest = cache_dir() / "node-images" / f"pause-{version}.tar"
    if dest.is_file():
        return dest
    gomod = Path(
        subprocess.run(
            [go_executable(), "env", "GOMODCACHE"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    source = gomod / f"k8s.io/kubernetes@{version}" / "build" / "pause" / "linux" / "pause.c"
    if not source.is_file():  # the module is downloaded by the kubelet build
        raise ComponentError("pause", f"{source} not found (build the kubelet first)")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        result = subprocess.run(
            ["gcc", "-Os", "-static", f"-DVERSION={version}", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ComponentError("pause", f"gcc -static failed: {result.stderr.strip()[:500]}")
        return oci_archive(dest, PAUSE_IMAGE, files={"/pause": binary}, entrypoint=["/pause"])


# ---- State


@dataclass
class NodeInfo:
    """A running node, as its state file records it (so `stop_node` works from any process)."""

    state_dir: Path
    name: str
    controlplane_state_dir: Path
    kubeconfig: Path  # the control plane's admin kubeconfig (for kubectl)
    containerd_socket: Path
    bin_dir: Path  # the kubelet's
    pids: dict[str, int] = field(default_factory=dict)
    start_times: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)  # values before the start
    iptables_before: dict[str, list[str]] = field(default_factory=dict)
    created_paths: list[str] = field(default_factory=list)  # HOST_PATHS absent before the start
    created_bridge: bool = False

    def save(self) -> None:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        tmp = self.state_dir / f".{NODE_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_dir / NODE_STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> NodeInfo | None:
        path = Path(state_dir) / NODE_STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        for key in ("state_dir", "controlplane_state_dir", "kubeconfig", "containerd_socket"):
            data[key] = Path(data[key])
        data["bin_dir"] = Path(data["bin_dir"])
        return cls(**data)

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Runs `ctr` against this node's containerd, in the CRI's namespace."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", K8S_NAMESPACE]
        return _run("ctr", [*argv, *args], timeout=timeout)


def default_node_state_dir() -> Path:
    return cache_dir() / "node"


# ---- Host helpers


def _run(
    component: str, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComponentError(component, f"`{' '.join(argv)}` timed out") from None
    if check and result.returncode != 0:
        err = " ".join((result.stderr or result.stdout).split())[:1000]
        raise ComponentError(component, f"`{' '.join(argv)}` failed: {err}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctls(names: Iterable[str]) -> dict[str, str]:
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def _iptables_rules() -> dict[str, list[str]]:
    """`iptables-save -t T` lines (chains and rules) per table and family."""
    rules: dict[str, list[str]] = {}
    for family in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            result = _run("iptables", [f"{family}-save", "-t", table], check=False)
            if result.returncode == 0:
                rules[f"{family}/{table}"] = [
                    line for line in result.stdout.splitlines() if line.startswith((":", "-A "))
                ]
    return rules


def _undo_iptables(before: Mapping[str, list[str]]) -> list[str]:
    """Deletes the kubelet's iptables rules and chains (KUBE-*) added since `before`; returns
    what it deleted. Nothing else is touched: other tools (podman/buildah's CNI firewall chains)
    may add rules meanwhile, and rules present before the start are never ours."""
    done: list[str] = []
    for key, lines in _iptables_rules().items():
        family, table = key.split("/")
        old = set(before.get(key, []))
        old_chains = {line.split()[0][1:] for line in old if line.startswith(":")}
        for line in reversed(lines):
            if line.startswith("-A ") and line not in old and "KUBE-" in line:
                # iptables-save quotes what needs it (comments) as a shell would
                rule = ["-D", *shlex.split(line)[1:]]
                _run("iptables", [family, "-t", table, *rule], check=False)
                done.append(f"{family} -t {table} {line}")
        for line in lines:
            chain = line.split()[0][1:] if line.startswith(":") else ""
            if chain.startswith("KUBE-") and chain not in old_chains:
                _run("iptables", [family, "-t", table, "-F", chain], check=False)
                _run("iptables", [family, "-t", table, "-X", chain], check=False)
                done.append(f"{family} -t {table} -X {chain}")
    return done


def _mounts_under(prefixes: Sequence[str]) -> list[str]:
    """Mount points under any of `prefixes`, deepest first (from /proc/self/mountinfo)."""
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _unmount_all(prefixes: Sequence[str]) -> list[str]:
    """Unmounts everything under `prefixes` (stacked mounts too); returns what it unmounted."""
    done: list[str] = []
    for _round in range(10):
        points = _mounts_under(prefixes)
        if not points:
            break
        for point in points:
            if _run("umount", ["umount", point], check=False).returncode != 0:
                _run("umount", ["umount", "-l", point], check=False)
            done.append(point)
    return done


def _remove_cgroups(name: str = "kubepods") -> list[str]:
    """Removes the kubelet's cgroup trees (cgroupfs driver, v1 controllers or v2), leaves first."""
    removed = []
    root = Path("/sys/fs/cgroup")
    tops = [root / name, *(c / name for c in root.iterdir() if c.is_dir())]
    for top in tops:
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*dirs, top]:
            with contextlib.suppress(OSError):
                path.rmdir()
                removed.append(str(path))
    return removed


# ---- Configuration files


def _write_containerd_config(state: Path) -> Path:
    cd = state / "containerd"
    config = f"""version = 2
root = "{cd / "root"}"
state = "{cd / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{cd / "containerd.sock"}"

[ttrpc]
  address = "{cd / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{cd / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The session lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (the kubelet asks -998
  # for sandboxes), "failed to update /proc/self/oom_score_adj: Permission denied". This clamps
  # it to containerd's own score, as for rootless containerd.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{cd / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{state / "cni" / "net.d"}"
    max_conf_num = 1
"""
    path = cd / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    return path


def _write_cni_config(state: Path) -> Path:
    conf_dir = state / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # no masquerade rules: nothing outside is reachable anyway
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state / "cni" / "ipam"),
                },
            },
        ],
    }
    path = conf_dir / f"10-{CNI_NETWORK}.conflist"
    path.write_text(json.dumps(conflist, indent=2))
    return path


def _write_kubelet_config(state: Path, cp: ControlPlaneInfo, *, cluster_dns: bool = False) -> Path:
    kubelet_dir = state / "kubelet"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The node's InternalIP: the API server dials it first (--kubelet-preferred-address-types
        # InternalIP,Hostname). Pods can reach this address, hence no anonymous access.
        "address": BRIDGE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "containerRuntimeEndpoint": f"unix://{state / 'containerd' / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # kubelet 1.36 refuses cgroup v1 hosts by default
        "failSwapOn": False,
        "authentication": {
            # Only clients with a certificate of the control plane's CA: the API server (its
            # --kubelet-client-certificate) for `kubectl logs/exec/port-forward`; not pods.
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(cp.ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": CLUSTER_DOMAIN,
        # CoreDNS on the bridge address (start_node(services=True)); without it pods use the
        # host's resolver (dnsPolicy ClusterFirst falls back to Default with no clusterDNS).
        **({"clusterDNS": [CLUSTER_DNS]} if cluster_dns else {}),
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(state / "pod-logs"),
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 50,
        "registerNode": True,
        "staticPodPath": "",
    }
    path = kubelet_dir / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _client_kubeconfig(cp: ControlPlaneInfo, user: str, subject: str, path: Path) -> Path:
    """A kubeconfig for `subject`, its client cert signed by the control plane's CA."""
    pki = cp.state_dir / "pki"
    if not (pki / f"{user}.crt").is_file():
        _sign(pki, user, subject, "extendedKeyUsage = clientAuth")
        for suffix in (".csr", ".ext"):
            with contextlib.suppress(OSError):
                (pki / f"{user}{suffix}").unlink()
    write_kubeconfig(path, cp.server_url, pki, user)
    return path


# ---- Start and stop


def _node_ready(cp: ControlPlaneInfo, name: str, since: float = 0.0) -> bool:
    """The Node's Ready condition is True and was posted at or after `since` (epoch seconds):
    a Node left from an earlier run still says Ready until its status goes stale."""
    result = kubectl(cp, "get", "node", name, "-o", "json", timeout=20)
    for cond in json.loads(result.stdout).get("status", {}).get("conditions", []):
        if cond["type"] == "Ready":
            beat = datetime.fromisoformat(cond["lastHeartbeatTime"].replace("Z", "+00:00"))
            return bool(cond["status"] == "True" and beat.timestamp() >= int(since))
    return False


def wait_node_ready(
    cp: ControlPlaneInfo, name: str, *, timeout: float, proc: Process, since: float | None = None
) -> float:
    """Waits (bounded) until the kubelet `proc`, started at `since` (epoch seconds; default now),
    has posted Ready; returns the seconds it took."""
    began = time.monotonic()
    since = time.time() if since is None else since
    wait_until(
        lambda: _node_ready(cp, name, since),
        timeout=timeout,
        component="kubelet",
        what=f"Node {name} Ready",
        log=proc.log,
        proc=proc.popen,
        interval=0.5,
    )
    return time.monotonic() - began


def _ensure_bridge() -> bool:
    """Creates BRIDGE with BRIDGE_IP (the node IP must exist before the kubelet starts; the CNI
    bridge plugin reuses it). True if it was created here."""
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        return False
    _run("ip", ["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run("ip", ["ip", "addr", "add", f"{BRIDGE_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE])
    _run("ip", ["ip", "link", "set", BRIDGE, "up"])
    return True


def _launch(
    info: NodeInfo, name: str, argv: list[str], procs: list[Process], bound: bool
) -> Process:
    log = info.logs_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n")
    process = start(name, argv, log=log, bind=bound)
    procs.append(process)
    info.pids[name] = process.popen.pid
    info.start_times[name] = process.start_time or ""
    info.logs[name] = str(log)
    info.save()
    return process


def start_node(
    cp: ControlPlaneInfo,
    state_dir: Path | str | None = None,
    *,
    name: str = NODE_NAME,
    scheduler: bool = True,
    services: bool = True,
    detach: bool = False,
    timeout: float = NODE_READY_TIMEOUT,
) -> NodeInfo:
    """Starts containerd, the kubelet (and kube-scheduler) beside the running control plane `cp`
    and returns once the Node is Ready. They end with this process unless `detach`.

    With `services`, also the cluster services (see `_start_services`): kube-proxy, CoreDNS as
    the pods' cluster DNS (kubelet clusterDNS), and the API server relay for in-cluster clients.

    Linux and root only. Anything half-started is stopped and undone on failure.
    """
    if os.geteuid() != 0:
        raise ComponentError("node", "a kubelet and containerd need root")
    state = Path(state_dir) if state_dir else default_node_state_dir()
    old = NodeInfo.load(state)
    if old is not None:
        stop_node(state)  # a stale or running node: start clean (images are kept)
    bins = ensure_node_binaries(scheduler=scheduler, services=services)
    ports = [KUBELET_PORT, KUBELET_HEALTHZ_PORT, *([SCHEDULER_PORT] if scheduler else [])]
    if services:
        ports += [KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT, COREDNS_READY_PORT]
        ports += [COREDNS_METRICS_PORT]
    for port in ports:
        require_free_port("node", port)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        raise ComponentError("node", f"bridge {BRIDGE} exists already (another node running?)")
    began = time.monotonic()
    state.mkdir(parents=True, exist_ok=True)
    info = NodeInfo(
        state_dir=state,
        name=name,
        controlplane_state_dir=cp.state_dir,
        kubeconfig=cp.kubeconfig,
        containerd_socket=state / "containerd" / "containerd.sock",
        bin_dir=bins.kubelet.parent,
        sysctls=_read_sysctls(SAVED_SYSCTLS),
        iptables_before=_iptables_rules(),
        created_paths=[p for p in HOST_PATHS if not os.path.lexists(p)],
    )
    info.save()  # before anything changes the host: stop_node can undo from here on
    procs: list[Process] = []
    try:
        if not detach:
            _start_janitor(info, procs)
        info.created_bridge = _ensure_bridge()
        info.save()
        _write_cni_config(state)
        config = _write_containerd_config(state)
        containerd = _launch(
            info, "containerd", [str(bins.containerd), "--config", str(config)], procs, not detach
        )
        if not detach:  # shims daemonize (own session): end them with this process too
            bind(cmdline=str(info.containerd_socket))
        wait_until(
            lambda: info.containerd_socket.exists() and info.ctr("version", timeout=10),
            timeout=CONTAINERD_TIMEOUT,
            component="containerd",
            what=f"serving on {info.containerd_socket}",
            log=containerd.log,
            proc=containerd.popen,
        )
        import_image(info, pause_image_archive())
        kubeconfig = _client_kubeconfig(
            cp,
            f"node-{name}",
            f"/O=system:nodes/CN=system:node:{name}",
            state / "kubelet.kubeconfig",
        )
        kubelet_config = _write_kubelet_config(state, cp, cluster_dns=services)
        kubelet_started = time.time()
        kubelet = _launch(
            info,
            "kubelet",
            [
                str(bins.kubelet),
                f"--config={kubelet_config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={state / 'kubelet'}",
                f"--cert-dir={state / 'kubelet' / 'pki'}",
                f"--hostname-override={name}",
                f"--node-ip={BRIDGE_IP}",
                "--v=1",
            ],
            procs,
            not detach,
        )
        ready = wait_node_ready(cp, name, timeout=timeout, proc=kubelet, since=kubelet_started)
        say(f"==> node {name} Ready {ready:.1f}s after the kubelet started")
        if bins.scheduler is not None:
            _start_scheduler(info, cp, bins.scheduler, procs, not detach)
        if services:
            _start_services(info, cp, bins, procs, not detach)
    except BaseException:
        with contextlib.suppress(Exception):
            stop_node(state)
        raise
    say(f"==> node up in {time.monotonic() - began:.1f}s (containerd {info.containerd_socket})")
    return info


def _start_scheduler(
    info: NodeInfo, cp: ControlPlaneInfo, binary: Path, procs: list[Process], bound: bool
) -> None:
    """kube-scheduler, so pods without spec.nodeName (KubeRay's) are bound to the node."""
    kubeconfig = _client_kubeconfig(
        cp, "kube-scheduler", "/CN=system:kube-scheduler", info.state_dir / "scheduler.kubeconfig"
    )
    process = _launch(
        info,
        "kube-scheduler",
        [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        procs,
        bound,
    )
    wait_until(
        lambda: _healthz(f"https://127.0.0.1:{SCHEDULER_PORT}/healthz"),
        timeout=SCHEDULER_TIMEOUT,
        component="kube-scheduler",
        what="healthy",
        log=process.log,
        proc=process.popen,
    )


# ---- Cluster services: kube-proxy, CoreDNS, the API server relay


COREDNS_RBAC = """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tierserve:coredns
  labels: {app.kubernetes.io/managed-by: tierserve-node}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tierserve:coredns
  labels: {app.kubernetes.io/managed-by: tierserve-node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tierserve:coredns}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:coredns}
"""


def _write_corefile(state: Path, kubeconfig: Path) -> Path:
    """cluster.local (and reverse lookups of pod and service IPs) from the API server; other
    names forwarded to the host's resolvers. Bound to the bridge address only; the ready and
    metrics endpoints to 127.0.0.1."""
    corefile = f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {CLUSTER_DNS}
    errors
    ready 127.0.0.1:{COREDNS_READY_PORT}
    prometheus 127.0.0.1:{COREDNS_METRICS_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} tierserve-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
.:53 {{
    bind {CLUSTER_DNS}
    errors
    forward . /etc/resolv.conf
    cache 30
}}
"""
    path = state / "coredns" / "Corefile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(corefile)
    return path


def _write_kube_proxy_config(state: Path, kubeconfig: Path, name: str) -> Path:
    """iptables mode; it leaves host sysctls alone (no conntrack tuning, no route_localnet, no
    oom_score_adj: the session lacks CAP_SYS_RESOURCE) and serves NodePorts on the bridge only.
    masqueradeAll: replies of a Service's backend to a client pod on the same bridge then come
    back through the host (un-DNATed) whether or not br_netfilter is loaded."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": name,
        "bindAddress": BRIDGE_IP,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        "enableProfiling": False,
        "nodePortAddresses": [f"{BRIDGE_IP}/32"],
        "oomScoreAdj": 0,
        "iptables": {
            "masqueradeAll": True,
            "localhostNodePorts": False,
            "syncPeriod": "30s",
            "minSyncPeriod": "1s",
        },
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = state / "kube-proxy" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _apiserver_port(cp: ControlPlaneInfo) -> int:
    from urllib.parse import urlparse

    return int(urlparse(cp.server_url).port or 443)


def _api_endpointslice(cp: ControlPlaneInfo) -> str:
    """The `kubernetes` Service's endpoint: the relay on the bridge address (the API server
    runs with --endpoint-reconciler-type=none, so nothing else writes one)."""
    port = _apiserver_port(cp)
    return yaml.safe_dump(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": API_ENDPOINTSLICE,
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "tierserve-node",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
    )


def _delete_api_endpointslice(info: NodeInfo) -> list[str]:
    cp = ControlPlaneInfo.load(info.controlplane_state_dir)
    if cp is None:
        return []
    with contextlib.suppress(ComponentError, OSError):
        kubectl(cp, "-n", "default", "delete", "endpointslice", API_ENDPOINTSLICE,
                "--ignore-not-found", "--wait=false", timeout=15)  # fmt: skip
        return [f"deleted EndpointSlice default/{API_ENDPOINTSLICE}"]
    return []


def _dns_answers(name: str, server: str = CLUSTER_DNS) -> bool:
    """True once `server` answers an A query for `name` with at least one address."""
    import random
    import socket
    import struct

    qid = random.randrange(65536)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(query, (server, 53))
        data = sock.recv(4096)
    rid, flags, _qd, answers = struct.unpack(">HHHH", data[:8])
    return rid == qid and flags & 0xF == 0 and answers > 0


def _start_services(
    info: NodeInfo, cp: ControlPlaneInfo, bins: NodeBinaries, procs: list[Process], bound: bool
) -> None:
    """kube-proxy, CoreDNS and the API server relay, each waited for (bounded)."""
    assert bins.kube_proxy is not None and bins.coredns is not None
    state = info.state_dir
    began = time.monotonic()
    # The relay: pods reach the API server at the `kubernetes` Service (10.96.0.1:443).
    port = _apiserver_port(cp)
    env_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    relay_argv = [sys.executable, "-m", "tierserve.dev.controlplane.relay",
                  f"{BRIDGE_IP}:{port}", f"127.0.0.1:{port}"]  # fmt: skip
    log = info.logs_dir / f"{API_RELAY}.log"
    relay = start(API_RELAY, relay_argv, log=log, env={"PYTHONPATH": env_path}, bind=bound)
    procs.append(relay)
    info.pids[API_RELAY] = relay.popen.pid
    info.start_times[API_RELAY] = relay.start_time or ""
    info.logs[API_RELAY] = str(log)
    info.save()
    kubectl(cp, "apply", "-f", "-", input=_api_endpointslice(cp), timeout=30)
    # kube-proxy
    proxy_kubeconfig = _client_kubeconfig(
        cp, "kube-proxy", "/CN=system:kube-proxy", state / "kube-proxy.kubeconfig"
    )
    proxy_config = _write_kube_proxy_config(state, proxy_kubeconfig, info.name)
    proxy = _launch(
        info,
        "kube-proxy",
        [str(bins.kube_proxy), f"--config={proxy_config}", "--v=1"],
        procs,
        bound,
    )
    # CoreDNS
    kubectl(cp, "apply", "-f", "-", input=COREDNS_RBAC, timeout=30)
    dns_kubeconfig = _client_kubeconfig(
        cp, "coredns", "/CN=system:coredns", state / "coredns.kubeconfig"
    )
    corefile = _write_corefile(state, dns_kubeconfig)
    dns = _launch(info, "coredns", [str(bins.coredns), "-conf", str(corefile)], procs, bound)
    wait_until(
        lambda: _healthz(f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz"),
        timeout=SERVICES_TIMEOUT,
        component="kube-proxy",
        what="healthy (iptables rules synced)",
        log=proxy.log,
        proc=proxy.popen,
    )
    wait_until(
        lambda: (
            _healthz(f"http://127.0.0.1:{COREDNS_READY_PORT}/ready")
            and _dns_answers(f"kubernetes.default.svc.{CLUSTER_DOMAIN}")
        ),
        timeout=SERVICES_TIMEOUT,
        component="coredns",
        what=f"answering kubernetes.default.svc.{CLUSTER_DOMAIN} on {CLUSTER_DNS}:53",
        log=dns.log,
        proc=dns.popen,
    )
    say(
        f"==> kube-proxy, CoreDNS ({CLUSTER_DNS}:53) and the API relay "
        f"({BRIDGE_IP}:{port}) up in {time.monotonic() - began:.1f}s"
    )


def _healthz(url: str) -> bool:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        return bool(resp.status == 200)


def import_image(info: NodeInfo, archive: Path) -> list[str]:
    """Imports an OCI/docker image archive into the CRI's containerd namespace (unpacked for
    overlayfs, so pods start at once); returns the image names it holds."""
    began = time.monotonic()
    info.ctr("images", "import", "--platform", "linux/amd64", str(archive), timeout=600)
    names = [
        line.split()[0]
        for line in info.ctr("images", "list").stdout.splitlines()[1:]
        if line.strip()
    ]
    say(f"==> imported {archive.name} in {time.monotonic() - began:.1f}s")
    return names


def stop_node(state_dir: Path | str | None = None, *, purge: bool = False) -> list[str]:
    """Stops the node of `state_dir` (from any process) and undoes its host changes: processes
    (kube-scheduler, kubelet, containerd, its shims and every container), mounts, network
    namespaces, the bridge, added iptables rules and chains, the kubepods cgroups, sysctls and
    host paths it created. Keeps images unless `purge`. Returns what it did, one line each."""
    state = Path(state_dir) if state_dir else default_node_state_dir()
    info = NodeInfo.load(state)
    done: list[str] = []
    if info is None:
        if purge and state.is_dir() and not _mounts_under([str(state)]):
            shutil.rmtree(state, ignore_errors=True)
            done.append(f"removed {state}")
        return done
    _stop_janitor(info)
    for name in ("kube-proxy", "coredns", API_RELAY, "kube-scheduler", "kubelet"):
        _stop_recorded(info, name, done)
    if API_RELAY in info.pids:
        done += _delete_api_endpointslice(info)
    # Containers first, by cgroup: a container's PID 1 ignores SIGTERM from outside its pid
    # namespace unless it handles it, and once its shim is gone it is orphaned (no longer found
    # as the shim's descendant): the kubepods cgroups hold them all, orphans too.
    containers = _cgroup_pids()
    if containers:
        left = terminate(_cgroup_pids, timeout=2.0, component="containers")
        done.append(f"stopped containers: pids {sorted(containers)}")
        if left:
            done.append(f"containers survived SIGKILL: {sorted(left)}")
    _stop_recorded(info, "containerd", done)
    # Shims: daemonized by containerd (own session), found by the socket in their command line.
    socket = str(info.containerd_socket)
    shims = find_processes(cmdlines=[socket])
    if shims:
        terminate(lambda: find_processes(cmdlines=[socket]), timeout=10.0, component="shims")
        done.append(f"stopped shims: pids {sorted(shims)}")
    unbind(cmdline=socket)
    created = set(info.created_paths)
    netns_dir = Path("/run/netns")
    ours = [str(state)]
    if "/run/netns" in created:
        ours.append(str(netns_dir))
    else:  # the CRI names its namespaces cni-<uuid>: only those not there before are ours
        ours += [str(p) for p in netns_dir.glob("cni-*") if _netns_unused(p)]
    for point in _unmount_all(ours):
        done.append(f"unmounted {point}")
    for path in netns_dir.glob("cni-*") if netns_dir.is_dir() else []:
        if "/run/netns" in created or not _mounts_under([str(path)]):
            with contextlib.suppress(OSError):
                path.unlink()
                done.append(f"removed netns {path.name}")
    if info.created_bridge and Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", ["ip", "link", "del", BRIDGE], check=False)
        done.append(f"deleted bridge {BRIDGE}")
    done += _undo_iptables(info.iptables_before)
    for cgroup in ("kubepods", K8S_NAMESPACE):  # the kubelet's; `ctr run`'s (namespace/id)
        done += [f"removed cgroup {p}" for p in _remove_cgroups(cgroup)]
    for sysctl_name, value in info.sysctls.items():
        if _read_sysctls([sysctl_name]).get(sysctl_name) != value:
            with contextlib.suppress(OSError):
                _sysctl_path(sysctl_name).write_text(value)
                done.append(f"restored {sysctl_name}={value}")
    for path_name in info.created_paths:
        path = Path(path_name)
        if os.path.lexists(path) and not _mounts_under([path_name]):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
    # Runtime state (sandboxes, tasks, IPAM leases) never outlives the node; images do.
    for sub in ("containerd/state", "containerd/runc", "cni/ipam", "kubelet", "pod-logs"):
        if not _mounts_under([str(state / sub)]):
            shutil.rmtree(state / sub, ignore_errors=True)
    if purge and not _mounts_under([str(state)]):
        shutil.rmtree(state, ignore_errors=True)
        done.append(f"removed {state}")
    else:
        with contextlib.suppress(OSError):
            (state / NODE_STATE_FILE).unlink()
    return done


JANITOR = "janitor"


def _start_janitor(info: NodeInfo, procs: list[Process]) -> None:
    """A small bound child that runs `stop_node` when this process dies (it gets SIGTERM then,
    from the parent-death signal or the watchdog): the watchdog alone ends processes, but not
    orphaned containers, mounts, namespaces, the bridge, iptables chains or sysctls."""
    code = "import sys; from tierserve.dev.controlplane.node import janitor; janitor(sys.argv[1])"
    env_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    log = info.logs_dir / f"{JANITOR}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    process = start(
        JANITOR,
        [sys.executable, "-c", code, str(info.state_dir)],
        log=log,
        env={"PYTHONPATH": env_path},
    )
    procs.append(process)
    info.pids[JANITOR] = process.popen.pid
    info.start_times[JANITOR] = process.start_time or ""
    info.logs[JANITOR] = str(log)
    info.save()


def janitor(state_dir: str) -> None:
    """The janitor's main: waits for SIGTERM or SIGHUP, then undoes the node with `stop_node`."""

    def teardown(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            for line in stop_node(Path(state_dir)):
                print(line, flush=True)
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, teardown)
    signal.signal(signal.SIGHUP, teardown)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    while True:
        signal.pause()


def _stop_janitor(info: NodeInfo) -> None:
    """SIGKILL, not SIGTERM: SIGTERM would make it tear the node down too, concurrently."""
    pid = info.pids.get(JANITOR)
    if pid is None or pid == os.getpid():
        return
    started = info.start_times.get(JANITOR) or None
    if alive(pid, started):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: not alive(pid, started),
                timeout=5.0,
                component=JANITOR,
                what="stopped by SIGKILL",
                interval=0.05,
                retry=(),
            )
    unbind(session=pid)


def _stop_recorded(info: NodeInfo, name: str, done: list[str]) -> None:
    pid = info.pids.get(name)
    if pid is not None and alive(pid, info.start_times.get(name) or None):
        stop_pid(name, pid, info.start_times.get(name) or None)
        done.append(f"stopped {name} (pid {pid})")


def _cgroup_pids(names: Sequence[str] = ("kubepods", K8S_NAMESPACE)) -> set[int]:
    """Every process in the kubelet's pod cgroups (and `ctr run`'s), any controller."""
    pids: set[int] = set()
    root = Path("/sys/fs/cgroup")
    for name in names:
        for top in [root / name, *(c / name for c in root.iterdir() if c.is_dir())]:
            if not top.is_dir():
                continue
            # os.walk, not rglob: pod cgroups vanish while being walked (the kubelet or runc
            # removes them), which makes rglob raise FileNotFoundError; os.walk skips them.
            for dirpath, _dirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError, ValueError):
                        text = Path(dirpath, "cgroup.procs").read_text()
                        pids |= {int(pid) for pid in text.split()}
    pids.discard(os.getpid())
    return pids


def _netns_unused(path: Path) -> bool:
    """A cni-* namespace no process uses any more (those of other runtimes stay alone)."""
    try:
        inode = path.stat().st_ino
    except OSError:
        return False
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    return False
    return True


def node_status(state_dir: Path | str | None = None) -> tuple[bool, list[str]]:
    """(ready, lines): processes with memory, and the Node's Ready condition."""
    state = Path(state_dir) if state_dir else default_node_state_dir()
    info = NodeInfo.load(state)
    if info is None:
        return False, [f"no node recorded in {state}"]
    lines = []
    total = 0.0
    for name, pid in info.pids.items():
        is_alive = alive(pid, info.start_times.get(name) or None)
        rss = rss_mib(pid) if is_alive else None
        total += rss or 0.0
        mem = f", RSS {rss:.0f} MiB" if rss is not None else ""
        lines.append(f"{name}: {'running' if is_alive else 'DEAD'} (pid {pid}{mem})")
    shims = find_processes(cmdlines=[str(info.containerd_socket)])
    shim_rss = sum(rss_mib(p) or 0.0 for p in shims)
    lines.append(f"shims and containers: {len(shims)} processes, RSS {shim_rss:.0f} MiB")
    cp = ControlPlaneInfo.load(info.controlplane_state_dir)
    ready = False
    if cp is not None:
        with contextlib.suppress(ComponentError, ValueError):
            # Ready as last posted (with node leases, unchanged status is re-posted every 5 min)
            ready = _node_ready(cp, info.name)
    lines.append(
        f"node {info.name}: {'Ready' if ready else 'NOT Ready'}; total RSS {total:.0f} MiB"
    )
    return ready, lines


# ---- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tierserve.dev.controlplane.node",
        description="A real node (containerd + kubelet) beside the local control plane.",
    )
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"default: {default_node_state_dir()}")  # fmt: skip
    parser.add_argument("--controlplane-state-dir", type=Path, default=None,
                        help=f"default: {default_state_dir()}")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) kubelet, kube-scheduler, pause image")
    up_cmd = sub.add_parser("up", help="start the node (detached) beside a running control plane")
    up_cmd.add_argument("--no-scheduler", action="store_true")
    up_cmd.add_argument("--no-services", action="store_true",
                        help="no kube-proxy, CoreDNS or API relay")  # fmt: skip
    down_cmd = sub.add_parser("down", help="stop it and undo its host changes")
    down_cmd.add_argument("--purge", action="store_true", help="also delete images and state")
    sub.add_parser("status")
    imp = sub.add_parser("import", help="import an image archive (OCI or docker tar)")
    imp.add_argument("archive", type=Path)
    img = sub.add_parser("image", help="pack a root filesystem dir as an OCI archive")
    img.add_argument("rootfs", type=Path)
    img.add_argument("name", help="image name, e.g. tierserve/ray:dev")
    img.add_argument("out", type=Path)
    img.add_argument("--cmd", nargs="+", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            bins = ensure_node_binaries(services=True)
            say(f"kubelet: {bins.kubelet}\nkube-scheduler: {bins.scheduler}")
            say(f"kube-proxy: {bins.kube_proxy}\ncoredns: {bins.coredns}")
            say(f"pause image: {pause_image_archive()}")
        elif args.command == "up":
            cp = ControlPlaneInfo.load(args.controlplane_state_dir or default_state_dir())
            if cp is None:
                raise ComponentError("node", "no control plane running: run `... controlplane up`")
            start_node(
                cp,
                args.state_dir,
                scheduler=not args.no_scheduler,
                services=not args.no_services,
                detach=True,
            )
        elif args.command == "down":
            for line in stop_node(args.state_dir, purge=args.purge):
                say(line)
        elif args.command == "status":
            ready, lines = node_status(args.state_dir)
            print("\n".join(lines))
            return 0 if ready else 3
        elif args.command == "import":
            info = NodeInfo.load(args.state_dir or default_node_state_dir())
            if info is None:
                raise ComponentError("node", "no node running")
            print("\n".join(import_image(info, args.archive)))
        else:
            print(oci_archive(args.out, args.name, rootfs=args.rootfs, cmd=args.cmd))
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
