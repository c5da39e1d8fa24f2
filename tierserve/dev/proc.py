"""Starting, waiting for and stopping local processes, with bounded waits and named failures.

Every component (etcd, kube-apiserver, Prometheus, Ray, ...) goes through these helpers so that a
failure always says what failed and where its log is, and no wait is unbounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """Where built binaries, generated models, venvs and run state live (never in the repo)."""
    root = os.environ.get("TIERSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tierserve"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ComponentError(RuntimeError):
    """A component failed to build or start. The message is one line naming it and its log."""

    def __init__(self, component: str, what: str, log: Path | str | None = None):
        where = f"; see {log}" if log else ""
        super().__init__(f"{component}: {what}{where}")
        self.component = component
        self.log = log


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_free_port(component: str, port: int) -> None:
    if port_in_use(port):
        raise ComponentError(component, f"port 127.0.0.1:{port} is already in use")


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    component: str,
    what: str,
    log: Path | str | None = None,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.25,
) -> None:
    """Polls `check` until it is true; fails fast if `proc` exits, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if proc is not None and proc.poll() is not None:
            raise ComponentError(
                component, f"exited with code {proc.returncode} before {what}", log
            )
        if time.monotonic() > deadline:
            raise ComponentError(component, f"not {what} after {timeout:.0f}s", log)
        time.sleep(interval)


@dataclass
class Process:
    """A started child process with its log file; `stop()` is idempotent."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Process:
    """Starts `argv` in its own process group, so stop() takes its children too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise ComponentError(name, f"could not start {argv[0]}: {exc}", log) from exc
    finally:
        out.close()
    return Process(name=name, popen=popen, log=log)
