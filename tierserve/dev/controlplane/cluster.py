"""The running control plane: `up` starts etcd, kube-apiserver and kube-controller-manager in
order, each waited for (bounded) before the next; `down` and `status` work from any process
through the state file. There is no kubelet or scheduler: pods stay Pending.

What `up` starts ends with the process that called it (tests, the demo, benchmarks), also when
that process is killed; `up(detach=True)` (the CLI) leaves it running for a later `down`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tierserve.dev.controlplane.build import ensure_binaries, kube_build, say
from tierserve.dev.controlplane.components import (
    alive,
    apiserver_ready,
    check_ports,
    get,
    launch,
    rss_mib,
    running,
    ssl_context,
    stop_pid,
    wait_started,
)
from tierserve.dev.controlplane.kuberay import start_kuberay_operator
from tierserve.dev.controlplane.pki import make_pki, write_kubeconfig
from tierserve.dev.controlplane.state import (
    COMPONENTS,
    STATE_FILE,
    ControlPlaneInfo,
    Ports,
    default_state_dir,
)
from tierserve.dev.proc import ComponentError, Process

# Bounds on every wait. Cold starts on 2 cores take ~10 s for the API server; these leave margin.
ETCD_TIMEOUT = 60.0
APISERVER_TIMEOUT = 180.0
CONTROLLER_MANAGER_TIMEOUT = 120.0

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _etcd_ports(ports: Ports) -> dict[int, str]:
    return {
        ports.etcd_client: "etcd --listen-client-urls",
        ports.etcd_peer: "etcd --listen-peer-urls",
    }


def _apiserver_ports(ports: Ports) -> dict[int, str]:
    return {ports.apiserver: "kube-apiserver --secure-port"}


def _controller_manager_ports(ports: Ports) -> dict[int, str]:
    return {ports.controller_manager: "kube-controller-manager --secure-port"}


def _start_etcd(info: ControlPlaneInfo, procs: list[Process], detach: bool) -> str:
    """Starts etcd and waits until healthy; returns its client URL."""
    ports = info.ports
    etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    etcd = launch(
        "etcd",
        [
            str(info.bin_dir / "etcd"),
            "--name=tierserve",
            f"--data-dir={info.state_dir / 'etcd'}",
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
        _etcd_ports(ports),
        detach=detach,
    )
    wait_started(
        etcd,
        lambda: get(f"{etcd_url}/health")[0] == 200,
        f"healthy at {etcd_url}/health",
        ETCD_TIMEOUT,
        _etcd_ports(ports),
    )
    return etcd_url


def _start_apiserver(
    info: ControlPlaneInfo, procs: list[Process], etcd_url: str, detach: bool
) -> None:
    """Starts kube-apiserver and waits until /readyz is ok."""
    pki = info.state_dir / "pki"
    apiserver = launch(
        "kube-apiserver",
        [
            str(info.bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={info.ports.apiserver}",
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
            # A local node's kubelet (node.py) serves on its InternalIP (the bridge address) and
            # takes clients with a certificate of this CA only: the API server presents the
            # admin client certificate (logs, exec, port-forward).
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            "--profiling=false",
        ],
        info,
        procs,
        _apiserver_ports(info.ports),
        detach=detach,
    )
    wait_started(
        apiserver,
        lambda: apiserver_ready(info),
        f"ready at {info.server_url}/readyz",
        APISERVER_TIMEOUT,
        _apiserver_ports(info.ports),
    )


def _start_controller_manager(info: ControlPlaneInfo, procs: list[Process], detach: bool) -> None:
    """Starts kube-controller-manager and waits until its controllers run (the `default`
    ServiceAccount exists)."""
    pki = info.state_dir / "pki"
    kubeconfig = info.state_dir / "controller-manager.kubeconfig"
    kcm = launch(
        "kube-controller-manager",
        [
            str(info.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={info.ports.controller_manager}",
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
        _controller_manager_ports(info.ports),
        detach=detach,
    )
    ctx = ssl_context(pki)
    kcm_url = f"https://127.0.0.1:{info.ports.controller_manager}/healthz"
    default_sa = f"{info.server_url}/api/v1/namespaces/default/serviceaccounts/default"
    wait_started(
        kcm,
        lambda: get(kcm_url, ctx)[0] == 200 and get(default_sa, ctx)[0] == 200,
        "running its controllers (healthz ok and the default ServiceAccount created)",
        CONTROLLER_MANAGER_TIMEOUT,
        _controller_manager_ports(info.ports),
    )


def up(
    state_dir: Path | str | None = None,
    *,
    ports: Ports | None = None,
    kuberay: bool = False,
    detach: bool = False,
) -> ControlPlaneInfo:
    """Starts etcd, kube-apiserver and kube-controller-manager (building them if needed).

    They end with this process (however it ends) unless `detach`: then they run until `down`.

    Returns once /readyz is ok and the controller manager has created the `default`
    ServiceAccount (so its controllers run). Reuses a healthy control plane already running from
    `state_dir`; reuses its certificates and etcd data across restarts. On failure, whatever was
    started is stopped and a one-line ComponentError says what failed and where its log is.
    """
    state = Path(state_dir) if state_dir else default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    existing = ControlPlaneInfo.load(state)
    if existing and running(existing, COMPONENTS[1:]) and apiserver_ready(existing):
        if kuberay and not running(existing, ["kuberay-operator"]):
            start_kuberay_operator(existing, detach=detach)
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
    write_kubeconfig(info.kubeconfig, info.server_url, pki, "admin")
    kcm_kubeconfig = state / "controller-manager.kubeconfig"
    write_kubeconfig(kcm_kubeconfig, info.server_url, pki, "controller-manager")

    procs: list[Process] = []
    try:
        for name, taken in (
            ("etcd", _etcd_ports(ports)),
            ("kube-apiserver", _apiserver_ports(ports)),
            ("kube-controller-manager", _controller_manager_ports(ports)),
        ):
            check_ports(name, taken, info)
        etcd_url = _start_etcd(info, procs, detach)
        _start_apiserver(info, procs, etcd_url, detach)
        _start_controller_manager(info, procs, detach)
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
        start_kuberay_operator(info, detach=detach)
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
        was_running |= alive(pid, start_time)
        try:
            stop_pid(name, pid, start_time)
        except ComponentError as exc:
            errors.append(str(exc))
    with contextlib.suppress(OSError):
        (state / STATE_FILE).unlink()
    if errors:
        raise ComponentError("controlplane", "; ".join(errors))
    return was_running


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
        is_alive = alive(pid, info.start_times.get(name) or None)
        rss = rss_mib(pid) if is_alive else None
        total += rss or 0.0
        mem = f", RSS {rss:.0f} MiB" if rss is not None else ""
        lines.append(
            f"{name}: {'running' if is_alive else 'DEAD'} (pid {pid}{mem}; log {info.logs[name]})"
        )
    ready = apiserver_ready(info)
    lines.append(f"kube-apiserver {info.server_url}/readyz: {'ok' if ready else 'NOT ready'}")
    lines.append(f"total RSS {total:.0f} MiB; KUBECONFIG={info.kubeconfig}")
    return ready, lines
