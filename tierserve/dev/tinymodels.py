"""Two tiny Llama models with a real quality gap, trained here on CPU, for tests and the demo.

The task is two-digit addition: the prompt "37+48=" is answered "85". Both models have the same
small Llama shape; "small" is trained briefly (weak: about half the held-out sums right), "large"
five times longer (strong: almost all). Both share one character-level
tokenizer built locally with `tokenizers` (every digit is one token, so the task is learnable),
with bos/eos/pad tokens and a chat template, so they load with AutoTokenizer and through vLLM's
normal loading path and answer on /v1/completions and /v1/chat/completions alike.

A fixed set of (a, b) pairs is held out of training and written to heldout.jsonl next to the
models; meta.json records each model's exact-match accuracy on it (transformers greedy generation).

Output: cache_dir()/models/<key>/{small,large,heldout.jsonl,meta.json}, where key is a short hash
of this file's source and the parameters. A complete directory is reused as is (warm run: instant).
Nothing is ever downloaded.

    python -m tierserve.dev.tinymodels     # prints the directories and accuracies
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierserve.dev.proc import ComponentError, cache_dir, file_lock, logs_dir, start, wait_until

COMPONENT = "tiny models"

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
# Every printable ASCII character and newline is one token; digits are single tokens.
CHARACTERS = "".join(chr(c) for c in range(32, 127)) + "\n"

# The user message is the sum prompt; the assistant's answer follows it directly, so a chat
# request renders to exactly the completion prompt "<s>37+48=" and the answer is the same.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

MARKER = ".complete"
PROGRESS = "PROGRESS "  # prefix of the progress lines the training child prints
MODEL_NAMES = ("small", "large")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training budget of one model. Shapes fit vLLM's CPU attention backend."""

    layers: int
    steps: int
    lr: float
    hidden: int = 128
    intermediate: int = 512
    heads: int = 2  # head_dim 64: the CPU attention backend refuses head_dim 16
    kv_heads: int = 1
    batch: int = 128
    warmup: int = 50


@dataclass(frozen=True)
class Params:
    seed: int = 1234
    low: int = 10  # operands are two-digit numbers low..high
    high: int = 99
    heldout: int = 500  # (a, b) pairs never trained on
    max_position_embeddings: int = 256
    small: ModelSpec = ModelSpec(layers=2, steps=400, lr=3e-3)
    large: ModelSpec = ModelSpec(layers=2, steps=2000, lr=3e-3)


@dataclass(frozen=True)
class TinyModels:
    root: Path
    small: Path
    large: Path
    heldout: Path
    meta: dict[str, Any]

    def path(self, name: str) -> Path:
        return {"small": self.small, "large": self.large}[name]


# --- the task -----------------------------------------------------------------------------------


def prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def answer(a: int, b: int) -> str:
    return str(a + b)


def all_pairs(params: Params = Params()) -> list[tuple[int, int]]:
    r = range(params.low, params.high + 1)
    return [(a, b) for a in r for b in r]


def split_pairs(
    params: Params = Params(),
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs): a fixed, seeded split; the two never overlap."""
    pairs = all_pairs(params)
    heldout = sorted(random.Random(params.seed).sample(pairs, params.heldout))
    held = set(heldout)
    return [p for p in pairs if p not in held], heldout


# --- tokenizer ----------------------------------------------------------------------------------


def build_tokenizer() -> Any:
    """A character-level tokenizer (tokenizers WordLevel) as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=Params().max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


# --- training -----------------------------------------------------------------------------------


def _encode(tokenizer: Any, pairs: list[tuple[int, int]]) -> tuple[Any, Any]:
    """Right-padded input ids and labels (loss only on the answer and eos)."""
    import torch

    rows, labels = [], []
    for a, b in pairs:
        p = tokenizer(prompt(a, b))["input_ids"]  # with bos
        ans = tokenizer(answer(a, b), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        rows.append(p + ans)
        labels.append([-100] * len(p) + ans)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, la) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(la)] = torch.tensor(la)
    return ids, lab


