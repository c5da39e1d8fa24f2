"""Bounded waiting for tests: poll until something a user would see is true, or fail saying what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tierserve.dev.proc import WaitTimeout, describe_error, wait_until


def eventually(
    check: Callable[[], Any],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.3,
    retry: tuple[type[Exception], ...] = (),
) -> Any:
    """Returns the first truthy value of `check()`; fails after `timeout` seconds naming `what`.

    `tierserve.dev.proc.wait_until`, failing as a test assertion. Errors raised by `check` fail
    at once unless their type is in `retry`.
    """
    try:
        return wait_until(
            check, timeout=timeout, component="test", what=what, interval=interval, retry=retry
        )
    except WaitTimeout as exc:
        last = exc.__cause__
        message = f"timed out after {timeout:.0f}s waiting for {what}{describe_error(last)}"
        raise AssertionError(message) from last
