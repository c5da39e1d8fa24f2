"""The cascade's rank score: a confidence's place among reference confidences, ties split.

With `routing.cascade.score: rank` a lower tier's answer is escalated when
`1 - rank > threshold`, where `rank` in [0, 1] is the share of reference confidences below the
answer's. Threshold t then escalates about 1 - t of traffic like the reference, as the upfront
scorers' ranks do, and the autoscaler's steps move the escalation share about linearly.

Why ties are split: short answers (a label, a number, a choice) pile up at confidence 1.0 (every
token's logprob 0.0). With `1 - confidence > t` the shares between "none of them" and "all of
them" are unreachable, however finely t moves. Here an answer that ties with k of n reference
values gets a rank spread uniformly over those k places by a stable hash of its prompt: the same
prompt always gets the same decision (reproducible, cache-friendly), and across prompts the
tied block is cut exactly where the threshold says.

The reference is a sliding window of the tier's latest confidences, per router replica, seeded
from a `CascadeReference` file (`tierserve calibrate cascade --out`) when the spec names one, so
the share follows live traffic and the threshold keeps meaning a share when the mix shifts.
Pure, no I/O but `load_reference`; each router replica keeps its own windows.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mmh3

REFERENCE_KIND = "CascadeReference"
COLD_FRACTION = 0.1  # below this share of the window filled (and no seed), score by uncertainty


class RankWindow:
    """The latest `size` confidences of one tier, kept sorted for O(log n) ranks.

    Insertion and eviction are list inserts/deletes: a memmove of at most `size` floats (a few
    microseconds at the default 1000), cheaper than any balanced tree in Python.
    """

    def __init__(self, size: int, seed: Sequence[float] = ()):
        if size < 1:
            raise ValueError("a rank window needs size >= 1")
        self.size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        for value in _spread(seed, size):
            self.add(value)

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, value: float) -> None:
        if len(self._order) == self.size:
            oldest = self._order.popleft()
            del self._sorted[bisect_left(self._sorted, oldest)]
        self._order.append(value)
        insort(self._sorted, value)

    def rank(self, value: float, tie: float) -> float:
        """Share of the window below `value`, plus `tie` (in [0, 1)) of the share equal to it."""
        n = len(self._sorted)
        if n == 0:
            raise ValueError("an empty window has no ranks")
        below = bisect_left(self._sorted, value)
        equal = bisect_right(self._sorted, value) - below
        return (below + tie * equal) / n


def tie_break(text: str, tier: int) -> float:
    """A stable draw in [0, 1) for a prompt at a tier: where it falls among its ties."""
    return mmh3.hash(text.encode("utf-8", "surrogatepass"), seed=tier, signed=False) / 2**32


def escalation_score(window: RankWindow, confidence: float, tie: float, seeded: bool) -> float:
    """1 - rank among the window, or 1 - confidence while an unseeded window is still cold.

    The answer's own confidence joins the window after it is scored, so it never ranks
    against itself."""
    cold = not seeded and len(window) < max(1, int(COLD_FRACTION * window.size))
    score = 1.0 - confidence if cold else 1.0 - window.rank(confidence, tie)
    window.add(confidence)
    return score


def load_reference(path: str | Path) -> tuple[str, str, list[float]]:
    """(metric, tier, confidences) of a `CascadeReference` file; clear errors for bad ones."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cascade rank reference {path}: cannot read it: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != REFERENCE_KIND:
        raise ValueError(f"cascade rank reference {path}: not a {REFERENCE_KIND} file")
    values = data.get("confidences")
    if not isinstance(values, list) or not values:
        raise ValueError(f"cascade rank reference {path}: `confidences` must be a non-empty list")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise ValueError(
                f"cascade rank reference {path}: confidences[{i}] = {v!r} not in [0, 1]"
            )
    return str(data.get("metric") or ""), str(data.get("tier") or ""), [float(v) for v in values]


def _spread(values: Sequence[float], size: int) -> list[float]:
    """At most `size` of `values`, evenly spaced order statistics when there are more, in a
    shuffled-by-position order so the first evictions do not remove one end of the range."""
    s = sorted(values)
    if len(s) > size:
        s = [s[round(i * (len(s) - 1) / max(size - 1, 1))] for i in range(size)]
    # Interleave: evicting the oldest seeds first thins the reference evenly, not from the bottom.
    return [s[i] for i in _bit_reversed(len(s))]


def _bit_reversed(n: int) -> list[int]:
    if n == 0:
        return []
    bits = max(1, (n - 1).bit_length())
    order = sorted(range(1 << bits), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [i for i in order if i < n]
