"""Prompt scorers for `upfront` routing: a score in [0, 1] before any tier generates a token.

The score ranks prompts by how much escalating them is worth (the chance the cheap tier gets it
wrong where the top tier tier would not); the router escalates when score > threshold. Both
scorers report a *rank*, not a probability: the share of reference prompts whose raw score
(logit) is lower, read off a monotone quantile map (`QuantileMap`). So on traffic like the
reference prompts the scores are spread uniformly over [0, 1]: threshold t escalates about the
top 1 - t share, a hybrid margin m sends about 2m of traffic (the band threshold +- m) to
cascade, and an autoscaler step of 0.05 moves about 5% of traffic. A monotone map changes no
ranking, so routing quality (APGR) is that of the raw logit. References: a `LinearScorer`'s
cross-fitted training prompts (stored in its file); the `HeuristicScorer`'s RouteLLM's MMLU and
GSM8K prompts (built in). Traffic unlike them spreads less evenly: `tierserve calibrate` or
`quality.threshold_for_share` on logged scores still finds the threshold for a target share.

Everything here runs on the router's request path: pure Python and numpy, no scikit-learn, and
no work at import beyond compiling a few regexes. Two scorers:

- `HeuristicScorer`: no training, a transparent logistic of saturating difficulty signals.
- `LinearScorer`: logistic regression over hashed word and character n-grams, trained offline by
  `tierserve calibrate` with scikit-learn and re-implemented here (same tokenisers, same
  MurmurHash3 buckets and signs, same l2 normalisation: logits agree to float rounding), loaded
  from a JSON file of the non-zero weights and the quantile map.
"""

from __future__ import annotations

import json
import math
import re
import struct
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

# v2 added the quantile map: scores are ranks. v1 files (raw probabilities, squeezed into a
# narrow band where threshold and hybridMargin meant little) are refused with the way out.
FORMAT = "tierserve.linear-scorer/v2"
OLD_FORMATS = ("tierserve.linear-scorer/v1",)


@runtime_checkable
class Scorer(Protocol):
    """What the router calls per request: a pure function of the prompt text."""

    def score(self, text: str) -> float:
        """Escalation score in [0, 1]; higher means escalating is more worth it."""
        ...


def _sigmoid(z: float) -> float:
    # Both branches avoid overflow in exp for large |z|.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# ---------------------------------------------------------------------------------------------
# Quantile map: raw score -> rank among reference prompts
# ---------------------------------------------------------------------------------------------


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
        inner = np.clip(i, 1, len(x) - 1) if len(x) > 1 else np.zeros_like(i)
        out = np.empty_like(z)
        if len(x) > 1:
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


# ---------------------------------------------------------------------------------------------
# Heuristic scorer
# ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_MATH_CHAR = re.compile("[=+*/^<>%$√∑∫π±÷≤≥≠∞\u00d7]")  # \u00d7: multiplication sign
_CODE_CHAR = re.compile(r"[{}\[\];`|\\#]|==|!=|->|=>|::|\(\)")


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


MATH_WORDS = _wordset(
    "solve equation equations integral derivative probability calculate compute evaluate "
    "prove proof theorem matrix vector polynomial function sum product ratio percent "
    "percentage average mean variance log sqrt modulo prime factor divisible remainder "
    "simplify expression coefficient"
)
CODE_WORDS = _wordset(
    "def return import class function const var let public private static void int float "
    "string bool lambda struct printf print println select insert join where null none "
    "true false async await python javascript java rust sql regex compile runtime api "
    "algorithm recursion pointer array"
)
STEP_WORDS = _wordset(
    "step steps first then next after before finally therefore explain why justify derive "
    "compare contrast analyze analyse total each remaining left more less times twice half "
    "altogether per rate if"
)


