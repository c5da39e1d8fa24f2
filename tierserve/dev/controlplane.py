"""A local Kubernetes control plane made of real upstream binaries: etcd, kube-apiserver and
kube-controller-manager, plus kubectl, helm, the KubeRay CRDs and (optionally) the KubeRay operator.

Why this exists: tierserve's operator must be tested against a real API server (CRD schema
validation, server-side apply, ownerReference garbage collection, namespace deletion), and no
registry reachable from CI ships these binaries. So they are built from the pinned Go modules in
e2e/ and cached under ``cache_dir()`` by a hash of what decides the build; a warm run only checks
that the files exist. There is no kubelet or scheduler: pods stay Pending, which the tests accept.

CLI: ``python -m tierserve.dev.controlplane build|up|down|status``. ``up`` leaves the processes
running (detached) and prints ``export KUBECONFIG=...``; ``down`` stops them, from any process,
using the pids recorded in the state dir.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tierserve.dev.proc import (
    ComponentError,
    Process,
    cache_dir,
    free_port,
    logs_dir,
    port_in_use,
    start,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = REPO_ROOT / "e2e"
SAMPLES_DIR = E2E_DIR / "samples"

# Bounds on every wait. Cold starts on 2 cores take ~10 s for the API server; these leave margin.
BUILD_TIMEOUT = 3600.0
ETCD_TIMEOUT = 60.0
APISERVER_TIMEOUT = 180.0
CONTROLLER_MANAGER_TIMEOUT = 120.0
KUBERAY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "controlplane.json"
# Stop order: dependents first, etcd last.
COMPONENTS = ("kuberay-operator", "kube-controller-manager", "kube-apiserver", "etcd")


def say(msg: str) -> None:
    """Progress goes to stderr so `up`'s stdout stays eval-able (`eval "$(... up)"`)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Building the binaries from the pinned Go modules
# --------------------------------------------------------------------------------------------


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


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise ComponentError(
            "go", "the Go toolchain is not on PATH; install Go >= 1.26 (https://go.dev/dl)"
        )
    return go


@contextlib.contextmanager
def _locked(path: Path, timeout: float, component: str) -> Iterator[None]:
    """Serialises builds of the same thing across processes (make and a test run, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ComponentError(
                        component, f"another build still holds {path} after {timeout:.0f}s"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def go_build(spec: GoBuild) -> Path:
    """Builds `spec` unless its binaries are already cached; returns the bin dir."""
    bin_dir = spec.bin_dir()
    if spec.built():
        return bin_dir
    with _locked(bin_dir.parent / ".build.lock", BUILD_TIMEOUT, spec.component):
        if spec.built():  # another process finished it while we waited
            return bin_dir
        go = _go()
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
                [_go(), "mod", "download", "-json", module],
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


# --------------------------------------------------------------------------------------------
# Certificates (openssl CLI: present everywhere, and no extra Python dependency)
# --------------------------------------------------------------------------------------------


def _openssl(command: str, cwd: Path) -> None:
    """Runs `openssl <command>` in `cwd`; arguments are relative file names without spaces."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise ComponentError("certificates", "the openssl command is not on PATH")
    args = command.split()
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        log = cwd / "openssl.log"
        log.write_text(f"$ openssl {command}\n{result.stdout}{result.stderr}")
        raise ComponentError("certificates", f"openssl {args[0]} failed", log)


def _new_key(pki: Path, name: str) -> None:
    # ECDSA P-256: generated instantly (RSA takes seconds each on a busy 2-core box).
    _openssl(f"genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.key", pki)


