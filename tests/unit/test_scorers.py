"""Prompt scorers: the serving re-implementation matches scikit-learn (and the pure-Python
MurmurHash3 it replaced); the heuristic is sane; scores are ranks (spread over [0, 1]) that order
prompts exactly as the raw logits do."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.utils import murmurhash3_32 as sk_murmur

from tierserve.api.v1alpha1 import ScorerRef, ScorerType
from tierserve.serving import scorers
from tierserve.serving.scorers import (
    HashedNgrams,
    HeuristicScorer,
    LinearScorer,
    QuantileMap,
    hashing,
    heuristic,
)
from tierserve.tools import labelled, quality, training

pytestmark = pytest.mark.unit

PROMPTS = [
    "What is the capital of France?",
    "Janet's ducks lay 16 eggs per day. She eats 3 and sells the rest at $2 each. "
    "How much does she make every day?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nWhy is this slow?",
    "Explain   step by step,\tthen compare: Ünïcödé naïve café — 日本語のテキスト and émojis 🙂.",
    "A",
    "",
    "   \n\t  ",
    "x" * 300 + " " + "word " * 200,
]


_MASK = 0xFFFFFFFF


def reference_murmurhash3_32(data: bytes) -> int:
    """The pure-Python MurmurHash3 x86_32 (seed 0, signed) the scorer used before `mmh3`."""
    n, h = len(data), 0
    blocks = n >> 2
    for k in struct.unpack_from(f"<{blocks}I", data) if blocks else ():
        k = (k * 0xCC9E2D51) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * 0x1B873593) & _MASK
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    if n & 3:
        k = int.from_bytes(data[n - (n & 3) :], "little")
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


def reference_code(gram: str, n_features: int) -> int:
    """The replaced bucket and sign code, with sklearn's int32 special case for h = -2**31."""
    h = reference_murmurhash3_32(gram.encode("utf-8", "surrogatepass"))
    if h == -0x80000000:
        index = (0x7FFFFFFF - (n_features - 1)) % n_features
    else:
        index = abs(h) % n_features
    return index + 1 if h >= 0 else -(index + 1)


def random_texts(n: int, seed: int = 0) -> list[str]:
    """ASCII, accents, combining marks, CJK, emoji, odd whitespace, lone surrogates, any code."""
    rng = random.Random(seed)
    common = "abcXYZ 019 \t\n\u00a0\u2003\u3000\u1680éüßÇ日本語🙂\u0301\ud800\udfff?=+{};_"
    return [
        "".join(
            rng.choice(common) if rng.random() < 0.8 else chr(rng.randrange(0x110000))
            for _ in range(rng.randrange(60))
        )
        for _ in range(n)
    ]


