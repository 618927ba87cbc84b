# axolotl-operator developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CACHE_DIR ?= $(HOME)/.cache/axolotl-operator
# The trainer tier needs Python >= 3.12 (Axolotl 0.21). pyenv's shims may point at an inactive version,
# so pyenv's own 3.12+ installs come first; hack/trainer-venv checks whatever is chosen.
TRAINER_PYTHON ?= $(shell ls -d $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V | head -1 || command -v python3.12)
TRAINER_VENV ?= $(CACHE_DIR)/trainer-venv
PYTEST_ARGS ?=

.PHONY: setup lint crd contract crd-check unit integration realnode e2e trainer-setup trainer-test test demo demo-train kubeenv-up kubeenv-down clean

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.stamp

lint: setup
	$(VENV)/bin/ruff check operator tests bench hack trainer-image

# The CRD is generated from the models; the chart ships the same file (tests/unit/test_crd.py checks both).
crd: setup
	$(VENV)/bin/axolotl-operator crd > crds/axolotl.ai_axolotljobs.yaml
	cp crds/axolotl.ai_axolotljobs.yaml charts/axolotl-operator/crds/axolotl.ai_axolotljobs.yaml

# The trainer contract (env names, paths, ports, exit codes, payloads) lives in trainer-image; the operator
# carries a generated copy (tests/unit/test_contract.py checks it byte for byte).
contract:
	hack/gen-contract

unit: setup
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

# --- kubeenv (tests/kubeenv, hack/kubeenv) ---
# Binaries are cached under $(CACHE_DIR) keyed by a hash of their sources; see tests/kubeenv/README.md.
.PHONY: kubeenv-build kubeenv-status helm
kubeenv-build:
	hack/kubeenv build

kubeenv-up: setup
	hack/kubeenv up

kubeenv-down:
	hack/kubeenv down

kubeenv-status:
	hack/kubeenv status

helm:
	hack/helm --path
# --- end kubeenv ---

# Build (or reuse) the control plane first, so a cold build never runs inside a pytest timeout.
# trainer-setup too: test_operator_progress_kubeflow.py runs a real transformers.Trainer (torch, CPU).
integration: setup kubeenv-build trainer-setup
	hack/gitops-health/build >/dev/null  # Flux's kstatus and Argo CD's Lua VM, for test_operator_gitops.py
	hack/promtool/build >/dev/null  # Prometheus' promtool, for test_monitoring.py (minutes on a cold module cache)
	hack/actionlint/build >/dev/null  # the GitHub workflows' linter, for test_workflows.py
	hack/kueue/build >/dev/null  # Kueue's controller manager, for test_operator_kueue.py (minutes when cold)
	AXOLOTL_TRAINER_PYTHON=$(TRAINER_VENV)/bin/python $(VENV)/bin/pytest -q tests/integration $(PYTEST_ARGS)

# Real nodes (root): a kubelet with containerd really runs pods. `hack/kubeenv build --real-nodes 1`
# installs the Debian packages it lacks and builds containerd and the local images first.
realnode: setup
	hack/kubeenv build --real-nodes 1 >/dev/null
	$(VENV)/bin/pytest -q tests/realnode $(PYTEST_ARGS)

# End to end (root): both images built here from their Dockerfiles (hack/images), the chart installed
# on a real node, real Axolotl training in pods. Needs the trainer venv (its Axolotl goes into the image).
e2e: setup trainer-setup
	hack/kubeenv build --real-nodes 1 >/dev/null
	hack/images build all >/dev/null
	$(VENV)/bin/pytest -q tests/e2e $(PYTEST_ARGS)

# --- trainer tier (trainer-image/, tests/trainer) ---
trainer-setup:
	hack/trainer-venv "$(TRAINER_PYTHON)" "$(TRAINER_VENV)"

# setup too: the examples test renders them with the operator's CLI from .venv.
trainer-test: setup trainer-setup
	$(TRAINER_VENV)/bin/python -m pytest -q tests/trainer $(PYTEST_ARGS)
# --- end trainer tier ---

test: lint unit integration realnode e2e trainer-test

demo: setup
	hack/demo

# The demo with real training (root): a real node, both images, the chart, a tiny job trained on the CPU.
demo-train: setup trainer-setup
	hack/demo-train/run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Side by side on the kwok tier (bench/README.md): the raw API limit, the operator and Kubeflow's
# training-operator at N = 1, 100, 1000, then the 1,000-job scale run; bench/results/latest.json + PNG.
# Its own control plane (~/.cache/axolotl-operator/bench-kubeenv). E.g. BENCH_ARGS="--n 100 --skip-scale".
BENCH_ARGS ?=
.PHONY: bench
bench: setup
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(VENV)/bin/python bench/bench_scale.py $(BENCH_ARGS)
