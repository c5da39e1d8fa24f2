"""Nothing outlives the process that started it (tierserve.dev.proc: parent-death signal, watchdog,
SIGTERM as KeyboardInterrupt), checked with real processes that only sleep.

Most tests start a parent process that uses the spawn helpers, kill or signal it, and wait
(bounded) until its children are gone. Whatever a test started is killed in `finally`, found by
a token on its command line, so a failing test leaves nothing behind either.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import eventually
from tierserve.dev import proc

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not proc.LINUX, reason="parent-death signals and /proc are Linux only"),
]

ROOT = Path(__file__).resolve().parents[2]

# The parent: starts children every way the harness does, writes their pids, then waits to die.
PARENT = """
import json, os, subprocess, sys, threading, time
from pathlib import Path
from tierserve.dev import proc

out, token, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
py = sys.executable
pids = {}
if mode == "detached":
    pids["detached"] = proc.spawn(["sleep", token], bind=False).pid
else:
    pids["child"] = proc.start("sleeper", ["sleep", token], log=out / "sleeper.log").popen.pid
if mode == "all":
    # A grandchild in a process group of its own, same session (what Ray's raylet does to
    # workers): once its parent is gone, only the session still names it.
    regroup = (
        "import os, sys, time\\n"
        "pid = os.fork()\\n"
        "if pid == 0:\\n"
        "    os.setpgid(0, 0)\\n"
        "    os.execvp('sleep', ['sleep', sys.argv[1]])\\n"
        "print(pid, flush=True)\\n"
        "time.sleep(600)\\n"
    )
    middle = proc.spawn([py, "-c", regroup, token], stdout=subprocess.PIPE, text=True)
    pids["middle"], pids["regrouped"] = middle.pid, int(middle.stdout.readline())
    # A daemon: it forks, the grandchild calls setsid, the child exits (`ray start` without
    # --block). Nothing links it to us but the registration with the watchdog.
    daemonize = (
        "import os, sys\\n"
        "pid = os.fork()\\n"
        "if pid == 0:\\n"
        "    os.setsid()\\n"
        "    os.execvp('sleep', ['sleep', sys.argv[1]])\\n"
        "print(pid, flush=True)\\n"
    )
    launcher = proc.spawn([py, "-c", daemonize, token], stdout=subprocess.PIPE, text=True)
    pids["daemon"] = int(launcher.stdout.readline())
    launcher.wait()
    proc.bind(process=pids["daemon"])
    # Spawned from a thread that then ends: no parent-death signal (it would fire when the
    # thread ends), so only the watchdog ends it.
    spawned = []
    worker = threading.Thread(target=lambda: spawned.append(proc.spawn(["sleep", token])))
    worker.start()
    worker.join()
    pids["from_thread"] = spawned[0].pid
pids["watchdog"] = proc.watchdog_pid()
(out / "pids.tmp").write_text(json.dumps(pids))
os.replace(out / "pids.tmp", out / "pids.json")
if mode != "detached":
    time.sleep(600)
"""

# A test run whose fixture starts a child; the outer test sends it SIGTERM or SIGHUP mid-test.
INNER_CONFTEST = """
from tests.conftest import pytest_configure  # noqa: F401 - the hook under test
"""
INNER_TEST = """
import json, os, time
from pathlib import Path

import pytest

from tierserve.dev import proc

OUT = Path(__file__).parent


@pytest.fixture
def sleeper():
    child = proc.start("sleeper", ["sleep", os.environ["LIFETIME_TOKEN"]], log=OUT / "sleeper.log")
    try:
        yield child
    finally:
        child.stop()
        (OUT / "torn-down").write_text("yes")


def test_waits_to_be_signalled(sleeper):
    pids = {"child": sleeper.popen.pid, "watchdog": proc.watchdog_pid()}
    (OUT / "pids.tmp").write_text(json.dumps(pids))
    os.replace(OUT / "pids.tmp", OUT / "pids.json")
    time.sleep(600)
"""


def _env(tmp_path: Path, token: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "TIERSERVE_CACHE": str(tmp_path / "cache"),  # the watchdog's log goes here
        "LIFETIME_TOKEN": token,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def _read_pids(path: Path) -> dict[str, Any]:
    """The pids the parent wrote (written whole: renamed into place)."""
    pids: dict[str, Any] = eventually(
        lambda: json.loads(path.read_text()),
        f"the parent to write {path.name}",
        timeout=10,
        interval=0.05,
        retry=(FileNotFoundError,),
    )
    return pids


def _start_times(pids: dict[str, Any]) -> dict[str, str | None]:
    return {name: proc.start_time(pid) for name, pid in pids.items() if pid is not None}


def _running(pids: dict[str, Any], started: dict[str, str | None]) -> set[str]:
    """Names of the processes still running as the same process (not a reused pid); zombies
    count as gone (an orphan's zombie lingers where pid 1 does not reap)."""
    return {
        name
        for name, started_at in started.items()
        if (now := proc.start_time(pids[name])) is not None and now == started_at
    }


@contextlib.contextmanager
def _reaped(token: str, parent: subprocess.Popen[Any] | None = None) -> Iterator[None]:
    """SIGKILLs, on the way out, the parent and every process naming `token` or watching it."""
    try:
        yield
    finally:
        if parent is not None and parent.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(timeout=10)
        marks = [token] + ([f"--watchdog {parent.pid} "] if parent is not None else [])
        for pid in proc.find_processes(cmdlines=marks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _token() -> str:
    """A sleep duration that no other process on the machine has on its command line."""
    return f"600.{uuid.uuid4().int % 10**9:09d}"


def _start_parent(tmp_path: Path, token: str, mode: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), token, mode],
        env=_env(tmp_path, token),
        start_new_session=True,
    )


