"""`tierserve calibrate cascade`: the lower tier's confidence metrics, reference file, errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tierserve.serving import routing
from tierserve.serving.scorers import HeuristicScorer
from tierserve.tools import calibrate, calibrate_cascade, labelled, quality

pytestmark = pytest.mark.unit

needs_routellm = pytest.mark.skipif(
    not labelled.DEFAULT_DATA.exists(),
    reason=f"RouteLLM data not present at {labelled.DEFAULT_DATA}",
)


def run(*argv: str) -> tuple[int, str, str]:
    """`tierserve calibrate <argv>` through the upfront command's entry point (the dispatch)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = calibrate.main(list(argv))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def rows_of(n_right: int, n_wrong: int, **columns: Any) -> list[dict[str, Any]]:
    return [
        {"weak_correct": int(i < n_right), "strong_correct": 1, **columns}
        for i in range(n_right + n_wrong)
    ]


# --- metrics on hand-checkable data --------------------------------------------------------


def test_auroc_by_hand() -> None:
    right = [1, 1, 0, 0]
    assert quality.auroc([0.9, 0.8, 0.3, 0.1], right) == 1.0  # separates perfectly
    assert quality.auroc([0.1, 0.3, 0.8, 0.9], right) == 0.0  # exactly backwards
    assert quality.auroc([0.7, 0.7, 0.7, 0.7], right) == 0.5  # constant: chance
    # Pairs (right, wrong): (0.4, 0.2) 1, (0.4, 0.4) 1/2, (0.8, 0.2) 1, (0.8, 0.4) 1: 3.5 / 4.
    assert quality.auroc([0.2, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == 0.875
    with pytest.raises(ValueError, match="both"):
        quality.auroc([0.2, 0.4], [1, 1])


def test_auroc_matches_scikit_learn_with_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    conf = np.round(rng.random(500), 1)  # many ties
    right = rng.random(500) < conf
    assert quality.auroc(conf, right) == pytest.approx(metrics.roc_auc_score(right, conf))


def test_ece_and_brier_by_hand() -> None:
    # Perfectly calibrated bins: 80% right at 0.8, 30% right at 0.3, all right at 1.0.
    conf = [0.8] * 10 + [0.3] * 10 + [1.0] * 5
    right = [1] * 8 + [0] * 2 + [1] * 3 + [0] * 7 + [1] * 5
    assert quality.expected_calibration_error(conf, right) == pytest.approx(0.0, abs=1e-12)
    # Half the answers at 0.95 (half right: off by 0.45), half at 0.15 (none right: off 0.15).
    conf = [0.95] * 4 + [0.15] * 4
    right = [1, 1, 0, 0, 0, 0, 0, 0]
    assert quality.expected_calibration_error(conf, right) == pytest.approx(0.3)
    # Brier: (1-1)^2 + (0-1)^2 + (0.5-0)^2 + (0.5-1)^2 = 1.5, over 4.
    assert quality.brier_score([1.0, 0.0, 0.5, 0.5], [1, 1, 0, 1]) == 0.375


def test_table_confidences_are_the_routers_own() -> None:
    logprobs: list[list[float | None]] = [
        [-0.1, None, -2.0, -0.5],
        [0.0, 0.0],
        [],
        [*([-0.3] * 12), -4.0],
    ]
    rows = [
        {
            "token_logprobs": lp,
            "self_check_yes_logprob": -0.2 * i,
            "confidence": 0.1 * i,
            "weak_correct": i % 2,
            "strong_correct": 1,
        }
        for i, lp in enumerate(logprobs)
    ]
    table = calibrate_cascade.table_from_rows(
        ((calibrate_cascade.Where("t", n), r) for n, r in enumerate(rows, 1)), "t"
    )
    assert table.metrics == ("minTokenProb", "meanLogprob", "quantile", "selfCheck", "given")
    for metric in calibrate_cascade.LOGPROB_METRICS:
        want = [routing.confidence(lp, metric) for lp in logprobs]
        assert table.confidences[metric].tolist() == want, metric
    assert table.confidences["minTokenProb"][0] == math.exp(-2.0)
    assert table.confidences["selfCheck"].tolist() == [math.exp(-0.2 * i) for i in range(4)]
    assert table.confidences["given"].tolist() == [0.1 * i for i in range(4)]


def test_recommends_the_highest_apgr_and_breaks_ties_by_auroc() -> None:
    reports = [
        {"metric": "minTokenProb", "apgr": 0.61, "auroc": 0.70},
        {"metric": "meanLogprob", "apgr": 0.64, "auroc": 0.60},
        {"metric": "selfCheck", "apgr": 0.64, "auroc": 0.65},
    ]
    assert calibrate_cascade.recommend(reports[:2]) == ("meanLogprob", "highest APGR")
    metric, why = calibrate_cascade.recommend(reports)
    assert metric == "selfCheck" and "tied" in why and "AUROC" in why


# --- the RouteLLM-built table ---------------------------------------------------------------


@needs_routellm
def test_routellm_table_reproduces_quality_apgr(tmp_path: Path) -> None:
    """The table's confidence is 1 - the heuristic score: calibrate must route as quality does."""
    examples = labelled.load_routellm(labelled.DEFAULT_DATA)
    weak, strong = labelled.labels(examples)
    scorer = HeuristicScorer()
    scores = np.array([scorer.score(e.prompt) for e in examples])
    direct = quality.apgr(scores, weak, strong)
    direct_gaps = quality.shares_for_gaps(quality.quality_curve(scores, weak, strong))

    table = tmp_path / "routellm.csv"
    calibrate_cascade.write_table(calibrate_cascade.routellm_rows(), table)
    code, stdout, stderr = run("cascade", "--table", str(table), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["rows"] == len(examples)
    (given,) = report["metrics"]
    assert given["metric"] == "given" and report["recommended"] == "given"
    # 1 - (1 - s) is s up to one rounding, so the two paths agree to float precision...
    assert given["apgr"] == pytest.approx(direct, abs=1e-12)
    for fraction, share in direct_gaps.items():
        assert given["share_for_gap"][str(fraction)] == pytest.approx(share, abs=1e-9)
    # ... and exactly on the scores calibrate escalates by, read back from the table.
    read = calibrate_cascade.read_table(table)
    assert given["apgr"] == quality.apgr(1.0 - read.confidences["given"], weak, strong)
    # The same table built in-process (--from-routellm) gives the same report.
    code, stdout, stderr = run("cascade", "--from-routellm", "mmlu,gsm8k", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["metrics"][0]["apgr"] == given["apgr"]


# --- malformed tables -----------------------------------------------------------------------


GOOD = {"token_logprobs": [-0.1, -0.2], "weak_correct": 1, "strong_correct": 1}


def good_rows() -> list[dict[str, Any]]:
    return [{**GOOD, "weak_correct": i % 2, "token_logprobs": [-0.1 * i, -0.05]} for i in range(6)]


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


CSV_HEADER = "prompt,token_logprobs,confidence,weak_correct,strong_correct"
CSV_GOOD = ['a,"[-0.1, -0.2]",0.9,1,1', 'b,"[-1.5]",0.2,0,1', 'c,"[-0.3]",0.6,1,1']


@pytest.mark.parametrize(
    ("header", "bad_line", "expected"),
    [
        (
            "prompt,token_logprobs,confidence,strong_correct",
            None,
            ["header (line 1)", "missing column 'weak_correct'"],
        ),
        ("prompt,weak_correct,strong_correct", None, ["header (line 1)", "token_logprobs"]),
        (CSV_HEADER, 'd,"[-0.1]",NaN,1,1', ["row 4 (line 5)", "'confidence'", "NaN"]),
        (CSV_HEADER, 'd,"[-0.1]",high,1,1', ["row 4 (line 5)", "'confidence'", "not a number"]),
        (CSV_HEADER, 'd,"[-0.1]",1.5,1,1', ["row 4", "'confidence'", "outside [0, 1]"]),
        (CSV_HEADER, 'd,"[-0.1]",,1,1', ["row 4", "'confidence'", "empty"]),
        (CSV_HEADER, 'd,"[-0.1, ",0.5,1,1', ["row 4", "'token_logprobs'", "not a JSON list"]),
        (CSV_HEADER, 'd,"{""a"": 1}",0.5,1,1', ["row 4", "'token_logprobs'", "got a dict"]),
        (CSV_HEADER, 'd,"[-0.1, ""x""]",0.5,1,1', ["row 4", "'token_logprobs'", "item 1"]),
        (CSV_HEADER, 'd,"[-0.1, NaN]",0.5,1,1', ["row 4", "'token_logprobs'", "item 1 is NaN"]),
        (CSV_HEADER, 'd,"[0.3]",0.5,1,1', ["row 4", "'token_logprobs'", "<= 0"]),
        (CSV_HEADER, 'd,"[-0.1]",0.5,maybe,1', ["row 4", "'weak_correct'", "'maybe'"]),
        (CSV_HEADER, 'd,"[-0.1]",0.5,1,2', ["row 4", "'strong_correct'", "0/1 or true/false"]),
        (CSV_HEADER, 'd,"[-0.1]",0.5,1,1,extra', ["row 4", "more fields"]),
    ],
)
def test_malformed_csv_names_column_and_row(
    tmp_path: Path, header: str, bad_line: str | None, expected: list[str]
) -> None:
    lines = CSV_GOOD + ([bad_line] if bad_line else [])
    path = write_csv(tmp_path / "answers.csv", header, lines)
    code, stdout, stderr = run("cascade", "--table", str(path))
    assert code == 2 and not stdout
    assert "Traceback" not in stderr
    assert stderr.startswith(f"tierserve calibrate cascade: {path}"), stderr
    for text in expected:
        assert text in stderr, (text, stderr)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"token_logprobs": [-0.1], "strong_correct": 1}, ["row 4 (line 4)", "'weak_correct'"]),
        ({**GOOD, "token_logprobs": "[-0.1,"}, ["row 4", "'token_logprobs'", "not a JSON list"]),
        ({**GOOD, "token_logprobs": 0.5}, ["row 4", "'token_logprobs'", "got a float"]),
        ({**GOOD, "token_logprobs": [True]}, ["row 4", "'token_logprobs'", "item 0"]),
        ({**GOOD, "weak_correct": "yes please"}, ["row 4", "'weak_correct'"]),
        ({**GOOD, "weak_correct": None}, ["row 4", "'weak_correct'", "empty"]),
        ({**GOOD, "strong_correct": 0.5}, ["row 4", "'strong_correct'"]),
        ({**GOOD, "self_check_yes_logprob": -0.1}, ["row 4", "'self_check_yes_logprob'", "first"]),
        ({**GOOD, "note": "other columns are ignored"}, []),
    ],
)
def test_malformed_jsonl_names_column_and_row(
    tmp_path: Path, bad: dict[str, Any], expected: list[str]
) -> None:
    path = tmp_path / "answers.jsonl"
    rows = [
        {**GOOD, "weak_correct": 1},
        {**GOOD, "weak_correct": 0},
        {**GOOD, "token_logprobs": [-2.0]},
        bad,
    ]
    calibrate_cascade.write_table(rows, path)
    code, _, stderr = run("cascade", "--table", str(path))
    if not expected:
        assert code == 0, stderr
        return
    assert code == 2 and "Traceback" not in stderr
    assert f"{path}: " in stderr
    for text in expected:
        assert text in stderr, (text, stderr)


