# The two commands of the README: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: demo test setup tools lint typecheck lock clean

setup:
	@scripts/bootstrap.sh

# What the deployment tests run besides Python: promtool/prometheus, kubectl, checkov.
tools: setup
	@LETHE_VENV=$(VENV) scripts/tools.sh

demo: setup
	$(BIN)/lethe demo

test: setup tools
	$(BIN)/ruff check service shards tests
	$(BIN)/ruff format --check service shards tests
	$(BIN)/mypy service shards
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check service shards tests
	$(BIN)/ruff format --check service shards tests
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy service shards

# Re-pin requirements/lock.txt from the current venv (after a deliberate upgrade).
lock: setup
	{ echo "# Exact versions known to work together here (python 3.11, x86_64, CPU). Regenerate: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -vE '^(torchvision|torchaudio|torchcodec|lethe)[=@ ]'; } > requirements/lock.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
