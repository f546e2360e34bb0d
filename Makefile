# fedinfra — `make demo` runs the main job, `make test` runs lint, types and tests.
# Both create .venv on first use (torch's CPU build first, then the project with dev extras)
# and reuse it afterwards: the stamp file is only rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedinfra-installed
# The default run (`make test`, CI) skips what is marked slow: the long fuzz/property runs
# (10,000 cases per decoder) and the long loopback federations (outages, kill/resume, killed
# sites, every signal at every stage, hostile site, slim install, deploy refusals, the HE
# evaluation run, the digits-CNN simulation). `make slow` runs those;
# `make e2e` runs every end-to-end test, slow or not. One short federation per area stays in
# `make test`: the guides' ceremony (DP+HE), the site-trust attacks, a task job under secagg.
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test lint typecheck unit slow e2e bench mutate clean

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

e2e: $(STAMP)
	$(VENV)/bin/pytest -m e2e

bench: $(STAMP)
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

# Mutation testing of the modules that protect people (not part of `make test`; see
# CONTRIBUTING.md). MODULES=fedinfra.privacy.ledger limits it to the modules you touched.
mutate: $(STAMP)
	$(PY) bench/mutation.py $(MODULES) --jobs $(or $(JOBS),2)

clean:
	rm -rf runs build dist .mypy_cache .ruff_cache .pytest_cache mutants
