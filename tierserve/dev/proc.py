"""Starting, waiting for and stopping local processes, with bounded waits and named failures.

Every component (etcd, kube-apiserver, Prometheus, Ray, ...) goes through these helpers so that a
failure always says what failed and where its log is, and no wait is unbounded.

Nothing outlives the process that started it (a test run, the demo), however that process ends:

- `spawn`/`start` put each child in a new session (its own process group, so `stop()` takes its
  children too) and give it a parent-death signal (Linux `PR_SET_PDEATHSIG`), so it is signalled
  the moment its parent dies, even by SIGKILL. The kernel sends it when the forking *thread*
  ends, so only children spawned from the main thread get it; the watchdog covers the others;
- a watchdog process per parent (`bind`) ends, once the parent is gone, every process still in a
  bound child's session (descendants that changed process group, or were re-parented because
  their parent died first: Ray's workers), every explicitly bound process (daemons that called
  setsid: `ray start` without --block) and every process whose command line names a bound text
  (a Ray head's temp dir). SIGTERM first, SIGKILL after a grace period;
- `interrupt_on_signals` turns SIGTERM/SIGHUP into KeyboardInterrupt, so `finally` blocks and
  pytest's fixture teardown run as they do on Ctrl-C.

Detached children (`bind=False`) are for commands whose job is to leave something running
(`python -m tierserve.dev.controlplane up`). Stdlib only: this file is also the watchdog's script.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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


# ---- What is running: /proc, Linux only (elsewhere nothing is found and only groups are killed)

LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that identify a process and place it in the tree."""

    ppid: int
    pgid: int
    sid: int
    start: str  # clock ticks since boot: with the pid, identifies a process (pids are reused)
    zombie: bool


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return ProcStat(int(fields[1]), int(fields[2]), int(fields[3]), fields[19], fields[0] == "Z")


def start_time(pid: int) -> str | None:
    """When `pid` started, or None if it is gone (or a zombie)."""
    stat = proc_stat(pid)
    return None if stat is None or stat.zombie else stat.start


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger if pid 1 does not reap)."""
    return start_time(pid) is not None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def process_table() -> dict[int, ProcStat]:
    table: dict[int, ProcStat] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (stat := proc_stat(int(name))) is not None:
                table[int(name)] = stat
    return table


def find_processes(
    *,
    sessions: Mapping[int, str | None] | None = None,
    processes: Mapping[int, str | None] | None = None,
    cmdlines: Collection[str] = (),
) -> set[int]:
    """Running pids: the members of each session, each process, each process whose command line
    contains one of `cmdlines`, and every descendant of those. Never this process.

    Sessions and processes map a pid to its start time. A session is matched only while its
    leader either still runs with that start time or is gone: a pid running with another start
    time was reused, which the kernel allows only once nothing is left in the old session.
    """
    table = process_table()
    found: set[int] = set()
    for sid, started in (sessions or {}).items():
        leader = table.get(sid)
        if leader is None or started is None or leader.start == started:
            found |= {pid for pid, stat in table.items() if stat.sid == sid}
    for pid, started in (processes or {}).items():
        stat = table.get(pid)
        if stat is not None and (started is None or stat.start == started):
            found.add(pid)
    if cmdlines:
        found |= {pid for pid in table if any(text in cmdline(pid) for text in cmdlines)}
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return {pid for pid in found if not table[pid].zombie}


def terminate(
    find: Callable[[], set[int]],
    *,
    timeout: float,
    kill_timeout: float = 5.0,
    component: str = "processes",
) -> set[int]:
    """SIGTERMs what `find()` returns, SIGKILLs what it still (or newly) returns after `timeout`.

    `find` is asked anew each time, so processes started meanwhile are caught too. Returns the
    pids that survived SIGKILL (normally none: only uninterruptible sleep survives it).
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_timeout)):
        pids = find()
        if not pids:
            return set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(WaitTimeout):  # the next signal is the answer to survivors
            wait_until(
                lambda: not find(),
                timeout=wait,
                component=component,
                what=f"stopped by {sig.name}",
                interval=0.1,
                retry=(),
            )
    return find()


