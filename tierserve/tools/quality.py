"""Routing quality from labelled prompts: what escalating by a score buys, at every threshold.

Inputs are per prompt: the escalation score, whether the weak (cheap) tier answered correctly,
whether the strong (frontier) tier did. Routing follows `tierserve.serving.routing`: a prompt is
escalated when score > threshold, and then gets the strong tier's answer. Pure numpy functions, so
the same numbers come out of `tierserve calibrate` offline and of a later live-stack evaluation.

Definitions (after RouteLLM, Ong et al. 2024, routellm/evals/evaluate.py):

- share: the fraction of prompts escalated (strong calls / all calls).
- PGR(share) = (accuracy(share) - weak_acc) / (strong_acc - weak_acc): the share of the
  weak-to-strong accuracy gap the routed mix recovers. 0 = all-weak, 1 = all-strong; above 1 is
  possible when the two tiers fail on different prompts.
- APGR = integral over share in [0, 1] of PGR(share), by the trapezoid rule over the curve's
  points. RouteLLM samples 11 quantile thresholds; here every distinct score is a point, and a
  run of tied scores is one straight segment, which is the expected accuracy if ties were broken
  at random. So a constant score has APGR exactly 0.5, random scores ~0.5, a scorer that ranks
  the strong tier's wins first ~1 or more (the oracle), and one that ranks them last < 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

GAP_FRACTIONS = (0.5, 0.8, 0.95)


def _arrays(
    scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.asarray(weak_correct, dtype=np.float64).ravel()
    g = np.asarray(strong_correct, dtype=np.float64).ravel()
    if not (len(s) == len(w) == len(g)):
        raise ValueError(f"lengths differ: {len(s)} scores, {len(w)} weak, {len(g)} strong")
    if len(s) == 0:
        raise ValueError("no prompts to evaluate")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, w, g


@dataclass(frozen=True)
class Curve:
    """Accuracy against share escalated, one point per distinct threshold, share ascending.

    `thresholds[i]` escalates exactly `share[i]` of the prompts (score > threshold).
    """

    thresholds: NDArray[np.float64]
    share: NDArray[np.float64]
    accuracy: NDArray[np.float64]
    weak_accuracy: float
    strong_accuracy: float

    @property
    def gap(self) -> float:
        return self.strong_accuracy - self.weak_accuracy

    @property
    def pgr(self) -> NDArray[np.float64]:
        """Performance gap recovered at each point."""
        if self.gap <= 0:
            raise ValueError(
                f"the strong tier is not more accurate than the weak one here "
                f"({self.strong_accuracy:.3f} vs {self.weak_accuracy:.3f}): no gap to recover"
            )
        return (self.accuracy - self.weak_accuracy) / self.gap


def quality_curve(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike) -> Curve:
    """Accuracy of routing by `scores` at every threshold, from all-weak to all-strong."""
    s, w, g = _arrays(scores, weak_correct, strong_correct)
    n = len(s)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = np.concatenate([[0.0], np.cumsum(g[order] - w[order])])
    # Escalating "score > u" for a distinct score u takes the prefix before u's first occurrence.
    starts = np.flatnonzero(np.concatenate([[True], s_sorted[1:] != s_sorted[:-1]]))
    prefix = np.concatenate([starts, [n]])
    below_min = np.nextafter(s_sorted[-1], -np.inf)
    thresholds = np.concatenate([s_sorted[starts], [below_min]])
    weak_acc = float(w.mean())
    return Curve(
        thresholds=thresholds,
        share=prefix / n,
        accuracy=weak_acc + gain[prefix] / n,
        weak_accuracy=weak_acc,
        strong_accuracy=float(g.mean()),
    )


def _trapezoid(y: NDArray[np.float64], x: NDArray[np.float64]) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def apgr(scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike) -> float:
    """Average performance gap recovered over all escalation shares (see the module doc)."""
    curve = quality_curve(scores, weak_correct, strong_correct)
    return _trapezoid(curve.pgr, curve.share)


def share_for_gap(curve: Curve, fraction: float) -> float:
    """The smallest escalation share that recovers `fraction` of the weak-to-strong gap.

    Linear between curve points (random tie-breaking). Always <= 1 for fraction <= 1, since
    escalating everything recovers the whole gap; a useless scorer needs ~fraction.
    """
    pgr = curve.pgr
    hits = np.flatnonzero(pgr >= fraction - 1e-12)
    if len(hits) == 0:
        return float("nan")
    i = int(hits[0])
    if i == 0:
        return float(curve.share[0])
    x0, x1, y0, y1 = curve.share[i - 1], curve.share[i], pgr[i - 1], pgr[i]
    return float(x0 + (fraction - y0) * (x1 - x0) / (y1 - y0))


def shares_for_gaps(curve: Curve, fractions: Sequence[float] = GAP_FRACTIONS) -> dict[float, float]:
    return {f: share_for_gap(curve, f) for f in fractions}


def routed_accuracy(
    scores: ArrayLike, weak_correct: ArrayLike, strong_correct: ArrayLike, threshold: float
) -> tuple[float, float]:
    """(accuracy, share escalated) when escalating score > threshold."""
    s, w, g = _arrays(scores, weak_correct, strong_correct)
    up = s > threshold
    return float(np.where(up, g, w).mean()), float(up.mean())


def threshold_for_share(scores: ArrayLike, share: float) -> float:
    """The threshold whose escalation share on `scores` is closest to `share`.

    Among thresholds giving the same share it returns the midpoint between the neighbouring
    distinct scores, so that new prompts scoring near the boundary split evenly rather than all
    falling on one side. On ties of |share - target| the smaller share (cheaper) wins.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"target share must be in [0, 1], got {share}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) == 0 or np.isnan(s).any():
        raise ValueError("need at least one score and no NaN")
    values = np.unique(s)  # ascending
    n = len(s)
    # Threshold candidates: the max (share 0), midpoints between distinct scores, below the min.
    mids = (values[:-1] + values[1:]) / 2.0
    # Adjacent floats have no midpoint: it rounds up to the upper score, which would move that
    # score below the bar. The lower score is then the threshold with the same share.
    mids = np.where(mids < values[1:], mids, values[:-1])
    candidates = np.concatenate([[values[-1]], mids[::-1], [np.nextafter(values[0], -np.inf)]])
    shares = (n - np.searchsorted(np.sort(s), candidates, side="right")) / n
    best = int(np.argmin(np.abs(shares - share) + 1e-12 * shares))
    return float(candidates[best])


