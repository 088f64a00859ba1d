# One entry point for people and CI. `make test` is what .ci/run calls.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/archiver demo

# The whole suite: unit, integration (real HTTP, real PostgreSQL), acceptance (the CLI),
# and the soak tests marked slow (about half a minute on 2 cores).
test: $(STAMP)
	$(VENV)/bin/pytest

# Everything but the slow soak tests, for quick local runs.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check archiver tests migrations
	$(VENV)/bin/ruff format --check archiver tests migrations
	$(VENV)/bin/mypy archiver

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
