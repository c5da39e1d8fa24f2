"""One component of the control plane as a process: started after its ports are checked, its pid
recorded at once, waited for (bounded) with port clashes named as such, stopped by pid from any
process, and reached over HTTPS with the admin certificate.

Components end with the process that started them (`tierserve.dev.proc.spawn`: a parent-death
signal and the watchdog), so a test run or demo that dies leaves no control plane behind; only
`python -m tierserve.dev.controlplane up`, whose job is to leave one running, starts them
detached (`launch(..., detach=True)`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tierserve.dev.controlplane.state import ControlPlaneInfo
from tierserve.dev.proc import (
    ComponentError,
    Process,
    WaitTimeout,
    find_processes,
    port_in_use,
    start,
    terminate,
    unbind,
    wait_until,
)
from tierserve.dev.proc import start_time as _start_time

STOP_TIMEOUT = 15.0


def proc_start_time(pid: int) -> str | None:
    """Kernel start time of `pid`, so a recycled pid is never mistaken for ours (Linux)."""
    return _start_time(pid)


def alive(pid: int, start_time: str | None) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    if Path("/proc").is_dir():
        now = proc_start_time(pid)
        return now is not None and (start_time is None or now == start_time)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def running(info: ControlPlaneInfo, names: Sequence[str]) -> bool:
    return all(
        n in info.pids and alive(info.pids[n], info.start_times.get(n) or None) for n in names
    )


def stop_pid(name: str, pid: int, start_time: str | None) -> None:
    """SIGTERM the component's process group, SIGKILL after STOP_TIMEOUT; bounded either way.
    Then anything left in its session, and the watchdog forgets it (if this process bound it)."""
    _stop_group(name, pid, start_time)
    if start_time:
        terminate(lambda: find_processes(sessions={pid: start_time}), timeout=2.0, component=name)
    unbind(session=pid)


def _stop_group(name: str, pid: int, start_time: str | None) -> None:
    if not alive(pid, start_time):
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # started with start_new_session: pgid == pid
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: not alive(pid, start_time),
                timeout=wait,
                component=name,
                what=f"stopped by {sig.name}",
                interval=0.1,
                retry=(),
            )
            return
    raise ComponentError(name, f"pid {pid} survived SIGKILL")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ssl_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def apiserver_ready(info: ControlPlaneInfo) -> bool:
    try:
        status, body = get(f"{info.server_url}/readyz", ssl_context(info.state_dir / "pki"))
    except (OSError, ssl.SSLError):
        return False
    return status == 200 and body.strip() == "ok"


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


def _port_message(component: str, port: int, flag: str, log: Path) -> ComponentError:
    return ComponentError(
        component, f"port 127.0.0.1:{port} ({flag}) is already in use by another process", log
    )


def check_ports(name: str, ports: dict[int, str], info: ControlPlaneInfo) -> Path:
    """Fails before starting anything if a port is taken; the reason also goes to the log."""
    log = info.logs_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    for port, flag in ports.items():
        if port_in_use(port):
            with open(log, "a") as fh:
                fh.write(f"tierserve: not started: 127.0.0.1:{port} ({flag}) is already in use\n")
            raise _port_message(name, port, flag, log)
    return log


def launch(
    name: str,
    argv: list[str],
    info: ControlPlaneInfo,
    procs: list[Process],
    ports: dict[int, str],
    *,
    detach: bool = False,
) -> Process:
    """Starts one component (after checking its ports) and records its pid at once.

    It ends with this process unless `detach` (the CLI's `up`, which exits and leaves it running).
    """
    log = check_ports(name, ports, info)
    with open(log, "a") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n")
    process = start(name, argv, log=log, bind=not detach)
    procs.append(process)
    info.pids[name] = process.popen.pid
    info.start_times[name] = process.start_time or ""
    info.logs[name] = str(log)
    info.save()  # record pids at once: `down` must find them even if `up` dies half-way
    return process


def wait_started(
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