def _sign(pki: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    _new_key(pki, name)
    (pki / f"{name}.ext").write_text(f"[ext]\n{LEAF_EXTENSIONS}{extensions}\n")
    _openssl(f"req -new -key {name}.key -subj {subject} -out {name}.csr", pki)
    _openssl(
        f"x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -days 825 -sha256"
        f" -set_serial 0x{secrets.token_hex(16)} -extfile {name}.ext -extensions ext"
        f" -out {name}.crt",
        pki,
    )


LEAF_EXTENSIONS = (
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature, keyEncipherment\n"
)
CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
"""


PKI_FILES = [
    f"{name}.{ext}"
    for name in (
        "ca",
        "front-proxy-ca",
        "serving",
        "admin",
        "controller-manager",
        "front-proxy-client",
    )
    for ext in ("crt", "key")
] + ["sa.key", "sa.pub"]


def make_pki(pki: Path) -> None:
    """CA, loopback serving cert, client certs and the service-account key pair (idempotent).

    The front-proxy CA is what kube-apiserver publishes for request-header authentication; without
    it the controller manager's delegated authentication logs errors in a loop.
    """
    if all((pki / name).is_file() for name in PKI_FILES):
        return
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    for ca in ("ca", "front-proxy-ca"):
        _new_key(pki, ca)
        (pki / f"{ca}.cnf").write_text(CA_CONFIG.format(cn=f"tierserve-local-{ca}"))
        _openssl(
            f"req -x509 -new -key {ca}.key -config {ca}.cnf -extensions v3_ca -days 3650 -sha256"
            f" -out {ca}.crt",
            pki,
        )
    sans = ",".join(
        ["IP:127.0.0.1", "DNS:localhost", "IP:10.96.0.1", "DNS:kubernetes"]
        + [f"DNS:kubernetes.default{s}" for s in ("", ".svc", ".svc.cluster.local")]
    )
    # One loopback serving cert for both kube-apiserver and kube-controller-manager.
    _sign(pki, "serving", "/CN=tierserve-loopback",
          f"extendedKeyUsage = serverAuth\nsubjectAltName = {sans}")  # fmt: skip
    _sign(pki, "admin", "/O=system:masters/CN=tierserve-admin", "extendedKeyUsage = clientAuth")
    _sign(pki, "controller-manager", "/CN=system:kube-controller-manager",
          "extendedKeyUsage = clientAuth")  # fmt: skip
    client = "extendedKeyUsage = clientAuth"
    _sign(pki, "front-proxy-client", "/CN=front-proxy-client", client, ca="front-proxy-ca")
    _new_key(pki, "sa")
    _openssl("pkey -in sa.key -pubout -out sa.pub", pki)
    for path in pki.iterdir():
        if path.suffix in (".csr", ".ext", ".cnf"):
            path.unlink()


def _write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tierserve-local",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "tierserve-local", "context": {"cluster": "tierserve-local", "user": user}}
        ],
        "current-context": "tierserve-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# Running the control plane
# --------------------------------------------------------------------------------------------


@dataclass
class Ports:
    """Loopback ports. Fixed defaults for the CLI (a stable kubeconfig); `free()` for tests."""

    etcd_client: int = 18379
    etcd_peer: int = 18380
    apiserver: int = 18443
    controller_manager: int = 18257
    kuberay_metrics: int = 18080
    kuberay_probe: int = 18082

    @classmethod
    def free(cls) -> Ports:
        picked: set[int] = set()
        values = []
        for _ in range(6):
            port = free_port()
            while port in picked:
                port = free_port()
            picked.add(port)
            values.append(port)
        return cls(*values)


@dataclass
class ControlPlaneInfo:
    """What a client needs; also the JSON state file `down`/`status` read from another process."""

    state_dir: Path
    kubeconfig: Path
    server_url: str
    bin_dir: Path
    ca_file: Path
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    start_times: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    kubernetes_version: str = ""

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def save(self) -> None:
        data = asdict(self)
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlaneInfo | None:
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        for key in ("state_dir", "kubeconfig", "bin_dir", "ca_file"):
            data[key] = Path(data[key])
        data["ports"] = Ports(**data["ports"])
        return cls(**data)


def default_state_dir() -> Path:
    return cache_dir() / "controlplane"


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of `pid`, so a recycled pid is never mistaken for ours (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _alive(pid: int, start_time: str | None) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    if Path("/proc").is_dir():
        now = _proc_start_time(pid)
        return now is not None and (start_time is None or now == start_time)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _stop_pid(name: str, pid: int, start_time: str | None) -> None:
    """SIGTERM the component's process group, SIGKILL after STOP_TIMEOUT; bounded either way."""
    if not _alive(pid, start_time):
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # started with start_new_session: pgid == pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, start_time):
                return
            time.sleep(0.1)
    raise ComponentError(name, f"pid {pid} survived SIGKILL")


def _ssl_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _port_message(component: str, port: int, flag: str, log: Path) -> ComponentError:
    return ComponentError(
        component, f"port 127.0.0.1:{port} ({flag}) is already in use by another process", log
    )


def _check_ports(name: str, ports: dict[int, str], info: ControlPlaneInfo) -> Path:
    """Fails before starting anything if a port is taken; the reason also goes to the log."""
    log = info.logs_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    for port, flag in ports.items():
        if port_in_use(port):
            with open(log, "a") as fh:
                fh.write(f"tierserve: not started: 127.0.0.1:{port} ({flag}) is already in use\n")
            raise _port_message(name, port, flag, log)
    return log


def _launch(
    name: str, argv: list[str], info: ControlPlaneInfo, procs: list[Process], ports: dict[int, str]
) -> Process:
    """Starts one component (after checking its ports) and records its pid at once."""
    log = _check_ports(name, ports, info)
    with open(log, "a") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n")
    process = start(name, argv, log=log)
    procs.append(process)
    info.pids[name] = process.popen.pid
    info.start_times[name] = _proc_start_time(process.popen.pid) or ""
    info.logs[name] = str(log)
    info.save()  # record pids at once: `down` must find them even if `up` dies half-way
    return process


def _wait(
    process: Process, check: Callable[[], bool], what: str, timeout: float, ports: dict[int, str]
) -> None:
    """wait_until, but a bind failure (port taken after our check) is reported as a port clash."""
    try:
        wait_until(
            check,
            timeout=timeout,
            component=process.name,
            what=what,
            log=process.log,
            proc=process.popen,
        )
    except ComponentError:
        if not process.alive():
            tail = process.log.read_text(errors="replace")[-20000:]
            match = re.search(r"127\.0\.0\.1:(\d+)[^\n]*address already in use", tail)
            if match and int(match.group(1)) in ports:
                port = int(match.group(1))
                raise _port_message(process.name, port, ports[port], process.log) from None
        raise


def _running(info: ControlPlaneInfo, names: Sequence[str]) -> bool:
    return all(
        n in info.pids and _alive(info.pids[n], info.start_times.get(n) or None) for n in names
    )


def _apiserver_ready(info: ControlPlaneInfo) -> bool:
    try:
        status, body = _get(f"{info.server_url}/readyz", _ssl_context(info.state_dir / "pki"))
    except (OSError, ssl.SSLError):
        return False
    return status == 200 and body.strip() == "ok"


def up(
    state_dir: Path | str | None = None,
    *,
    ports: Ports | None = None,
    kuberay: bool = False,
) -> ControlPlaneInfo:
    """Starts etcd, kube-apiserver and kube-controller-manager (building them if needed).

    Returns once /readyz is ok and the controller manager has created the `default`
    ServiceAccount (so its controllers run). Reuses a healthy control plane already running from
    `state_dir`; reuses its certificates and etcd data across restarts. On failure, whatever was
    started is stopped and a one-line ComponentError says what failed and where its log is.
    """
    state = Path(state_dir) if state_dir else default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    existing = ControlPlaneInfo.load(state)
    if existing and _running(existing, COMPONENTS[1:]) and _apiserver_ready(existing):
        if kuberay and not _running(existing, ["kuberay-operator"]):
            start_kuberay_operator(existing)
        return existing
    if existing:
        down(state)  # half-running: start clean (certificates and etcd data are kept)
        if ports is None:
            ports = existing.ports

    bin_dir = ensure_binaries()
    began = time.monotonic()
    ports = ports or Ports()
    pki = state / "pki"
    make_pki(pki)
    info = ControlPlaneInfo(
        state_dir=state,
        kubeconfig=state / "admin.kubeconfig",
        server_url=f"https://127.0.0.1:{ports.apiserver}",
        bin_dir=bin_dir,
        ca_file=pki / "ca.crt",
        ports=ports,
        kubernetes_version=kube_build().version(),
    )
    info.logs_dir.mkdir(parents=True, exist_ok=True)
    _write_kubeconfig(info.kubeconfig, info.server_url, pki, "admin")
    kcm_kubeconfig = state / "controller-manager.kubeconfig"
    _write_kubeconfig(kcm_kubeconfig, info.server_url, pki, "controller-manager")

    procs: list[Process] = []
    try:
        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        etcd_ports = {
            ports.etcd_client: "etcd --listen-client-urls",
            ports.etcd_peer: "etcd --listen-peer-urls",
        }
        apiserver_ports = {ports.apiserver: "kube-apiserver --secure-port"}
        kcm_ports = {ports.controller_manager: "kube-controller-manager --secure-port"}
        for name, taken in (
            ("etcd", etcd_ports),
            ("kube-apiserver", apiserver_ports),
            ("kube-controller-manager", kcm_ports),
        ):
            _check_ports(name, taken, info)
        etcd = _launch(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=tierserve",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=tierserve={peer_url}",
                "--log-level=warn",
                # Throwaway test state: skipping fsync makes every API write much cheaper.
                "--unsafe-no-fsync",
            ],
            info,
            procs,
            etcd_ports,
        )
        _wait(
            etcd,
            lambda: _get(f"{etcd_url}/health")[0] == 200,
            f"healthy at {etcd_url}/health",
            ETCD_TIMEOUT,
            etcd_ports,
        )

        apiserver = _launch(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # No kubelets: nothing would ever serve the `kubernetes` Service's endpoints.
                "--endpoint-reconciler-type=none",
                # One client (the tests): fairness queues only cost CPU on 2 cores.
                "--enable-priority-and-fairness=false",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--profiling=false",
            ],
            info,
            procs,
            apiserver_ports,
        )
        _wait(
            apiserver,
            lambda: _apiserver_ready(info),
            f"ready at {info.server_url}/readyz",
            APISERVER_TIMEOUT,
            apiserver_ports,
        )

        kcm = _launch(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.controller_manager}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
            info,
            procs,
            kcm_ports,
        )
        ctx = _ssl_context(pki)
        kcm_url = f"https://127.0.0.1:{ports.controller_manager}/healthz"
        default_sa = f"{info.server_url}/api/v1/namespaces/default/serviceaccounts/default"
        _wait(
            kcm,
            lambda: _get(kcm_url, ctx)[0] == 200 and _get(default_sa, ctx)[0] == 200,
            "running its controllers (healthz ok and the default ServiceAccount created)",
            CONTROLLER_MANAGER_TIMEOUT,
            kcm_ports,
        )
        info.save()
    except BaseException:
        for process in reversed(procs):
            with contextlib.suppress(Exception):
                process.stop()
        with contextlib.suppress(OSError):
            (state / STATE_FILE).unlink()
        raise
    say(f"==> control plane ready in {time.monotonic() - began:.1f}s at {info.server_url}")
    if kuberay:  # optional: if it fails, the control plane stays up and the error says why
        start_kuberay_operator(info)
    return info