def test_jsonl_nan_and_non_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n\nnot json\n")
    code, _, stderr = run("cascade", "--table", str(path))
    assert code == 2 and "row 2 (line 3): not JSON" in stderr  # blank lines are not rows
    path.write_text(
        '{"self_check_yes_logprob": NaN, "weak_correct": 1, "strong_correct": 1}\n'
        '{"self_check_yes_logprob": -1, "weak_correct": 0, "strong_correct": 1}\n'
    )
    code, _, stderr = run("cascade", "--table", str(path))
    assert code == 2 and "Traceback" not in stderr
    assert "row 1 (line 1), column 'self_check_yes_logprob': NaN" in stderr


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], "no rows (empty table)"),
        (rows_of(4, 0, confidence=0.9), "column 'weak_correct' has one class only"),
        (rows_of(0, 4, confidence=0.9), "column 'weak_correct' has one class only"),
    ],
)
def test_tables_without_both_classes_are_refused(
    tmp_path: Path, rows: list[dict[str, Any]], expected: str
) -> None:
    path = tmp_path / "answers.csv"
    if rows:
        calibrate_cascade.write_table(rows, path)
    else:
        path.write_text("confidence,weak_correct,strong_correct\n")
    code, _, stderr = run("cascade", "--table", str(path))
    assert code == 2 and expected in stderr and str(path) in stderr


