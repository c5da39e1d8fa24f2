"""The one bounded wait (tierserve.dev.proc.wait_until) and its test form (tests.waiting)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import eventually
from tierserve.dev.proc import ComponentError, WaitTimeout, file_lock, wait_until

pytestmark = pytest.mark.unit


def test_returns_the_first_truthy_value() -> None:
    values: Iterator[object] = iter([None, [], {"ready": True}])
    found = wait_until(lambda: next(values), timeout=5, component="c", what="x", interval=0)
    assert found == {"ready": True}


def test_times_out_saying_what_it_waited_for_and_what_went_wrong_last() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("refused\nby the server")

    with pytest.raises(WaitTimeout) as info:
        wait_until(check, timeout=0.05, component="etcd", what="healthy", interval=0.01)
    message = str(info.value)
    assert message.startswith("etcd: not healthy after 0s (last error: ConnectionRefusedError: ")
    assert "\n" not in message  # one line, whatever the error said
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_errors_it_is_not_told_to_retry_fail_at_once() -> None:
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        raise KeyError("status")

    with pytest.raises(KeyError):
        wait_until(check, timeout=5, component="c", what="x", retry=())
    assert len(calls) == 1


def test_a_process_that_exits_fails_the_wait_at_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(timeout=30)
    with pytest.raises(ComponentError, match="exited with code 3 before serving") as info:
        wait_until(lambda: False, timeout=30, component="srv", what="serving", proc=proc)
    assert not isinstance(info.value, WaitTimeout)


def test_eventually_fails_as_an_assertion_naming_what() -> None:
    assert eventually(lambda: "yes", "a yes") == "yes"
    with pytest.raises(AssertionError, match="timed out after 0s waiting for the sky to fall"):
        eventually(lambda: False, "the sky to fall", timeout=0.05, interval=0.01)
    with pytest.raises(ZeroDivisionError):  # a broken check is not a timeout
        eventually(lambda: 1 / 0, "division")
    with pytest.raises(AssertionError, match=r"last error: ZeroDivisionError"):
        eventually(lambda: 1 / 0, "division", timeout=0.05, retry=(ZeroDivisionError,))


def test_a_held_lock_is_waited_for_bounded(tmp_path: Path) -> None:
    lock = tmp_path / "build.lock"
    what = "able to lock the build"
    with (
        file_lock(lock, timeout=1, component="k8s", what=what),
        pytest.raises(WaitTimeout, match="k8s: not able to lock the build after 0s"),
        file_lock(lock, timeout=0.1, component="k8s", what=what),
    ):
        pass
    with file_lock(lock, timeout=1, component="k8s", what=what):
        pass  # released
