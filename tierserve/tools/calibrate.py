"""`tierserve calibrate`: train the upfront prompt scorer and pick its threshold from labelled data.

Loads labelled prompts (`labelled`), fits the linear scorer (`training`), chooses the threshold
for a target escalation share, and reports routing quality on held-out prompts against the
heuristic scorer, random routing and an oracle. Offline only: scikit-learn is imported inside
the functions that need it. The router never imports this module; it loads the JSON this
writes through `tierserve.serving.scorers`.

`tierserve calibrate cascade ...` is the cascade-mode counterpart (confidence metrics of the
lower tier's answers, the rank reference file): `calibrate_cascade`, dispatched from `main`.
"""

from __future__ import annotations

import argparse
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
    HeuristicScorer,
    LinearScorer,
    QuantileMap,
    Scorer,
)
from tierserve.tools import calibrate_cascade, quality, training
from tierserve.tools.labelled import DEFAULT_DATA, DataError, Example, labels, load_data, split

DEFAULT_MARGIN = float(Upfront().hybrid_margin)
SPREAD_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


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
        epilog="Cascade mode: `tierserve calibrate cascade --table answers.csv [--metric M] "
        "[--target-share S]... [--out reference.json] [--json]` evaluates the lower tier's "
        "confidence metrics (AUROC, APGR, CPT 50/80/95%%, ECE, Brier) on a table of its "
        "answers, recommends one and writes the CascadeReference file the router ranks "
        "against; see `tierserve calibrate cascade --help`.",
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
    p.add_argument("--label", choices=training.LABELS, default="gain", help="training target")
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


def _examples(args: argparse.Namespace) -> tuple[Path, list[Example], list[Example]]:
    """(data path, train, held-out), refusing data too small or with no gap to route for."""
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
    for part, rows in (("training", train), ("held-out", test)):
        w, s = labels(rows)
        if s.mean() <= w.mean():
            raise DataError(
                f"{data_path}: the strong tier is not more accurate than the weak one on the "
                f"{part} prompts ({s.mean():.3f} vs {w.mean():.3f}): nothing to route for"
            )
    return data_path, train, test


@dataclass(frozen=True)
class Trained:
    """The fitted sklearn model, its logit -> rank map and threshold, and what fitting cost."""

    clf: Any
    calibration: QuantileMap
    threshold: float
    seconds: float
    cpu_seconds: float


def _train(train: Sequence[Example], args: argparse.Namespace) -> Trained:
    weak, strong = labels(train)
    fit_kw = {"label": args.label, "C": args.C, "l1": args.l1}
    started, started_cpu = time.perf_counter(), time.process_time()
    X = training.vectorize([e.prompt for e in train], DEFAULT_BLOCKS)
    oof, last = training.cross_fitted_scores(X, weak, strong, args.folds, args.seed, **fit_kw)
    # Score = rank among the training prompts' cross-fitted logits (what new prompts look like to
    # the final model), so the threshold for a target share is about 1 - share.
    calibration = QuantileMap.fit(oof, training.KNOTS)
    threshold = quality.threshold_for_share(calibration.many(oof), args.target_escalation)
    clf = training.fit(X, weak, strong, init=last, **fit_kw)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    return Trained(clf, calibration, threshold, seconds, cpu_seconds)


def _serving_diff(served: LinearScorer, clf: Any, X_test: Any, prompts: Sequence[str]) -> float:
    """Largest gap between the sklearn model and the scorer as served, on held-out prompts.

    The file's (rounded) weights on sklearn's features, on all prompts; the router's own feature
    code on a sample (a Python loop per prompt, so slower): both must match the sklearn model.
    """
    logits = X_test @ served.coef + served.intercept
    sk = clf.predict_proba(X_test)[:, 1]
    check = min(len(prompts), 300)
    own = np.array([served.probability(p) for p in prompts[:check]])
    ranks = served.calibration.many(logits[:check])
    return max(
        float(np.abs(1.0 / (1.0 + np.exp(-logits)) - sk).max()),
        float(np.abs(own - sk[:check]).max()),
        float(np.abs(scores_of(served, prompts[:check]) - ranks).max()),
    )


def _by_benchmark(
    test: Sequence[Example], trained: NDArray[np.float64], heuristic: NDArray[np.float64]
) -> dict[str, dict[str, Any]]:
    """Held-out APGR per benchmark, when there are several and each has a gap to recover."""
    weak, strong = labels(test)
    bench = np.array([e.source.split("/")[0] for e in test])
    out = {}
    for name in sorted(set(bench)) if len(set(bench)) > 1 else []:
        m = bench == name
        if strong[m].mean() > weak[m].mean():
            out[name] = {
                "held_out": int(m.sum()),
                "trained_apgr": quality.apgr(trained[m], weak[m], strong[m]),
                "heuristic_apgr": quality.apgr(heuristic[m], weak[m], strong[m]),
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_path, train, test = _examples(args)
    fitted = _train(train, args)
    threshold = fitted.threshold
    meta = {
        "label": args.label,
        "C": args.C,
        "penalty": "l1" if args.l1 else "l2",
        "threshold": threshold,
        "target_escalation": args.target_escalation,
        "score": f"rank of the logit among {len(train)} training prompts' cross-fitted logits",
        "trained_on": f"{data_path} ({len(train)} prompts, seed {args.seed})",
    }
    scorer = training.to_scorer(fitted.clf, DEFAULT_BLOCKS, fitted.calibration, meta)
    size = scorer.save(args.out) if args.out else len(scorer.to_json().encode())

    # Held-out scores with the weights as written to the file, on sklearn's feature matrix (fast).
    served = LinearScorer.from_dict(scorer.to_dict())
    test_prompts = [e.prompt for e in test]
    X_test = training.vectorize(test_prompts, DEFAULT_BLOCKS)
    trained = served.calibration.many(X_test @ served.coef + served.intercept)
    sk = fitted.clf.predict_proba(X_test)[:, 1]
    heuristic_scorer = HeuristicScorer()
    heuristic = scores_of(heuristic_scorer, test_prompts)
    heuristic_threshold = quality.threshold_for_share(
        scores_of(heuristic_scorer, (e.prompt for e in train)), args.target_escalation
    )
    w_test, s_test = labels(test)
    accuracy, share = quality.routed_accuracy(trained, w_test, s_test, threshold)
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
        "by_benchmark": _by_benchmark(test, trained, heuristic),
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
        "train_seconds": fitted.seconds,
        "train_cpu_seconds": fitted.cpu_seconds,
        "scorer_bytes": size,
        "scorer_nonzero_weights": sum(len(w) for w in scorer.weights),
        "max_abs_diff_serving_vs_sklearn": _serving_diff(served, fitted.clf, X_test, test_prompts),
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
        draws = f"   (mean of 20 draws, sd {s['apgr_sd']:.3f})" if "apgr_sd" in s else ""
        print(f"{s['name']:<10} {s['apgr']:6.3f}   {gaps}{draws}")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cascade"]:
        return calibrate_cascade.main(argv[1:])
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