# ---- Binding children to this process's life


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved before any fork: the child between fork and exec only calls it."""
    if not LINUX:
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1
# SIGTERM, not SIGKILL: components shut down cleanly (`ray start --block` stops its own processes,
# which Ray itself binds to it with SIGKILL); the watchdog SIGKILLs whatever ignores it.
PARENT_DEATH_SIGNAL = signal.SIGTERM


def _parent_death_preexec() -> Callable[[], None] | None:
    """A preexec_fn that gives the child PARENT_DEATH_SIGNAL when this thread dies.

    The kernel sends it when the *thread* that forked the child ends, not the process: a child
    spawned from a worker thread would be signalled when that thread finishes. So only children
    spawned from the main thread (which lives as long as the process) get it; the others rely on
    the watchdog, which watches the process.
    """
    prctl = _PRCTL
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    sig = int(PARENT_DEATH_SIGNAL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


WATCHDOG_GRACE = 10.0  # seconds between the watchdog's SIGTERM and its SIGKILL

Kind = str  # "session" | "process" | "cmdline"


class _Watchdog:
    """This process's watchdog: a child in its own session reading registrations from a pipe.

    It ends what is bound when the pipe reaches EOF (every copy of the write end is closed: this
    process died, however it died) or its parent pid changes (this process died while a forked
    child still holds the write end). Started on first use; a fork gets its own. Spawned with
    posix_spawn, not Popen: it is meant to outlive a Popen object's finalizer.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.pipe: int | None = None  # our (write) end
        self.bound: dict[tuple[Kind, int | str], str | None] = {}

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)  # reaps it if it died
        except ChildProcessError:
            return False

    def _start(self) -> None:
        log = logs_dir() / "watchdog.log"
        argv = [sys.executable, "-I", str(Path(__file__).resolve()), "--watchdog"]
        argv += [str(os.getpid()), str(WATCHDOG_GRACE)]
        read_end, write_end = os.pipe()  # neither is inherited by other children
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # Inheritable descriptors this process got from its own parent stay out of the watchdog.
        inherited = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
        closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited if _inheritable(fd)]
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                dict(os.environ),
                file_actions=[
                    *closes,
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                ],
                setsid=True,  # not hit by signals sent to our process group (Ctrl-C, killpg)
            )
        except OSError as exc:
            os.close(write_end)
            raise ComponentError("watchdog", f"could not start: {exc}", log) from exc
        finally:
            os.close(read_end)
            os.close(out)
        self.pipe = write_end

    def _send(self, message: list[Any]) -> None:
        """Writes one line; a watchdog that died (killed by hand) is replaced and told all that
        is bound (`self.bound` already reflects `message`)."""
        line = (json.dumps(message) + "\n").encode()
        for _attempt in range(2):
            data = line
            if self.pipe is None or not self.alive():
                if self.pipe is not None:
                    os.close(self.pipe)
                self._start()
                data = b"".join(
                    (json.dumps(["bind", kind, value, started]) + "\n").encode()
                    for (kind, value), started in self.bound.items()
                )
            assert self.pipe is not None
            try:
                while data:
                    data = data[os.write(self.pipe, data) :]
                return
            except BrokenPipeError:
                os.close(self.pipe)
                self.pipe = None
        raise ComponentError("watchdog", "exits as soon as it starts", logs_dir() / "watchdog.log")

    def ensure(self) -> None:
        with self.lock:
            if self.pipe is None or not self.alive():
                self._send(["ping"])

    def change(self, op: str, kind: Kind, value: int | str, started: str | None) -> None:
        with self.lock:
            if op == "bind":
                self.bound[(kind, value)] = started
            elif (kind, value) in self.bound:
                del self.bound[(kind, value)]
            else:
                return
            self._send([op, kind, value, started])


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed meanwhile (the listdir's own descriptor)
        return False


_WATCHDOG: _Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None or _WATCHDOG.owner != os.getpid():  # a fork needs its own
            _WATCHDOG = _Watchdog()
        return _WATCHDOG


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog, if one runs (tests)."""
    watchdog = _WATCHDOG
    if watchdog is None or watchdog.owner != os.getpid():
        return None
    return watchdog.pid


def bind(
    *, session: int | None = None, process: int | None = None, cmdline: str | None = None
) -> None:
    """Ends, once this process is gone, the session led by `session`, the process `process`, or
    every process whose command line contains `cmdline` (with their descendants). Linux only.

    `spawn` binds each child's session; bind a process that daemonised (left the session) or a
    text that names all of a tool's processes (Ray's temp dir) yourself.
    """
    if not LINUX:
        return
    watchdog = _watchdog()
    for kind, pid in (("session", session), ("process", process)):
        if pid is not None and (started := start_time(pid)) is not None:  # else: already gone
            watchdog.change("bind", kind, pid, started)
    if cmdline:
        watchdog.change("bind", "cmdline", cmdline, None)


def unbind(
    *, session: int | None = None, process: int | None = None, cmdline: str | None = None
) -> None:
    """Forgets a binding once what it names is stopped (so a reused pid is never at risk)."""
    watchdog = _WATCHDOG
    if watchdog is None or watchdog.owner != os.getpid():
        return
    for kind, value in (("session", session), ("process", process), ("cmdline", cmdline)):
        if value is not None:
            watchdog.change("unbind", kind, value, None)


def spawn(argv: Sequence[str], *, bind: bool = True, **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen` in a new session (so its process group can be killed as one) that, with
    `bind`, ends when this process ends: a parent-death signal and the watchdog (see the module
    docstring). `bind=False` leaves it running after this process exits (a detached command).

    Spawn from the main thread: the parent-death signal follows the thread that forks.
    """
    if "start_new_session" in popen_kwargs or "preexec_fn" in popen_kwargs:
        raise TypeError("spawn() sets start_new_session and preexec_fn itself")
    if bind and LINUX:
        _watchdog().ensure()  # before the child exists: no window in which it is unwatched
    popen: subprocess.Popen[Any] = subprocess.Popen(
        list(argv),
        start_new_session=True,
        preexec_fn=_parent_death_preexec() if bind else None,
        **popen_kwargs,
    )
    if bind and LINUX and (started := start_time(popen.pid)) is not None:
        try:
            _watchdog().change("bind", "session", popen.pid, started)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
    return popen


