# make test: create .venv if needed, install zmqcross with its test and dev extras, run the tests.
# make check: mypy --strict and ruff (lint and format) over zmqcross/; settings in pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test check clean demo bench bench-quick

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# All three run even when one fails, so one pass shows everything there is to fix.
check: $(STAMP)
	@status=0; \
	echo "mypy (strict)"; $(BIN)/python -m mypy || status=1; \
	echo "ruff check zmqcross/"; $(BIN)/python -m ruff check zmqcross/ || status=1; \
	echo "ruff format --check zmqcross/"; $(BIN)/python -m ruff format --check zmqcross/ || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

demo: $(STAMP)
	$(BIN)/python bots/demo.py

# make bench: the latency table at 20,000 guilds and a simulated fleet (about 7 minutes); COMPARE=file adds ratios
# against a result file of the original's harness (../shared/anchors/node-dch/run.sh).
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(if $(COMPARE),--compare $(COMPARE))

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick $(if $(COMPARE),--compare $(COMPARE))
