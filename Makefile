# Every target does its own setup: a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz clean

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

# The demo works in digest-demo/ (its own folder; it replaces only what it wrote there).
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

# atheris over feed parsing, sanitizing and the CSV import (tests/fuzz), FUZZ_SECONDS each;
# an input slower than FUZZ_INPUT_SECONDS counts as a crash. Seeds stay as they are: the
# inputs found and any crash (with the input that made it) go to .cache/fuzz. Without
# atheris (no wheel for this Python), it says so and passes.
FUZZ_SECONDS ?= 30
FUZZ_INPUT_SECONDS ?= 20
# FUZZ_RUNS (with FUZZ_SEED) makes a run repeatable: the same inputs in the same order on
# any machine, as CI wants; FUZZ_SECONDS still bounds it.
FUZZ_RUNS ?= -1
FUZZ_SEED ?= 0
FUZZ_TARGETS := feeds sanitize imports

fuzz: $(STAMP)
	@if ! $(BIN)/python -c "import atheris" 2>/dev/null; then \
	  echo "make fuzz: atheris is not installed; fuzzing skipped"; exit 0; fi; \
	for target in $(FUZZ_TARGETS); do \
	  work=.cache/fuzz/$$target; mkdir -p $$work/corpus; \
	  cp tests/fuzz/seeds/$$target/* $$work/corpus/; \
	  if DIGEST_FUZZ_WORK=$$work $(BIN)/python -m tests.fuzz.fuzz_$$target \
	      -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -seed=$(FUZZ_SEED) \
	      -timeout=$(FUZZ_INPUT_SECONDS) -rss_limit_mb=2048 \
	      -artifact_prefix=$$work/ $$work/corpus >$$work/log 2>&1; then \
	    echo "make fuzz: $$target: $$(grep '^Done' $$work/log)"; \
	  else \
	    tail -n 40 $$work/log; echo "make fuzz: $$target failed; the input is in $$work/"; \
	    exit 1; \
	  fi; \
	done

bench: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache digest-demo .pytest_cache .mypy_cache
