"""`tierserve calibrate`: train the upfront prompt scorer and pick its threshold from labelled data.

Input: prompts labelled with whether the weak (cheap) and strong (frontier) tiers answered them
correctly, as RouteLLM's evaluation folder (MMLU + GSM8K) or a generic JSONL/CSV with columns
prompt, weak_correct, strong_correct. A seeded hash of each prompt splits train/held-out, so the
split does not depend on row order and duplicate prompts never straddle it.

Offline only: scikit-learn is imported inside the functions that need it. The router never
imports this module; it loads the JSON this writes through `tierserve.serving.scorers`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tierserve.api.v1alpha1 import Upfront
from tierserve.serving.scorers import (
    DEFAULT_BLOCKS,
    HashedNgrams,
    HeuristicScorer,
    LinearScorer,
    QuantileMap,
    Scorer,
)
from tierserve.tools import quality

ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG = "gpt-4-1106-preview"
WEAK_COLUMNS = ("weak_correct", "weak", ROUTELLM_WEAK)
STRONG_COLUMNS = ("strong_correct", "strong", ROUTELLM_STRONG)
BENCHMARKS = ("mmlu", "gsm8k")
LABELS = ("gain", "strong_wins", "weak_wrong")
# Knots of the linear scorer's logit -> rank map: a 0.5% grid of the training prompts' ranks.
KNOTS = 201
DEFAULT_MARGIN = float(Upfront().hybrid_margin)
SPREAD_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
# ../shared/data/routellm next to the checkout (/work/main -> /work/shared/data/routellm).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routellm"
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


class DataError(ValueError):
    """Labelled data that is missing or cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Example:
    prompt: str
    weak: bool
    strong: bool
    source: str


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(f"{where}: expected a boolean (true/false/1/0), got {value!r}")


def _pick(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise DataError(f"{where}: no column {' / '.join(names)}; columns are {sorted(row)}")


def _example(row: dict[str, Any], where: str, source: str) -> Example:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty 'prompt'")
    weak = _bool(_pick(row, WEAK_COLUMNS, where), where)
    strong = _bool(_pick(row, STRONG_COLUMNS, where), where)
    return Example(prompt, weak, strong, source)


def load_table(path: Path, source: str | None = None) -> list[Example]:
    """A JSONL or CSV file of prompt, weak_correct, strong_correct (RouteLLM's names also work)."""
    source = source or path.stem
    examples = []
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not JSON ({e.msg})") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: expected a JSON object per line")
                    examples.append(_example(row, f"{path}:{n}", source))
        elif path.suffix == ".csv":
            csv.field_size_limit(1 << 24)
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                for n, row in enumerate(reader, 2):
                    if None in row:
                        raise DataError(f"{path}:{n}: more fields than the header has")
                    examples.append(_example(row, f"{path}:{n}", source))
        else:
            raise DataError(f"{path}: expected a .jsonl or .csv file")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if not examples:
        raise DataError(f"{path}: no labelled prompts")
    return examples


def _contaminated(path: Path) -> set[str]:
    """RouteLLM's list of eval prompts that leaked into its router training: dropped as it does."""
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def load_routellm(root: Path, benchmarks: Sequence[str] = BENCHMARKS) -> list[Example]:
    """RouteLLM's routellm/evals folder: MMLU's 57 subject CSVs and GSM8K, decontaminated."""
    examples: list[Example] = []
    for bench in benchmarks:
        if bench == "mmlu":
            files = sorted((root / "mmlu" / "responses").glob("mmlu_*.csv"))
            drop = _contaminated(root / "mmlu" / "contaminated_prompts.jsonl")
        elif bench == "gsm8k":
            files = sorted((root / "gsm8k").glob("gsm8k_responses.csv"))
            drop = _contaminated(root / "gsm8k" / "contaminated_prompts.jsonl")
        else:
            raise DataError(f"unknown benchmark {bench!r}; RouteLLM data has {BENCHMARKS}")
        if not files:
            raise DataError(f"{root}: no {bench} response CSVs (is this RouteLLM's evals folder?)")
        for file in files:
            rows = load_table(file, source=f"{bench}/{file.stem.removeprefix('mmlu_')}")
            examples.extend(e for e in rows if e.prompt not in drop)
    return examples


def load_data(path: Path, benchmarks: Sequence[str] = BENCHMARKS) -> list[Example]:
    if path.is_dir():
        return load_routellm(path, benchmarks)
    if path.is_file():
        return load_table(path)
    raise DataError(f"{path}: no such file or directory")