def down(state_dir: Path | str | None = None) -> bool:
    """Stops a control plane started from `state_dir` by any process; False if none was running.

    Keeps certificates, etcd data and logs (delete the state dir to start from scratch).
    """
    state = Path(state_dir) if state_dir else default_state_dir()
    info = ControlPlaneInfo.load(state)
    if info is None:
        return False
    was_running = False
    errors = []
    for name in COMPONENTS:
        pid = info.pids.get(name)
        if pid is None:
            continue
        start_time = info.start_times.get(name) or None
        was_running |= _alive(pid, start_time)
        try:
            _stop_pid(name, pid, start_time)
        except ComponentError as exc:
            errors.append(str(exc))
    with contextlib.suppress(OSError):
        (state / STATE_FILE).unlink()
    if errors:
        raise ComponentError("controlplane", "; ".join(errors))
    return was_running


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
    ctx = _ssl_context(info.state_dir / "pki")

    def served() -> set[str]:
        names = set()
        for group, version in {(c["group"], c["versions"][0]) for c in index}:
            code, body = _get(f"{info.server_url}/apis/{group}/{version}", ctx)
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


def kubectl(
    info: ControlPlaneInfo, *args: str, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the built kubectl against `info`; raises a one-line ComponentError on failure."""
    argv = [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", *args]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComponentError("kubectl", f"`kubectl {' '.join(args)}` timed out") from None
    if result.returncode != 0:
        err = " ".join(result.stderr.split())[:2000]
        raise ComponentError("kubectl", f"`kubectl {' '.join(args)}` failed: {err}")
    return result


def start_kuberay_operator(info: ControlPlaneInfo, binary: Path | None = None) -> Process:
    """Runs the KubeRay operator against the control plane (CRDs installed first).

    With no kubelet its Ray pods stay Pending, but it reconciles: RayService -> RayCluster ->
    Pods/Services objects. Recorded in the state file so `down` stops it too.
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
    process = _launch(
        "kuberay-operator",
        [
            str(binary),
            f"--kubeconfig={info.kubeconfig}",
            f"--metrics-addr=127.0.0.1:{ports.kuberay_metrics}",
            f"--health-probe-bind-address=127.0.0.1:{ports.kuberay_probe}",
            "--enable-leader-election=false",
            "--log-stdout-encoder=console",
        ],
        info,
        [],
        kuberay_ports,
    )
    try:
        _wait(
            process,
            lambda: _get(f"http://127.0.0.1:{ports.kuberay_probe}/readyz")[0] == 200,
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
        _stop_pid("kuberay-operator", pid, info.start_times.pop("kuberay-operator", None) or None)
        info.save()


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def status(state_dir: Path | str | None = None) -> tuple[bool, list[str]]:
    """(ready, human-readable lines) for the control plane of `state_dir`."""
    state = Path(state_dir) if state_dir else default_state_dir()
    info = ControlPlaneInfo.load(state)
    if info is None:
        return False, [f"no control plane recorded in {state}"]
    lines = []
    total = 0.0
    for name in reversed(COMPONENTS):
        if name not in info.pids:
            continue
        pid = info.pids[name]
        alive = _alive(pid, info.start_times.get(name) or None)
        rss = _rss_mib(pid) if alive else None
        total += rss or 0.0
        mem = f", RSS {rss:.0f} MiB" if rss is not None else ""
        lines.append(
            f"{name}: {'running' if alive else 'DEAD'} (pid {pid}{mem}; log {info.logs[name]})"
        )
    ready = _apiserver_ready(info)
    lines.append(f"kube-apiserver {info.server_url}/readyz: {'ok' if ready else 'NOT ready'}")
    lines.append(f"total RSS {total:.0f} MiB; KUBECONFIG={info.kubeconfig}")
    return ready, lines


def _usage_lines(info: ControlPlaneInfo) -> list[str]:
    return [
        f"export KUBECONFIG={info.kubeconfig}",
        f'export PATH="{info.bin_dir}:$PATH"',
        f"# kubectl (Kubernetes {info.kubernetes_version}): {info.kubectl} get namespaces",
        "# no kubelet or scheduler: pods stay Pending; CRDs, RBAC, GC and namespaces all work",
        "# stop it with: python -m tierserve.dev.controlplane down",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tierserve.dev.controlplane",
        description="Local Kubernetes control plane from real upstream binaries.",
    )
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"default: {default_state_dir()}")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) binaries")
    build.add_argument("--kuberay", action="store_true", help="also build the KubeRay operator")
    build.add_argument("--no-helm", action="store_true")
    start_cmd = sub.add_parser("up", help="start (detached) and print export KUBECONFIG=...")
    start_cmd.add_argument(
        "--kuberay", action="store_true", help="also install the KubeRay CRDs and run its operator"
    )
    start_cmd.add_argument("--crds", action="store_true", help="install the KubeRay CRDs")
    sub.add_parser("down", help="stop it")
    sub.add_parser("status", help="show processes, memory and readiness")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            say(f"k8s binaries: {ensure_binaries()}")
            if not args.no_helm:
                say(f"helm: {ensure_helm()}")
            say(f"KubeRay CRDs: {kuberay_crds()[0].parent}")
            if args.kuberay:
                operator = ensure_kuberay_operator()
                if operator is None:
                    return 1
                say(f"KubeRay operator: {operator}")
        elif args.command == "up":
            info = up(args.state_dir, kuberay=args.kuberay)
            if args.crds and not args.kuberay:
                kuberay_crds_apply(info)
            print("\n".join(_usage_lines(info)))
        elif args.command == "down":
            stopped = down(args.state_dir)
            say("==> control plane stopped" if stopped else "==> no control plane was running")
        else:
            ready, lines = status(args.state_dir)
            print("\n".join(lines))
            return 0 if ready else 3
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
