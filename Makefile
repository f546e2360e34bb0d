# fedinfra — `make demo` runs the main job, `make test` runs lint, types and tests.
# Both create .venv on first use (torch's CPU build first, then the project with dev extras)
# and reuse it afterwards: the stamp file is only rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedinfra-installed
# The default run skips the long fuzz/property runs (10,000 cases per decoder, marked slow and
# not e2e); `make slow` runs them. End-to-end tests run always, slow or not.
PYTEST_ARGS ?= -m "not slow or e2e"

.PHONY: demo test lint typecheck unit slow bench mutate clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedinfra demo $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fedinfra tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck unit

slow: $(STAMP)
	$(VENV)/bin/pytest -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

# Mutation testing of the modules that protect people (not part of `make test`; see
# CONTRIBUTING.md). MODULES=fedinfra.privacy.ledger limits it to the modules you touched.
mutate: $(STAMP)
	$(PY) bench/mutation.py $(MODULES) --jobs $(or $(JOBS),2)

clean:
	rm -rf runs build dist .mypy_cache .ruff_cache .pytest_cache mutants