@dataclass(frozen=True)
class HeuristicScorer:
    """A hand-set logistic of prompt-difficulty signals: no training, no dependencies.

    Each signal is a count c turned into f = 1 - exp(-c / scale) in [0, 1): the first few
    occurrences matter most and no single signal can dominate. The raw score (logit) is
    bias + sum(weight * f) with weights >= 0, so it is bounded, and it never decreases when text
    is appended after a whitespace (every count only grows). Signals: words (length), digits,
    math symbols and words, code symbols and words, multi-step markers, question marks, and long
    (>= 10 letters, hence rare by Zipf's law) words. The weights are hand-set, checked against
    RouteLLM's training split but not fitted; a trained `LinearScorer` ranks better on data like
    its training data.

    The score is the logit's rank among RouteLLM's 15,344 MMLU and GSM8K prompts under the
    default weights (`calibration`, built in): sigmoid(logit) alone crowds half of those
    prompts into 0.11-0.22 and puts only 14% above 0.5. With `bias` or `signals` overridden the
    same map still orders prompts by the new logit but its shares are no longer exact; either
    way `tierserve calibrate` (or `quality.threshold_for_share` on logged scores) turns a target
    escalation share into a threshold.
    """

    bias: float = -2.5
    # signal -> (weight, scale). Prompt length dominates: it is the strongest prompt-only signal
    # on RouteLLM's MMLU/GSM8K labels (APGR 0.58 alone); long words get little weight because on
    # MMLU they mark jargon-heavy recall questions the weak model knows (APGR 0.47 alone).
    signals: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "words": (2.5, 150.0),
            "digits": (0.4, 8.0),
            "math": (0.4, 4.0),
            "code": (1.5, 3.0),
            "steps": (0.8, 4.0),
            "questions": (0.2, 2.0),
            "rare_words": (0.2, 10.0),
        }
    )

    def counts(self, text: str) -> dict[str, int]:
        """The raw counts behind the score, for explaining a routing decision."""
        words = _WORD.findall(text.lower())
        math_words = code_words = step_words = rare = 0
        for w in words:
            if w in MATH_WORDS:
                math_words += 1
            if w in CODE_WORDS or "_" in w:  # keywords and snake_case identifiers
                code_words += 1
            if w in STEP_WORDS:
                step_words += 1
            if len(w) >= 10:
                rare += 1
        return {
            "words": len(words),
            "digits": len(_DIGIT.findall(text)),
            "math": len(_MATH_CHAR.findall(text)) + math_words,
            "code": len(_CODE_CHAR.findall(text)) + code_words,
            "steps": step_words,
            "questions": text.count("?"),
            "rare_words": rare,
        }

    calibration: QuantileMap = field(default_factory=lambda: HEURISTIC_RANKS)

    def logit(self, text: str) -> float:
        """The raw score: bias + sum(weight * (1 - exp(-count / scale)))."""
        z = self.bias
        for name, count in self.counts(text).items():
            weight, scale = self.signals[name]
            z += weight * (1.0 - math.exp(-count / scale))
        return z

    def score(self, text: str) -> float:
        return self.calibration(self.logit(text))

    @property
    def bounds(self) -> tuple[float, float]:
        """The lowest and highest score any text can get."""
        top = self.bias + sum(w for w, _ in self.signals.values())
        return self.calibration(self.bias), self.calibration(top)


# The default HeuristicScorer's logit -> rank on RouteLLM's MMLU and GSM8K prompts (decontaminated,
# all 15,344), 101 knots. Regenerate when the default weights change: tests/unit/test_scorers.py
# checks it against the data and prints the literal when it is stale.
HEURISTIC_RANKS: QuantileMap = QuantileMap(
    x=(
        -2.28876,
        -2.15895,
        -2.12387,
        -2.10836,
        -2.09021,
        -2.07267,
        -2.05527,
        -2.03751,
        -2.02345,
        -2.00869,
        -1.99297,
        -1.97393,
        -1.95765,
        -1.94102,
        -1.92703,
        -1.90853,
        -1.8895,
        -1.87579,
        -1.86055,
        -1.83974,
        -1.82297,
        -1.8065,
        -1.78661,
        -1.77019,
        -1.75111,
        -1.73492,
        -1.71692,
        -1.69763,
        -1.67964,
        -1.66297,
        -1.64394,
        -1.62999,
        -1.61195,
        -1.5938,
        -1.57526,
        -1.5581,
        -1.53967,
        -1.5207,
        -1.5023,
        -1.48028,
        -1.45935,
        -1.44181,
        -1.42232,
        -1.40183,
        -1.38083,
        -1.36313,
        -1.34145,
        -1.31852,
        -1.29747,
        -1.27546,
        -1.25354,
        -1.23052,
        -1.20434,
        -1.18311,
        -1.16209,
        -1.13983,
        -1.11209,
        -1.08688,
        -1.05618,
        -1.02942,
        -1.00076,
        -0.9661,
        -0.93233,
        -0.89974,
        -0.86544,
        -0.83299,
        -0.79732,
        -0.75511,
        -0.71518,
        -0.66847,
        -0.6239,
        -0.57595,
        -0.5191,
        -0.47253,
        -0.41951,
        -0.38289,
        -0.35967,
        -0.33932,
        -0.31366,
        -0.28961,
        -0.26083,
        -0.23198,
        -0.19411,
        -0.15261,
        -0.11265,
        -0.0614,
        -0.01037,
        0.05045,
        0.12324,
        0.20173,
        0.29093,
        0.37398,
        0.46547,
        0.55953,
        0.68187,
        0.81644,
        0.95519,
        1.15329,
        1.42039,
        1.78165,
        3.3255,
    ),
    y=(
        3e-05,
        0.00984,
        0.02082,
        0.03031,
        0.04044,
        0.04989,
        0.05983,
        0.07022,
        0.07964,
        0.09004,
        0.09994,
        0.10985,
        0.11969,
        0.13057,
        0.13979,
        0.15006,
        0.16003,
        0.16994,
        0.18007,
        0.18998,
        0.20008,
        0.21008,
        0.21999,
        0.23006,
        0.23996,
        0.25007,
        0.26,
        0.27004,
        0.28001,
        0.28995,
        0.30008,
        0.30999,
        0.31999,
        0.33,
        0.34004,
        0.35004,
        0.35998,
        0.36995,
        0.37999,
        0.39002,
        0.39999,
        0.41003,
        0.42,
        0.42997,
        0.43998,
        0.44998,
        0.46002,
        0.46999,
        0.48002,
        0.49,
        0.50003,
        0.51,
        0.51994,
        0.52998,
        0.53998,
        0.55002,
        0.55999,
        0.57006,
        0.58,
        0.58997,
        0.60001,
        0.60998,
        0.62001,
        0.62999,
        0.64002,
        0.65006,
        0.65996,
        0.67,
        0.67997,
        0.69001,
        0.69998,
        0.71002,
        0.71999,
        0.72996,
        0.74,
        0.74997,
        0.76075,
        0.7704,
        0.78001,
        0.78989,
        0.79989,
        0.80986,
        0.81996,
        0.83,
        0.83987,
        0.85001,
        0.85998,
        0.86995,
        0.87999,
        0.88996,
        0.89999,
        0.90996,
        0.92,
        0.92997,
        0.93994,
        0.94998,
        0.95995,
        0.96999,
        0.97996,
        0.99,
        0.99997,
    ),
    tail=5.61426,
)