def test_a_killed_parent_takes_children_regrouped_daemonised_and_threaded_ones_with_it(
    tmp_path: Path,
) -> None:
    token = _token()
    parent = _start_parent(tmp_path, token, "all")
    with _reaped(token, parent):
        pids = _read_pids(tmp_path / "pids.json")
        started = _start_times(pids)
        assert _running(pids, started) == set(pids), pids  # the thread's end did not end it

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)

        eventually(
            lambda: not _running(pids, started),
            "every process the SIGKILLed parent started (and its watchdog) to be gone",
            timeout=5,
            interval=0.05,
        )
        log = (tmp_path / "cache" / "logs" / "watchdog.log").read_text()
        assert f"watchdog of pid {parent.pid}: ending what it left" in log, log


def test_the_parent_death_signal_alone_ends_a_child(tmp_path: Path) -> None:
    token = _token()
    parent = _start_parent(tmp_path, token, "child")
    with _reaped(token, parent):
        pids = _read_pids(tmp_path / "pids.json")
        started = _start_times(pids)
        assert _running(pids, started) == {"child", "watchdog"}, pids
        os.kill(pids["watchdog"], signal.SIGKILL)  # no watchdog: only the kernel's signal left
        eventually(
            lambda: "watchdog" not in _running(pids, started), "the watchdog gone", timeout=5
        )

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)

        eventually(
            lambda: not _running(pids, started),
            "the child of the SIGKILLed parent to be gone",
            timeout=5,
            interval=0.05,
        )


def test_a_detached_child_outlives_its_parent(tmp_path: Path) -> None:
    """`bind=False` is what `python -m tierserve.dev.controlplane up` relies on."""
    token = _token()
    parent = _start_parent(tmp_path, token, "detached")
    with _reaped(token, parent):
        pids = _read_pids(tmp_path / "pids.json")
        started = _start_times(pids)
        assert parent.wait(timeout=10) == 0
        time.sleep(0.5)  # a parent-death signal would have ended it at once
        assert _running(pids, started) == {"detached"}
        assert pids["watchdog"] is None  # nothing was bound, so no watchdog was started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_test_run_tears_its_fixtures_down(tmp_path: Path, signum: int) -> None:
    token = _token()
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path)]
    with open(tmp_path / "pytest-output.txt", "wb") as output:
        run = subprocess.Popen(
            [*argv, str(tmp_path / "test_inner.py")],
            env=_env(tmp_path, token),
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with _reaped(token, run):
        pids = _read_pids(tmp_path / "pids.json")
        started = _start_times(pids)
        assert _running(pids, started) == {"child", "watchdog"}, pids

        run.send_signal(signum)

        code = run.wait(timeout=10)
        report = (tmp_path / "pytest-output.txt").read_text()
        assert code == pytest.ExitCode.INTERRUPTED, report
        assert (tmp_path / "torn-down").exists(), f"the fixture was not torn down:\n{report}"
        eventually(
            lambda: not _running(pids, started),
            "the fixture's child and the run's watchdog to be gone",
            timeout=5,
            interval=0.05,
        )


def test_stop_ends_what_left_the_process_group_and_forgets_the_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's own watchdog, for this test only (its log in tmp_path); ended afterwards.
    monkeypatch.setenv("TIERSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(proc, "_WATCHDOG", None)
    token = _token()
    regroup = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setpgid(0, 0)\n"
        "    os.execvp('sleep', ['sleep', sys.argv[1]])\n"
        "print(pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with _reaped(token):
        child = proc.start(
            "regrouping", [sys.executable, "-c", regroup, token], log=tmp_path / "regroup.log"
        )
        grandchild = int(
            eventually(
                lambda: (tmp_path / "regroup.log").read_text().strip(), "the grandchild's pid"
            )
        )
        pids = {"child": child.popen.pid, "grandchild": grandchild}
        started = _start_times(pids)
        stat = proc.proc_stat(grandchild)
        assert stat is not None and stat.pgid != child.popen.pid and stat.sid == child.popen.pid
        assert ("session", child.popen.pid) in proc._watchdog().bound

        child.stop(timeout=5)

        assert not _running(pids, started)
        watchdog = proc._watchdog()
        assert ("session", child.popen.pid) not in watchdog.bound
        assert watchdog.pipe is not None and watchdog.pid is not None
        os.close(watchdog.pipe)  # EOF: it ends, with nothing left to end
        watchdog.pipe = None
        eventually(lambda: not watchdog.alive(), "this test's watchdog to exit", timeout=5)