def oracle_scores(weak_correct: ArrayLike, strong_correct: ArrayLike) -> NDArray[np.float64]:
    """Scores a perfect router would give: strong-only wins 1, ties 0.5, weak-only wins 0."""
    w = np.asarray(weak_correct, dtype=np.float64)
    g = np.asarray(strong_correct, dtype=np.float64)
    return (1.0 + g - w) / 2.0


# Confidence as a probability that the weak tier answered correctly (cascade mode, where the
# escalation score is 1 - confidence): how well it ranks answers and how well it is calibrated.


def _confidence_arrays(
    confidence: ArrayLike, correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    c = np.asarray(confidence, dtype=np.float64).ravel()
    y = np.asarray(correct).ravel().astype(bool)
    if len(c) != len(y):
        raise ValueError(f"lengths differ: {len(c)} confidences, {len(y)} outcomes")
    if len(c) == 0:
        raise ValueError("no answers to evaluate")
    if np.isnan(c).any():
        raise ValueError("confidences contain NaN")
    return c, y


def auroc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of `confidence` as a predictor of `correct`.

    The chance that a correct answer has a higher confidence than a wrong one, ties counting
    half (Mann-Whitney U with average ranks): 1 separates perfectly, 0.5 is chance (and exactly
    what a constant confidence gets), below 0.5 ranks the wrong answers higher.
    """
    c, y = _confidence_arrays(confidence, correct)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both correct and wrong answers")
    order = np.argsort(c, kind="stable")
    c_sorted = c[order]
    starts = np.flatnonzero(np.concatenate([[True], c_sorted[1:] != c_sorted[:-1]]))
    ends = np.concatenate([starts[1:], [len(c)]])
    average_rank = (starts + 1 + ends) / 2.0  # 1-based ranks starts+1 .. ends, averaged
    ranks = np.empty(len(c), dtype=np.float64)
    ranks[order] = np.repeat(average_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(probability: ArrayLike, outcome: ArrayLike, bins: int = 10) -> float:
    """ECE with `bins` equal-width bins over [0, 1] (the last one includes 1.0).

    Sum over bins of (share of answers in the bin) * |mean probability - share correct|: 0 when
    in every bin the stated probability is the observed accuracy.
    """
    p, y = _confidence_arrays(probability, outcome)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.bincount(which, weights=p, minlength=bins) - np.bincount(
        which, weights=y.astype(np.float64), minlength=bins
    )
    return float(np.abs(gap).sum() / len(p))


def brier_score(probability: ArrayLike, outcome: ArrayLike) -> float:
    """Mean squared difference between the probability and the 0/1 outcome (0 is perfect)."""
    p, y = _confidence_arrays(probability, outcome)
    return float(np.mean((p - y.astype(np.float64)) ** 2))
