# Two commands set everything up on a fresh Linux machine with Python 3.11:
#   make up    start a whole cluster locally (Ctrl-C stops it)
#   make test  run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: up test unit lint venv clean bench bench-presence

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/camctl up $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache

# Benchmarks are not tests: each runs our cluster and a baseline in the same run and
# writes bench/results/<name>.json and .md.
bench-presence: $(STAMP)
	$(PY) -m bench.presence $(ARGS)

bench: bench-presence
