# The two set-up commands of the README: `make demo` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

$(BIN)/ttp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

.PHONY: install demo test bench
install: $(BIN)/ttp

demo: $(BIN)/ttp
	$(BIN)/ttp demo

test: $(BIN)/ttp
	$(BIN)/python -m pytest

bench: $(BIN)/ttp
	$(BIN)/python bench/sampling_speed.py
	$(BIN)/python bench/bon_estimator.py
	$(BIN)/python bench/scoring_throughput.py