# ---------------------------------------------------------------------------------------------
# Linear scorer over hashed n-grams (scikit-learn's HashingVectorizer, re-implemented)
# ---------------------------------------------------------------------------------------------

_MASK = 0xFFFFFFFF


def murmurhash3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 as a signed int32: sklearn's `murmurhash3_32(..., positive=False)`."""
    n = len(data)
    h = seed & _MASK
    blocks = n >> 2
    if blocks:
        for k in struct.unpack_from(f"<{blocks}I", data):
            k = (k * 0xCC9E2D51) & _MASK
            k = ((k << 15) | (k >> 17)) & _MASK
            h ^= (k * 0x1B873593) & _MASK
            h = ((h << 13) | (h >> 19)) & _MASK
            h = (h * 5 + 0xE6546B64) & _MASK
    tail = n & 3
    if tail:
        k = int.from_bytes(data[n - tail :], "little")
        k = (k * 0xCC9E2D51) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * 0x1B873593) & _MASK
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h - 0x100000000 if h & 0x80000000 else h


def _code(gram: str, n_features: int) -> int:
    """sklearn's bucket and alternate sign for one n-gram, as sign * (bucket + 1)."""
    # sklearn encodes strictly; surrogatepass keeps a malformed prompt from failing a request.
    h = murmurhash3_32(gram.encode("utf-8", "surrogatepass"))
    if h == -0x80000000:  # abs() would overflow int32: sklearn's special case
        index = (0x7FFFFFFF - (n_features - 1)) % n_features
    else:
        index = abs(h) % n_features
    return index + 1 if h >= 0 else -(index + 1)


_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn's default token_pattern
_WHITE_SPACES = re.compile(r"\s\s+")
ANALYZERS = ("word", "char_wb")
# Per-block memo of n-gram codes. Natural language repeats its words, so after a few hundred
# prompts nearly every word is a hit and a prompt costs dict lookups, not pure-Python hashing
# (~1-2 us per n-gram). Bounded by clearing, cheaper on the hot path than LRU bookkeeping: the
# default blocks' memos hold ~15 MB after RouteLLM's 12k training prompts, ~40 MB at the bound.
CACHE_MAX = 1 << 17


