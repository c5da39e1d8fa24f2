"""`tierserve calibrate`: trains a scorer that routes better than chance at the asked-for share."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tierserve.serving import scorers
from tierserve.tools import calibrate, labelled

pytestmark = pytest.mark.unit

needs_routellm = pytest.mark.skipif(
    not calibrate.DEFAULT_DATA.exists(), reason="RouteLLM data not present"
)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = calibrate.main(list(argv))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def slice_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One calibration on 8,000 of RouteLLM's prompts (3,200 held out), shared by the tests.

    Sizes: the held-out share escalated has a sampling sd of ~0.7 points at 3,200 prompts, the
    threshold another ~0.6 from 4,800 training prompts, and cross-fitting runs up to ~1 point
    high at this size (measured); 8,000 prompts keep 2 points a fair bar in ~10 s of CPU.
    """
    out = tmp_path_factory.mktemp("calibrate") / "scorer.json"
    code, stdout, stderr = run(
        "--limit", "8000", "--held-out", "0.4", "--target-escalation", "0.2",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    return json.loads(stdout), out


@needs_routellm
def test_trained_scorer_beats_random_and_hits_the_target_share(
    slice_report: tuple[dict[str, Any], Path],
) -> None:
    report, _ = slice_report
    by_name = {s["name"]: s for s in report["scorers"]}
    random = by_name["random"]
    assert random["apgr"] == pytest.approx(0.5, abs=0.02)
    trained = by_name["trained"]["apgr"]
    assert trained > 0.55 and trained > random["apgr"] + 3 * random["apgr_sd"]
    # Recovering 80% of the gap takes fewer strong calls than the ~80% random routing needs.
    assert by_name["trained"]["share_for_gap"]["0.8"] < random["share_for_gap"]["0.8"] - 0.05
    assert report["held_out_escalation"] == pytest.approx(0.2, abs=0.02)
    assert report["weak_accuracy"] < report["held_out_accuracy"] < report["strong_accuracy"]


@needs_routellm
def test_scores_are_ranks_so_threshold_and_hybrid_margin_mean_traffic_shares(
    slice_report: tuple[dict[str, Any], Path],
) -> None:
    """Threshold t escalates ~1 - t of traffic; hybrid margin 0.15 cascades ~30% of it."""
    report, _ = slice_report
    assert report["threshold"] == pytest.approx(0.8, abs=0.01)  # for target escalation 0.2
    for name in ("trained", "heuristic"):
        spread = report["spread"][name]
        q = spread["quantiles"]
        assert spread["margin"] == 0.15  # the API default
        assert spread["threshold"] == pytest.approx(0.8, abs=0.03), name
        assert q["0.05"] < 0.1 and q["0.5"] == pytest.approx(0.5, abs=0.05) and q["0.95"] > 0.9
        assert spread["hybrid_cascade_share"] == pytest.approx(0.3, abs=0.04), name
        assert spread["hybrid_top_share"] == pytest.approx(0.05, abs=0.03), name
    # What the model's probabilities would have done: nearly everything in the hybrid band.
    squeezed = report["spread"]["trained_probability"]
    assert squeezed["hybrid_cascade_share"] > 0.9
    assert squeezed["quantiles"]["0.95"] - squeezed["quantiles"]["0.05"] < 0.4
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        calibrate._print(report)
    assert re.search(
        r"trained scores \(held-out\) p5 0\.0\d\d.*\n.*margin 0\.15: \d\d\.\d% cascade",
        out.getvalue(),
    )


@needs_routellm
def test_written_scorer_loads_for_the_router_and_matches_training(
    slice_report: tuple[dict[str, Any], Path],
) -> None:
    report, path = slice_report
    scorer = scorers.load_scorer({"type": "linear", "path": str(path)})
    assert isinstance(scorer, scorers.LinearScorer)
    assert scorer.meta["threshold"] == report["threshold"]
    assert len(scorer.calibration.x) > 150  # ~201 knots, fewer only where logits tie
    assert report["max_abs_diff_serving_vs_sklearn"] < 1e-6
    assert path.stat().st_size == report["scorer_bytes"] < 2_000_000
    assert 0 <= scorer.score("What is 17 * 23? Show your steps.") <= 1


@needs_routellm
def test_routellm_data_is_decontaminated_as_routellm_does() -> None:
    mmlu = labelled.load_routellm(labelled.DEFAULT_DATA, ["mmlu"])
    gsm8k = labelled.load_routellm(labelled.DEFAULT_DATA, ["gsm8k"])
    assert (len(mmlu), len(gsm8k)) == (14_042 - 5, 1_319 - 12)
    weak = sum(e.weak for e in mmlu) / len(mmlu)
    strong = sum(e.strong for e in mmlu) / len(mmlu)
    assert (round(weak, 3), round(strong, 3)) == (0.681, 0.806)  # the data README's figures


def synthetic(n: int = 600) -> list[dict[str, Any]]:
    """Prompts about 'zorps' are the ones only the strong tier gets right (no heuristic knows)."""
    rows = []
    for i in range(n):
        hard = i % 4 == 0
        topic = "how many zorps are in" if hard else "how many florbs are in"
        rows.append(
            {"prompt": f"Question {i}: {topic} item {i % 37}.", "weak_correct": not hard,
             "strong_correct": True}
        )  # fmt: skip
    return rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_generic_labelled_file_trains_a_scorer_that_finds_the_hard_prompts(
    tmp_path: Path, suffix: str
) -> None:
    data = tmp_path / f"prompts{suffix}"
    rows = synthetic()
    if suffix == ".jsonl":
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["prompt,weak_correct,strong_correct"]
        lines += [f'"{r["prompt"]}",{r["weak_correct"]},{r["strong_correct"]}' for r in rows]
        data.write_text("\n".join(lines) + "\n")
    code, stdout, stderr = run("--data", str(data), "--target-escalation", "0.25", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["scorers"][0]["apgr"] > 0.8
    assert report["scorers"][1]["apgr"] < 0.65  # the heuristic cannot tell zorps from florbs
    # Escalating a quarter catches nearly all the zorps: close to all-strong accuracy (1.0).
    assert report["weak_accuracy"] < 0.85 and report["held_out_accuracy"] > 0.95


def test_split_is_deterministic_and_ignores_row_order() -> None:
    rows = [labelled.Example(f"prompt {i}", i % 2 == 0, True, "x") for i in range(2000)]
    _, test = labelled.split(rows, 0.2, seed=7)
    _, test2 = labelled.split(rows[::-1], 0.2, seed=7)
    assert {e.prompt for e in test} == {e.prompt for e in test2}
    assert len(test) == pytest.approx(400, abs=60)
    _, other = labelled.split(rows, 0.2, seed=8)
    assert {e.prompt for e in other} != {e.prompt for e in test}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "prompt,weak_correct,strong_correct\nhi,maybe,true\n",
            r"prompts\.csv:2: expected 0/1 or true/false",
        ),
        ("prompt,weak\nhi,true\n", r"prompts\.csv:2: no column strong_correct"),
        ("prompt,weak_correct,strong_correct\n", r"no labelled prompts"),
        (
            'prompt,weak_correct,strong_correct\n"hi,true,true\n',
            r"no column|expected 0/1 or true/false",
        ),
        ("\x00\xff garbage", r"prompts\.csv"),
    ],
)
def test_garbled_data_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "prompts.csv"
    data.write_text(content, encoding="latin-1")
    code, _, stderr = run("--data", str(data))
    assert code == 2
    assert stderr.startswith("tierserve calibrate: ")
    assert re.search(message, stderr), stderr


def test_garbled_jsonl_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "a", "weak_correct": true, "strong_correct": true}\n{oops\n')
    code, _, stderr = run("--data", str(data))
    assert code == 2 and "prompts.jsonl:2: not JSON" in stderr


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, stderr = run("--data", str(tmp_path / "nowhere.jsonl"))
    assert code == 2 and "nowhere.jsonl: no such file or directory" in stderr
    code, _, stderr = run("--data", str(tmp_path))  # a folder, but not RouteLLM's
    assert code == 2 and "no mmlu response CSVs" in stderr
    monkeypatch.setattr(calibrate, "DEFAULT_DATA", tmp_path / "absent")
    code, _, stderr = run()
    assert code == 2 and "pass --data" in stderr


def test_data_without_a_gap_to_recover_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": f"q {i}", "weak_correct": True, "strong_correct": i % 2 == 0} for i in range(400)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, stderr = run("--data", str(data))
    assert code == 2 and "nothing to route for" in stderr
