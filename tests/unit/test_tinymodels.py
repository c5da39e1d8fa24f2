"""Fast checks of the tiny models' task, tokenizer and chat template (no training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tierserve.dev import tinymodels as tm

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tm.build_tokenizer()


def test_heldout_pairs_never_trained_on() -> None:
    params = tm.Params()
    train, heldout = tm.split_pairs(params)
    assert len(heldout) == params.heldout
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(tm.all_pairs(params))
    assert len(train) == len(set(train))
    # Fixed: the same seed always holds out the same pairs.
    assert tm.split_pairs(params)[1] == heldout
    assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in heldout)


def test_task_format() -> None:
    assert tm.prompt(37, 48) == "37+48="
    assert tm.answer(37, 48) == "85"
    assert tm.answer(99, 99) == "198"


def test_tokenizer_round_trips_prompts_with_single_digit_tokens(tokenizer: Any) -> None:
    train, heldout = tm.split_pairs()
    for a, b in train[:500] + heldout:
        text = tm.prompt(a, b) + tm.answer(a, b)
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) == 1 + len(text)  # bos, then one token per character
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in "0123456789"]
    assert len(set(digit_ids)) == 10
    assert tokenizer.unk_token_id not in digit_ids


def test_special_tokens_are_distinct(tokenizer: Any) -> None:
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids
    # Arbitrary text still tokenizes (unknown characters map to <unk>, not an error).
    assert tokenizer.decode(tokenizer("hi there\n")["input_ids"], skip_special_tokens=True) == (
        "hi there\n"
    )


def test_chat_template_renders_the_completion_prompt(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "37+48="}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s>37+48="
    # Rendered text tokenized without special tokens equals the completion prompt's tokens.
    chat_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat_ids == tokenizer("37+48=")["input_ids"]
    convo = [*messages, {"role": "assistant", "content": "85"}, {"role": "user", "content": "1+2="}]
    assert tokenizer.apply_chat_template(convo, tokenize=False) == "<s>37+48=85</s>1+2="


def test_tokenizer_loads_with_autotokenizer(tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("37+48=")["input_ids"] == tokenizer("37+48=")["input_ids"]
    assert loaded.eos_token == tm.EOS and loaded.pad_token == tm.PAD and loaded.bos_token == tm.BOS
    assert loaded.chat_template == tm.CHAT_TEMPLATE


def test_model_key_depends_on_parameters() -> None:
    base = tm.Params()
    assert tm.model_key(base) == tm.model_key(tm.Params())
    assert tm.model_key(base) != tm.model_key(dataclasses.replace(base, seed=base.seed + 1))
    bigger = dataclasses.replace(base, large=dataclasses.replace(base.large, steps=1))
    assert tm.model_key(base) != tm.model_key(bigger)


def test_params_survive_the_child_process_round_trip() -> None:
    params = tm.Params()
    assert tm._params_from_json(json.dumps(dataclasses.asdict(params))) == params


def test_large_model_is_configured_stronger_than_small() -> None:
    params = tm.Params()
    assert params.large.layers >= params.small.layers
    assert params.large.steps > params.small.steps
    # Shapes vLLM's CPU attention backend accepts: head_dim 64.
    for spec in (params.small, params.large):
        assert spec.hidden // spec.heads == 64
