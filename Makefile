# Two commands on a fresh machine: `make demo` (embedded: no Docker, no services) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean bench docs

PLUGIN := examples/plugin/saddle-example-models

# The example model plug-in is installed too: tests submit its arch by name (docs/models.md).
$(BIN)/saddle: pyproject.toml $(PLUGIN)/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet -e $(PLUGIN)
	touch $(BIN)/saddle

install: $(BIN)/saddle

# make demo ARGS="--port 8100" (or --exit, --spec FILE): options of `saddle demo`.
demo: install
	$(BIN)/saddle demo $(ARGS)

# The JobSpec reference, generated from models/spec.py (tests/test_first_hour_docs.py checks it).
docs: install
	$(BIN)/python docs/generate_jobspec.py

# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see README); `.ci/run` starts them.
test: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf .saddle
