# Two commands on a fresh machine with Python 3.11+ and make: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-quick clean install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# strict editable mode links every module into one tree, so mypy and tools see the namespace
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/workledger up --demo

test: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict --no-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	# One worker per core (2 in CI): most tests wait on real processes (nats-server, daemons),
	# so the suite is about twice as fast. Each test has its own server, port and tmp_path.
	$(BIN)/pytest -n auto --dist worksteal

# Every figure of issue 6 with its target, then a summary table (benchmarks/results/latest.md).
# Full sizes take a while (the 10M-event rebuild alone is minutes) and GBs under /tmp.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The same at tiny sizes, in seconds: checks the harness, not the speed.
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/bench.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .workledger
