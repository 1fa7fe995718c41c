# make bench: set up .venv, run the default benchmark from scratch (force=true: the records
#             committed under results/ are replaced by this machine's), write the report.
#             make bench SWEEP=full runs every method of the suite instead; make bench SEEDS=3
#             runs seeds 0, 1 and 2 of each (default: one seed).
# make test:  set up .venv, lint, run the test suite.
# make test-fast: the same without the end-to-end runs marked slow (a quick loop while editing).
# make gpu-check: verify this machine's GPU path in at most 8 minutes (reduced on a CPU);
#             figures, records, logs and summary.md in GPUCHECK_DIR and GPUCHECK_DIR.tar.gz.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SWEEP ?= default
GPUCHECK_DIR ?= gpucheck
SEEDS ?= 1

.PHONY: bench test test-fast setup report clean-venv gpu-check

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

test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

gpu-check:
	python3 -m benchmark.gpucheck output_dir=$(GPUCHECK_DIR)

clean-venv:
	rm -rf $(VENV)
