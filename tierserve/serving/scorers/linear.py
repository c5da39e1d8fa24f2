"""`LinearScorer`: logistic regression over hashed n-grams, trained by `tierserve calibrate`.

Loaded from a JSON file of the non-zero weights and the logit -> rank map (format `FORMAT`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tierserve.serving.scorers.hashing import HashedNgrams
from tierserve.serving.scorers.quantile import QuantileMap

# v2 added the quantile map: scores are ranks. v1 files (raw probabilities, squeezed into a
# narrow band where threshold and hybridMargin meant little) are refused with the way out.
FORMAT = "tierserve.linear-scorer/v2"
OLD_FORMATS = ("tierserve.linear-scorer/v1",)


def _sigmoid(z: float) -> float:
    # Both branches avoid overflow in exp for large |z|.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class LinearScorer:
    """The rank of intercept + sum over blocks of weights . hashed l2-normalised n-grams.

    The logit (`decision`) equals, to float rounding, scikit-learn's
    LogisticRegression.decision_function on the horizontally stacked HashingVectorizer outputs of
    `blocks`, and `probability` its predict_proba; `tierserve calibrate` trains it and fits
    `calibration` on the cross-fitted logits of the training prompts, so `score` is the share
    of training prompts the model ranks lower. The file keeps only non-zero weights,
    {bucket: weight} per block; in memory each block's weights are a dense array, so a prompt's
    dot product is one numpy gather.
    """

    blocks: tuple[HashedNgrams, ...]
    weights: tuple[Mapping[int, float], ...]
    intercept: float
    calibration: QuantileMap
    meta: Mapping[str, Any] = field(default_factory=dict)
    _dense: tuple[NDArray[np.float64], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.weights):
            raise ValueError("one weight map per feature block")
        dense = []
        for block, weights in zip(self.blocks, self.weights, strict=True):
            w = np.zeros(block.n_features)
            if weights:
                index = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
                if index.min() < 0 or index.max() >= block.n_features:
                    raise ValueError(f"weight index out of range for {block}")
                w[index] = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
            dense.append(w)
        object.__setattr__(self, "_dense", tuple(dense))

    @property
    def coef(self) -> NDArray[np.float64]:
        """All blocks' weights as one dense vector, the layout of sklearn's stacked matrix."""
        return np.concatenate(self._dense)

    def decision(self, text: str) -> float:
        """The logit: intercept + weights . features."""
        z = self.intercept
        for block, w in zip(self.blocks, self._dense, strict=True):
            buckets, values = block.vector(text)
            z += float(values @ w[buckets])
        return z

    def probability(self, text: str) -> float:
        """The fitted model's probability of its label (sklearn's predict_proba); not the score."""
        return _sigmoid(self.decision(text))

    def score(self, text: str) -> float:
        return self.calibration(self.decision(text))

    def to_dict(self) -> dict[str, Any]:
        blocks = []
        for block, weights in zip(self.blocks, self.weights, strict=True):
            items = sorted(weights.items())
            blocks.append(
                {
                    **block.to_dict(),
                    "index": [i for i, _ in items],
                    # 8 significant digits: probabilities within ~1e-8 of the trained model's.
                    "weight": [float(f"{w:.8g}") for _, w in items],
                }
            )
        return {
            "format": FORMAT,
            "intercept": self.intercept,
            "blocks": blocks,
            "calibration": self.calibration.to_dict(),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinearScorer:
        if d.get("format") in OLD_FORMATS:
            raise ValueError(
                f"{d['format']} is an old scorer format: its scores are uncalibrated "
                f"probabilities, on another scale than the thresholds and hybridMargin now "
                f"assume; re-run `tierserve calibrate --out ...` to write a {FORMAT} file "
                "(and use the threshold it prints)"
            )
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file (format={d.get('format')!r})")
        blocks, weights = [], []
        for b in d["blocks"]:
            block = HashedNgrams.from_dict(b)
            index: Sequence[int] = b["index"]
            weight: Sequence[float] = b["weight"]
            if len(index) != len(weight):
                raise ValueError("index and weight lists differ in length")
            blocks.append(block)
            weights.append({int(i): float(w) for i, w in zip(index, weight, strict=True) if w})
        return cls(
            tuple(blocks),
            tuple(weights),
            float(d["intercept"]),
            QuantileMap.from_dict(d["calibration"]),
            d.get("meta") or {},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def save(self, path: str | Path) -> int:
        """Write the compact JSON; returns its size in bytes."""
        text = self.to_json()
        Path(path).write_text(text)
        return len(text.encode())

    @classmethod
    def load(cls, path: str | Path) -> LinearScorer:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read scorer file {path}: {e}") from e
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad scorer file {path}: {e}") from e
