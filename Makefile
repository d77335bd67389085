# Every target does its own setup: a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The package's bytecode, as pip writes it when it installs a wheel: an editable install
# has none, and where PYTHONDONTWRITEBYTECODE is set Python never writes it, so every
# command would compile the package from source first (~0.1 s each).
BYTECODE = $(BIN)/python -m compileall -q digest subscribers schedules >/dev/null

demo: $(STAMP)
	@$(BYTECODE)
	$(BIN)/digest demo

# axe-core (npm) for the accessibility tests, into a local folder; they skip without it.
NODE_DIR := .cache/node
AXE := $(NODE_DIR)/node_modules/axe-core/axe.min.js
AXE_VERSION := 4.14.1

$(AXE):
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p $(NODE_DIR) && npm install --prefix $(NODE_DIR) --no-audit --no-fund --silent \
	    --no-save axe-core@$(AXE_VERSION) || echo "make: could not install axe-core; the accessibility tests will skip"; \
	else echo "make: no npm; the accessibility tests will skip"; fi

test: $(STAMP) $(AXE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check digest subscribers schedules tests bench
	$(BIN)/mypy

bench: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache outbox demo.db preview.html preview.txt .pytest_cache .mypy_cache
