# syntax=docker/dockerfile:1
# The tierserve operator: `tierserve operator` (Kopf), without vLLM or torch.
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/tierserve/operator:0.1.0 .
# The chart (charts/tierserve) runs it as UID 10001 with a read-only root filesystem.
# BASE is any Debian-based image with python3 (3.11+) and its venv module: the public slim
# Python image by default; `python -m tierserve.dev.images build operator` passes a local
# debootstrapped one (no registry reachable there).

ARG BASE=python:3.11.13-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/tierserve
# Only what the package is built from.
COPY pyproject.toml README.md /src/
COPY tierserve /src/tierserve
# The [controller] extra only: Kopf and the Kubernetes client, no Ray, no vLLM, no torch.
# pip's cache is a build cache mount: reused by the next build, never part of the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/tierserve/bin/pip install "/src[controller]"

FROM ${BASE}
ENV PATH=/opt/tierserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/tierserve /opt/tierserve
RUN groupadd --system --gid 10001 tierserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp tierserve
# Numeric, so the kubelet can verify runAsNonRoot without looking the name up.
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["tierserve", "operator"]
CMD ["--all-namespaces", "--standalone"]
