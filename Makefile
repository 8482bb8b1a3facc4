# Two commands on a fresh machine: `make demo` (embedded: no Docker, no services) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean bench

$(BIN)/saddle: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/saddle

install: $(BIN)/saddle

demo: install
	$(BIN)/saddle demo

# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see README); `.ci/run` starts them.
test: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf .saddle
