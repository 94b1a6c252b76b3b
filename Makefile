# The README's commands. `make lab` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test lint typecheck pytest test-faults bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/shardgate lab up --foreground

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -m "not faults"

test-faults: $(STAMP)
	$(BIN)/pytest -q

# A lab of its own (BENCH_BASE_PORT, so a running `make lab` is left alone), the load generator
# against its proxy0 with its defaults (or BENCH_ARGS), then that lab down, also on failure or
# Ctrl-C. Side-by-side comparisons: `shardgate bench compare` (docs/performance.md).
BENCH_DIR ?= .lab/bench
BENCH_BASE_PORT ?= 17000
BENCH_ARGS ?=
bench: $(STAMP)
	trap '$(BIN)/shardgate lab down --dir $(BENCH_DIR) --grace 2 >/dev/null' EXIT INT TERM; \
	$(BIN)/shardgate lab up --dir $(BENCH_DIR) --base-port $(BENCH_BASE_PORT) && \
	$(BIN)/shardgate bench --port $(BENCH_BASE_PORT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .lab .pytest_cache .mypy_cache .ruff_cache
