# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs, is
# idempotent, and is fast the second time: venvs, Go-built binaries and generated models are
# cached under $(CACHE), never in the repo.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export TIERSERVE_CACHE ?= $(HOME)/.cache/tierserve
export HF_HUB_OFFLINE := 1
BIN := .venv/bin

.PHONY: help demo demo-kuberay test unit integration lint crds deps venv system binaries models \
        images node-binaries e2e-node controlplane-up controlplane-down clean

help:
	@echo "make demo   - the whole stack locally: Kubernetes control plane, operator, Prometheus,"
	@echo "              Ray with two generated tiny models, a ModelTier applied with kubectl"
	@echo "make test   - run the whole test suite against real components (installs what it needs)"
	@echo "make demo-kuberay - the same on a real node: kubelet + containerd running the project's"
	@echo "              images, the operator installed with helm, KubeRay (slow cold: see README)"
	@echo "other targets: unit integration lint crds deps images e2e-node controlplane-up"
	@echo "              controlplane-down clean"

demo: venv system binaries models
	$(BIN)/tierserve demo

demo-kuberay: venv system binaries models node-binaries
	$(BIN)/tierserve demo --backend kuberay

test: deps lint
	$(BIN)/pytest -m "unit or integration" tests

unit: venv
	$(BIN)/pytest -m unit tests

integration: deps
	$(BIN)/pytest -m integration tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/lint-imports
	$(BIN)/tierserve crds --check $(CRD_DIRS:%=--out %) --docs docs/reference/modeltier.md

# Generated from tierserve/api: the ModelTier CRD in crds/ and the Helm chart's copy, the chart's
# values.schema.json (written beside the chart's crds/), and the ModelTier reference.
CRD_DIRS := crds charts/tierserve/crds
crds: venv
	$(BIN)/tierserve crds $(CRD_DIRS:%=--out %) --docs docs/reference/modeltier.md

deps: venv system binaries models

venv:
	@scripts/install-python.sh

system:
	@scripts/install-system.sh

binaries: venv system
	@$(BIN)/python -m tierserve.dev.controlplane build --kuberay

models: venv
	@$(BIN)/python -m tierserve.dev.tinymodels

# The kuberay path on a real node: the node's binaries (kubelet, scheduler, kube-proxy,
# containerd, CoreDNS), the images (debootstrap + buildah), and its end-to-end test, which
# `make test` runs only when the images of this exact tree are already built.
node-binaries: venv system binaries
	@scripts/install-system.sh --node
	@$(BIN)/python -m tierserve.dev.controlplane.node build

images: venv system
	@scripts/install-system.sh --node
	@$(BIN)/python -m tierserve.dev.images build all

e2e-node: deps node-binaries images
	TIERSERVE_NODE_E2E=1 $(BIN)/pytest -m integration tests/integration/test_kuberay_node.py

controlplane-up: venv system binaries
	@$(BIN)/python -m tierserve.dev.controlplane up

controlplane-down: venv
	@$(BIN)/python -m tierserve.dev.controlplane down

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache *.egg-info
	@echo "caches under $(TIERSERVE_CACHE) are kept; remove that folder for a cold start"
