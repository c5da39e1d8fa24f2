# syntax=docker/dockerfile:1
# The Ray image the operator's RayServices run (spec.ray.image): Ray with tierserve's Serve
# application (tierserve.serving.app:build_app) and the CUDA build of vLLM, for GPU nodes.
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/tierserve/serving:0.1.0 .
# RAY_VERSION is tierserve.names.RAY_VERSION: the ray[serve] pin in pyproject.toml and the
# default of a ModelTier's spec.ray.rayVersion; tests/unit/test_images.py checks they agree.

ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --chown=1000:100 pyproject.toml README.md /home/ray/tierserve/
COPY --chown=1000:100 tierserve /home/ray/tierserve/tierserve
# The [gpu] extra is the CUDA build of vLLM; Ray itself stays the base image's (same pin).
RUN pip install "/home/ray/tierserve[gpu]"
# The base image's `ray` user (UID 1000, GID 100), numeric so runAsNonRoot can be verified.
USER 1000:100
WORKDIR /home/ray
