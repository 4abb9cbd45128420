# Two entry points, both from a fresh clone: `make repro` (set up + run the whole DVC pipeline) and
# `make test` (set up + run the test suite). Set-up is a local .venv/ built once from pyproject.toml.
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[dev,readers]'
	touch $@

.PHONY: setup repro test test-slow
setup: $(VENV)/.installed

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow
