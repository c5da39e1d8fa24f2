"""Request traces the simulator replays: generated (load swing, difficulty shift), RouteLLM's MMLU
with a subject shift, or a CSV of real traffic. A trace carries what the queueing model needs
(arrivals, token counts) and what the answers were worth (which tier was right)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

TIED_SHARE = 0.6  # the `ties` trace: share of answers with confidence exactly 1.0
ROUTELLM = Path(os.environ.get("TIERSERVE_ROUTELLM_DATA", "/work/shared/data/routellm"))


def _sigmoid(x: Floats) -> Floats:
    out: Floats = 1.0 / (1.0 + np.exp(-x))
    return out


@dataclass
class Trace:
    """One row per request, sorted by arrival; `events` mark the step changes in it."""

    name: str
    description: str
    arrival: Floats  # seconds
    score: Floats  # escalation score: 1 - the small tier's confidence
    small_correct: Bools
    large_correct: Bools
    agree: Bools  # the top tier's answer matches the small tier's (what shadow evaluation sees)
    prompt_tokens: Floats
    small_tokens: Floats
    large_tokens: Floats
    events: list[tuple[float, str, bool]] = field(default_factory=list)  # (s, label, is a step)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def duration(self) -> float:
        return float(self.arrival[-1]) if len(self) else 0.0


def poisson_arrivals(
    rate: Callable[[Floats], Floats], seconds: int, rng: np.random.Generator
) -> Floats:
    """A non-homogeneous Poisson process, its rate constant within each second."""
    starts = np.arange(seconds, dtype=np.float64)
    counts = rng.poisson(rate(starts + 0.5))
    times = np.repeat(starts, counts) + rng.random(int(counts.sum()))
    times.sort()
    return times


def _step_profile(points: Sequence[tuple[float, float]]) -> Callable[[Floats], Floats]:
    """Piecewise-linear rate through (minute, req/s) points: a step is two points a second apart."""
    xs = np.array([p[0] * 60.0 for p in points])
    ys = np.array([p[1] for p in points])
    return lambda t: np.interp(t, xs, ys)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> Floats:
    out: Floats = np.clip(rng.lognormal(math.log(median), sigma, n), 8.0, 8192.0).round()
    return out


def synthetic(kind: str, seed: int = 0, minutes: int = 120, scale: float = 1.0) -> Trace:
    """Generated traces, seeded.

    A request has a latent difficulty d ~ N(shift, 1). The small tier is right with probability
    sigmoid(1.2 - 1.5d) (70% when shift = 0), the top tier with sigmoid(2.2 - 1.2d) (85%); both
    wrong agree one time in three. The escalation score is
    sigmoid(-1.5 + 0.6(d - overconfidence x shift) + 0.8[small wrong] + N(0, 1.1)): it knows a
    little about the difficulty and its own mistakes (AUROC ~0.80 for "small is wrong"), and on
    shifted traffic only half of the extra difficulty shows (models are overconfident off their
    training distribution).

    - load-swing: 20 req/s, a 10x step to 200 req/s at 1/3, a ramp back down from 2/3 to 5/6.
    - difficulty-shift: 100 req/s; harder traffic (shift 0.7) from 1/3 to 2/3 of the trace.
    - ties: 100 req/s; the 60% most confident answers have confidence exactly 1.0 (every
      token's logprob 0.0, as short answers of real models do): escalation score 0.0, so the
      absolute rule cannot escalate more than 40%, whatever the threshold.

    `scale` multiplies the load (smaller traces for tests).
    """
    rng = np.random.default_rng(seed)
    m = float(minutes)
    a, b = m / 3, 2 * m / 3
    events: list[tuple[float, str, bool]]
    if kind in ("load-swing", "overload"):
        rate = _step_profile(
            [(0, 20), (a, 20), (a + 1 / 60, 200), (b, 200), (5 * m / 6, 20), (m, 20)]
        )
        events = [(a * 60, "load 20 -> 200 req/s", True), (b * 60, "ramp down to 20 req/s", False)]
        description = "10x load swing: 20 req/s, step to 200 req/s, ramp back down"
    elif kind == "ties":
        rate = _step_profile([(0, 100), (m, 100)])
        events = []
        description = "60% of answers certain (confidence exactly 1.0), 100 req/s"
    elif kind == "difficulty-shift":
        rate = _step_profile([(0, 100), (m, 100)])
        events = [(a * 60, "harder traffic", True), (b * 60, "traffic back to normal", True)]
        description = (
            "difficulty shift: harder traffic (small tier 70% -> 53% right) in the middle third"
        )
    else:
        raise ValueError(f"unknown synthetic trace {kind!r}")
    arrival = poisson_arrivals(lambda t: scale * rate(t), int(m * 60), rng)
    n = len(arrival)
    shift = np.where((arrival >= a * 60) & (arrival < b * 60), 0.7, 0.0)
    if kind != "difficulty-shift":
        shift[:] = 0.0
    d = rng.normal(shift, 1.0)
    small = rng.random(n) < _sigmoid(1.2 - 1.5 * d)
    large = rng.random(n) < _sigmoid(2.2 - 1.2 * d)
    agree = (small & large) | (~small & ~large & (rng.random(n) < 1 / 3))
    perceived = d - 0.5 * shift
    score = _sigmoid(-1.5 + 0.6 * perceived + 0.8 * (~small) + rng.normal(0.0, 1.1, n))
    if kind == "ties":
        score = np.where(score <= np.quantile(score, TIED_SHARE), 0.0, score)
    return Trace(
        name=kind,
        description=description,
        arrival=arrival,
        score=score,
        small_correct=small,
        large_correct=large,
        agree=agree,
        prompt_tokens=_lognormal(rng, 400, 0.7, n),
        small_tokens=_lognormal(rng, 150, 0.6, n),
        large_tokens=_lognormal(rng, 200, 0.6, n),
        events=events,
    )


def _read_mmlu(data: Path) -> tuple[list[str], list[str], Bools, Bools]:
    subjects, prompts, weak, strong = [], [], [], []
    for path in sorted((data / "mmlu" / "responses").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                subjects.append(subject)
                prompts.append(row[0])
                weak.append(row[1] == "True")
                strong.append(row[2] == "True")
    return subjects, prompts, np.array(weak), np.array(strong)


def mmlu(data: Path = ROUTELLM, seed: int = 0, minutes: int = 120, rate: float = 100.0) -> Trace:
    """RouteLLM's MMLU (Mixtral-8x7B weak, GPT-4 strong), replayed with a subject-mix shift.

    Arrivals are Poisson at `rate` req/s; each draws a prompt uniformly from all 14,042, except
    in the middle third, which draws only from the hardest third of subjects (by weak accuracy).

    The data has no confidences, so each prompt gets a fixed, seeded escalation score:
    sigmoid(-1.6 + 1.0[weak wrong] + 3(subject's weak error rate - mean) + N(0, 1.2)). The
    noise keeps it a modest signal of weak-model errors (AUROC 0.78 over the 14,042 prompts, in
    the range reported for token-probability confidence on MMLU-style questions), and the
    subject term (AUROC 0.72 alone) makes a harder mix raise scores, as real confidences do.
    Prompt tokens are characters / 4; output lengths are drawn (MMLU answers are one letter,
    chat answers are not). Both wrong agree one
    time in three (4 options). The contaminated-prompt list is irrelevant here (nothing is
    trained) and is not applied.
    """
    subjects, prompts, weak, strong = _read_mmlu(data)
    rng = np.random.default_rng(seed)
    n_prompts = len(prompts)
    names = sorted(set(subjects))
    subject_idx = np.array([names.index(s) for s in subjects])
    error = np.array([1.0 - weak[subject_idx == i].mean() for i in range(len(names))])
    hard = np.argsort(-error)[: len(names) // 3]
    hard_rows = np.flatnonzero(np.isin(subject_idx, hard))
    per_prompt_error = error[subject_idx]
    score = _sigmoid(
        -1.6
        + 1.0 * (~weak)
        + 3.0 * (per_prompt_error - per_prompt_error.mean())
        + rng.normal(0.0, 1.2, n_prompts)
    )
    agree = (weak & strong) | (~weak & ~strong & (rng.random(n_prompts) < 1 / 3))
    prompt_tokens = np.array([max(8.0, round(len(p) / 4)) for p in prompts])
    small_tokens = _lognormal(rng, 150, 0.6, n_prompts)
    large_tokens = _lognormal(rng, 200, 0.6, n_prompts)

    m = float(minutes)
    a, b = m * 20, m * 40  # seconds: the middle third
    arrival = poisson_arrivals(lambda t: np.full_like(t, rate), int(m * 60), rng)
    in_shift = (arrival >= a) & (arrival < b)
    rows = rng.integers(0, n_prompts, len(arrival))
    rows[in_shift] = hard_rows[rng.integers(0, len(hard_rows), int(in_shift.sum()))]
    hardest = ", ".join(names[i].replace("_", " ") for i in np.argsort(-error)[:3])
    return Trace(
        name="mmlu",
        description=(
            f"RouteLLM MMLU, {rate:g} req/s; middle third only the hardest {len(hard)} subjects "
            f"({hardest}, ...)"
        ),
        arrival=arrival,
        score=score[rows],
        small_correct=weak[rows],
        large_correct=strong[rows],
        agree=agree[rows],
        prompt_tokens=prompt_tokens[rows],
        small_tokens=small_tokens[rows],
        large_tokens=large_tokens[rows],
        events=[(a, "hardest subjects only", True), (b, "all subjects again", True)],
    )


def ranked(trace: Trace, window: int = 1000) -> Trace:
    """`trace` with the router's rank score (`routing.cascade.score: rank`) instead of 1 -
    confidence: each request ranked among the previous `window` confidences, ties split by a
    stable hash, as every router replica does. The window starts from the trace's first
    `window` requests, as a reference file from `tierserve calibrate cascade` on the same
    kind of traffic would; the ranks then depend only on the order of arrivals, so they can be
    computed before the replay."""
    from tierserve.serving.rank import RankWindow, escalation_score, tie_break

    confidence = 1.0 - trace.score
    reference = RankWindow(window, confidence[:window].tolist())
    score = np.array(
        [
            escalation_score(reference, float(c), tie_break(f"request {i}", 0), seeded=True)
            for i, c in enumerate(confidence)
        ]
    )
    out = replace(trace, score=score)
    out.name = f"{trace.name}-rank"
    out.description = f"{trace.description}; rank score"
    return out


def _bools(values: list[str]) -> Bools:
    return np.array([v.strip().lower() in ("1", "true", "yes") for v in values])


def read_trace(path: Path) -> Trace:
    """A CSV trace: arrival (s), score or confidence, small_correct, large_correct,
    prompt_tokens, small_tokens, large_tokens, and optionally agree (default: both correct)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    col = {k: [r[k] for r in rows] for k in rows[0]}
    if "score" in col:
        score = np.array(col["score"], dtype=float)
    elif "confidence" in col:
        score = 1.0 - np.array(col["confidence"], dtype=float)
    else:
        raise ValueError(f"{path}: needs a score or a confidence column")
    arrival = np.array(col["arrival"], dtype=float)
    order = np.argsort(arrival, kind="stable")
    small, large = _bools(col["small_correct"]), _bools(col["large_correct"])
    agree = _bools(col["agree"]) if "agree" in col else small & large
    return Trace(
        name=path.stem,
        description=f"replayed from {path}",
        arrival=arrival[order] - arrival[order][0],
        score=score[order],
        small_correct=small[order],
        large_correct=large[order],
        agree=agree[order],
        prompt_tokens=np.array(col["prompt_tokens"], dtype=float)[order],
        small_tokens=np.array(col["small_tokens"], dtype=float)[order],
        large_tokens=np.array(col["large_tokens"], dtype=float)[order],
    )