def interrupt_on_signals(signums: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Makes SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, as Ctrl-C does.

    Python's default for them is to die at once, skipping `finally` blocks and pytest's fixture
    teardown, which is what stops the components a test started. A second signal ends the process
    at once (the default again): its children then end by the parent-death signal and the
    watchdog. Call it from the main thread.
    """
    signums = tuple(signums)

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        for sig in signums:
            signal.signal(sig, signal.SIG_DFL)
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    for sig in signums:
        signal.signal(sig, interrupt)


@dataclass
class Process:
    """A started child process with its log file; `stop()` is idempotent."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    start_time: str | None = None  # identifies its session after it is reaped (pid reuse)
    bound: bool = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def session_pids(self) -> set[int]:
        """Running processes of its session: it, its children, and orphans it left behind."""
        if self.start_time is None:
            return set()
        return find_processes(sessions={self.popen.pid: self.start_time})

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL to the group after `timeout`; then the same, with
        a short grace, for anything left in its session."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        terminate(self.session_pids, timeout=2.0, component=self.name)
        if self.bound:
            unbind(session=self.popen.pid)
            self.bound = False


def start(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    bind: bool = True,
) -> Process:
    """Starts `argv` with `spawn` (its own process group and session, so stop() takes its
    children too; ended with this process unless `bind=False`), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        popen = spawn(
            argv,
            bind=bind,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
        )
    except OSError as exc:
        raise ComponentError(name, f"could not start {argv[0]}: {exc}", log) from exc
    finally:
        out.close()
    return Process(name=name, popen=popen, log=log, start_time=start_time(popen.pid), bound=bind)


# ---- The watchdog process: `python -I proc.py --watchdog <parent pid> <grace seconds>`


def _watch(parent: int, grace: float) -> None:
    """Reads bind/unbind lines until the parent is gone, then ends what is still bound.

    Runs in its own session, so a signal to the parent's process group spares it; SIGINT and
    SIGHUP are ignored, SIGTERM ends what is bound at once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def exit_now(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_now)
    bound: dict[tuple[str, int | str], str | None] = {}
    fd = sys.stdin.fileno()
    pending = b""

    def apply(chunk: bytes) -> None:
        nonlocal pending
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            op, *args = json.loads(line)
            if op == "bind":
                kind, value, started = args
                bound[(kind, value)] = started
            elif op == "unbind":
                bound.pop((args[0], args[1]), None)

    def found() -> set[int]:
        sessions = {int(v): s for (k, v), s in bound.items() if k == "session"}
        processes = {int(v): s for (k, v), s in bound.items() if k == "process"}
        texts = [str(v) for (k, v), _ in bound.items() if k == "cmdline"]
        return find_processes(sessions=sessions, processes=processes, cmdlines=texts)

    try:
        while True:
            if os.getppid() != parent:  # the parent died; a fork of it holds the pipe open
                os.set_blocking(fd, False)
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(fd, 65536):
                        apply(chunk)
                break
            if select.select([fd], [], [], 1.0)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                apply(chunk)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        pids = found()
        if pids:
            said = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog of pid {parent}:"
            print(f"{said} ending what it left: {sorted(pids)}", flush=True)
            left = terminate(found, timeout=grace, component="watchdog")
            if left:
                print(f"{said} survived SIGKILL: {sorted(left)}", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    _watch(int(sys.argv[2]), float(sys.argv[3]))
