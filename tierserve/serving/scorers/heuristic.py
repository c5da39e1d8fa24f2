"""`HeuristicScorer`: the untrained upfront scorer, a fixed logistic of prompt-difficulty signals.

Its rank map (logit -> share of RouteLLM's MMLU and GSM8K prompts below) is package data,
`data/heuristic_quantiles.json`, read once on first use; tests/unit/test_scorers.py checks it
against the RouteLLM data and says how to regenerate it when the weights change.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from importlib import resources

from tierserve.serving.scorers.quantile import QuantileMap

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

BIAS = -2.5
# signal -> (weight, scale). Prompt length dominates: it is the strongest prompt-only signal on
# RouteLLM's MMLU/GSM8K labels (APGR 0.58 alone); long words get little weight because on MMLU
# they mark jargon-heavy recall questions the weak model knows (APGR 0.47 alone).
SIGNALS: Mapping[str, tuple[float, float]] = {
    "words": (2.5, 150.0),
    "digits": (0.4, 8.0),
    "math": (0.4, 4.0),
    "code": (1.5, 3.0),
    "steps": (0.8, 4.0),
    "questions": (0.2, 2.0),
    "rare_words": (0.2, 10.0),
}
RANKS_PACKAGE, RANKS_FILE = "tierserve.serving.scorers", "data/heuristic_quantiles.json"


@functools.cache
def built_in_ranks() -> QuantileMap:
    """The rank map of `BIAS` and `SIGNALS` on RouteLLM's prompts, from the package data."""
    text = resources.files(RANKS_PACKAGE).joinpath(RANKS_FILE).read_text(encoding="utf-8")
    return QuantileMap.from_dict(json.loads(text))


class HeuristicScorer:
    """A hand-set logistic of prompt-difficulty signals: no training, no dependencies.

    Each signal is a count c turned into f = 1 - exp(-c / scale) in [0, 1): the first few
    occurrences matter most and no single signal can dominate. The raw score (logit) is
    BIAS + sum(weight * f) with weights >= 0, so it is bounded, and it never decreases when text
    is appended after a whitespace (every count only grows). Signals: words (length), digits,
    math symbols and words, code symbols and words, multi-step markers, question marks, and long
    (>= 10 letters, hence rare by Zipf's law) words. The weights are hand-set, checked against
    RouteLLM's training split but not fitted; a trained `LinearScorer` ranks better on data like
    its training data.

    The score is the logit's rank among RouteLLM's 15,344 MMLU and GSM8K prompts
    (`calibration`): sigmoid(logit) alone crowds half of those prompts into 0.11-0.22 and puts
    only 14% above 0.5. On other traffic `tierserve calibrate` (or
    `quality.threshold_for_share` on logged scores) turns a target escalation share into a
    threshold.
    """

    def __init__(self) -> None:
        self.calibration = built_in_ranks()

    @staticmethod
    def counts(text: str) -> dict[str, int]:
        """The raw counts behind the score, one per signal."""
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

    def logit(self, text: str) -> float:
        """The raw score: BIAS + sum(weight * (1 - exp(-count / scale)))."""
        z = BIAS
        for name, count in self.counts(text).items():
            weight, scale = SIGNALS[name]
            z += weight * (1.0 - math.exp(-count / scale))
        return z

    def score(self, text: str) -> float:
        return self.calibration(self.logit(text))

    @property
    def bounds(self) -> tuple[float, float]:
        """The lowest and highest score any text can get."""
        top = BIAS + sum(w for w, _ in SIGNALS.values())
        return self.calibration(BIAS), self.calibration(top)