def word_ngrams(text: str, ngram_range: tuple[int, int]) -> list[str]:
    """sklearn's analyzer='word' (lowercase, default token pattern, no stop words)."""
    tokens = _TOKEN.findall(text.lower())
    lo, hi = ngram_range
    grams = list(tokens) if lo == 1 else []
    for n in range(max(lo, 2), min(hi, len(tokens)) + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def _char_wb_word(word: str, lo: int, hi: int) -> list[str]:
    """sklearn's analyzer='char_wb' for one (lowercased) word: n-grams of " word "."""
    w = f" {word} "
    size = len(w)
    grams = []
    for n in range(lo, hi + 1):
        if size <= n:  # a word shorter than n counts once, whole
            grams.append(w)
            break
        grams.extend(w[i : i + n] for i in range(size - n + 1))
    return grams


_EMPTY_INT = np.zeros(0, dtype=np.intp)
_EMPTY_FLOAT = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class HashedNgrams:
    """One HashingVectorizer block: analyzer, n-gram range, buckets; alternate_sign, l2 norm."""

    analyzer: str
    ngram_range: tuple[int, int]
    n_features: int
    # key (a word for char_wb, an n-gram for word) -> its codes as native int32 bytes: compact
    # (~0.2 kB an entry) and joined into one array per prompt without per-element Python work.
    _memo: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lo, hi = self.ngram_range
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer must be one of {ANALYZERS}, got {self.analyzer!r}")
        if not 1 <= lo <= hi or not 1 <= self.n_features < 2**31:
            raise ValueError(f"bad n-gram block {self}")

    def codes(self, text: str) -> NDArray[np.int32]:
        """sign * (bucket + 1) of every n-gram of `text`, memoised per word or word n-gram."""
        memo = self._memo
        if len(memo) >= CACHE_MAX:
            memo.clear()
        n, (lo, hi) = self.n_features, self.ngram_range
        char_wb = self.analyzer == "char_wb"
        if char_wb:
            keys = _WHITE_SPACES.sub(" ", text.lower()).split()
        else:
            keys = word_ngrams(text, self.ngram_range)
        parts = []
        for key in keys:
            codes = memo.get(key)
            if codes is None:
                grams = _char_wb_word(key, lo, hi) if char_wb else [key]
                codes = memo[key] = np.array([_code(g, n) for g in grams], np.int32).tobytes()
            parts.append(codes)
        return np.frombuffer(b"".join(parts), dtype=np.int32)

    def vector(self, text: str) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """(buckets, values): the non-zero entries of sklearn's l2-normalised row for `text`."""
        codes = self.codes(text)
        # Summed signs per bucket; a dense count up to the largest bucket beats sorting.
        counts = np.bincount(np.abs(codes) - 1, weights=np.sign(codes).astype(np.float64))
        buckets = np.flatnonzero(counts)  # colliding n-grams of opposite sign may cancel
        values = counts[buckets]
        norm = math.sqrt(float(values @ values))
        if norm == 0.0:
            return _EMPTY_INT, _EMPTY_FLOAT
        return buckets, values / norm

    def to_dict(self) -> dict[str, Any]:
        return {
            "analyzer": self.analyzer,
            "ngram_range": list(self.ngram_range),
            "n_features": self.n_features,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HashedNgrams:
        lo, hi = d["ngram_range"]
        return cls(str(d["analyzer"]), (int(lo), int(hi)), int(d["n_features"]))


# Words carry topic; char 3-4-grams inside words carry morphology, numbers, units and rare terms
# that whole words miss. Word bigrams added nothing on held-out RouteLLM data (APGR 0.658 with,
# 0.663 without) but cost a cache miss, hence ~2 us of pure-Python hashing, per novel bigram.
# 2^14 buckets per block: ~32k weights (~0.6 MB of JSON), ranking as well as 2^18 (within noise).
DEFAULT_BLOCKS = (
    HashedNgrams("word", (1, 1), 1 << 14),
    HashedNgrams("char_wb", (3, 4), 1 << 14),
)


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


# ---------------------------------------------------------------------------------------------


def load_scorer(spec: Mapping[str, Any]) -> Scorer:
    """The scorer a router `user_config` names.

    `{"type": "heuristic"}` (optionally with "bias" and "signals" overrides) or
    `{"type": "linear", "path": "/models/scorer.json"}`. Raises ValueError with the reason, so a
    bad config fails the reconfigure rather than a request.
    """
    kind = spec.get("type", "heuristic")
    if kind == "heuristic":
        default = HeuristicScorer()
        signals = dict(default.signals)
        for name, value in (spec.get("signals") or {}).items():
            if name not in signals:
                raise ValueError(f"unknown heuristic signal {name!r}; known: {sorted(signals)}")
            try:
                weight, scale = (float(v) for v in value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"signal {name!r}: expected [weight, scale], got {value!r}") from e
            if not (0 <= weight < math.inf and 0 < scale < math.inf):
                raise ValueError(f"signal {name!r}: weight must be >= 0 and scale > 0")
            signals[name] = (weight, scale)
        return HeuristicScorer(bias=float(spec.get("bias", default.bias)), signals=signals)
    if kind == "linear":
        if not spec.get("path"):
            raise ValueError('a linear scorer needs "path" to its JSON file')
        return LinearScorer.load(spec["path"])
    raise ValueError(f"unknown scorer type {kind!r}; use 'heuristic' or 'linear'")
