# One entry point for people and CI. `make test` is what .ci/run calls.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/archiver demo

# Test processes (pytest-xdist). 3 keep 2 cores busy (4 took as long: the suite is
# bound by the cores); each worker starts its own PostgreSQL server.
# `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist worksteal

# The whole suite: unit, integration (real HTTP, real PostgreSQL), acceptance (the CLI),
# and the tests marked slow (soak, memory bounds). On 2 cores with nothing else running:
# 12 min 50 s (2026-12-02; README has the current figure).
test: $(STAMP)
	$(VENV)/bin/pytest $(XDIST)

# Everything but the slow soak and memory-bound tests, for quick local runs.
test-fast: $(STAMP)
	$(VENV)/bin/pytest $(XDIST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check archiver tests migrations
	$(VENV)/bin/ruff format --check archiver tests migrations
	$(VENV)/bin/mypy archiver

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
