"""Prompt scorers for `upfront` routing: a score in [0, 1] before any tier generates a token.

The score ranks prompts by how much escalating them is worth (the chance the cheap tier gets it
wrong where the top tier would not); the router escalates when score > threshold. Both scorers
report a *rank*, not a probability: the share of reference prompts whose raw score (logit) is
lower, read off a monotone `QuantileMap`. So on traffic like the reference prompts a threshold
t escalates about the top 1 - t share. References: a `LinearScorer`'s cross-fitted training
prompts (stored in its file); the `HeuristicScorer`'s RouteLLM MMLU and GSM8K prompts (package
data). On other traffic `tierserve calibrate` or `quality.threshold_for_share` on logged scores
finds the threshold for a target share.

This runs on the router's request path: numpy and `mmh3`, no scikit-learn (the calibrate tool
trains with it; `hashing` reproduces its features).

- `heuristic.HeuristicScorer`: no training, a fixed logistic of saturating difficulty signals.
- `linear.LinearScorer`: logistic regression over `hashing.HashedNgrams` features, loaded from
  the JSON file `tierserve calibrate` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from tierserve.serving.scorers.hashing import DEFAULT_BLOCKS, HashedNgrams
from tierserve.serving.scorers.heuristic import HeuristicScorer
from tierserve.serving.scorers.linear import FORMAT, OLD_FORMATS, LinearScorer
from tierserve.serving.scorers.quantile import QuantileMap

__all__ = [
    "DEFAULT_BLOCKS",
    "FORMAT",
    "OLD_FORMATS",
    "HashedNgrams",
    "HeuristicScorer",
    "LinearScorer",
    "QuantileMap",
    "Scorer",
    "load_scorer",
]

# What a router `user_config` scorer may hold: the API's ScorerRef (type, path), nothing more.
SPEC_KEYS = frozenset({"type", "path"})


@runtime_checkable
class Scorer(Protocol):
    """What the router calls per request: a pure function of the prompt text."""

    def score(self, text: str) -> float:
        """Escalation score in [0, 1]; higher means escalating is more worth it."""
        ...


def load_scorer(spec: Mapping[str, Any]) -> Scorer:
    """The scorer a router `user_config` names.

    `{"type": "heuristic"}` or `{"type": "linear", "path": "/models/scorer.json"}`, as the
    ModelTier's `spec.routing.upfront.scorer` renders. Raises ValueError with the reason, so a
    bad config fails the reconfigure rather than a request.
    """
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown scorer option(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    kind = spec.get("type", "heuristic")
    if kind == "heuristic":
        return HeuristicScorer()
    if kind == "linear":
        if not spec.get("path"):
            raise ValueError('a linear scorer needs "path" to its JSON file')
        return LinearScorer.load(spec["path"])
    raise ValueError(f"unknown scorer type {kind!r}; use 'heuristic' or 'linear'")
