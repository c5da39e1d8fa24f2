"""`tierserve calibrate cascade`: which confidence signal to escalate on, and at what threshold.

In cascade mode the lower tier answers first and the router escalates when the answer looks
unsure: the escalation score is 1 - confidence, escalate when score > threshold
(`tierserve.serving.routing`). This tool takes a table of answers the lower tier gave, each with
its per-token logprobs (and/or a self-check logprob, and/or a ready-made confidence) and whether
the lower ("weak") and top ("strong") tier answered correctly, and reports per confidence metric:

- APGR and the strong-call share needed to recover 50/80/95% of the gap (`quality`),
- AUROC of the confidence as a predictor of the weak tier being correct,
- ECE (10 equal-width bins) and Brier score of the confidence read as that probability.

It recommends the metric with the highest APGR (ties: AUROC), writes the `CascadeReference` file
the router ranks live confidences against (`spec.routing.cascade.rank.referencePath`), and prints
for each target share the rank threshold (1 - share) and what the absolute `1 - confidence > t`
rule would need and actually achieve. Confidences come from the router's own
`routing.confidence`, so the offline numbers are the ones the router computes.

Table: .csv or .jsonl (JSON Lines), columns `weak_correct`, `strong_correct` (0/1 or
true/false), at least one of `token_logprobs` (a JSON list of floats or nulls),
`self_check_yes_logprob` (the logprob of "yes" to "is this answer correct?"), `confidence`
(in [0, 1]); `prompt` and any other columns are ignored. See docs/calibrate-cascade.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from tierserve.serving import routing
from tierserve.serving.scorers import HeuristicScorer
from tierserve.tools import quality
from tierserve.tools.labelled import (
    BENCHMARKS,
    DEFAULT_DATA,
    DataError,
    load_routellm,
    parse_label,
)

# Metrics computed from `token_logprobs` by the router's own function, in this order.
LOGPROB_METRICS = ("minTokenProb", "meanLogprob", "quantile")
SELF_CHECK = "selfCheck"  # confidence = exp(self_check_yes_logprob)
GIVEN = "given"  # the table's own `confidence` column
METRICS = (*LOGPROB_METRICS, SELF_CHECK, GIVEN)

TOKEN_LOGPROBS = "token_logprobs"
SELF_CHECK_COLUMN = "self_check_yes_logprob"
CONFIDENCE = "confidence"
WEAK = "weak_correct"
STRONG = "strong_correct"
CONFIDENCE_COLUMNS = (TOKEN_LOGPROBS, SELF_CHECK_COLUMN, CONFIDENCE)
COLUMN_OF = {
    **dict.fromkeys(LOGPROB_METRICS, TOKEN_LOGPROBS),
    SELF_CHECK: SELF_CHECK_COLUMN,
    GIVEN: CONFIDENCE,
}

REFERENCE_KIND = "CascadeReference"
REFERENCE_VERSION = 1
REFERENCE_MAX = 2000  # confidences in a reference file, at most
DEFAULT_SHARES = (0.2, 0.3, 0.5)
ECE_BINS = 10
TIE_DIGITS = 9  # APGRs equal to this many digits are a tie, broken by AUROC


class TableError(DataError):
    """A table that cannot be used; the message names the file, the row and the column."""


@dataclass(frozen=True)
class Where:
    """A row of a table, for error messages: 1-based data row (header not counted), file line."""

    source: str
    row: int
    line: int | None = None

    def __str__(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.source}: row {self.row}{line}"

    def column(self, name: str) -> str:
        return f"{self}, column {name!r}"


@dataclass(frozen=True)
class CascadeTable:
    """Per answer: whether each tier was right, and the lower tier's confidence per metric."""

    source: str
    weak: NDArray[np.bool_]
    strong: NDArray[np.bool_]
    confidences: dict[str, NDArray[np.float64]]

    def __len__(self) -> int:
        return len(self.weak)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if m in self.confidences)


