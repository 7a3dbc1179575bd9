# Two commands on a fresh machine with Python 3.11+:  `make demo`  and  `make test`.
# Each creates .venv and installs the project into it (editable) before running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-quantizers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kquant demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench-quantizers: $(STAMP)
	$(BIN)/python benchmarks/quantizers.py

clean:
	rm -rf $(VENV) build *.egg-info