def test_no_gap_wrong_extension_missing_file_and_metric(tmp_path: Path) -> None:
    path = tmp_path / "answers.csv"
    rows = [{**r, "strong_correct": r["weak_correct"]} for r in good_rows()]
    calibrate_cascade.write_table(rows, path)
    code, _, stderr = run("cascade", "--table", str(path))
    assert code == 2 and "not more accurate" in stderr and "'strong_correct'" in stderr
    code, _, stderr = run("cascade", "--table", str(tmp_path / "answers.txt"))
    assert code == 2 and "expected a .csv or .jsonl" in stderr
    code, _, stderr = run("cascade", "--table", str(tmp_path / "absent.csv"))
    assert code == 2 and "no such file" in stderr
    good = [{**r, "strong_correct": 1} for r in good_rows()]
    calibrate_cascade.write_table(good, path)
    code, _, stderr = run("cascade", "--table", str(path), "--metric", "selfCheck")
    assert code == 2 and "'self_check_yes_logprob'" in stderr
    code, _, stderr = run("cascade", "--table", str(path), "--target-share", "1.5")
    assert code == 2 and "--target-share" in stderr


# --- the reference file and the thresholds ---------------------------------------------------


def test_reference_file_format_order_and_size_cap(tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    table = tmp_path / "answers.jsonl"
    calibrate_cascade.write_table(calibrate_cascade.synthetic_rows(5000, seed=1), table)
    code, stdout, stderr = run(
        "cascade", "--table", str(table), "--metric", "meanLogprob", "--tier", "small",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(out.read_text())
    assert list(doc) == ["kind", "version", "metric", "tier", "confidences"]
    assert doc["kind"] == "CascadeReference" and doc["version"] == 1
    assert doc["metric"] == "meanLogprob" and doc["tier"] == "small"
    conf = np.array(doc["confidences"])
    assert len(conf) == calibrate_cascade.REFERENCE_MAX == 2000
    assert np.all(np.diff(conf) >= 0) and conf.min() >= 0 and conf.max() <= 1
    # Evenly spaced order statistics: the ends are the table's, the shares of ties kept.
    full = calibrate_cascade.read_table(table).confidences["meanLogprob"]
    assert conf[0] == full.min() and conf[-1] == full.max() == 1.0
    assert np.mean(conf == 1.0) == pytest.approx(np.mean(full == 1.0), abs=1e-3)
    report = json.loads(stdout)
    assert report["reference_values"] == 2000 and report["metric"] == "meanLogprob"
    # A small table keeps every confidence.
    small = calibrate_cascade.reference_document([0.5, 0.1, 1.0, -0.0], "given")
    assert small["confidences"] == [0.0, 0.1, 0.5, 1.0] and small["tier"] == ""
    assert str(small["confidences"][0]) == "0.0"


def test_sixty_percent_ties_make_shares_unreachable_for_the_absolute_rule(
    tmp_path: Path,
) -> None:
    table = tmp_path / "answers.csv"
    rows = calibrate_cascade.synthetic_rows(2000, seed=0)
    calibrate_cascade.write_table(rows, table)
    read = calibrate_cascade.read_table(table)
    assert np.mean(read.confidences["minTokenProb"] == 1.0) == 0.6
    args = ("cascade", "--table", str(table), "--metric", "minTokenProb")
    code, stdout, stderr = run(*args)
    assert code == 0, stderr
    line50 = stdout[stdout.index("50.0%: rank threshold") :]
    assert "rank threshold 0.5000 (escalates 50.0%)" in line50
    assert "escalates 40.0%" in line50
    assert (
        "shares between 40.0% and 100.0% unreachable: 60.0% of confidences are exactly 1.0"
        in line50
    )
    assert "misses" not in stdout[: stdout.index("50.0%: rank threshold")]  # 20%, 30% reachable

    code, stdout, _ = run(*args, "--target-share", "0.5", "--target-share", "0.25", "--json")
    assert code == 0
    half, quarter = json.loads(stdout)["thresholds"]
    assert half["rank_threshold"] == 0.5 and half["rank_share"] == pytest.approx(0.5, abs=0.002)
    assert half["absolute"]["share"] == pytest.approx(0.4)
    assert half["absolute"]["unreachable"]["confidence"] == 1.0
    assert half["absolute"]["unreachable"]["tied_share"] == pytest.approx(0.6)
    assert quarter["rank_threshold"] == 0.75 and quarter["absolute"]["unreachable"] is None
    assert quarter["absolute"]["share"] == pytest.approx(0.25, abs=0.001)
    # The absolute threshold escalates what it says by the router's rule.
    t = quarter["absolute"]["threshold"]
    conf = read.confidences["minTokenProb"]
    share = np.mean([routing.should_escalate(1.0 - c, t) for c in conf])
    assert share == quarter["absolute"]["share"]


def test_report_recommends_and_prints_the_modeltier_snippet(tmp_path: Path) -> None:
    table = tmp_path / "answers.jsonl"
    calibrate_cascade.write_table(calibrate_cascade.synthetic_rows(1000, seed=3), table)
    out = tmp_path / "ref.json"
    code, stdout, stderr = run("cascade", "--table", str(table), "--out", str(out), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    names = [m["metric"] for m in report["metrics"]]
    assert names == ["minTokenProb", "meanLogprob", "quantile", "selfCheck"]
    best = max(report["metrics"], key=lambda m: m["apgr"])
    assert report["recommended"] == report["metric"] == best["metric"]
    assert json.loads(out.read_text())["metric"] == best["metric"]
    code, stdout, _ = run("cascade", "--table", str(table), "--out", str(out))
    assert f"recommended: {best['metric']} (highest APGR)" in stdout
    assert f"rank: {{referencePath: {out}}}" in stdout and "threshold: 0.8000" in stdout


def test_upfront_calibrate_command_is_unchanged() -> None:
    code, stdout, _ = run("--help")
    text = " ".join(stdout.split())
    assert code == 0 and "usage: tierserve calibrate [-h]" in text
    assert "--target-escalation" in text and "tierserve calibrate cascade --table" in text
    code, stdout, _ = run("cascade", "--help")
    text = " ".join(stdout.split())
    assert code == 0 and "usage: tierserve calibrate cascade" in text
    assert "spec.routing.cascade.rank.referencePath" in text
    code, _, stderr = run("--target-escalation", "2")
    assert code == 2 and "--target-escalation must be strictly between 0 and 1" in stderr


def test_the_routers_rank_score_escalates_the_target_share_on_the_reference(
    tmp_path: Path,
) -> None:
    """Cross-check with the router's own loader and rank (being added alongside this tool)."""
    rank = pytest.importorskip("tierserve.serving.rank", reason="router rank score not present")
    table = tmp_path / "answers.jsonl"
    rows = calibrate_cascade.synthetic_rows(2000, seed=5)
    calibrate_cascade.write_table(rows, table)
    out = tmp_path / "ref.json"
    code, _, stderr = run("cascade", "--table", str(table), "--metric", "minTokenProb",
                          "--tier", "small", "--out", str(out))  # fmt: skip
    assert code == 0, stderr
    metric, tier, confidences = rank.load_reference(out)
    assert (metric, tier, len(confidences)) == ("minTokenProb", "small", 2000)
    window = rank.RankWindow(len(confidences), confidences)
    conf = calibrate_cascade.read_table(table).confidences["minTokenProb"]
    for share in (0.2, 0.5, 0.8):  # 0.5 and 0.8 fall inside the 60% tied at 1.0
        threshold = 1.0 - share
        up = [
            routing.should_escalate(1.0 - window.rank(c, rank.tie_break(r["prompt"], 0)), threshold)
            for c, r in zip(conf, rows, strict=True)
        ]
        assert np.mean(up) == pytest.approx(share, abs=0.03), share
