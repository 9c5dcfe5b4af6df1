# Two commands set everything up on a fresh Linux machine with Python 3.11:
#   make up    start a whole cluster locally (Ctrl-C stops it)
#   make test  run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: up test unit lint venv clean bench bench-quick bench-setup bench-presence bench-loadgen \
        bench-latency bench-fanout bench-pingpong bench-connections bench-persist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Conferences need Janus (Debian's janus): installed here when missing and run as root,
# otherwise camctl up starts without video and says how to add it.
up: $(STAMP)
	@if ! command -v janus >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Janus for conferences (apt-get install janus)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null; } \
	    || echo "could not install Janus; starting without video"; \
	fi
	$(VENV)/bin/camctl up $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) data .pytest_cache

# Benchmarks are not tests: each runs our cluster and a baseline in the same run and
# writes bench/results/<name>.json and .md (docs/benchmarks.md). `make bench` installs
# the peers and baselines (bench/setup.sh), then runs every scenario (about 8-10 min);
# `make bench-quick` is a smoke run of each (under 2 min). ARGS passes options on.
bench-setup: $(STAMP)
	PY=$(PY) bash bench/setup.sh

bench: bench-setup
	$(PY) -m bench.run_all $(ARGS)

bench-quick: bench-setup
	$(PY) -m bench.run_all --quick $(ARGS)

bench-presence: $(STAMP)
	$(PY) -m bench.presence $(ARGS)

bench-loadgen: bench-setup
	$(PY) -m bench.loadgen $(ARGS)

bench-latency: bench-setup
	$(PY) -m bench.latency $(ARGS)

bench-fanout: bench-setup
	$(PY) -m bench.fanout $(ARGS)

bench-pingpong: bench-setup
	$(PY) -m bench.pingpong $(ARGS)

bench-connections: bench-setup
	$(PY) -m bench.connections $(ARGS)

bench-persist: bench-setup
	$(PY) -m bench.persist $(ARGS)

bench-placement: $(STAMP)
	$(PY) -m bench.placement $(ARGS)
