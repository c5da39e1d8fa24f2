"""`QuantileMap`: a raw score (logit) -> its rank among reference prompts, so scores are shares.

On traffic like the reference prompts, ranks are spread uniformly over [0, 1]: threshold t
escalates about the top 1 - t share and a hybrid margin m cascades about 2m. A monotone map
changes no ranking, so routing quality (APGR) is that of the raw logit.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class QuantileMap:
    """A strictly increasing map from a raw score (a logit) onto (0, 1): its empirical rank.

    Knots (x, y): raw scores of reference prompts at evenly spaced quantiles, and the share of
    reference prompts below each (ties count half, so y is the mid-rank). Between knots the map
    is linear; beyond the outer knots it approaches 0 and 1 exponentially with scale `tail`, so it
    stays strictly increasing everywhere (no two raw scores swap or merge, bar float rounding
    far out in the tails) and any raw score, however extreme, lands in [0, 1]. A scalar lookup
    is one bisection over ~200 floats: well under a microsecond.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    tail: float

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not x or len(x) != len(y):
            raise ValueError("a quantile map needs equally many (>= 1) raw scores and ranks")
        if not all(math.isfinite(v) for v in x) or any(a >= b for a, b in pairwise(x)):
            raise ValueError("quantile map raw scores must be finite and strictly increasing")
        if not (y[0] > 0.0 and y[-1] < 1.0) or any(a >= b for a, b in pairwise(y)):
            raise ValueError("quantile map ranks must be strictly increasing inside (0, 1)")
        if not 0.0 < self.tail < math.inf:
            raise ValueError("quantile map tail scale must be positive and finite")

    @classmethod
    def fit(cls, raw: Sequence[float] | NDArray[np.float64], knots: int = 201) -> QuantileMap:
        """The map that sends each of `raw` (reference prompts' raw scores) to its mid-rank."""
        s = np.sort(np.asarray(raw, dtype=np.float64).ravel())
        if len(s) == 0 or not np.isfinite(s).all():
            raise ValueError("need at least one finite raw score to fit a quantile map")
        if knots < 2:
            raise ValueError("need at least 2 knots")
        n = len(s)
        x = np.unique(s[np.round(np.linspace(0, n - 1, knots)).astype(np.intp)])
        y = (np.searchsorted(s, x, "left") + np.searchsorted(s, x, "right")) / (2.0 * n)
        tail = float(x[-1] - x[0]) if len(x) > 1 else 1.0
        return cls(tuple(x.tolist()), tuple(y.tolist()), tail)

    def __call__(self, z: float) -> float:
        x, y = self.x, self.y
        i = bisect_right(x, z)
        if i == 0:
            return y[0] * math.exp((z - x[0]) / self.tail)
        if i == len(x):
            return max(1.0 - (1.0 - y[-1]) * math.exp((x[-1] - z) / self.tail), y[-1])
        # Each rounded step is monotone in z; min() keeps rounding from overshooting the knot.
        x0, y0 = x[i - 1], y[i - 1]
        return min(y0 + (y[i] - y0) * (z - x0) / (x[i] - x0), y[i])

    def many(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        """`self(v)` for every v of `z`, vectorised, with the same arithmetic."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        z = np.asarray(z, dtype=np.float64)
        i = np.searchsorted(x, z, "right")
        out = np.empty_like(z)  # a one-knot map has no inner segment: every z is in a tail
        if len(x) > 1:
            inner = np.clip(i, 1, len(x) - 1)
            x0, y0, x1, y1 = x[inner - 1], y[inner - 1], x[inner], y[inner]
            out = np.minimum(y0 + (y1 - y0) * (z - x0) / (x1 - x0), y1)
        low = y[0] * np.exp(np.minimum(z - x[0], 0.0) / self.tail)
        high = 1.0 - (1.0 - y[-1]) * np.exp(np.minimum(x[-1] - z, 0.0) / self.tail)
        high = np.maximum(high, y[-1])
        return np.where(i == 0, low, np.where(i == len(x), high, out))

    def to_dict(self) -> dict[str, Any]:
        return {"raw": list(self.x), "rank": list(self.y), "tail": self.tail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantileMap:
        raw: Sequence[float] = d["raw"]
        rank: Sequence[float] = d["rank"]
        return cls(tuple(float(v) for v in raw), tuple(float(v) for v in rank), float(d["tail"]))
