"""Bounded waiting for tests: poll until something a user would see is true, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.3
) -> Any:
    """Returns the first truthy value of `check()`; fails after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