# --- reading a table -----------------------------------------------------------------------


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise TableError(f"{where}: expected a number, got a boolean ({value!r})")
    if value is None:
        raise TableError(f"{where}: empty (no value)")
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise TableError(f"{where}: empty (no value)")
        try:
            x = float(text)
        except ValueError:
            raise TableError(f"{where}: not a number: {value!r}") from None
    else:
        raise TableError(f"{where}: expected a number, got a {type(value).__name__} ({value!r})")
    if math.isnan(x):
        raise TableError(f"{where}: NaN (a number is needed)")
    return x


def _token_logprobs(value: Any, where: str) -> list[float | None]:
    """A JSON list of logprobs (floats <= 0) or nulls; in JSON Lines also a list as such."""
    if isinstance(value, str):
        if not value.strip():
            raise TableError(f"{where}: empty (expected a JSON list of logprobs)")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise TableError(
                f"{where}: not a JSON list of logprobs ({e.msg} at character {e.pos})"
            ) from None
    if value is None:
        raise TableError(f"{where}: empty (expected a JSON list of logprobs)")
    if not isinstance(value, list):
        raise TableError(
            f"{where}: expected a JSON list of logprobs (floats or null), "
            f"got a {type(value).__name__} ({value!r})"
        )
    out: list[float | None] = []
    for i, item in enumerate(value):
        if item is None:
            out.append(None)
            continue
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise TableError(f"{where}: item {i} is {item!r}, expected a logprob (float) or null")
        x = float(item)
        if math.isnan(x):
            raise TableError(f"{where}: item {i} is NaN, expected a logprob (float) or null")
        if x > 0:
            raise TableError(f"{where}: item {i} is {x!r}: a log-probability is <= 0")
        out.append(x)
    return out


def _self_check(value: Any, where: str) -> float:
    x = _number(value, where)
    if x > 0:
        raise TableError(f"{where}: {x!r}: a log-probability is <= 0")
    return math.exp(x)


def _given(value: Any, where: str) -> float:
    x = _number(value, where)
    if not 0.0 <= x <= 1.0:
        raise TableError(f"{where}: {x!r} is outside [0, 1]")
    return x + 0.0  # no -0.0


def _columns(keys: Iterable[str], where: str) -> list[str]:
    """The columns this tool reads, in order; a missing one is an error naming it."""
    present = [k for k in keys if k is not None]
    for name in (WEAK, STRONG):
        if name not in present:
            raise TableError(f"{where}: missing column {name!r}; columns are {present}")
    confidence = [c for c in CONFIDENCE_COLUMNS if c in present]
    if not confidence:
        raise TableError(
            f"{where}: missing column: need at least one of {', '.join(CONFIDENCE_COLUMNS)}; "
            f"columns are {present}"
        )
    return [*confidence, WEAK, STRONG]


def table_from_rows(
    rows: Iterable[tuple[Where, dict[str, Any]]], source: str, header: Sequence[str] | None = None
) -> CascadeTable:
    """Validate and convert rows (CSV strings or JSON values); the first bad cell is an error.

    `header`: the CSV header; without it the first row's keys say which columns the table has,
    and every later row must have them too.
    """
    columns = _columns(header, f"{source}: header (line 1)") if header is not None else None
    weak: list[bool] = []
    strong: list[bool] = []
    values: dict[str, list[float]] = {}
    for where, row in rows:
        if columns is None:
            columns = _columns(row, str(where))
        if not values:
            metrics = [m for m in METRICS if COLUMN_OF[m] in columns]
            values = {m: [] for m in metrics}
        for name in columns:
            if name not in row:
                raise TableError(f"{where}: missing column {name!r} (the first row has it)")
        if header is None:
            for name in CONFIDENCE_COLUMNS:
                if name in row and name not in columns:
                    raise TableError(
                        f"{where}: column {name!r}, which the first row lacks: every row needs "
                        "the same confidence columns"
                    )
        weak.append(parse_label(row[WEAK], where.column(WEAK)))
        strong.append(parse_label(row[STRONG], where.column(STRONG)))
        if TOKEN_LOGPROBS in columns:
            logprobs = _token_logprobs(row[TOKEN_LOGPROBS], where.column(TOKEN_LOGPROBS))
            for metric in LOGPROB_METRICS:
                values[metric].append(routing.confidence(logprobs, metric))
        if SELF_CHECK_COLUMN in columns:
            values[SELF_CHECK].append(
                _self_check(row[SELF_CHECK_COLUMN], where.column(SELF_CHECK_COLUMN))
            )
        if CONFIDENCE in columns:
            values[GIVEN].append(_given(row[CONFIDENCE], where.column(CONFIDENCE)))
    if not weak:
        raise TableError(f"{source}: no rows (empty table)")
    table = CascadeTable(
        source=source,
        weak=np.array(weak, dtype=bool),
        strong=np.array(strong, dtype=bool),
        confidences={m: np.array(v, dtype=np.float64) for m, v in values.items()},
    )
    _check_usable(table)
    return table


