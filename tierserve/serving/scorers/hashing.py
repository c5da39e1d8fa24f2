"""Hashed n-gram features: scikit-learn's HashingVectorizer rows, without scikit-learn.

`tierserve calibrate` trains on HashingVectorizer's output; the router must see the same
features. The tokenisers are sklearn's (lowercase, default token pattern; char_wb pads each word
with spaces), the hash is MurmurHash3 x86_32 with seed 0 from `mmh3` (sklearn's
`murmurhash3_32`), read as sklearn does: bucket abs(h) % n_features, value sign that of h
(alternate_sign), rows l2-normalised. tests/unit/test_scorers.py checks rows against sklearn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mmh3
import numpy as np
from numpy.typing import NDArray

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn's default token_pattern
ANALYZERS = ("word", "char_wb")
# Per-block memo of n-gram codes. Natural language repeats its words, so after a few hundred
# prompts nearly every word is a hit: on RouteLLM's prompts (~400 char 3-4-grams each) a prompt
# then costs ~16 us of dict lookups instead of ~180 us slicing and hashing n-grams. Bounded by
# clearing, cheaper on the hot path than LRU bookkeeping: the default blocks' memos hold ~15 MB
# after RouteLLM's 12k training prompts, ~40 MB at the bound.
CACHE_MAX = 1 << 17


def code(gram: str, n_features: int) -> int:
    """sklearn's bucket and alternate sign for one n-gram, as sign * (bucket + 1).

    abs(h) is exact on Python ints, so h = -2**31 needs none of sklearn's int32 special casing:
    its bucket, 2**31 % n_features, is the one sklearn computes.
    """
    # Bytes, not str: mmh3 5.3 crashes the process on a str with a lone surrogate (a JSON body
    # can carry one); surrogatepass gives it bytes to hash where sklearn would raise.
    h: int = mmh3.hash(gram.encode("utf-8", "surrogatepass"), 0, True)
    index = abs(h) % n_features
    return index + 1 if h >= 0 else -(index + 1)


def word_ngrams(text: str, ngram_range: tuple[int, int]) -> list[str]:
    """sklearn's analyzer='word' (lowercase, default token pattern, no stop words)."""
    tokens = _TOKEN.findall(text.lower())
    lo, hi = ngram_range
    grams = list(tokens) if lo == 1 else []
    for n in range(max(lo, 2), min(hi, len(tokens)) + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def char_wb_ngrams(word: str, lo: int, hi: int) -> list[str]:
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
        # sklearn's char_wb first squeezes whitespace runs to one space; split() ignores runs.
        keys = text.lower().split() if char_wb else word_ngrams(text, self.ngram_range)
        parts = []
        for key in keys:
            codes = memo.get(key)
            if codes is None:
                grams = char_wb_ngrams(key, lo, hi) if char_wb else [key]
                codes = memo[key] = np.array([code(g, n) for g in grams], np.int32).tobytes()
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
# 0.663 without) and cost a memo entry per distinct bigram.
# 2^14 buckets per block: ~32k weights (~0.6 MB of JSON), ranking as well as 2^18 (within noise).
DEFAULT_BLOCKS = (
    HashedNgrams("word", (1, 1), 1 << 14),
    HashedNgrams("char_wb", (3, 4), 1 << 14),
)
