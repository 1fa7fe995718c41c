# make bench: set up .venv, run the default benchmark from scratch (force=true: the records
#             committed under results/ are replaced by this machine's), write the report.
#             make bench SWEEP=full runs every method of the suite instead; make bench SEEDS=3
#             runs seeds 0, 1 and 2 of each (default: one seed).
# make test:  set up .venv, lint, run the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SWEEP ?= default
SEEDS ?= 1

.PHONY: bench test setup report clean-venv

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cluster]'
	touch $@

setup: $(BIN)/.installed

bench: setup
	$(BIN)/python -m benchmark.run sweep=$(SWEEP) seeds=$(SEEDS) force=true
	$(BIN)/python -m benchmark.report

report: setup
	$(BIN)/python -m benchmark.report

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
