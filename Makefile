# The two commands a newcomer needs: `make up` (install, then start the whole stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test lint schemas

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs only when the project's metadata changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

up: install
	$(BIN)/qp up

# Regenerates the schema files made from pydantic models (schemas/generate.py); tests/contract fails on a stale one.
schemas: install
	$(BIN)/python -m schemas.generate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The whole suite on SQLite, then the tests that use a service database again on PostgreSQL (tests/conftest.py).
# Each pass runs in TEST_WORKERS processes (pytest-xdist), each with its own dev server: tests own their data
# (task queues, databases, remotes), and most of their time is waiting, so three fit on two cores.
TEST_WORKERS ?= 3
test: lint
	bash scripts/install-system-deps.sh
	$(BIN)/pytest -n $(TEST_WORKERS)
	QP_TEST_DATABASE=postgres $(BIN)/pytest -n $(TEST_WORKERS)