def _train(
    spec: ModelSpec,
    params: Params,
    tokenizer: Any,
    train_pairs: list[tuple[int, int]],
    seed: int,
    log: Callable[[str], None],
) -> Any:
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=params.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).float()
    ids, labels = _encode(tokenizer, train_pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(spec.steps):
        idx = torch.randint(0, ids.shape[0], (spec.batch,), generator=gen)
        loss = model(input_ids=ids[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == spec.steps - 1:
            log(f"step {step}/{spec.steps} loss {loss.item():.4f}")
    model.eval()
    return model


def evaluate(model: Any, tokenizer: Any, pairs: list[tuple[int, int]], batch: int = 250) -> float:
    """Exact-match accuracy of greedy transformers generation on `pairs`."""
    import torch

    correct = 0
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            # Every prompt has the same length, so there is no padding.
            enc = tokenizer([prompt(a, b) for a, b in chunk], return_tensors="pt")
            out = model.generate(
                **enc,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            correct += sum(
                t.strip() == answer(a, b) for t, (a, b) in zip(texts, chunk, strict=True)
            )
    return correct / len(pairs)


# --- cache --------------------------------------------------------------------------------------


def model_key(params: Params = Params()) -> str:
    source = Path(__file__).read_bytes()
    blob = source + json.dumps(dataclasses.asdict(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _load(root: Path) -> TinyModels:
    meta = json.loads((root / "meta.json").read_text())
    return TinyModels(
        root=root,
        small=root / "small",
        large=root / "large",
        heldout=root / "heldout.jsonl",
        meta=meta,
    )


def read_heldout(path: Path) -> list[dict[str, str]]:
    """The held-out examples: [{"prompt": "37+48=", "answer": "85"}, ...]."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ensure_models(
    params: Params = Params(),
    progress: Callable[[str], None] | None = None,
    timeout: float = 1800.0,
) -> TinyModels:
    """The two tiny models, trained now if this exact generator has not made them before.

    Training runs in a child process (`python -m tierserve.dev.tinymodels --generate`) so the
    caller's torch thread settings and memory are untouched, with OMP_WAIT_POLICY=PASSIVE: with
    2 threads on 2 busy cores, spinning OpenMP threads made training up to 4x slower here.
    """
    models_root = cache_dir() / "models"
    key = model_key(params)
    root = models_root / key
    if (root / MARKER).exists():
        return _load(root)
    log_path = logs_dir() / f"tinymodels-{key}.log"
    say = progress or (lambda _msg: None)
    lock = models_root / f"{key}.lock"
    # Another process training the same models holds the lock for at most `timeout` too.
    with file_lock(lock, timeout=timeout, component=COMPONENT, what=f"able to lock {lock}"):
        if (root / MARKER).exists():  # made by another process while we waited
            return _load(root)
        _generate_in_child(params, root, log_path, say, timeout)
    return _load(root)


def _generate_in_child(
    params: Params, root: Path, log_path: Path, say: Callable[[str], None], timeout: float
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    for stale in root.parent.glob(f"{root.name}.tmp-*"):  # left by a killed run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    argv = [
        sys.executable,
        "-m",
        "tierserve.dev.tinymodels",
        "--generate",
        str(root),
        "--params",
        json.dumps(dataclasses.asdict(params)),
    ]
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    child = start(COMPONENT, argv, log=log_path, env=env)
    lines: list[str] = []

    def exited() -> bool:
        """Relays the child's progress lines; true once it has exited."""
        code = child.popen.poll()  # before reading: the log is complete once it has exited
        seen = len(lines)
        lines[:] = log_path.read_text(errors="replace").splitlines()
        for line in lines[seen:]:
            if line.startswith(PROGRESS):
                say(line[len(PROGRESS) :])
        return code is not None

    try:
        wait_until(
            exited,
            timeout=timeout,
            component=COMPONENT,
            what="trained",
            log=log_path,
            interval=0.5,
            retry=(),
        )
    finally:
        child.stop()
    code = child.popen.returncode
    if code != 0 or not (root / MARKER).exists():
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        raise ComponentError(
            COMPONENT, f"generating {root} failed (exit {code}): {last.strip()[:300]}", log_path
        )


def _params_from_json(text: str) -> Params:
    raw = json.loads(text)
    for name in MODEL_NAMES:
        raw[name] = ModelSpec(**raw[name])
    return Params(**raw)


def _generate(params: Params, root: Path) -> None:
    """Trains both models into `root` (atomically: a temp dir renamed at the end). Runs in the
    child process; stdout is the log, progress lines start with PROGRESS."""
    import torch

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def say(msg: str) -> None:
        print(f"{PROGRESS}{msg}", flush=True)

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # denormals made some steps many times slower
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train_pairs, heldout_pairs = split_pairs(params)
    tokenizer = build_tokenizer()
    with open(tmp / "heldout.jsonl", "w") as f:
        for a, b in heldout_pairs:
            f.write(json.dumps({"prompt": prompt(a, b), "answer": answer(a, b)}) + "\n")
    meta: dict[str, Any] = {
        "key": root.name,
        "task": "two-digit addition: '37+48=' -> '85'",
        "params": dataclasses.asdict(params),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        "torch": torch.__version__,
        "models": {},
    }
    for i, name in enumerate(MODEL_NAMES):
        spec: ModelSpec = getattr(params, name)
        say(f"tiny models: training {name!r} ({spec.layers} layer(s), {spec.steps} steps)")
        log(f"training {name}: {spec}")
        t0 = time.monotonic()
        model = _train(spec, params, tokenizer, train_pairs, params.seed + i, log)
        train_s = time.monotonic() - t0
        acc = evaluate(model, tokenizer, heldout_pairs)
        log(f"{name}: trained in {train_s:.1f}s, held-out accuracy {acc:.3f}")
        say(f"tiny models: {name!r} trained in {train_s:.0f}s, held-out accuracy {acc:.1%}")
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
        meta["models"][name] = {
            "layers": spec.layers,
            "steps": spec.steps,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(train_s, 1),
            "heldout_accuracy": acc,
        }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / MARKER).write_text("")
    if (root / MARKER).exists():  # finished elsewhere meanwhile: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def _exit_with_parent() -> None:
    """The training child stops when the process that started it is gone."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tierserve.dev.tinymodels")
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:  # the child process of ensure_models()
        _exit_with_parent()
        _generate(_params_from_json(args.params) if args.params else Params(), Path(args.generate))
        return 0
    try:
        models = ensure_models(progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ComponentError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"root     {models.root}")
    for name in MODEL_NAMES:
        acc = models.meta["models"][name]["heldout_accuracy"]
        print(f"{name:8} {models.path(name)}  held-out accuracy {acc:.1%}")
    print(f"heldout  {models.heldout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
