# The two commands a newcomer needs: `make up` (install, then start the whole stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test lint

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on SQLite, then the tests that use a service database again on PostgreSQL (tests/conftest.py).
test: lint
	bash scripts/install-system-deps.sh
	$(BIN)/pytest
	QP_TEST_DATABASE=postgres $(BIN)/pytest