def test_hashing_matches_the_pure_python_murmurhash_it_replaced() -> None:
    grams = set()
    for text in random_texts(3000):
        grams.add(text)
        grams.update(hashing.word_ngrams(text, (1, 3)))
        for word in text.lower().split():
            grams.update(hashing.char_wb_ngrams(word, 1, 5))
    assert len(grams) > 50_000 and any(not g.isascii() for g in grams)
    for n_features in (97, 1 << 14, 2**31 - 1):
        got = [hashing.code(g, n_features) for g in grams]
        assert got == [reference_code(g, n_features) for g in grams]
    # sklearn's special case for abs(-2**31) in int32 is what Python's abs() gives anyway.
    for n_features in [*range(1, 5000), 1 << 14, 1 << 18, 2**31 - 1]:
        assert (0x7FFFFFFF - (n_features - 1)) % n_features == 2**31 % n_features


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_hashing_matches_sklearn_murmurhash(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    h = sk_murmur(data, seed=0, positive=False)
    index = abs(h) % 1000
    assert hashing.code(text, 1000) == (index + 1 if h >= 0 else -(index + 1))


def test_a_lone_surrogate_is_scored_not_a_crash() -> None:
    """mmh3 crashes the process on such a str; the scorer hashes its surrogatepass bytes."""
    text = "bad \ud800 input \udfff"
    assert hashing.code("\ud800", 1 << 14) == -14003  # the pure-Python murmur's bucket
    for block in scorers.DEFAULT_BLOCKS:
        buckets, values = block.vector(text)
        assert len(buckets) > 0 and abs(float(values @ values) - 1) < 1e-12
    assert 0 < HeuristicScorer().score(text) < 1


@pytest.mark.parametrize(
    "block",
    [
        HashedNgrams("word", (1, 1), 1 << 14),
        HashedNgrams("word", (1, 2), 1 << 10),
        HashedNgrams("char_wb", (3, 4), 1 << 14),
        HashedNgrams("char_wb", (2, 5), 97),  # tiny and odd: many collisions, some cancelling
    ],
)
def test_feature_rows_match_sklearn_hashing_vectorizer(block: HashedNgrams) -> None:
    vectorizer = HashingVectorizer(
        analyzer=block.analyzer, ngram_range=block.ngram_range, n_features=block.n_features
    )
    expected = vectorizer.transform(PROMPTS).toarray()
    for _ in range(2):  # the second pass is served from the n-gram memo
        for prompt, row in zip(PROMPTS, expected, strict=True):
            buckets, values = block.vector(prompt)
            got = np.zeros(block.n_features)
            got[buckets] = values
            np.testing.assert_allclose(got, row, atol=1e-12)


Trained = tuple[LinearScorer, LogisticRegression, list[str], Path]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A model fitted by sklearn on real RouteLLM prompts, saved and re-loaded from JSON.

    The rank map is fitted on the first 300 prompts' logits: the other 300 and `PROMPTS` fall
    between and beyond its knots, as new traffic does.
    """
    if not labelled.DEFAULT_DATA.exists():
        pytest.skip("RouteLLM data not present")
    examples = labelled.load_routellm(labelled.DEFAULT_DATA, ["gsm8k"])[:600]
    weak, strong = labelled.labels(examples)
    prompts = [e.prompt for e in examples]
    X = training.vectorize(prompts, scorers.DEFAULT_BLOCKS)
    clf = training.fit(X, weak, strong, C=2.0)
    ranks = QuantileMap.fit(clf.decision_function(X[:300]), training.KNOTS)
    path = tmp_path_factory.mktemp("scorer") / "scorer.json"
    training.to_scorer(clf, scorers.DEFAULT_BLOCKS, ranks).save(path)
    loaded = scorers.load_scorer({"type": "linear", "path": str(path)})
    assert isinstance(loaded, LinearScorer)
    return loaded, clf, prompts, path


def test_serving_scorer_reproduces_sklearn_logits_and_probabilities(trained: Trained) -> None:
    scorer, clf, prompts, _ = trained
    sample = prompts[:100] + PROMPTS
    X = training.vectorize(sample, scorers.DEFAULT_BLOCKS)
    logits = np.array([scorer.decision(p) for p in sample])
    np.testing.assert_allclose(logits, clf.decision_function(X), rtol=0, atol=1e-6)
    got = np.array([scorer.probability(p) for p in sample])
    np.testing.assert_allclose(got, clf.predict_proba(X)[:, 1], rtol=0, atol=1e-6)
    assert got.std() > 0.01  # the model says something, so the agreement is not vacuous
    scores = np.array([scorer.score(p) for p in sample])
    np.testing.assert_allclose(scores, scorer.calibration.many(logits), rtol=0, atol=1e-12)


def test_scores_are_spread_ranks_that_keep_the_logits_order_and_apgr(trained: Trained) -> None:
    """The rank map is monotone: same routing quality, but a score spread over [0, 1]."""
    scorer, _, prompts, _ = trained
    examples = labelled.load_routellm(labelled.DEFAULT_DATA, ["gsm8k"])[:600]
    weak, strong = labelled.labels(examples)
    logits = np.array([scorer.decision(p) for p in prompts])
    scores = np.array([scorer.score(p) for p in prompts])
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    assert quality.apgr(scores, weak, strong) == quality.apgr(logits, weak, strong)
    assert quality.apgr(scores, weak, strong) == quality.apgr(probabilities, weak, strong)
    order = np.argsort(logits, kind="stable")
    assert (np.diff(scores[order]) >= 0).all()  # never reordered ...
    assert (np.diff(scores[order])[np.diff(logits[order]) > 0] > 0).all()  # ... nor merged
    # The squeeze this fixes: the probabilities' middle 90% is a narrow band, the ranks' is not.
    p5, p95 = np.quantile(scores[300:], [0.05, 0.95])  # prompts the map was not fitted on
    assert p5 < 0.15 and p95 > 0.85
    assert np.ptp(np.quantile(probabilities[300:], [0.05, 0.95])) < p95 - p5
    # On its reference prompts the map gives each its share of prompts below: uniform.
    fitted = scores[:300]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        assert (fitted <= t).mean() == pytest.approx(t, abs=0.01)


def test_scorer_file_is_compact_and_self_describing(trained: Trained) -> None:
    scorer, _, _, path = trained
    data = json.loads(path.read_text())
    assert data["format"] == scorers.FORMAT == "tierserve.linear-scorer/v2"
    stored = sum(len(b["weight"]) for b in data["blocks"])
    assert stored == sum(len(w) for w in scorer.weights) and 0 not in data["blocks"][0]["weight"]
    assert stored < sum(b.n_features for b in scorer.blocks)  # only non-zero weights
    assert 2 <= len(data["calibration"]["raw"]) == len(data["calibration"]["rank"]) <= 201
    assert QuantileMap.from_dict(data["calibration"]) == scorer.calibration


def test_old_scorer_files_are_refused_with_the_way_out(trained: Trained, tmp_path: Path) -> None:
    _, _, _, path = trained
    data = json.loads(path.read_text())
    data["format"] = "tierserve.linear-scorer/v1"
    del data["calibration"]
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"old scorer format.*re-run `tierserve calibrate"):
        scorers.load_scorer({"type": "linear", "path": str(old)})
    data["format"] = scorers.FORMAT
    old.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad scorer file .*'calibration'"):
        scorers.load_scorer({"type": "linear", "path": str(old)})


raw_scores = st.lists(
    st.floats(-50, 50, allow_nan=False).map(lambda v: round(v, 3)), min_size=1, max_size=300
)


@settings(max_examples=100, deadline=None)
@given(raw_scores, st.integers(2, 300), st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=40))
def test_quantile_map_is_monotone_bounded_and_ranks_its_reference(
    raw: list[float], knots: int, probes: list[float]
) -> None:
    m = QuantileMap.fit(raw, knots)
    z = np.sort(np.array(probes + raw))
    got = np.array([m(v) for v in z])
    assert ((got >= 0) & (got <= 1)).all() and (np.diff(got) >= 0).all()
    np.testing.assert_allclose(m.many(z), got, rtol=0, atol=1e-12)
    # At a knot the score is the mid-rank: the share of reference scores below, ties half.
    s = np.array(raw)
    for x, y in zip(m.x, m.y, strict=True):
        assert y == pytest.approx(((s < x).mean() + (s <= x).mean()) / 2, abs=1e-12)
    assert m.x[0] == min(raw) and m.x[-1] == max(raw)
    assert QuantileMap.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_quantile_map_is_strictly_increasing_between_and_beyond_its_knots() -> None:
    m = QuantileMap.fit(np.random.default_rng(0).normal(size=5000))
    z = np.linspace(-8, 8, 20001)
    got = m.many(z)
    assert (np.diff(got) > 0).all() and 0 < got[0] < m.y[0] and m.y[-1] < got[-1] < 1
    # Continuous where the tails start.
    assert m(m.x[0]) == m.y[0] and m(m.x[-1]) == pytest.approx(m.y[-1], abs=1e-15)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"raw": [], "rank": [], "tail": 1.0}, "equally many"),
        ({"raw": [1.0, 0.0], "rank": [0.2, 0.8], "tail": 1.0}, "strictly increasing"),
        ({"raw": [0.0, 1.0], "rank": [0.0, 0.8], "tail": 1.0}, r"inside \(0, 1\)"),
        ({"raw": [0.0, 1.0], "rank": [0.2, 0.8], "tail": 0.0}, "tail"),
        ({"raw": [0.0, float("nan")], "rank": [0.2, 0.8], "tail": 1.0}, "finite"),
    ],
)
def test_quantile_map_rejects_bad_knots(data: dict[str, list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantileMap.from_dict(data)


@pytest.mark.skipif(not labelled.DEFAULT_DATA.exists(), reason="RouteLLM data not present")
def test_heuristic_ranks_match_routellm_prompts() -> None:
    """The built-in map still spreads the default heuristic's scores uniformly on its data."""
    h = HeuristicScorer()
    examples = labelled.load_routellm(labelled.DEFAULT_DATA)
    logits = np.array([h.logit(e.prompt) for e in examples])
    scores = h.calibration.many(logits)
    fresh = QuantileMap.fit(logits, 101)
    rounded = {"raw": np.round(fresh.x, 5).tolist(), "rank": np.round(fresh.y, 5).tolist()}
    hint = (
        f"heuristic weights changed? write {json.dumps(rounded)} and tail "
        f"{fresh.tail:.5f} to tierserve/serving/scorers/{heuristic.RANKS_FILE}"
    )
    for t in np.linspace(0.05, 0.95, 19):
        assert (scores <= t).mean() == pytest.approx(t, abs=0.01), hint
    # Unmapped, sigmoid(logit) put the middle 90% of these prompts in 0.11-0.69, half below 0.22.
    assert np.quantile(scores, 0.05) < 0.06 and np.quantile(scores, 0.95) > 0.94


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_heuristic_is_bounded(text: str) -> None:
    h = HeuristicScorer()
    low, high = h.bounds
    assert 0 < low <= h.score(text) <= high < 1


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_heuristic_never_drops_when_text_is_appended(head: str, tail: str) -> None:
    h = HeuristicScorer()
    assert h.score(head + " " + tail) >= h.score(head)


def test_heuristic_scores_are_those_of_the_built_in_literal_it_replaced() -> None:
    """The rank map moved from a Python literal to package data; scores did not move."""
    expected = [
        2.9816108498770576e-05,
        0.39164552011198006,
        0.6600949698010857,
        0.2487744316289417,
        2.897781454792826e-05,
        2.8892202933782873e-05,
        2.8892202933782873e-05,
        0.6973668947514399,
    ]
    assert [HeuristicScorer().score(p) for p in PROMPTS] == expected
    ranks = heuristic.built_in_ranks()
    assert (len(ranks.x), ranks.x[0], ranks.y[-1], ranks.tail) == (101, -2.28876, 0.99997, 5.61426)


def test_heuristic_ranks_hard_looking_prompts_above_easy_ones() -> None:
    h = HeuristicScorer()
    easy = h.score("Hi! What's your name?")
    math = h.score(
        "A train leaves at 3:15 pm at 72 km/h; a second leaves 40 minutes later at 90 km/h. "
        "First compute when the second catches up, then explain why, step by step."
    )
    code = h.score("def merge(a, b):\n    return sorted(a + b)  # make this O(n) in Python?")
    # Ranks among RouteLLM's exam questions: chit-chat is below nearly all of them.
    assert easy < 0.01 and min(math, code) > 0.5
    assert h.score("How many primes are below 100? Prove it.") > h.score("Name a color.")


def test_load_scorer_rejects_bad_specs_with_the_reason(tmp_path: Path) -> None:
    assert isinstance(scorers.load_scorer({"type": "heuristic"}), HeuristicScorer)
    # What the operator renders from the API's ScorerRef: type and path, path None if unset.
    rendered = ScorerRef().model_dump(by_alias=True, mode="json")
    assert isinstance(scorers.load_scorer(rendered), HeuristicScorer)
    linear = ScorerRef(type=ScorerType.LINEAR, path=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cannot read scorer file"):
        scorers.load_scorer(linear.model_dump(by_alias=True, mode="json"))
    # The API has no weight overrides, so a user_config carrying one is refused, not ignored.
    with pytest.raises(ValueError, match=r"unknown scorer option\(s\) \['signals'\]"):
        scorers.load_scorer({"type": "heuristic", "signals": {"code": [2.0, 3.0]}})
    with pytest.raises(ValueError, match="unknown scorer type 'bert'"):
        scorers.load_scorer({"type": "bert"})
    with pytest.raises(ValueError, match='needs "path"'):
        scorers.load_scorer({"type": "linear"})
    with pytest.raises(ValueError, match="cannot read scorer file"):
        scorers.load_scorer({"type": "linear", "path": str(tmp_path / "missing.json")})
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"format": "tierserve.linear-scorer/v2", "blocks": [{"analyzer"')
    with pytest.raises(ValueError, match="cannot read scorer file"):
        scorers.load_scorer({"type": "linear", "path": str(garbled)})
    other = tmp_path / "other.json"
    other.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"not a tierserve\.linear-scorer/v2 file"):
        scorers.load_scorer({"type": "linear", "path": str(other)})


def test_importing_scorers_does_not_import_sklearn() -> None:
    """The router imports this module on its request path; scikit-learn would cost seconds."""
    code = "import sys, tierserve.serving.scorers; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