def _check_usable(table: CascadeTable) -> None:
    """Both outcomes of the weak tier (AUROC, ECE) and a gap for escalation to recover (APGR)."""
    n, w, s = len(table), table.weak.mean(), table.strong.mean()
    if w in (0.0, 1.0):
        outcome = "1 (correct)" if w == 1.0 else "0 (wrong)"
        raise TableError(
            f"{table.source}: column {WEAK!r} has one class only (all {n} rows are {outcome}): "
            "AUROC and calibration need both correct and wrong answers of the lower tier"
        )
    if s <= w:
        raise TableError(
            f"{table.source}: the top tier is not more accurate than the lower one (column "
            f"{STRONG!r} {s:.3f} vs {WEAK!r} {w:.3f}): no gap for escalation to recover"
        )


def _csv_rows(reader: Any, path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    for n, row in enumerate(reader, 1):
        where = Where(str(path), n, reader.line_num)
        if None in row:
            raise TableError(f"{where}: more fields than the header has")
        yield where, row


def _jsonl_rows(lines: Iterable[str], path: Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    n = 0
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        n += 1
        where = Where(str(path), n, line_no)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TableError(f"{where}: not JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(row, dict):
            raise TableError(f"{where}: expected a JSON object, got a {type(row).__name__}")
        yield where, row


def read_table(path: Path) -> CascadeTable:
    """A .csv (header row, then one answer per row) or .jsonl (one JSON object per line)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise TableError(f"{path}: expected a .csv or .jsonl (JSON Lines) table")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if suffix == ".csv":
                csv.field_size_limit(1 << 24)
                reader = csv.DictReader(f)
                if reader.fieldnames is None:
                    raise TableError(f"{path}: empty file (no header, no rows)")
                return table_from_rows(_csv_rows(reader, path), str(path), reader.fieldnames)
            return table_from_rows(_jsonl_rows(f, path), str(path))
    except (UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"{path}: cannot read: {e}") from e


def write_table(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows as this tool reads them: .csv (lists as JSON text) or .jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
                )
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        raise TableError(f"{path}: write a .csv or .jsonl table")


# --- tables to test with -------------------------------------------------------------------


def routellm_rows(
    root: Path = DEFAULT_DATA, benchmarks: Sequence[str] = BENCHMARKS
) -> list[dict[str, Any]]:
    """A table from RouteLLM's per-prompt correctness data (decontaminated, as `labelled`).

    RouteLLM publishes no logprobs or confidences, so the `confidence` column is a documented
    proxy: 1 - the heuristic upfront scorer's score of the prompt (the per-prompt score
    `tierserve calibrate` evaluates). Escalating on 1 - confidence then routes as the heuristic
    scorer does, and the `given` metric's APGR must be what `quality.apgr` gives its scores.
    """
    scorer = HeuristicScorer()
    return [
        {
            "prompt": e.prompt,
            "source": e.source,
            CONFIDENCE: 1.0 - scorer.score(e.prompt),
            WEAK: int(e.weak),
            STRONG: int(e.strong),
        }
        for e in load_routellm(root, benchmarks)
    ]


def synthetic_rows(n: int = 2000, seed: int = 0, certain: float = 0.6) -> list[dict[str, Any]]:
    """Answers where a `certain` share (60%) has every token logprob 0.0: confidence exactly 1.0.

    Like small models answering short questions: most answers' tokens are all probability 1.0
    as far as float32 logprobs go, so `1 - confidence > t` escalates at most 1 - certain of the
    traffic for any t >= 0. The rest have one doubtful token; the weak tier is right ~85% of the
    time when certain and less the lower its least likely token, the strong tier ~95%/60% when
    the weak one is right/wrong. `self_check_yes_logprob` is a noisy log of that chance.
    """
    rng = np.random.default_rng(seed)
    is_certain = np.zeros(n, dtype=bool)
    is_certain[rng.choice(n, round(certain * n), replace=False)] = True
    rows = []
    for i in range(n):
        length = int(rng.integers(4, 16))
        if is_certain[i]:
            logprobs = [0.0] * length
            p_weak = 0.85
        else:
            logprobs = [float(-x) for x in rng.exponential(0.05, length) + 1e-4]
            logprobs[int(rng.integers(length))] = float(np.log(rng.uniform(0.05, 0.95)))
            p_weak = 0.15 + 0.7 * math.exp(min(logprobs))
        weak = bool(rng.random() < p_weak)
        strong = bool(rng.random() < (0.95 if weak else 0.6))
        yes = float(np.clip(p_weak + rng.normal(0.0, 0.1), 0.01, 1.0))
        rows.append(
            {
                "prompt": f"synthetic question {i}",
                TOKEN_LOGPROBS: logprobs,
                SELF_CHECK_COLUMN: math.log(yes),
                WEAK: int(weak),
                STRONG: int(strong),
            }
        )
    return rows


# --- evaluation ----------------------------------------------------------------------------


def evaluate_metric(
    name: str, confidence: NDArray[np.float64], weak: ArrayLike, strong: ArrayLike
) -> dict[str, Any]:
    """One metric's report: routing quality of score 1 - confidence, and how well it predicts."""
    scores = 1.0 - confidence
    curve = quality.quality_curve(scores, weak, strong)
    return {
        "metric": name,
        "apgr": quality.apgr(scores, weak, strong),
        "share_for_gap": quality.shares_for_gaps(curve),
        "auroc": quality.auroc(confidence, weak),
        "ece": quality.expected_calibration_error(confidence, weak, ECE_BINS),
        "brier": quality.brier_score(confidence, weak),
        "share_at_one": float(np.mean(confidence == 1.0)),
        "distinct": len(np.unique(confidence)),
    }


def recommend(reports: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(metric, why): the highest APGR; APGRs equal to TIE_DIGITS digits go to the higher AUROC."""
    ranked = sorted(
        reports,
        key=lambda r: (round(r["apgr"], TIE_DIGITS), round(r["auroc"], TIE_DIGITS)),
        reverse=True,
    )
    best = ranked[0]
    tied = [
        r for r in ranked[1:] if round(r["apgr"], TIE_DIGITS) == round(best["apgr"], TIE_DIGITS)
    ]
    if tied:
        others = ", ".join(r["metric"] for r in tied)
        return best["metric"], f"APGR tied with {others}; highest AUROC among them"
    return best["metric"], "highest APGR"


def reference_confidences(confidence: ArrayLike, cap: int = REFERENCE_MAX) -> NDArray[np.float64]:
    """The confidences, ascending; more than `cap` become `cap` evenly spaced order statistics."""
    c = np.sort(np.asarray(confidence, dtype=np.float64).ravel()) + 0.0
    if len(c) > cap:
        c = c[np.round(np.linspace(0, len(c) - 1, cap)).astype(np.int64)]
    return c


def reference_document(confidence: ArrayLike, metric: str, tier: str = "") -> dict[str, Any]:
    """The `CascadeReference` JSON the router loads (`spec.routing.cascade.rank.referencePath`)."""
    return {
        "kind": REFERENCE_KIND,
        "version": REFERENCE_VERSION,
        "metric": metric,
        "tier": tier,
        "confidences": [float(x) for x in reference_confidences(confidence)],
    }


def write_reference(path: Path, document: dict[str, Any]) -> int:
    text = json.dumps(document) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def rank_share(confidence: ArrayLike, reference: ArrayLike, share: float) -> float:
    """Expected share escalated by the rank score at threshold 1 - share.

    The router's rank of a confidence c among the reference: (reference values below c + u *
    values equal to c) / size, u uniform from a stable hash; score 1 - rank, escalate when
    score > 1 - share, i.e. rank < share. Averaged over u, per answer.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    ref = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    below = np.searchsorted(ref, c, side="left") / len(ref)
    equal = np.searchsorted(ref, c, side="right") / len(ref) - below
    split = np.clip((share - below) / np.where(equal > 0, equal, 1.0), 0.0, 1.0)
    return float(np.where(equal > 0, split, below < share).mean())


def absolute_rule(confidence: ArrayLike, share: float) -> dict[str, Any]:
    """The `1 - confidence > t` threshold in [0, 1] closest to `share`, and what it escalates.

    When the target falls inside a run of tied confidences no threshold reaches it: `unreachable`
    then says which shares are out of reach and which tie causes it.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    scores = 1.0 - c
    threshold = max(quality.threshold_for_share(scores, share), 0.0)  # a threshold is >= 0
    achieved = float(np.mean(scores > threshold))
    out: dict[str, Any] = {"threshold": threshold, "share": achieved, "unreachable": None}
    n = len(scores)
    if abs(achieved - share) > max(0.01, 1.0 / n):
        v = np.sort(scores)[::-1][min(int(share * n), n - 1)]
        tied = c[scores == v]
        low, high = float(np.mean(scores > v)), float(np.mean(scores >= v))
        exact = bool((tied == tied[0]).all())
        out["unreachable"] = {
            "from": low,
            "to": high,
            "tied_share": high - low,
            "confidence": float(tied[0]) if exact else None,
            "message": (
                f"shares between {low:.1%} and {high:.1%} unreachable: {high - low:.1%} of "
                + (
                    f"confidences are exactly {float(tied[0])!r}"
                    if exact
                    else f"confidences tie at uncertainty {v:.6g}"
                )
            ),
        }
    return out


def evaluate_table(
    table: CascadeTable,
    shares: Sequence[float] = DEFAULT_SHARES,
    metric: str | None = None,
    tier: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, reference document) for a table: all its metrics, the chosen one's thresholds."""
    reports = [
        evaluate_metric(m, table.confidences[m], table.weak, table.strong) for m in table.metrics
    ]
    recommended, why = recommend(reports)
    chosen = metric or recommended
    if chosen not in table.confidences:
        raise TableError(
            f"{table.source}: metric {chosen!r} needs column {COLUMN_OF[chosen]!r}, which the "
            f"table lacks (its metrics: {', '.join(table.metrics)})"
        )
    conf = table.confidences[chosen]
    document = reference_document(conf, chosen, tier)
    reference = np.array(document["confidences"])
    thresholds = []
    for share in shares:
        thresholds.append(
            {
                "target_share": share,
                "rank_threshold": round(1.0 - share, 12),
                "rank_share": rank_share(conf, reference, share),
                "absolute": absolute_rule(conf, share),
            }
        )
    report = {
        "table": table.source,
        "rows": len(table),
        "weak_accuracy": float(table.weak.mean()),
        "strong_accuracy": float(table.strong.mean()),
        "metrics": reports,
        "recommended": recommended,
        "recommended_because": why,
        "metric": chosen,
        "tier": tier,
        "reference_values": len(reference),
        "thresholds": thresholds,
    }
    return report, document


# --- command line --------------------------------------------------------------------------


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a share strictly between 0 and 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tierserve calibrate cascade",
        description="Evaluate the lower tier's confidence metrics for cascade routing on a table "
        "of its answers (AUROC, APGR, strong-call share for 50/80/95%% of the gap, ECE, Brier), "
        "recommend one (highest APGR, ties: AUROC), write the CascadeReference file the router "
        "ranks against (spec.routing.cascade.rank.referencePath), and print the threshold for "
        "each target share.",
        epilog="Table columns (.csv or .jsonl): weak_correct, strong_correct (0/1 or "
        "true/false) and at least one of token_logprobs (JSON list of floats or nulls; metrics "
        "minTokenProb, meanLogprob, quantile), self_check_yes_logprob (metric selfCheck), "
        "confidence (in [0, 1]; metric given). Malformed input exits 2 naming the row and "
        "column. See docs/calibrate-cascade.md.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=Path, help="the table of lower-tier answers")
    source.add_argument(
        "--from-routellm",
        metavar="BENCH[,BENCH]",
        help="build the table from RouteLLM's data instead (mmlu, gsm8k); it has no logprobs, "
        "so its confidence column is a proxy: 1 - the heuristic upfront score of the prompt",
    )
    source.add_argument(
        "--from-router",
        metavar="URL",
        help="build the table from a live ModelTier: its router's OpenAI base URL (e.g. "
        "http://127.0.0.1:8000/tiny-sums/v1); needs --labelled",
    )
    p.add_argument(
        "--labelled",
        type=Path,
        help="--from-router: JSON Lines of {prompt, answer} to replay, pinned to each tier",
    )
    p.add_argument("--lower", help="--from-router: the lower tier (default: the first)")
    p.add_argument("--top", help="--from-router: the tier to compare with (default: the last)")
    p.add_argument(
        "--max-tokens", type=int, default=8, help="--from-router: tokens per answer (default 8)"
    )
    p.add_argument(
        "--self-check-prompt",
        help="--from-router: also ask the lower tier this about its answer, as the router's "
        "selfCheck does (adds the selfCheck metric)",
    )
    p.add_argument(
        "--yes-token",
        action="append",
        help="--from-router: a token meaning yes for the self-check; repeatable (default yes)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help=f"RouteLLM evals folder for --from-routellm (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--save-table", type=Path, help="write the --from-routellm table here (.csv or .jsonl)"
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        help="write the reference and thresholds for this metric instead of the recommended one",
    )
    p.add_argument(
        "--target-share",
        type=_share,
        action="append",
        metavar="S",
        help="share of requests to escalate; repeatable (default "
        + " ".join(str(s) for s in DEFAULT_SHARES)
        + ")",
    )
    p.add_argument("--out", type=Path, help="where to write the CascadeReference JSON")
    p.add_argument("--tier", default="", help="the lower tier's name, recorded in the reference")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def load(args: argparse.Namespace) -> CascadeTable:
    if args.table is not None:
        return read_table(args.table)
    if args.from_router is not None:
        return _from_router(args)
    root = args.data or DEFAULT_DATA
    if not root.exists():
        raise TableError(f"{root}: no RouteLLM data here; pass --data <RouteLLM evals folder>")
    benchmarks = [b for b in args.from_routellm.split(",") if b]
    rows = routellm_rows(root, benchmarks)
    source = f"RouteLLM {','.join(benchmarks)} ({root})"
    if args.save_table:
        write_table(rows, args.save_table)
        source = str(args.save_table)
    return table_from_rows(
        ((Where(source, n), row) for n, row in enumerate(rows, 1)), source, list(rows[0])
    )


def _from_router(args: argparse.Namespace) -> CascadeTable:
    from tierserve.tools.router_table import read_labelled, replay

    if args.labelled is None:
        raise TableError("--from-router needs --labelled (JSON Lines of prompt and answer)")
    rows = replay(
        args.from_router,
        read_labelled(args.labelled),
        lower=args.lower,
        top=args.top,
        max_tokens=args.max_tokens,
        self_check_prompt=args.self_check_prompt,
        yes_tokens=args.yes_token or ["yes"],
    )
    source = f"{args.from_router} replaying {args.labelled}"
    if args.save_table:
        write_table(rows, args.save_table)
        source = str(args.save_table)
    return table_from_rows(
        ((Where(source, n), row) for n, row in enumerate(rows, 1)), source, list(rows[0])
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    table = load(args)
    shares = args.target_share or list(DEFAULT_SHARES)
    report, document = evaluate_table(table, shares, args.metric, args.tier)
    report["out"] = str(args.out) if args.out else None
    report["reference_bytes"] = (
        write_reference(args.out, document) if args.out else len(json.dumps(document)) + 1
    )
    return report


def _print(report: dict[str, Any]) -> None:
    print(
        f"table: {report['table']}  ({report['rows']} answers; lower tier correct "
        f"{report['weak_accuracy']:.1%}, top tier {report['strong_accuracy']:.1%})"
    )
    print(
        f"\n{'metric':<13} {'APGR':>6} {'AUROC':>6} {'ECE':>6} {'Brier':>6} {'=1.0':>6}   "
        "strong-call share to recover 50% / 80% / 95% of the gap"
    )
    for m in report["metrics"]:
        gaps = " / ".join(f"{v:6.1%}" for v in m["share_for_gap"].values())
        print(
            f"{m['metric']:<13} {m['apgr']:6.3f} {m['auroc']:6.3f} {m['ece']:6.3f} "
            f"{m['brier']:6.3f} {m['share_at_one']:6.1%}   {gaps}"
        )
    print(f"\nrecommended: {report['recommended']} ({report['recommended_because']})")
    metric = report["metric"]
    if metric != report["recommended"]:
        print(f"using {metric} (--metric)")
    where = report["out"] or "not written (no --out)"
    print(
        f"reference: {report['reference_values']} {metric} confidences of {report['rows']} "
        f"answers, {report['reference_bytes'] / 1024:.0f} KiB, {where}"
    )
    print(
        "\nper target share: the rank score's threshold (1 - share; expected share on this "
        "table),\nand the absolute rule's (score 1 - confidence > t) threshold and share:"
    )
    for t in report["thresholds"]:
        a = t["absolute"]
        line = (
            f"  {t['target_share']:5.1%}: rank threshold {t['rank_threshold']:.4f} "
            f"(escalates {t['rank_share']:.1%});  absolute threshold {a['threshold']:.6g} "
            f"escalates {a['share']:.1%}"
        )
        if a["unreachable"]:
            line += f"\n         absolute rule misses it: {a['unreachable']['message']}"
        print(line)
    first = report["thresholds"][0]
    if metric == GIVEN:
        print(
            "\nthe 'given' confidences came with the table: set spec.routing.cascade.confidence "
            "to the metric that produced them, so the router computes the same values"
        )
    elif report["out"]:
        print(
            f"\nModelTier spec.routing: {{mode: cascade, escalation: {{threshold: "
            f"{first['rank_threshold']:.4f}}}, cascade: {{confidence: {metric}, score: rank, "
            f"rank: {{referencePath: {report['out']}}}}}}}  (target share "
            f"{first['target_share']:.0%}; the path as the router replicas see it)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.table is not None and (args.data is not None or args.save_table is not None):
        parser.error("--data and --save-table go with --from-routellm or --from-router")
    if args.from_router is None and args.labelled is not None:
        parser.error("--labelled goes with --from-router")
    try:
        report = run(args)
    except (DataError, OSError, httpx.HTTPError) as e:
        print(f"tierserve calibrate cascade: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
