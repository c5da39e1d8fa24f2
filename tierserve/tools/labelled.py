"""Labelled prompts for `tierserve calibrate`: which prompts the weak and strong tiers got right.

RouteLLM's evaluation folder (MMLU + GSM8K, decontaminated as RouteLLM does) or a generic JSONL/CSV
with columns prompt, weak_correct, strong_correct. A seeded hash of each prompt splits
train/held-out, so the split does not depend on row order and duplicate prompts never straddle it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG = "gpt-4-1106-preview"
WEAK_COLUMNS = ("weak_correct", "weak", ROUTELLM_WEAK)
STRONG_COLUMNS = ("strong_correct", "strong", ROUTELLM_STRONG)
BENCHMARKS = ("mmlu", "gsm8k")
# ../shared/data/routellm next to the checkout (/work/main -> /work/shared/data/routellm).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routellm"
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


class DataError(ValueError):
    """Labelled data that is missing or cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Example:
    prompt: str
    weak: bool
    strong: bool
    source: str


def parse_label(value: Any, where: str) -> bool:
    """0/1 or true/false (yes/no, t/f, y/n also); anything else, NaN and empty cells included,
    is refused with `where` (the row and column) in the message."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise DataError(f"{where}: NaN (expected 0/1 or true/false)")
        if value in (0, 1):
            return bool(value)
        raise DataError(f"{where}: expected 0/1 or true/false, got {value!r}")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: empty (expected 0/1 or true/false)")
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(f"{where}: expected 0/1 or true/false, got {value!r}")


def _pick(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise DataError(f"{where}: no column {' / '.join(names)}; columns are {sorted(row)}")


def _example(row: dict[str, Any], where: str, source: str) -> Example:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty 'prompt'")
    weak = parse_label(_pick(row, WEAK_COLUMNS, where), where)
    strong = parse_label(_pick(row, STRONG_COLUMNS, where), where)
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
    """A RouteLLM evals folder or one labelled file, whichever `path` is."""
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


def labels(examples: Sequence[Example]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(weak correct, strong correct) as boolean arrays, in the order of `examples`."""
    return (
        np.array([e.weak for e in examples], dtype=bool),
        np.array([e.strong for e in examples], dtype=bool),
    )