def split(
    examples: Sequence[Example], held_out: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held-out) by a seeded hash of the prompt: order-free, duplicates kept together."""
    train: list[Example] = []
    test: list[Example] = []
    for e in examples:
        digest = hashlib.blake2b(f"{seed}\0{e.prompt}".encode(), digest_size=8).digest()
        (test if int.from_bytes(digest, "big") / 2**64 < held_out else train).append(e)
    return train, test


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def targets(
    weak: NDArray[np.bool_], strong: NDArray[np.bool_], label: str
) -> tuple[NDArray[np.int_], NDArray[np.float64], NDArray[np.int_]]:
    """(y, sample_weight, row) for a binary fit; `row` maps each training row to its example.

    gain: the soft label (1 + strong - weak) / 2, fitted as two weighted rows for ties, so the
      model estimates P(strong wins) + P(tie) / 2, an increasing function of the expected
      accuracy gain of escalating E[strong - weak]: exactly the ranking the quality curve rewards,
      and it learns both where the weak tier fails and where the strong one fails too.
    strong_wins: 1 when only the strong tier is right; ties and weak-only wins count 0.
    weak_wrong: 1 when the weak tier is wrong, whether or not escalating would fix it.
    On a validation split of RouteLLM's training prompts: APGR 0.66 (gain), 0.65 (strong_wins),
    0.60 (weak_wrong, which wastes escalations on prompts both tiers fail).
    """
    n = len(weak)
    idx = np.arange(n)
    if label == "strong_wins":
        return (strong & ~weak).astype(int), np.ones(n), idx
    if label == "weak_wrong":
        return (~weak).astype(int), np.ones(n), idx
    if label != "gain":
        raise ValueError(f"unknown label {label!r}; choose from {LABELS}")
    tie = weak == strong
    rows = np.concatenate([idx, idx[tie]])
    y = np.concatenate([(strong & ~weak) | tie, np.zeros(int(tie.sum()), dtype=bool)]).astype(int)
    w = np.concatenate([np.where(tie, 0.5, 1.0), np.full(int(tie.sum()), 0.5)])
    return y, w, rows


def vectorize(prompts: Sequence[str], blocks: Sequence[HashedNgrams]) -> Any:
    """The sklearn feature matrix `LinearScorer` reproduces: stacked HashingVectorizer blocks."""
    from scipy import sparse
    from sklearn.feature_extraction.text import HashingVectorizer

    mats = [
        HashingVectorizer(
            analyzer=b.analyzer, ngram_range=b.ngram_range, n_features=b.n_features, norm="l2"
        ).transform(prompts)
        for b in blocks
    ]
    return sparse.hstack(mats, format="csr")


def _logistic(C: float, l1: bool) -> Any:
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if l1:
        # L1 keeps only the n-grams that matter: a small JSON and fewer lookups per request.
        if (major, minor) >= (1, 8):
            return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", max_iter=1000)
        return LogisticRegression(C=C, penalty="l1", solver="liblinear", max_iter=1000)
    return LogisticRegression(C=C, max_iter=2000)


def fit(
    X: Any,
    weak: NDArray[np.bool_],
    strong: NDArray[np.bool_],
    *,
    label: str = "gain",
    C: float = 0.5,
    l1: bool = False,
    init: Any = None,
) -> Any:
    """A fitted LogisticRegression; `init` (a fitted model) warm-starts L2 fits.

    The fits of cross-fitting and the final fit share one optimum up to lbfgs's tolerance, so
    starting each from the previous one saves about a third of the training CPU.
    """
    y, sample_weight, rows = targets(weak, strong, label)
    clf = _logistic(C, l1)
    if init is not None and not l1:
        clf.set_params(warm_start=True)
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    clf.fit(X[rows], y, sample_weight=sample_weight)
    return clf


def to_scorer(
    clf: Any,
    blocks: Sequence[HashedNgrams],
    calibration: QuantileMap,
    meta: dict[str, Any] | None = None,
) -> LinearScorer:
    """The serving scorer of a fitted model; `calibration` maps its logit to a rank."""
    coef = np.asarray(clf.coef_, dtype=np.float64).ravel()
    weights, offset = [], 0
    for b in blocks:
        part = coef[offset : offset + b.n_features]
        nz = np.flatnonzero(part)
        weights.append(dict(zip(nz.tolist(), part[nz].tolist(), strict=True)))
        offset += b.n_features
    intercept = float(clf.intercept_[0])
    return LinearScorer(tuple(blocks), tuple(weights), intercept, calibration, meta or {})


def cross_fitted_scores(
    X: Any,
    weak: NDArray[np.bool_],
    strong: NDArray[np.bool_],
    folds: int,
    seed: int,
    **kw: Any,
) -> tuple[NDArray[np.float64], Any]:
    """(logits, last fold model): each training prompt scored by a model that did not see it.

    The quantile map (hence the threshold) is fitted on these rather than on the final model's
    logits of its own training prompts, which are overconfident (spread wider than on new
    prompts): on RouteLLM a threshold chosen in-sample escalated 16-18% of held-out prompts for a
    20% target, one chosen on these 18.5-20.8% (five folds, 12k training prompts; with ~3k the
    fold models' narrower spread makes it ~1 point high).
    """
    n = X.shape[0]
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty(n)
    clf = None
    for k in range(folds):
        fit_rows, score_rows = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        clf = fit(X[fit_rows], weak[fit_rows], strong[fit_rows], init=clf, **kw)
        out[score_rows] = clf.decision_function(X[score_rows])
    return out, clf


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _labels(examples: Sequence[Example]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    return (
        np.array([e.weak for e in examples], dtype=bool),
        np.array([e.strong for e in examples], dtype=bool),
    )


def scores_of(scorer: Scorer, prompts: Iterable[str]) -> NDArray[np.float64]:
    return np.array([scorer.score(p) for p in prompts], dtype=np.float64)


def evaluate(
    name: str, scores: NDArray[np.float64], weak: NDArray[np.bool_], strong: NDArray[np.bool_]
) -> dict[str, Any]:
    curve = quality.quality_curve(scores, weak, strong)
    return {
        "name": name,
        "apgr": quality.apgr(scores, weak, strong),
        "share_for_gap": quality.shares_for_gaps(curve),
    }


def spread(
    scores: NDArray[np.float64], threshold: float, margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """Where scores fall: quantiles, and the share hybrid mode would send to cascade.

    The router plans `score >= threshold + margin` straight to the top tier,
    `score <= threshold - margin` to the first tier alone, and cascades the band between.
    """
    q = np.quantile(scores, SPREAD_LEVELS)
    band = (scores > threshold - margin) & (scores < threshold + margin)
    return {
        "quantiles": {str(level): float(v) for level, v in zip(SPREAD_LEVELS, q, strict=True)},
        "threshold": threshold,
        "margin": margin,
        "hybrid_cascade_share": float(band.mean()),
        "hybrid_top_share": float((scores >= threshold + margin).mean()),
    }


def evaluate_random(
    weak: NDArray[np.bool_], strong: NDArray[np.bool_], seed: int, draws: int = 20
) -> dict[str, Any]:
    """Random routing, averaged over draws: one draw's APGR wanders by ~0.02 on 3,000 prompts."""
    rng = np.random.default_rng(seed)
    runs = [evaluate("random", rng.random(len(weak)), weak, strong) for _ in range(draws)]
    apgrs = [r["apgr"] for r in runs]
    return {
        "name": "random",
        "apgr": float(np.mean(apgrs)),
        "apgr_sd": float(np.std(apgrs)),
        "share_for_gap": {
            f: float(np.mean([r["share_for_gap"][f] for r in runs])) for f in quality.GAP_FRACTIONS
        },
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tierserve calibrate",
        description="Train the upfront prompt scorer on labelled prompts, choose the threshold "
        "for a target escalation share, and report routing quality on held-out prompts.",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="RouteLLM evals folder (mmlu/, gsm8k/) or a .jsonl/.csv with prompt, weak_correct, "
        f"strong_correct (default: {DEFAULT_DATA} when it exists)",
    )
    p.add_argument("--out", type=Path, help="where to write the scorer JSON")
    p.add_argument(
        "--target-escalation",
        type=float,
        default=0.2,
        help="share of requests to escalate (default 0.2)",
    )
    p.add_argument("--benchmarks", default="mmlu,gsm8k", help="RouteLLM benchmarks to load")
    p.add_argument("--held-out", type=float, default=0.2, help="held-out share (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", choices=LABELS, default="gain", help="training target")
    p.add_argument("--C", type=float, default=0.5, help="inverse regularisation strength")
    p.add_argument(
        "--l1",
        action="store_true",
        help="L1 instead of L2: a ~100x smaller file (hundreds of weights) at ~0.02 lower APGR",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds for the threshold")
    p.add_argument("--limit", type=int, help="use a seeded sample of this many prompts")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_path = args.data
    if data_path is None:
        if not DEFAULT_DATA.exists():
            raise DataError(
                f"no --data given and the default RouteLLM data ({DEFAULT_DATA}) does not exist: "
                "pass --data <RouteLLM evals folder | prompts.jsonl | prompts.csv>"
            )
        data_path = DEFAULT_DATA
    benchmarks = [b for b in args.benchmarks.split(",") if b]
    examples = load_data(data_path, benchmarks)
    if args.limit is not None and args.limit < len(examples):
        pick = np.random.default_rng(args.seed).choice(len(examples), args.limit, replace=False)
        examples = [examples[i] for i in sorted(pick)]
    train, test = split(examples, args.held_out, args.seed)
    if len(train) < 50 or len(test) < 20:
        raise DataError(
            f"{data_path}: too few prompts ({len(train)} train, {len(test)} held-out) to fit"
        )
    w_train, s_train = _labels(train)
    w_test, s_test = _labels(test)
    for part, w, s in (("training", w_train, s_train), ("held-out", w_test, s_test)):
        if s.mean() <= w.mean():
            raise DataError(
                f"{data_path}: the strong tier is not more accurate than the weak one on the "
                f"{part} prompts ({s.mean():.3f} vs {w.mean():.3f}): nothing to route for"
            )

    blocks = DEFAULT_BLOCKS
    fit_kw = {"label": args.label, "C": args.C, "l1": args.l1}
    started, started_cpu = time.perf_counter(), time.process_time()
    X_train = vectorize([e.prompt for e in train], blocks)
    oof, last = cross_fitted_scores(X_train, w_train, s_train, args.folds, args.seed, **fit_kw)
    # Score = rank among the training prompts' cross-fitted logits (what new prompts look like to
    # the final model), so the threshold for a target share is about 1 - share.
    calibration = QuantileMap.fit(oof, KNOTS)
    threshold = quality.threshold_for_share(calibration.many(oof), args.target_escalation)
    clf = fit(X_train, w_train, s_train, init=last, **fit_kw)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - started_cpu

    meta = {
        "label": args.label,
        "C": args.C,
        "penalty": "l1" if args.l1 else "l2",
        "threshold": threshold,
        "target_escalation": args.target_escalation,
        "score": f"rank of the logit among {len(train)} training prompts' cross-fitted logits",
        "trained_on": f"{data_path} ({len(train)} prompts, seed {args.seed})",
    }
    scorer = to_scorer(clf, blocks, calibration, meta)
    size = scorer.save(args.out) if args.out else len(scorer.to_json().encode())

    # Held-out scores with the weights as written to the file, on sklearn's feature matrix (fast).
    # Both they and the router's own feature code (on a sample) must match the sklearn model.
    served = LinearScorer.from_dict(scorer.to_dict())
    test_prompts = [e.prompt for e in test]
    X_test = vectorize(test_prompts, blocks)
    logits = X_test @ served.coef + served.intercept
    trained = served.calibration.many(logits)
    sk = clf.predict_proba(X_test)[:, 1]
    check = min(len(test_prompts), 300)
    serving_diff = max(
        float(np.abs(1.0 / (1.0 + np.exp(-logits)) - sk).max()),
        float(
            np.abs(
                np.array([served.probability(p) for p in test_prompts[:check]]) - sk[:check]
            ).max()
        ),
        float(np.abs(scores_of(served, test_prompts[:check]) - trained[:check]).max()),
    )
    heuristic_scorer = HeuristicScorer()
    heuristic = scores_of(heuristic_scorer, test_prompts)
    heuristic_threshold = quality.threshold_for_share(
        scores_of(heuristic_scorer, (e.prompt for e in train)), args.target_escalation
    )
    accuracy, share = quality.routed_accuracy(trained, w_test, s_test, threshold)
    bench = np.array([e.source.split("/")[0] for e in test])
    by_benchmark = {}
    for name in sorted(set(bench)) if len(set(bench)) > 1 else []:
        m = bench == name
        if s_test[m].mean() > w_test[m].mean():  # APGR needs a gap to recover
            by_benchmark[name] = {
                "held_out": int(m.sum()),
                "trained_apgr": quality.apgr(trained[m], w_test[m], s_test[m]),
                "heuristic_apgr": quality.apgr(heuristic[m], w_test[m], s_test[m]),
            }
    return {
        "data": str(data_path),
        "prompts": {"train": len(train), "held_out": len(test)},
        "weak_accuracy": float(w_test.mean()),
        "strong_accuracy": float(s_test.mean()),
        "scorers": [
            evaluate("trained", trained, w_test, s_test),
            evaluate("heuristic", heuristic, w_test, s_test),
            evaluate_random(w_test, s_test, args.seed),
            evaluate("oracle", quality.oracle_scores(w_test, s_test), w_test, s_test),
        ],
        "by_benchmark": by_benchmark,
        "threshold": threshold,
        "target_escalation": args.target_escalation,
        "folds": args.folds,
        # Held-out, hence like new traffic; probability: the model's sigmoid(logit), for contrast.
        "spread": {
            "trained": spread(trained, threshold),
            "trained_probability": spread(sk, float(np.quantile(sk, 1 - args.target_escalation))),
            "heuristic": spread(heuristic, heuristic_threshold),
        },
        "held_out_accuracy": accuracy,
        "held_out_escalation": share,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "scorer_bytes": size,
        "scorer_nonzero_weights": sum(len(w) for w in scorer.weights),
        "max_abs_diff_serving_vs_sklearn": float(serving_diff),
        "out": str(args.out) if args.out else None,
    }


def _print(report: dict[str, Any]) -> None:
    p, t = report["prompts"], report["target_escalation"]
    print(f"data: {report['data']}  ({p['train']} train / {p['held_out']} held-out prompts)")
    print(
        f"held-out accuracy: weak {report['weak_accuracy']:.3f}, "
        f"strong {report['strong_accuracy']:.3f}"
    )
    print(f"\n{'scorer':<10} {'APGR':>6}   strong-call share to recover 50% / 80% / 95% of gap")
    for s in report["scorers"]:
        gaps = " / ".join(f"{v:6.1%}" for v in s["share_for_gap"].values())
        spread = f"   (mean of 20 draws, sd {s['apgr_sd']:.3f})" if "apgr_sd" in s else ""
        print(f"{s['name']:<10} {s['apgr']:6.3f}   {gaps}{spread}")
    for name, b in report["by_benchmark"].items():
        print(
            f"  {name}: {b['held_out']} held-out, APGR trained {b['trained_apgr']:.3f}, "
            f"heuristic {b['heuristic_apgr']:.3f}"
        )
    print(
        f"\nthreshold {report['threshold']:.6f} for target escalation {t:.1%}: held-out "
        f"escalation {report['held_out_escalation']:.1%}, accuracy "
        f"{report['held_out_accuracy']:.3f}"
    )
    for name in ("trained", "heuristic"):
        s = report["spread"][name]
        q = s["quantiles"]
        print(
            f"{name} scores (held-out) p5 {q['0.05']:.3f}, p25 {q['0.25']:.3f}, "
            f"p50 {q['0.5']:.3f}, p75 {q['0.75']:.3f}, p95 {q['0.95']:.3f}\n  hybrid mode at "
            f"threshold {s['threshold']:.3f}, margin {s['margin']:.2f}: "
            f"{s['hybrid_cascade_share']:.1%} cascade, {s['hybrid_top_share']:.1%} straight to "
            "the top tier"
        )
    where = report["out"] or "not written (no --out)"
    print(
        f"scorer: {report['scorer_nonzero_weights']} non-zero weights, "
        f"{report['scorer_bytes'] / 1024:.0f} KiB, {where}; trained in "
        f"{report['train_seconds']:.1f} s ({report['train_cpu_seconds']:.1f} s CPU, "
        f"{p['train']} prompts, {report['folds']} folds + final fit); max |serving - sklearn| "
        f"{report['max_abs_diff_serving_vs_sklearn']:.1e}"
    )
    if report["out"]:
        print(
            f"ModelTier spec.routing: {{mode: upfront, escalation: {{threshold: "
            f"{report['threshold']:.4f}}}, upfront: {{scorer: {{type: linear, path: "
            f"{report['out']}}}}}}}  (the path as the router replicas see it)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.target_escalation < 1:
        parser.error("--target-escalation must be strictly between 0 and 1")
    if not 0 < args.held_out < 1:
        parser.error("--held-out must be strictly between 0 and 1")
    if args.folds < 2 or args.C <= 0 or (args.limit is not None and args.limit < 1):
        parser.error("--folds must be >= 2, --C > 0 and --limit >= 1")
    try:
        report = run(args)
    except (DataError, OSError) as e:
        print(f"tierserve calibrate: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
