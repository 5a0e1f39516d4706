# ser-dist: `make demo` sets up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?= data/raw
SSL_MODEL ?=
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean-features

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on disk (a loose spec would pull a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python -m jobs.pipeline --config configs/demo_emodb.yaml --data-root $(DATA_ROOT) $(if $(SSL_MODEL),--ssl-model $(SSL_MODEL),)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check ser_dist jobs tests bench
