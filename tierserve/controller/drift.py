"""Is the live object still what we rendered? Compared field by field over what we set only."""

from __future__ import annotations

from typing import Any


def covers(desired: Any, live: Any) -> bool:
    """True when every field of `desired` has the same value in `live`.

    Fields only the live object has (defaults the API server, KubeRay or Serve fill in) are not
    drift, so a no-op reconcile writes nothing; a changed rendered field is.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(covers(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(covers(d, v) for d, v in zip(desired, live, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return bool(float(desired) == float(live))  # JSON round trips turn 1.0 into 1
    return bool(desired == live)
