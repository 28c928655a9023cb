# The two commands a fresh machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test lint typecheck unit docs serve bench bench-quick bench-in-process bench-store clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The tests also draw the benchmark plot, so they install the `bench` extra (matplotlib).
unit: $(BENCH_STAMP)
	$(BIN)/pytest

# Regenerate docs/configuration.md from the config structs' docstrings.
docs: $(STAMP)
	$(BIN)/python -m llm_proxy._reference docs/configuration.md

serve: $(STAMP)
	$(BIN)/llm-proxy serve

# The throughput harness (a few minutes; results in benchmarks/out/). BENCH_ARGS passes
# options on, e.g. `make bench BENCH_ARGS="--compare litellm"`.
bench: $(BENCH_STAMP)
	$(BIN)/llm-proxy bench $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/llm-proxy bench --quick $(BENCH_ARGS)

# The earlier, narrower benchmarks, each in its own process.
bench-in-process: $(STAMP)
	$(BIN)/python -m benchmarks.bench_pipeline
	$(BIN)/python -m benchmarks.bench_middlewares
	$(BIN)/python -m benchmarks.bench_server
	$(BIN)/python -m benchmarks.bench_fake_upstream

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Needs redis-server (apt-get install redis-server); it starts its own on a free port.
bench-store: $(STAMP)
	$(BIN)/python -m benchmarks.bench_store

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
