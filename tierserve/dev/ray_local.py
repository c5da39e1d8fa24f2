"""A real local Ray head node with its dashboard, on loopback, sized for a 2-core machine.

Started with the `ray start --head --block` CLI in its own session and its own temp dir, apart
from the process that started it, so it looks like an external cluster: clients reach it only
through its addresses (GCS, dashboard / Serve REST API, Serve HTTP proxy). Every port is chosen
free on 127.0.0.1, so several heads can run side by side. `stop()` ends exactly the processes of
this head (its session, their descendants, and any process naming its temp dir): never a
machine-wide `ray stop`.

It never outlives the process that started it. `ray start --block` gets a parent-death signal
(SIGTERM: it then stops its processes, which Ray binds to it with SIGKILL), and the watchdog of
`tierserve.dev.proc` ends, once that process is gone, whatever is left: every process still in
the head's session (Ray starts its workers in process groups of their own, but never in a new
session), or naming its temp dir, and their descendants (re-parented ones too).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tierserve.controller.serve_client import ServeClient
from tierserve.dev.proc import (
    ComponentError,
    Process,
    bind,
    cmdline,
    find_processes,
    logs_dir,
    process_table,
    start,
    terminate,
    unbind,
    wait_until,
)

COMPONENT = "ray head"
TEMP_PREFIX = "tsray-"

# Logical CPUs: two tiny vLLM engines (1 CPU bundle each, plus their Serve replicas), the Serve
# controller, proxy and router. Oversubscribing 2 physical cores is fine for tiny models.
DEFAULT_NUM_CPUS = 8
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024

# Everything started here is offline: nothing is ever downloaded from a model hub.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# Loopback only: Ray turns --node-ip-address=127.0.0.1 into the machine's routable address unless
# it runs as a single-machine cluster (no other node can join, which is what a local head wants);
# with node IP 127.0.0.1 its servers bind loopback instead of every interface.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # A local head has nothing to drain: stop at once on SIGTERM instead of waiting up to 30s.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    # Explicit, so the head does not depend on the machine's state: with RAY_AUTH_MODE unset, Ray
    # turns token auth on whenever ~/.ray/auth_token exists (any local `ray.init()` writes one),
    # and the dashboard then answers 401 to clients without the token. Everything binds loopback.
    "RAY_AUTH_MODE": "disabled",
}

# Ray Serve's throughput-optimized mode (Ray >= 2.55; what Ray's docs recommend for serving):
# direct ingress (the ingress replica takes HTTP itself), gRPC between replicas, no extra
# thread or event loop per replica. On the tiny stack it raised c8 throughput from 24.6 to 40.6
# req/s in an A/B; bench/serving_peers.py still finds the Serve path at about a third of a
# plain vLLM server's throughput on 2 cores (bench/results/serving_peers). KubeRay pods do not
# get it yet: KubeRay's serve Service and readiness checks expect Serve's proxy on each pod.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


@dataclass
class RayHead:
    """A running head node. `stop()` is idempotent."""

    gcs_address: str  # "127.0.0.1:<port>", for `ray.init(address=...)`
    dashboard_url: str  # "http://127.0.0.1:<port>"; the Serve REST API lives here
    serve_http_port: int  # a free port reserved for the Serve HTTP proxy (127.0.0.1)
    temp_dir: Path
    log: Path
    process: Process
    metrics_export_port: int = 0  # Ray's Prometheus exporter (Serve's and vLLM's metrics)
    _stopped: bool = field(default=False, repr=False)

    @property
    def session_logs(self) -> Path:
        """Ray's own logs (raylet, gcs, dashboard, serve, workers) for this head."""
        return self.temp_dir / "session_latest" / "logs"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_export_port}/metrics"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_http_port}"

    def alive(self) -> bool:
        return self.process.alive()

    def pids(self) -> set[int]:
        """Every live process of this head: the `ray start` session (its start time guards
        against a reused pid), any process whose command line names this head's temp dir, and
        their descendants."""
        return find_processes(
            sessions={self.process.popen.pid: self.process.start_time},
            cmdlines=[str(self.temp_dir)],
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        # SIGTERM to every process of the head at once (`ray start --block` alone takes up to
        # ~15s to wind down vLLM engines one by one), SIGKILL what is left after `timeout`.
        terminate(self.pids, timeout=timeout, component=COMPONENT)
        self.process.stop(timeout=5.0)  # reaps `ray start`
        terminate(self.pids, timeout=5.0, component=COMPONENT)  # anything started meanwhile
        unbind(cmdline=str(self.temp_dir))
        self._stopped = True
        # The temp dir stays: its logs are what a failure message points at. Old ones are pruned
        # when a head starts.


def _prune_temp_dirs(max_age_s: float = 24 * 3600) -> None:
    """Removes the temp dirs (logs) of heads started here more than a day ago and now stopped."""
    now = time.time()
    for path in Path("/tmp").glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > max_age_s and not any(
                str(path) in cmdline(pid) for pid in process_table()
            ):
                shutil.rmtree(path, ignore_errors=True)


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all held open at once while choosing)."""
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]


def ray_executable() -> str:
    """The `ray` CLI of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ComponentError(COMPONENT, f"no `ray` executable next to {sys.executable} or on PATH")
    return found


