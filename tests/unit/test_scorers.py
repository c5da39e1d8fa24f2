"""Prompt scorers: the serving re-implementation matches scikit-learn; the heuristic is sane."""

from __future__ import annotations

import json
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

from tierserve import calibrate
from tierserve.serving import scorers
from tierserve.serving.scorers import HashedNgrams, HeuristicScorer, LinearScorer

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


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_murmurhash_matches_sklearn(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    assert scorers.murmurhash3_32(data) == sk_murmur(data, seed=0, positive=False)


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
    """A model fitted by sklearn on real RouteLLM prompts, saved and re-loaded from JSON."""
    if not calibrate.DEFAULT_DATA.exists():
        pytest.skip("RouteLLM data not present")
    examples = calibrate.load_routellm(calibrate.DEFAULT_DATA, ["gsm8k"])[:600]
    weak, strong = calibrate._labels(examples)
    prompts = [e.prompt for e in examples]
    X = calibrate.vectorize(prompts, scorers.DEFAULT_BLOCKS)
    clf = calibrate.fit(X, weak, strong, C=2.0)
    path = tmp_path_factory.mktemp("scorer") / "scorer.json"
    calibrate.to_scorer(clf, scorers.DEFAULT_BLOCKS).save(path)
    loaded = scorers.load_scorer({"type": "linear", "path": str(path)})
    assert isinstance(loaded, LinearScorer)
    return loaded, clf, prompts, path


def test_serving_scorer_reproduces_sklearn_probabilities(trained: Trained) -> None:
    scorer, clf, prompts, _ = trained
    sample = prompts[:100] + PROMPTS
    expected = clf.predict_proba(calibrate.vectorize(sample, scorers.DEFAULT_BLOCKS))[:, 1]
    got = np.array([scorer.score(p) for p in sample])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.std() > 0.01  # the model says something, so the agreement is not vacuous


def test_scorer_file_is_compact_and_self_describing(trained: Trained) -> None:
    scorer, _, _, path = trained
    data = json.loads(path.read_text())
    assert data["format"] == scorers.FORMAT
    stored = sum(len(b["weight"]) for b in data["blocks"])
    assert stored == sum(len(w) for w in scorer.weights) and 0 not in data["blocks"][0]["weight"]
    assert stored < sum(b.n_features for b in scorer.blocks)  # only non-zero weights


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


def test_heuristic_ranks_hard_looking_prompts_above_easy_ones() -> None:
    h = HeuristicScorer()
    easy = h.score("Hi! What's your name?")
    math = h.score(
        "A train leaves at 3:15 pm at 72 km/h; a second leaves 40 minutes later at 90 km/h. "
        "First compute when the second catches up, then explain why, step by step."
    )
    code = h.score("def merge(a, b):\n    return sorted(a + b)  # make this O(n) in Python?")
    assert easy < 0.1 and min(math, code) > 0.25
    assert h.score("How many primes are below 100? Prove it.") > h.score("Name a color.")


def test_load_scorer_rejects_bad_specs_with_the_reason(tmp_path: Path) -> None:
    assert isinstance(scorers.load_scorer({"type": "heuristic"}), HeuristicScorer)
    tuned = scorers.load_scorer({"type": "heuristic", "signals": {"code": [2.0, 3.0]}})
    assert tuned.score("def f(): return 1") > HeuristicScorer().score("def f(): return 1")
    with pytest.raises(ValueError, match="unknown scorer type 'bert'"):
        scorers.load_scorer({"type": "bert"})
    with pytest.raises(ValueError, match='needs "path"'):
        scorers.load_scorer({"type": "linear"})
    with pytest.raises(ValueError, match="cannot read scorer file"):
        scorers.load_scorer({"type": "linear", "path": str(tmp_path / "missing.json")})
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"format": "tierserve.linear-scorer/v1", "blocks": [{"analyzer"')
    with pytest.raises(ValueError, match="cannot read scorer file"):
        scorers.load_scorer({"type": "linear", "path": str(garbled)})
    other = tmp_path / "other.json"
    other.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"not a tierserve\.linear-scorer/v1 file"):
        scorers.load_scorer({"type": "linear", "path": str(other)})
    with pytest.raises(ValueError, match="weight must be >= 0"):
        scorers.load_scorer({"type": "heuristic", "signals": {"code": [-1, 3]}})


def test_importing_scorers_does_not_import_sklearn() -> None:
    """The router imports this module on its request path; scikit-learn would cost seconds."""
    code = "import sys, tierserve.serving.scorers; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
