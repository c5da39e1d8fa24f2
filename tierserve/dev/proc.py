"""Starting, waiting for and stopping local processes, with bounded waits and named failures.

Every component (etcd, kube-apiserver, Prometheus, Ray, ...) goes through these helpers so that a
failure always says what failed and where its log is, and no wait is unbounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


class WaitTimeout(ComponentError):
    """A bounded wait ran out: what it waited for did not happen in time."""


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
    check: Callable[[], T],
    *,
    timeout: float,
    component: str,
    what: str,
    log: Path | str | None = None,
    proc: subprocess.Popen[Any] | None = None,
    interval: float = 0.25,
    retry: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """Polls `check` until it returns something truthy, and returns that.

    The one bounded wait of the dev harness and the tests, so that no wait can hang and every
    failure is one line saying what was awaited: "<component>: not <what> after <timeout>s"
    (a WaitTimeout),
    or at once "<component>: exited with code N before <what>" if `proc` exits. Exceptions of
    the `retry` types count as "not yet" (the last one is named in the timeout's message and
    chained to it); others propagate at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except retry as exc:
            last_error = exc
        else:
            if value:
                return value
        if proc is not None and proc.poll() is not None:
            raise ComponentError(
                component, f"exited with code {proc.returncode} before {what}", log
            ) from last_error
        if time.monotonic() > deadline:
            late = f"not {what} after {timeout:.0f}s{describe_error(last_error)}"
            raise WaitTimeout(component, late, log) from last_error
        time.sleep(interval)


def describe_error(error: BaseException | None) -> str:
    """` (last error: ...)` on one line, or nothing: what a timed-out wait last ran into."""
    if error is None:
        return ""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return f" (last error: {text[:300]})"


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, component: str, what: str) -> Iterator[None]:
    """An exclusive lock on `path` across processes (a build or training that another process
    may be doing), waited for at most `timeout` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:

        def locked() -> bool:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(locked, timeout=timeout, component=component, what=what, interval=1.0, retry=())
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