def start_ray_head(
    *,
    num_cpus: int = DEFAULT_NUM_CPUS,
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    throughput_optimized: bool = True,
) -> RayHead:
    """Starts a head node with the dashboard on 127.0.0.1 and waits (bounded) until its Serve
    REST API answers; `throughput_optimized`: Serve's throughput-optimized mode (SERVE_ENV)."""
    names = [
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "node-manager-port",
        "object-manager-port",
    ]
    *picked, serve_http_port = free_ports(len(names) + 1)
    ports = dict(zip(names, picked, strict=True))
    # Short path: Ray's unix sockets live under it and must stay below ~107 characters.
    _prune_temp_dirs()
    temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))
    log = logs_dir() / f"ray-head-{ports['port']}.log"
    argv = [
        ray_executable(),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_bytes}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    serve_env = SERVE_ENV if throughput_optimized else {}
    proc_env = {**OFFLINE_ENV, **LOOPBACK_ENV, **serve_env, **(env or {})}
    process = start(COMPONENT, argv, log=log, env=proc_env, cwd=temp_dir)
    try:  # its session is bound by start(); this catches any process that leaves the session
        bind(cmdline=str(temp_dir))
    except BaseException:
        process.stop()
        raise
    head = RayHead(
        gcs_address=f"127.0.0.1:{ports['port']}",
        dashboard_url=f"http://127.0.0.1:{ports['dashboard-port']}",
        serve_http_port=serve_http_port,
        temp_dir=temp_dir,
        log=log,
        process=process,
        metrics_export_port=ports["metrics-export-port"],
    )

    def serve_api_up() -> bool:
        ServeClient(head.dashboard_url, timeout=5.0).details()  # raises until it answers
        return True

    try:
        wait_until(
            serve_api_up,
            timeout=timeout,
            component=COMPONENT,
            what=f"serving the dashboard's Serve REST API at {head.dashboard_url}",
            log=log,
            proc=process.popen,
            interval=0.5,
        )
    except BaseException:
        head.stop()
        raise
    return head


def main() -> int:
    """`python -m tierserve.dev.ray_local`: start a head, print addresses, stop on Ctrl-C."""
    try:
        head = start_ray_head()
    except ComponentError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ray head up: gcs {head.gcs_address}  dashboard {head.dashboard_url}  log {head.log}")
    try:
        while head.alive():
            time.sleep(1)
        print(f"{COMPONENT}: exited unexpectedly; see {head.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        head.stop()


if __name__ == "__main__":
    sys.exit(main())
